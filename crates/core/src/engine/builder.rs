//! Building an engine: validate every flow, resolve secrets, connect the storage.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use super::{Engine, Inner, LoadedFlow};
use crate::config::{Config, ConfigProblem};
use crate::connections::{Connections, MissingSecret, Needed};
use crate::engine::integration::{Integration, Integrations};
use crate::flood::{DatabaseFloodControl, FloodClock, FloodControl, MemoryFloodControl};
use crate::flow::{self, FlowValidator, Problem, ProblemCode, ValidatedFlow};
use crate::secrets::SecretStore;
use crate::step::{RegistryError, StepRegistry};
use crate::storage::Storage;
use crate::trigger::TriggerAuthenticator;

/// Why an engine could not be built. Every problem is listed, not only the first.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{} problem(s) in the flows:\n{}", .0.len(), join_lines(.0))]
    Flows(Vec<Problem>),
    #[error("{}", invalid_text(.config, .problems, .missing_secrets))]
    Invalid {
        /// Problems of the config itself, at their key paths.
        config: Vec<ConfigProblem>,
        problems: Vec<Problem>,
        missing_secrets: Vec<MissingSecret>,
    },
    #[error("cannot read flows from {path}: {source}")]
    FlowDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no storage configured; call EngineBuilder::storage")]
    NoStorage,
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
    /// An integration's step could not be registered (an invalid input schema).
    #[error(transparent)]
    Steps(#[from] RegistryError),
}

fn invalid_text(
    config: &[ConfigProblem],
    problems: &[Problem],
    missing_secrets: &[MissingSecret],
) -> String {
    let mut parts = Vec::new();
    if !config.is_empty() {
        parts.push(format!(
            "{} problem(s) in the config:\n{}",
            config.len(),
            join_lines(config)
        ));
    }
    if !problems.is_empty() {
        parts.push(format!(
            "{} problem(s) in the flows:\n{}",
            problems.len(),
            join_lines(problems)
        ));
    }
    if !missing_secrets.is_empty() {
        parts.push(format!(
            "{} connection secret(s) missing:\n{}",
            missing_secrets.len(),
            join_lines(missing_secrets)
        ));
    }
    parts.join("\n")
}

fn join_lines<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| format!("  {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The connections these flows' steps use, and their step types.
fn needed_by<'a>(flows: impl Iterator<Item = &'a ValidatedFlow>) -> Needed {
    fn all<'s>(steps: &'s [flow::ValidatedStep], into: &mut Vec<&'s flow::ValidatedStep>) {
        for step in steps {
            into.push(step);
            for (_, path) in &step.paths {
                all(path, into);
            }
        }
    }
    let mut steps = Vec::new();
    for flow in flows {
        all(&flow.steps, &mut steps);
    }
    let mut connections = std::collections::BTreeSet::new();
    let mut step_types = std::collections::BTreeSet::new();
    for step in steps {
        let description = step.description();
        step_types.insert(description.type_name);
        let Some(kind) = description.connection_kind else {
            continue;
        };
        // A step without "connection" uses its kind's default (`halo`), if it has one.
        let name = (step.connection.clone()).or(kind.default_name().map(str::to_owned));
        if let Some(name) = name {
            connections.insert((kind.config_table(), name));
        }
    }
    Needed::Only {
        connections,
        step_types,
    }
}

#[derive(Debug, Default)]
pub struct EngineBuilder {
    config: Config,
    secrets: Option<SecretStore>,
    registry: Option<StepRegistry>,
    flow_paths: Vec<PathBuf>,
    flows: Vec<ValidatedFlow>,
    storage: Option<Arc<dyn Storage>>,
    flood_clock: FloodClock,
    flood_control: Option<Arc<dyn FloodControl>>,
    /// Build only the connections the flows use (and ask only for their secrets).
    only_flow_connections: bool,
    integrations: Integrations,
}

impl EngineBuilder {
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Where named secrets come from; defaults to the environment plus the config's `[secrets]`.
    pub fn secrets(mut self, secrets: SecretStore) -> Self {
        self.secrets = Some(secrets);
        self
    }

