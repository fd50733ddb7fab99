//! The one interface through which an integration plugs into the core: the config section it
//! owns, the connections it builds, the steps and trigger types it adds, the HTTP routes it serves (public ones,
//! and API ones behind the API's guard), the metric families it adds to `/metrics` and the
//! background jobs it runs. Halo (`haloflow::halo::Halo`) and ServiceNow
//! (`haloflow::servicenow::ServiceNow`) use it exactly as an embedder's integration does; the
//! core knows neither.
//!
//! An engine runs the integrations it is given ([`crate::engine::EngineBuilder::integration`]),
//! and nothing else: an embedder picks its own, the `haloflow` binary registers both bundled
//! ones (`haloflow::bundled::integrations()`).
//!
//! ```
//! use std::sync::Arc;
//! use async_trait::async_trait;
//! use haloflow_core::integration::{Integration, Integrations};
//! use haloflow_core::step::{Resend, Step, StepContext, StepDescription, StepError};
//! use serde_json::Value;
//!
//! struct Echo;
//!
//! #[async_trait]
//! impl Step for Echo {
//!     fn describe(&self) -> StepDescription {
//!         // Inputs: any object (the default schema).
//!         StepDescription::new("echo.say", "Returns its inputs.")
//!     }
//!     fn resend(&self, _inputs: &Value) -> Resend { Resend::Safe }
//!     async fn execute(&self, _ctx: &StepContext, inputs: Value) -> Result<Value, StepError> {
//!         Ok(inputs)
//!     }
//! }
//!
//! /// An integration with one step and nothing else.
//! struct EchoIntegration;
//!
//! impl Integration for EchoIntegration {
//!     fn name(&self) -> &'static str { "echo" }
//!     fn steps(&self) -> Vec<Arc<dyn Step>> { vec![Arc::new(Echo)] }
//! }
//!
//! let integrations = Integrations::new().with(EchoIntegration);
//! assert!(integrations.registry().get("echo.say").is_some());
//! ```

use std::path::Path;
use std::sync::Arc;

use axum::Router;
pub use futures_core::future::BoxFuture;

use super::{Engine, Exposition};
use crate::config::{Config, ConfigError, ConfigProblem, Problems};
use crate::connections::{Connections, ConnectionsBuilder, MissingSecret, Needed};
use crate::flow::ValidatedFlow;
use crate::secrets::SecretStore;
use crate::step::{RegistryError, Step, StepRegistry};
use crate::trigger::TriggerType;

