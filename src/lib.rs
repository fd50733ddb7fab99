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
//! The modules here are the stable API: [`engine`], [`step`], [`connections`], [`outbound`],
//! [`config`], [`flow`], [`server`], [`storage`], [`secrets`], [`trigger`], gathered for the
//! usual program in [`prelude`].
//!
//! The core (crate `haloflow-core`) names no vendor: Halo
//! (`halo::Halo`, crate `haloflow-halo`, the `halo` feature) and ServiceNow
//! (`servicenow::ServiceNow`, crate `haloflow-servicenow`, the `servicenow` feature) are
//! integrations, each adding its config section, connections, steps, routes and jobs through
//! one interface ([`engine::Integration`]) that an embedder's integration implements the
//! same way. An engine runs the integrations it is given. All features are on by default; an
//! embedder takes `default-features = false` and the integrations it runs.

// The stable embedder API: each module below re-exports the core items an embedder uses;
// everything else of the core is in the hidden `internals` module.

pub mod engine {
    //! The engine: built from a config, integrations, flows and storage; accepts trigger
    //! requests, runs flows ([`Engine::run_to_completion`]) and single steps
    //! ([`Engine::run_step`]) with retries, look-ups and history, replays and dry-runs them.
    pub use haloflow_core::engine::integration::{Integration, Integrations};
    pub use haloflow_core::engine::{
        AcceptError, Accepted, Completion, DryRunReport, DryRunStep, DuplicateEvent, Engine,
        EngineBuilder, EngineError, LoadedFlow, ReplayError, ReplayFrom, SuppressedEvent,
    };
}

pub mod step {
    //! The step contract: what a step is ([`StepDescription`]), what it does ([`Step`]), what
    //! it may use while it runs ([`StepContext`]), how it fails ([`StepError`]) and whether it
    //! may be sent again after a lost answer ([`Resend`]); the registry steps are found in.
    pub use haloflow_core::step::{
        OutputSpec, PathRule, RegisteredStep, RegistryError, Resend, Step, StepContext,
        StepDescription, StepError, StepRegistry, is_placeholder,
    };
}

pub mod connections {
    //! Connections to target systems: kinds (one config table each, open to integrations),
    //! the built set an engine holds, and the `[http.<name>]` connection with its request
    //! helper ([`HttpConnection::request`]).
    pub use haloflow_core::connections::{
        ConnectionKind, Connections, ConnectionsBuilder, HttpConnection, MissingSecret, Needed,
        NoConnection,
    };
}

pub mod outbound {
    //! Outbound HTTP as steps see it: requests built from a connection, sent through
    //! [`StepContext::send`](crate::step::StepContext::send) (recorded in the run history,
    //! previewed in a dry run), and their answers.
    pub use haloflow_core::outbound::{
        Field, Outbound, OutboundRequest, OutboundResponse, TransportError,
    };
}

pub mod config {
    //! The config file: the core's sections, and the tables integrations own (read with
    //! [`Config::section`], checked with [`Problems`]).
    pub use haloflow_core::config::{
        ApiAuthConfig, Config, ConfigError, ConfigProblem, Durability, HttpConnectionConfig,
        Problems, RetentionConfig, RetryConfig, RetrySettings, Section, ServerConfig,
    };
}

pub mod flow {
    //! Flows: validated from their JSON documents, every problem reported at its place.
    pub use haloflow_core::flow::{
        FlowValidator, Problem, ProblemCode, ValidatedFlow, ValidatedStep,
    };
}

pub mod server {
    //! The HTTP server: trigger URLs, the API and the integrations' routes as one axum
    //! router, to mount in an app of your own ([`router`]) or serve as it is ([`serve`]).
    pub use haloflow_core::server::{
        ApiError, ErrorCode, Listeners, router, serve, serve_listeners,
    };
}

pub mod storage {
    //! Where requests, runs and their history live: [`open`] picks a backend from the
    //! settings; the store traits and the records they read and write.
    #[cfg(feature = "postgres")]
    pub use haloflow_core::storage::PostgresStorage;
    #[cfg(feature = "sqlite")]
    pub use haloflow_core::storage::SqliteStorage;
    // The stores.
    pub use haloflow_core::storage::{
        Backend, FloodStore, LeaseStore, LinkStore, RunStore, Storage, SyncStore,
    };
    // What they read and write.
    pub use haloflow_core::storage::{
        AttemptOutcome, AttemptRecord, Cursor, FloodRecord, Link, LinkCursor, LinkFilter,
        LinkOrigin, LinkPage, NewRequest, NewRun, NewSuppressed, Progress, QueuedRun,
        RequestFilter, RequestRecord, RunCount, RunDetail, RunFilter, RunFinish, RunStatus,
        RunSummary, StepOutcome, StepRunRecord, StepStart, StepStatus, SyncFailure, Verdict,
        WriteQueue, WriteStats,
    };
    pub use haloflow_core::storage::{BackendError, StorageError, StorageSettings, open};
}

pub mod secrets {
    //! Secrets, by name: never in a flow, a log, an error or the history.
    pub use haloflow_core::secrets::{Secret, SecretStore};
}

pub mod trigger {
    //! Triggers: what a trigger URL's query carries (recipients and other parameters), and
    //! the trigger-type contract a flow's `"trigger": {"type": ...}` names: the core's
    //! [`Webhook`], Halo's `halo.incidents`, or an integration's own
    //! (`Integration::trigger_types`).
    pub use haloflow_core::trigger::{
        REQUEST_OUTPUTS, TriggerDescription, TriggerEvent, TriggerQuery, TriggerType, Webhook,
    };
}

/// Everything of the core, module by module, for the `haloflow` binary, the tests and
/// integrations: not a stable API (the modules above are).
#[doc(hidden)]
pub mod internals {
    pub use haloflow_core::*;
}

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
