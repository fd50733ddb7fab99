//! haloflow: a flow-designer-style automation runtime for HaloITSM and ServiceNow.
//!
//! Flows are JSON documents (`flows/*.json`, checked against `schemas/flow.schema.json`): a
//! HaloITSM Incidents trigger and steps whose inputs are templates over the trigger's outputs
//! and earlier steps' outputs. The same crate runs as the `haloflow` binary and embeds in your
//! own program:
//!
//! ```no_run
//! use std::sync::Arc;
//! use haloflow::prelude::*;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Engine::builder()
//!     .config(Config::load("haloflow.toml".as_ref())?)
//!     // The integrations to run: here Halo alone (`haloflow::bundled::integrations()` is
//!     // Halo and ServiceNow).
//!     .integration(Halo)
//!     .flows_from("flows")
//!     .storage(Arc::new(SqliteStorage::open_dir("data".as_ref()).await?))
//!     .build()?;
//! // Resume what a previous process left unfinished, rebuild flood control.
//! engine.start().await?;
//! // Mount the trigger URLs and the API next to your own routes.
//! let app = axum::Router::new().nest("/automation", router(engine.clone()));
//! // Or start a run in process and wait for it.
//! let payload = serde_json::json!({"event": "new ticket logged", "object_id": 42, "ticket": {"id": 42}});
//! let query = TriggerQuery::parse(Some("recipients=ops"), None);
//! let done = engine.run_to_completion("escalate-to-partner", payload, &query).await?;
//! // `done.runs`: every run it started, finished; `done.accepted`: duplicates, suppressed.
//! # let _ = (app, done);
//! # Ok(())
//! # }
//! ```
//!
//! Steps implement [`step::Step`] and are registered by type name in a [`step::StepRegistry`]
//! (`examples/custom_step.rs`); the built-in steps are registered the same way.
//!
//! The core (crate `haloflow-core`, re-exported here module by module) names no vendor: Halo
//! (`halo::Halo`, crate `haloflow-halo`, the `halo` feature) and ServiceNow
//! (`servicenow::ServiceNow`, crate `haloflow-servicenow`, the `servicenow` feature) are
//! integrations, each adding its config section, connections, steps, routes and jobs through
//! one interface ([`integration::Integration`]) that an embedder's integration implements the
//! same way. An engine runs the integrations it is given. All features are on by default; an
//! embedder takes `default-features = false` and the integrations it runs.

// The core, module by module: `haloflow::engine` is `haloflow_core::engine`, and so on.
pub use haloflow_core::{
    admission, config, connections, engine, flood, flow, integration, json, outbound, secrets,
    server, step, steps, storage, template, trigger,
};

/// The Halo integration (crate `haloflow-halo`; the `halo` feature).
#[cfg(feature = "halo")]
pub use haloflow_halo as halo;
/// The ServiceNow integration (crate `haloflow-servicenow`; the `servicenow` feature).
#[cfg(feature = "servicenow")]
pub use haloflow_servicenow as servicenow;

pub mod bundled;
/// The `haloflow` binary's commands (an implementation detail of the CLI; the `cli` feature).
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod commands;
pub mod prelude;