/// An integration: what one target system adds to the core. Every method but [`name`] has a
/// default that adds nothing, so an integration implements only what it has.
///
/// [`name`]: Integration::name
pub trait Integration: Send + Sync + 'static {
    /// A short lowercase name, e.g. `servicenow`.
    fn name(&self) -> &'static str;

    /// The top-level config tables this integration owns (e.g. `["servicenow"]`). The core
    /// keeps them as written; a table no registered integration owns is reported as unknown.
    fn config_sections(&self) -> &'static [&'static str] {
        &[]
    }

    /// Checks the owned tables: reads each into the integration's own type
    /// ([`Config::section`], [`Problems::section`]) and reports every problem at its key path.
    fn check_config(&self, _config: &Config, _problems: &mut Problems) {}

    /// Builds this integration's connections from its section and the secret store
    /// ([`ConnectionsBuilder::secret`] reports a missing secret; every one is listed at once).
    /// Integrations build in the order they were registered, after the core's.
    fn build_connections(&self, _build: &mut ConnectionsBuilder<'_>) {}

    /// The steps it adds, registered by type name next to the core's.
    fn steps(&self) -> Vec<Arc<dyn Step>> {
        Vec::new()
    }

    /// The trigger types it adds (flows name one in `"trigger": {"type": ...}`), registered
    /// next to the core's `webhook`.
    fn trigger_types(&self) -> Vec<Arc<dyn TriggerType>> {
        Vec::new()
    }

    /// Built-in flows it runs, from its connections (e.g. one sync-back flow per ServiceNow
    /// connection, whose runs its webhook starts). Their ids must not be valid file flow ids
    /// (use a `:`), so they are never served at `/triggers`; runs of them are kept, resumed
    /// and replayed like any other.
    fn flows(&self, _connections: &Connections) -> Vec<ValidatedFlow> {
        Vec::new()
    }

    /// HTTP routes merged into the public router ([`crate::server::router`]), e.g. a webhook.
    fn routes(&self) -> Router<Engine> {
        Router::new()
    }

    /// HTTP routes merged into the API, behind the API's guard (its credentials, or the admin
    /// listener), e.g. a read of the integration's own state under `/api/<name>`.
    fn api_routes(&self) -> Router<Engine> {
        Router::new()
    }

    /// Adds this integration's metric families to a `/metrics` scrape. It may read storage
    /// (hence a future; `Box::pin(async move { .. })`); a read that fails should add its
    /// families empty rather than fail the scrape.
    fn expose_metrics<'a>(
        &'a self,
        _engine: &'a Engine,
        _exposition: &'a mut Exposition,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// Starts its background jobs; [`Engine::start`] calls it once the engine serves.
    /// [`Engine::spawn_every`] runs a job on a schedule while the engine lives.
    fn start(&self, _engine: &Engine) {}

    /// What to set up in the system that sends `flow`'s trigger requests, for the console's
    /// trigger setup (`GET /api/flows/{id}/setup`): a JSON object merged into the answer
    /// (objects field by field), e.g. `{"webhooks": [...], "auth": {...}}` with the webhooks
    /// to create there spelled out for a person. `url` is the trigger URL with its recipients
    /// (a URL key shown as `<SECRET_NAME>`). None when `flow`'s trigger is not this
    /// integration's.
    fn trigger_setup(&self, _flow: &ValidatedFlow, _url: &str) -> Option<serde_json::Value> {
        None
    }

    /// A sample trigger request body for `flow`'s trigger, as its sender posts it, for the
    /// console's "send a test webhook". Each call is a new delivery (a delivery id the
    /// sender sets is fresh), so it is never taken for a re-send. None when `flow`'s trigger
    /// is not this integration's.
    fn sample_payload(&self, _flow: &ValidatedFlow) -> Option<serde_json::Value> {
        None
    }
}

/// The integrations an engine runs, in the order they were registered.
#[derive(Clone, Default)]
pub struct Integrations {
    list: Vec<Arc<dyn Integration>>,
}

impl std::fmt::Debug for Integrations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.list.iter().map(|i| i.name()))
            .finish()
    }
}

impl Integrations {
    /// None yet.
    pub fn new() -> Self {
        Integrations::default()
    }

    /// These integrations and `integration`.
    pub fn with(mut self, integration: impl Integration) -> Self {
        self.push(Arc::new(integration));
        self
    }

    /// Adds `integration` after the others.
    pub fn push(&mut self, integration: Arc<dyn Integration>) {
        self.list.push(integration);
    }