    /// The step registry; defaults to the core's built-in steps. Either way the
    /// integrations' steps it lacks are added.
    pub fn registry(mut self, registry: StepRegistry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Runs `integration`: its config section, connections, steps, routes and jobs. The core
    /// runs no integration it is not given.
    pub fn integration(mut self, integration: impl Integration) -> Self {
        self.integrations.push(Arc::new(integration));
        self
    }

    /// Runs these integrations (after any registered before).
    pub fn integrations(mut self, integrations: Integrations) -> Self {
        for integration in integrations.iter() {
            self.integrations.push(integration.clone());
        }
        self
    }

    /// Loads flows from a `*.json` file or every `*.json` file of a directory.
    pub fn flows_from(mut self, path: impl Into<PathBuf>) -> Self {
        self.flow_paths.push(path.into());
        self
    }

    /// Adds a flow validated elsewhere (with the same registry).
    pub fn flow(mut self, flow: ValidatedFlow) -> Self {
        self.flows.push(flow);
        self
    }

    /// Builds only the connections the loaded flows' steps use, so only their secrets must
    /// be set (`haloflow run` of one flow); by default every connection is built.
    pub fn only_flow_connections(mut self) -> Self {
        self.only_flow_connections = true;
        self
    }

    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// The clock of flood control and rate limits; tests pass [`FloodClock::manual`].
    pub fn flood_clock(mut self, clock: FloodClock) -> Self {
        self.flood_clock = clock;
        self
    }

    /// Replaces the in-memory flood control (e.g. with a database-backed one).
    pub fn flood_control(mut self, flood_control: Arc<dyn FloodControl>) -> Self {
        self.flood_control = Some(flood_control);
        self
    }

    pub fn build(self) -> Result<Engine, EngineError> {
        let secrets = self
            .secrets
            .unwrap_or_else(|| SecretStore::from_environment(self.config.secrets.clone()));
        let mut registry = self.registry.unwrap_or_else(StepRegistry::with_builtins);
        self.integrations.complete(&mut registry)?;
        let source = FlowSource {
            paths: self.flow_paths,
            fixed: self.flows,
            registry,
            config: self.config.clone(),
            secrets: secrets.clone(),
            clock: self.flood_clock.clone(),
        };
        let loaded = source.load(None);
        let needed = match &loaded {
            Ok(loaded) if self.only_flow_connections => needed_by(loaded.values().map(|l| &l.flow)),
            _ => Needed::All,
        };
        let integrations = self.integrations;
        let connections = integrations.connections(&self.config, &secrets, &needed);
        let (loaded, connections) =
            all_valid(integrations.problems(&self.config), loaded, connections)?;
        let storage = self.storage.ok_or(EngineError::NoStorage)?;
        let http = http_client()?;
        let (finished, _) = broadcast::channel(1024);
        let flood = self
            .flood_control
            .unwrap_or_else(|| default_flood_control(&loaded, &storage, &self.flood_clock));
        spawn_sweeper(&flood);
        let engine = Engine {
            inner: Arc::new(Inner {
                flows: std::sync::RwLock::new(Arc::new(loaded)),
                integration_flows: integration_flows(&integrations, &connections),
                source,
                connections: Arc::new(connections),
                storage,
                http,
                server: self.config.server.clone(),
                finished,
                shutdown: tokio::sync::watch::Sender::new(false),
                flood,
                retry: self.config.retry.clone(),
                retention: self.config.retention.clone(),
                metrics: Default::default(),
                active_runs: tokio::sync::watch::Sender::new(0),
                paced_runs: Default::default(),
                waiting: Default::default(),
                dispatching: Default::default(),
                wake: Default::default(),
                running: Default::default(),
                node_id: self.config.server.node_id(),
                integrations,
                lease: Duration::from_secs(self.config.server.run_lease_secs.max(1)),
                last_reload: Default::default(),
            }),
        };
        spawn_pruner(&engine);
        Ok(engine)
    }
}

/// The flows and connections when there is no problem at all; else config problems, flow
/// problems and missing connection secrets, reported together.
fn all_valid(
    config: Vec<ConfigProblem>,
    loaded: Result<FlowTable, Vec<Problem>>,
    connections: Result<Connections, Vec<MissingSecret>>,
) -> Result<(FlowTable, Connections), EngineError> {
    match (loaded, connections) {
        (Ok(loaded), Ok(connections)) if config.is_empty() => Ok((loaded, connections)),
        (loaded, connections) => Err(EngineError::Invalid {
            config,
            problems: loaded.err().unwrap_or_default(),
            missing_secrets: connections.err().unwrap_or_default(),
        }),
    }
}

/// Flood control in the database when the storage is shared between nodes, else in memory.
fn default_flood_control(
    loaded: &FlowTable,
    storage: &Arc<dyn Storage>,
    clock: &FloodClock,
) -> Arc<dyn FloodControl> {
    let settings = loaded
        .values()
        .map(|l| (l.flow.id(), &l.flow.document.trigger.flood_control));
    match storage.clone().flood_store() {
        Some(store) => Arc::new(DatabaseFloodControl::new(store, settings)),
        None => Arc::new(MemoryFloodControl::new(settings, clock.clone())),
    }
}

/// The client steps send with.
fn http_client() -> Result<reqwest::Client, EngineError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("haloflow/", env!("CARGO_PKG_VERSION")))
        // APIs answer, they do not redirect: a 3xx is shown as the answer (a base URL that
        // needs fixing) rather than followed, possibly as a GET. Following also cost two more
        // URL parses per request.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| EngineError::HttpClient(e.to_string()))
}

