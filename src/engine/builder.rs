//! Building an engine: validate every flow, resolve secrets, connect the storage.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use super::{Engine, Inner, LoadedFlow};
use crate::config::Config;
use crate::connections::{Connections, MissingSecret};
use crate::flood::{FloodClock, FloodControl, MemoryFloodControl};
use crate::flow::{self, FlowValidator, Problem, ProblemCode, ValidatedFlow};
use crate::secrets::SecretStore;
use crate::step::StepRegistry;
use crate::storage::Storage;
use crate::trigger::TriggerAuthenticator;

/// Why an engine could not be built. Every problem is listed, not only the first.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{} problem(s) in the flows:\n{}", .0.len(), join_lines(.0))]
    Flows(Vec<Problem>),
    #[error("{}", invalid_text(.problems, .missing_secrets))]
    Invalid {
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
}

fn invalid_text(problems: &[Problem], missing_secrets: &[MissingSecret]) -> String {
    let mut parts = Vec::new();
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

    /// The step registry; defaults to the built-in steps.
    pub fn registry(mut self, registry: StepRegistry) -> Self {
        self.registry = Some(registry);
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
        let registry = self.registry.unwrap_or_else(StepRegistry::with_builtins);
        let secrets = self
            .secrets
            .unwrap_or_else(|| SecretStore::from_environment(self.config.secrets.clone()));
        let validator = FlowValidator::new(&registry).with_config(&self.config);
        let mut files = Vec::new();
        for path in &self.flow_paths {
            files.extend(
                flow::flow_files(path).map_err(|source| EngineError::FlowDir {
                    path: path.clone(),
                    source,
                })?,
            );
        }
        let (mut flows, mut problems) = validator.validate_files(&files);
        flows.extend(self.flows);
        let mut loaded = HashMap::new();
        for flow in flows {
            match TriggerAuthenticator::resolve(&flow.document.trigger.auth, &secrets) {
                Ok(auth) => {
                    let rate_limiter = flow.document.trigger.rate_limit.as_ref().map(|limit| {
                        let quota = crate::flood::quota(limit.requests, Duration::from_secs(limit.per_secs));
                        governor::RateLimiter::direct_with_clock(quota, self.flood_clock.clone())
                    });
                    let loaded_flow = LoadedFlow { flow, auth, rate_limiter, counters: Default::default() };
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
        // Flow problems and missing connection secrets are reported together.
        let connections = match (
            problems.is_empty(),
            Connections::from_config(&self.config, &secrets),
        ) {
            (true, Ok(connections)) => connections,
            (_, connections) => {
                let missing_secrets = connections.err().unwrap_or_default();
                return Err(EngineError::Invalid {
                    problems,
                    missing_secrets,
                });
            }
        };
        let storage = self.storage.ok_or(EngineError::NoStorage)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("haloflow/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| EngineError::HttpClient(e.to_string()))?;
        let (finished, _) = broadcast::channel(1024);
        let flood = self.flood_control.unwrap_or_else(|| {
            let settings = loaded
                .values()
                .map(|l| (l.flow.id(), &l.flow.document.trigger.flood_control));
            Arc::new(MemoryFloodControl::new(settings, self.flood_clock.clone()))
        });
        spawn_sweeper(&flood);
        Ok(Engine {
            inner: Arc::new(Inner {
                flows: loaded,
                connections: Arc::new(connections),
                storage,
                http,
                server: self.config.server.clone(),
                finished,
                flood,
            }),
        })
    }
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