    /// Every integration, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Integration>> {
        self.list.iter()
    }

    /// Every problem of `config`, all at once: the core's sections, each integration's, and
    /// tables nobody reads.
    pub fn problems(&self, config: &Config) -> Vec<ConfigProblem> {
        let mut problems = Problems::default();
        config.check_core(&mut problems);
        let mut claimed = Vec::new();
        for integration in &self.list {
            integration.check_config(config, &mut problems);
            claimed.extend_from_slice(integration.config_sections());
        }
        config.check_unknown_sections(&claimed, &mut problems);
        problems.into_vec()
    }

    /// [`Config::load`], checking the integrations' sections too.
    pub fn load_config(&self, path: &Path) -> Result<Config, ConfigError> {
        Config::load_checked(path, |config| self.problems(config))
    }

    /// [`Config::parse`], checking the integrations' sections too.
    pub fn parse_config(&self, text: &str) -> Result<Config, String> {
        Config::parse_checked(text, |config| self.problems(config))
    }

    /// A registry with the core's built-in steps and every integration's.
    ///
    /// # Panics
    /// When an integration's step has an invalid input schema; [`Integrations::complete`]
    /// (which the engine builder uses) returns the error instead.
    pub fn registry(&self) -> StepRegistry {
        let mut registry = StepRegistry::with_builtins();
        self.complete(&mut registry)
            .expect("the integrations' steps have valid input schemas");
        registry
    }

    /// Registers the integrations' steps and trigger types `registry` lacks (one of the same
    /// type name registered before, e.g. an embedder's replacement, is kept).
    pub fn complete(&self, registry: &mut StepRegistry) -> Result<(), RegistryError> {
        for step in self.list.iter().flat_map(|i| i.steps()) {
            match registry.register_arc(step) {
                Ok(()) | Err(RegistryError::Duplicate(_)) => {}
                Err(error) => return Err(error),
            }
        }
        for trigger in self.list.iter().flat_map(|i| i.trigger_types()) {
            match registry.register_trigger(trigger) {
                Ok(()) | Err(RegistryError::DuplicateTrigger(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Builds the core's connections and every integration's, those `needed`; every missing
    /// secret is reported at once.
    pub fn connections(
        &self,
        config: &Config,
        secrets: &SecretStore,
        needed: &Needed,
    ) -> Result<Connections, Vec<MissingSecret>> {
        let mut build = ConnectionsBuilder::new(config, secrets, needed);
        build.build_http();
        for integration in &self.list {
            integration.build_connections(&mut build);
        }
        build.finish()
    }

    /// Every integration's built-in flows.
    pub fn flows(&self, connections: &Connections) -> Vec<ValidatedFlow> {
        (self.list.iter())
            .flat_map(|i| i.flows(connections))
            .collect()
    }

    /// Every integration's routes, merged.
    pub fn routes(&self) -> Router<Engine> {
        (self.list.iter()).fold(Router::new(), |routes, i| routes.merge(i.routes()))
    }

    /// The first integration's [`Integration::trigger_setup`] for `flow`.
    pub fn trigger_setup(&self, flow: &ValidatedFlow, url: &str) -> Option<serde_json::Value> {
        self.list.iter().find_map(|i| i.trigger_setup(flow, url))
    }

    /// The first integration's [`Integration::sample_payload`] for `flow`.
    pub fn sample_payload(&self, flow: &ValidatedFlow) -> Option<serde_json::Value> {
        self.list.iter().find_map(|i| i.sample_payload(flow))
    }

    /// Every integration's API routes, merged (the caller puts them behind the API's guard).
    pub fn api_routes(&self) -> Router<Engine> {
        (self.list.iter()).fold(Router::new(), |routes, i| routes.merge(i.api_routes()))
    }

    /// Every integration's metric families, in registration order.
    pub async fn expose_metrics(&self, engine: &Engine, exposition: &mut Exposition) {
        for integration in &self.list {
            integration.expose_metrics(engine, exposition).await;
        }
    }

    /// Starts every integration's background jobs.
    pub fn start(&self, engine: &Engine) {
        for integration in &self.list {
            integration.start(engine);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Chat;

    impl Integration for Chat {
        fn name(&self) -> &'static str {
            "chat"
        }

        fn config_sections(&self) -> &'static [&'static str] {
            &["chat"]
        }
    }

    #[test]
    fn a_table_no_integration_claims_is_reported_with_the_fix() {
        let text = "[chat.ops]\nurl = \"x\"\n\n[chta.ops]\nurl = \"x\"\n";
        assert!(
            Config::parse(text).is_ok(),
            "the core checks its own sections"
        );
        let error = Integrations::new()
            .with(Chat)
            .parse_config(text)
            .unwrap_err();
        assert!(
            error.starts_with("[chta]: is not a section haloflow reads;")
                && error.contains("known: server, http, secrets, retry, retention, chat"),
            "{error}"
        );
        assert!(!error.contains("[chat]"), "{error}");
    }
}