/// Deletes finished runs past their retention on a schedule while the engine lives (when
/// built inside a Tokio runtime).
fn spawn_pruner(engine: &Engine) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let retention = &engine.inner.retention;
    if retention.max_age_days == 0 {
        return;
    }
    let interval = Duration::from_secs(retention.sweep_interval_secs.max(1));
    let inner = Arc::downgrade(&engine.inner);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else { break };
            let engine = Engine { inner };
            match engine.prune_finished_runs().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(runs = n, "Deleted finished runs past their retention."),
                Err(e) => {
                    tracing::warn!(error = %e, "Could not delete old runs; trying again later.")
                }
            }
        }
    });
}

/// How often idle flood-control keys are evicted.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Sweeps idle keys on a schedule while the engine lives (when built inside a Tokio runtime).
fn spawn_sweeper(flood: &Arc<dyn FloodControl>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let flood = Arc::downgrade(flood);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.tick().await;
        loop {
            tick.tick().await;
            match flood.upgrade() {
                Some(flood) => flood.sweep(),
                None => break,
            }
        }
    });
}

/// The integrations' built-in flows, by id.
fn integration_flows(integrations: &Integrations, connections: &Connections) -> FlowTable {
    (integrations.flows(connections).into_iter())
        .map(|flow| {
            (
                flow.id().to_owned(),
                Arc::new(LoadedFlow::integration(flow)),
            )
        })
        .collect()
}

/// The flows in one generation, by id.
pub(crate) type FlowTable = HashMap<String, Arc<LoadedFlow>>;

/// Where flows come from, kept so that they can be loaded again (reload on SIGHUP).
#[derive(Debug)]
pub(crate) struct FlowSource {
    paths: Vec<PathBuf>,
    fixed: Vec<ValidatedFlow>,
    pub(super) registry: StepRegistry,
    config: crate::config::Config,
    pub(super) secrets: SecretStore,
    clock: FloodClock,
}

impl FlowSource {
    /// Validates every flow and resolves its trigger secret; all problems, or the table.
    /// Counters carry over from `previous` so metrics keep counting across reloads.
    pub(crate) fn load(&self, previous: Option<&FlowTable>) -> Result<FlowTable, Vec<Problem>> {
        let validator = FlowValidator::new(&self.registry).with_config(&self.config);
        let mut files = Vec::new();
        let mut problems = Vec::new();
        for path in &self.paths {
            match flow::flow_files(path) {
                Ok(found) => files.extend(found),
                Err(e) => problems.push(Problem {
                    file: Some(path.clone()),
                    ..Problem::new(
                        "",
                        ProblemCode::UnreadableFile,
                        format!("cannot read flows: {e}"),
                        "check the path",
                    )
                }),
            }
        }
        let (mut flows, found) = validator.validate_files(&files);
        problems.extend(found);
        flows.extend(self.fixed.iter().cloned());
        let mut loaded = HashMap::new();
        for flow in flows {
            match TriggerAuthenticator::resolve(&flow.document.trigger.auth, &self.secrets) {
                Ok(auth) => {
                    let rate_limiter = flow.document.trigger.rate_limit.as_ref().map(|limit| {
                        let quota = crate::flood::quota(limit.requests, Duration::from_secs(limit.per_secs));
                        governor::RateLimiter::direct_with_clock(quota, self.clock.clone())
                    });
                    let counters = previous
                        .and_then(|p| p.get(flow.id()))
                        .map(|old| old.counters.clone())
                        .unwrap_or_default();
                    let loaded_flow = LoadedFlow { flow, auth, rate_limiter, counters };
                    loaded.insert(loaded_flow.flow.id().to_owned(), Arc::new(loaded_flow));
                }
                Err(name) => problems.push(Problem {
                    file: flow.source.clone(),
                    ..Problem::new(
                        "/trigger/auth",
                        ProblemCode::MissingSecret,
                        format!("the trigger's secret `{name}` is not set"),
                        format!("set the environment variable {name} or add it under [secrets] in the config file"),
                    )
                }),
            }
        }
        if problems.is_empty() {
            Ok(loaded)
        } else {
            Err(problems)
        }
    }
}
