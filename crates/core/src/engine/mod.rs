//! The engine: validated flows, connections and storage, accepting trigger requests durably and
//! running flows off the request path.

mod builder;
pub mod integration;
mod lending;
mod metrics;
mod queue;
mod run;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

pub use builder::{EngineBuilder, EngineError};
pub(crate) use lending::RunSlot;
pub(crate) use metrics::EngineMetrics;
pub use metrics::{Exposition, Histogram, LATENCY_BUCKETS, MetricsState};
pub use run::{DryRunReport, DryRunStep};

use crate::config::{RetentionConfig, RetryConfig, ServerConfig};
use crate::connections::Connections;
use crate::engine::integration::Integrations;
use crate::flood::{self, Admission, FloodClock, FloodControl};
use crate::flow::ValidatedFlow;
use crate::storage::{
    NewRequest, NewRun, NewSuppressed, RunDetail, RunStatus, StepStatus, Storage, StorageError,
    format_ms, now_ms,
};
use crate::trigger::{self, PayloadProblem, TriggerAuthenticator, TriggerEvent, TriggerQuery};

/// A flow ready to serve: validated, with its trigger secret resolved.
#[derive(Debug)]
pub struct LoadedFlow {
    pub flow: ValidatedFlow,
    pub auth: TriggerAuthenticator,
    pub(crate) rate_limiter: Option<RateLimiter>,
    pub counters: Arc<TriggerCounters>,
}

pub(crate) type RateLimiter = governor::RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    FloodClock,
    governor::middleware::NoOpMiddleware<governor::nanos::Nanos>,
>;

impl LoadedFlow {
    /// An integration's built-in flow (a ServiceNow connection's sync back): its requests are
    /// authenticated and checked by the integration's own route, never at `/triggers`.
    pub(crate) fn integration(flow: ValidatedFlow) -> LoadedFlow {
        LoadedFlow {
            flow,
            auth: TriggerAuthenticator::None,
            rate_limiter: None,
            counters: Arc::default(),
        }
    }

    /// `Err(wait)` when the trigger's rate limit is exceeded.
    pub fn check_rate_limit(&self) -> Result<(), Duration> {
        use governor::clock::Clock;
        match &self.rate_limiter {
            Some(limiter) => limiter
                .check()
                .map_err(|not_until| not_until.wait_time_from(limiter.clock().now())),
            None => Ok(()),
        }
    }
}

/// Requests per outcome since start, for `/metrics`.
#[derive(Debug, Default)]
pub struct TriggerCounters {
    pub accepted: AtomicU64,
    pub suppressed: AtomicU64,
    pub rate_limited: AtomicU64,
    pub rejected: AtomicU64,
    /// Deliveries received before, answered 200 without a run.
    pub duplicate: AtomicU64,
}

impl TriggerCounters {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The runtime. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The current generation of flows; a reload swaps it, requests in flight keep theirs.
    flows: std::sync::RwLock<Arc<builder::FlowTable>>,
    /// The integrations' built-in flows, by id: run, listed in the run history and replayed
    /// like any flow, but reached only through their integration's route.
    integration_flows: builder::FlowTable,
    source: builder::FlowSource,
    connections: Arc<Connections>,
    storage: Arc<dyn Storage>,
    http: reqwest::Client,
    server: ServerConfig,
    /// Runs whose execution in this process ended (finished, interrupted or taken over):
    /// whoever waits for one looks again.
    finished: broadcast::Sender<String>,
    /// Flips to true on [`Engine::shutdown`]; steps watch it through their context.
    shutdown: tokio::sync::watch::Sender<bool>,
    flood: Arc<dyn FloodControl>,
    retry: RetryConfig,
    retention: RetentionConfig,
    metrics: EngineMetrics,
    /// Slots taken: runs executing in this process (at most `server.max_active_runs`, see
    /// `queue`), watched for a graceful shutdown.
    active_runs: tokio::sync::watch::Sender<usize>,
    /// Runs waiting without their slot, lent to the pool (see `lending`), at most
    /// `server.max_paced_runs`.
    paced_runs: std::sync::atomic::AtomicUsize,
    /// Runs may wait in the database for a slot (see `queue`).
    waiting: std::sync::atomic::AtomicBool,
    /// The dispatcher that starts waiting runs was spawned.
    dispatching: std::sync::atomic::AtomicBool,
    /// Wakes the dispatcher: a run was queued or a slot freed.
    wake: Arc<tokio::sync::Notify>,
    /// Runs executing in this process by id, so a run is never executed twice at once here.
    running: std::sync::Mutex<std::collections::HashSet<String>>,
    /// This node's name in run claims, and how long a claim holds.
    node_id: String,
    lease: Duration,
    /// What the integrations add: their routes and background jobs.
    integrations: Integrations,
    /// How the last [`Engine::reload`] went; None before any.
    last_reload: std::sync::Mutex<Option<ReloadState>>,
}

/// How the last reload of the flows went: when, and the problems that made it keep the
/// running flows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadState {
    pub at_ms: i64,
    pub ok: bool,
    /// One line per problem: `<file>:<line>:<column>: <pointer>: [code] <message>. <hint>`.
    pub problems: Vec<String>,
}

/// What an in-process trigger ([`Engine::run_to_completion`]) became once its runs ended.
#[derive(Debug)]
pub struct Completion {
    /// The request as accepted: its runs, and the events that were duplicates or suppressed.
    pub accepted: Accepted,
    /// Every run the request started, finished, in the order of `accepted.run_ids`.
    pub runs: Vec<RunDetail>,
}

/// The answer to an accepted trigger request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Accepted {
    pub request_id: String,
    pub flow_id: String,
    pub run_ids: Vec<String>,
    /// Events flood control suppressed (empty when every event runs).
    pub suppressed: Vec<SuppressedEvent>,
    /// Events whose delivery id (the trigger type's) was received before: they start no second run.
    pub duplicates: Vec<DuplicateEvent>,
}

/// What the events of one request became, as stored and as answered.
#[derive(Default)]
struct Sorted {
    runs: Vec<NewRun>,
    stored_suppressed: Vec<NewSuppressed>,
    suppressed: Vec<SuppressedEvent>,
    duplicates: Vec<DuplicateEvent>,
}

/// An event delivered before (the same delivery id), and the request that carried it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DuplicateEvent {
    pub event_index: usize,
    pub delivery_id: String,
    pub first_request_id: String,
}

/// Where a replay starts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplayFrom {
    /// The failed step of a failed run (earlier steps' outputs reused), else the trigger.
    Failure,
    /// Every step runs again.
    Trigger,
    /// This step and those after it run again; earlier steps' outputs are reused.
    Step(String),
}

/// A run that cannot be replayed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    #[error("no run with id `{0}`")]
    NotFound(String),
    #[error("run `{run_id}` is {status}; only a finished run can be replayed")]
    NotFinished {
        run_id: String,
        status: &'static str,
    },
    #[error("run `{run_id}` belongs to flow `{flow_id}`, which is not loaded")]
    UnknownFlow { run_id: String, flow_id: String },
    #[error(
        "step `{step_id}` did not run in run `{run_id}`; replay from one of its steps ({steps}) or from the trigger"
    )]
    StepNotInRun {
        run_id: String,
        step_id: String,
        steps: String,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// One event that started no run, and the request it is listed under.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SuppressedEvent {
    pub event_index: usize,
    pub parent_request_id: String,
    pub suppressed_count: u64,
}

/// A trigger request the engine could not accept.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("no flow with id `{0}` is loaded")]
    UnknownFlow(String),
    #[error("{}", .0.message())]
    Payload(PayloadProblem),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The database cannot keep up: this many writes wait in its queue
    /// ([`WriteQueue::refuses_requests`](crate::storage::WriteQueue::refuses_requests)).
    /// Nothing was stored; come back later. Executing runs never cause it: runs beyond
    /// `server.max_active_runs` wait in the database.
    #[error("{0} writes wait for the database, more than it takes at once; send it again shortly")]
    Overloaded(usize),
}

impl Engine {
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    fn flow_table(&self) -> Arc<builder::FlowTable> {
        self.inner
            .flows
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn flow(&self, flow_id: &str) -> Option<Arc<LoadedFlow>> {
        self.flow_table().get(flow_id).cloned()
    }

    /// An integration's built-in flow, e.g. `servicenow:customers/12` (a connection's sync
    /// back); never served at `/triggers`.
    pub fn integration_flow(&self, flow_id: &str) -> Option<Arc<LoadedFlow>> {
        self.inner.integration_flows.get(flow_id).cloned()
    }

    /// The flow a stored run belongs to: a loaded flow or an integration's.
    fn runnable_flow(&self, flow_id: &str) -> Option<Arc<LoadedFlow>> {
        self.flow(flow_id)
            .or_else(|| self.integration_flow(flow_id))
    }

    /// Every loaded flow, sorted by id.
    pub fn flows(&self) -> Vec<Arc<LoadedFlow>> {
        let mut flows: Vec<_> = self.flow_table().values().cloned().collect();
        flows.sort_by(|a, b| a.flow.id().cmp(b.flow.id()));
        flows
    }

    /// Loads the flows again from their files. When any flow has a problem, nothing changes and
    /// the problems are returned: the old version keeps serving. Requests in flight finish on
    /// the version they started with.
    pub fn reload(&self) -> Result<usize, EngineError> {
        let result = self.swap_flows();
        let problems = match &result {
            Err(EngineError::Invalid { problems, .. }) => {
                problems.iter().map(ToString::to_string).collect()
            }
            Err(other) => vec![other.to_string()],
            Ok(_) => Vec::new(),
        };
        let state = ReloadState {
            at_ms: crate::storage::now_ms(),
            ok: result.is_ok(),
            problems,
        };
        *self
            .inner
            .last_reload
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(state);
        result
    }

    /// How the last [`Engine::reload`] went; None before any.
    pub fn last_reload(&self) -> Option<ReloadState> {
        self.inner
            .last_reload
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn swap_flows(&self) -> Result<usize, EngineError> {
        let current = self.flow_table();
        let table =
            self.inner
                .source
                .load(Some(&current))
                .map_err(|problems| EngineError::Invalid {
                    config: Vec::new(),
                    problems,
                    missing_secrets: Vec::new(),
                })?;
        let settings: Vec<(&str, &crate::flow::FloodControlDef)> = table
            .values()
            .map(|l| (l.flow.id(), &l.flow.document.trigger.flood_control))
            .collect();
        self.inner.flood.configure(&settings);
        let count = table.len();
        *self
            .inner
            .flows
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(table);
        Ok(count)
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.inner.storage
    }

    /// Where named secrets are read: an integration's webhook checks its shared secret
    /// against it.
    pub fn secrets(&self) -> &crate::secrets::SecretStore {
        &self.inner.source.secrets
    }

    /// The configured connections: the core's and the integrations'.
    pub fn connections(&self) -> &Arc<Connections> {
        &self.inner.connections
    }

    /// The HTTP client steps and integrations send with.
    pub fn http_client(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// The integrations this engine runs.
    pub fn integrations(&self) -> &Integrations {
        &self.inner.integrations
    }

    pub fn server_config(&self) -> &ServerConfig {
        &self.inner.server
    }

    /// Stores an authenticated request with one run per event, durably, then starts the runs
    /// in the background. `body_text` is kept as received.
    pub async fn accept(
        &self,
        flow: &Arc<LoadedFlow>,
        query: &TriggerQuery,
        body_text: &str,
        body: Value,
    ) -> Result<Accepted, AcceptError> {
        self.check_storage()?;
        let events = trigger::events(body).map_err(AcceptError::Payload)?;
        match self.accept_events(flow, query, body_text, events).await {
            // The same delivery arrived twice at once: the other copy won; look again. The
            // body is parsed again (rare) rather than every payload copied in case.
            Err(AcceptError::Storage(StorageError::Conflict)) => {
                let events = serde_json::from_str(body_text)
                    .ok()
                    .and_then(|body| trigger::events(body).ok())
                    .ok_or(AcceptError::Storage(StorageError::Conflict))?;
                self.accept_events(flow, query, body_text, events).await
            }
            other => other,
        }
    }

    /// Stores one event an integration's route authenticated and checked (a ServiceNow
    /// webhook naming its record) with one run of `flow`, durably, then starts the run in the
    /// background, as [`Engine::accept`] does for a trigger request. The event is the run's
    /// `trigger.body`; `body_text` is stored as received.
    pub async fn accept_event(
        &self,
        flow: &Arc<LoadedFlow>,
        body_text: &str,
        event: serde_json::Map<String, Value>,
    ) -> Result<Accepted, AcceptError> {
        self.check_storage()?;
        let query = TriggerQuery::default();
        self.accept_events(flow, &query, body_text, vec![event])
            .await
    }

    /// `Overloaded` while the database's write queue is too full to take another request.
    fn check_storage(&self) -> Result<(), AcceptError> {
        match self.inner.storage.write_queue() {
            Some(queue) if queue.refuses_requests() => Err(AcceptError::Overloaded(queue.waiting)),
            _ => Ok(()),
        }
    }

    async fn accept_events(
        &self,
        flow: &Arc<LoadedFlow>,
        query: &TriggerQuery,
        body_text: &str,
        events: Vec<serde_json::Map<String, Value>>,
    ) -> Result<Accepted, AcceptError> {
        // Before any lease below is computed: the claims are no older than this.
        let claimed = std::time::Instant::now();
        let request_id = new_id();
        let received_at_ms = now_ms();
        let event_count = events.len();
        let sorted = self
            .sort_events(flow, query, (&request_id, received_at_ms), events)
            .await?;
        let Sorted {
            mut runs,
            stored_suppressed,
            suppressed,
            duplicates,
        } = sorted;
        let only_duplicates =
            runs.is_empty() && stored_suppressed.is_empty() && !duplicates.is_empty();
        let request = NewRequest {
            id: request_id.clone(),
            flow_id: flow.flow.id().to_owned(),
            received_at_ms,
            http_status: if only_duplicates { 200 } else { 202 },
            error: None,
            query: Some(query.to_json()),
            body: Some(body_text.to_owned()),
            event_count,
            outcome: None,
        };
        // Runs without a slot are stored unclaimed, to start when one frees; behind runs
        // already waiting, so the oldest start first.
        let slots = if self.runs_are_waiting() {
            Vec::new()
        } else {
            self.take_slots(runs.len())
        };
        for run in runs.iter_mut().skip(slots.len()) {
            run.owner = None;
            run.lease_until_ms = None;
        }
        self.inner
            .storage
            .accept_request(&request, &runs, &stored_suppressed)
            .await?;
        let counter = if only_duplicates {
            &flow.counters.duplicate
        } else if runs.is_empty() {
            &flow.counters.suppressed
        } else {
            &flow.counters.accepted
        };
        TriggerCounters::count(counter);
        let run_ids = runs.iter().map(|r| r.id.clone()).collect();
        let queued = runs.len() > slots.len();
        for (run, slot) in runs.into_iter().zip(slots) {
            // Just stored: no step has run, nothing to read back.
            self.spawn_run(slot, flow.clone(), run.id, run.trigger, claimed, true);
        }
        if queued {
            self.runs_wait();
        }
        Ok(Accepted {
            request_id,
            flow_id: flow.flow.id().to_owned(),
            run_ids,
            suppressed,
            duplicates,
        })
    }

    /// What each event of request `(id, received at)` becomes: a duplicate of a delivery
    /// received before, a run, or an event flood control suppresses.
    async fn sort_events(
        &self,
        flow: &LoadedFlow,
        query: &TriggerQuery,
        (request_id, received_at_ms): (&str, i64),
        events: Vec<serde_json::Map<String, Value>>,
    ) -> Result<Sorted, StorageError> {
        let received_at = format_ms(received_at_ms);
        let trigger_type = flow.flow.trigger.trigger_type();
        let delivery_ids: Vec<Option<String>> =
            events.iter().map(|e| trigger_type.delivery_id(e)).collect();
        let mut seen: std::collections::HashMap<String, String> = self
            .inner
            .storage
            .find_deliveries(
                flow.flow.id(),
                &delivery_ids.iter().flatten().cloned().collect::<Vec<_>>(),
            )
            .await?
            .into_iter()
            .collect();
        let mut sorted = Sorted {
            runs: Vec::with_capacity(events.len()),
            ..Sorted::default()
        };
        for (i, (event, delivery_id)) in events.into_iter().zip(delivery_ids).enumerate() {
            if let Some(id) = &delivery_id {
                if let Some(first) = seen.get(id) {
                    sorted.duplicates.push(DuplicateEvent {
                        event_index: i,
                        delivery_id: id.clone(),
                        first_request_id: first.clone(),
                    });
                    continue;
                }
                seen.insert(id.clone(), request_id.to_owned());
            }
            let outputs = trigger_type.outputs(TriggerEvent {
                request_id,
                received_at: &received_at,
                query,
                event,
            });
            let event = (i, delivery_id, outputs);
            self.admit(flow, (request_id, received_at_ms), event, &mut sorted)
                .await;
        }
        Ok(sorted)
    }

    /// Event `i` of a request, with its delivery id and trigger outputs, as a run or, under
    /// flood control, as a suppressed event.
    async fn admit(
        &self,
        flow: &LoadedFlow,
        (request_id, received_at_ms): (&str, i64),
        (i, delivery_id, outputs): (usize, Option<String>, Value),
        sorted: &mut Sorted,
    ) {
        let flood_settings = &flow.flow.document.trigger.flood_control;
        let key = flood_settings
            .enabled
            .then(|| flood::correlation_key(flood_settings, &outputs))
            .flatten();
        let admission = match &key {
            Some(key) => {
                self.inner
                    .flood
                    .admit(flow.flow.id(), key, request_id)
                    .await
            }
            None => Admission::Run,
        };
        match admission {
            Admission::Run => sorted.runs.push(NewRun {
                id: new_id(),
                flow_id: flow.flow.id().to_owned(),
                event_index: i,
                trigger: outputs,
                created_at_ms: received_at_ms,
                correlation_key: key,
                delivery_id,
                owner: Some(self.inner.node_id.clone()),
                lease_until_ms: Some(self.lease_until()),
            }),
            Admission::Suppress {
                parent_request_id,
                suppressed_count,
            } => {
                sorted.stored_suppressed.push(NewSuppressed {
                    event_index: i,
                    flow_id: flow.flow.id().to_owned(),
                    correlation_key: key.unwrap_or_default(),
                    parent_request_id: parent_request_id.clone(),
                    received_at_ms,
                    delivery_id,
                });
                sorted.suppressed.push(SuppressedEvent {
                    event_index: i,
                    parent_request_id,
                    suppressed_count,
                });
            }
        }
    }

    /// Starts runs of `flow_id` for a trigger payload, as a webhook would (without its
    /// authentication): the request is stored, a delivery id seen before starts no second run
    /// (it is listed in [`Accepted::duplicates`]), flood control applies, and runs start in the
    /// background with the same retries, look-ups and history as served runs. `query` holds
    /// what the trigger URL's query would: recipients and other parameters.
    pub async fn trigger(
        &self,
        flow_id: &str,
        payload: Value,
        query: &TriggerQuery,
    ) -> Result<Accepted, AcceptError> {
        let flow = self
            .flow(flow_id)
            .ok_or_else(|| AcceptError::UnknownFlow(flow_id.to_owned()))?;
        let body_text = payload.to_string();
        self.accept(&flow, query, &body_text, payload).await
    }

    /// [`Engine::trigger`], then waits for every run it started: the path of a request served
    /// at the flow's trigger URL, without its authentication. The request is stored, a
    /// delivery id seen before starts no run (it is listed in `accepted.duplicates` with the
    /// request that first carried it, and `runs` is empty), flood control applies (suppressed
    /// events are in `accepted.suppressed`), and each run's steps are attempted as a served
    /// run's: recorded in the run history, retried by the retry policy and `Retry-After`,
    /// looked up before being sent again after a lost answer ([`Resend`](crate::step::Resend)),
    /// replayable. `runs` holds every run it started, finished.
    pub async fn run_to_completion(
        &self,
        flow_id: &str,
        payload: Value,
        query: &TriggerQuery,
    ) -> Result<Completion, AcceptError> {
        let accepted = self.trigger(flow_id, payload, query).await?;
        let mut runs = Vec::with_capacity(accepted.run_ids.len());
        for run_id in &accepted.run_ids {
            runs.push(self.wait_for_run(run_id).await?);
        }
        Ok(Completion { accepted, runs })
    }

    /// Starts a graceful shutdown: steps already sending finish, no further step starts, runs
    /// waiting to retry stop waiting; [`Engine::drain`] waits for them. Steps that watch
    /// [`StepContext::cancelled`](crate::step::StepContext::cancelled) may stop early.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Rebuilds flood-control state from the runs of the last window (after a restart).
    pub async fn restore_flood_control(&self) -> Result<usize, StorageError> {
        self.inner.flood.restore(self.inner.storage.as_ref()).await
    }

    /// The flood-control implementation (for `/metrics` and sweeping).
    pub fn flood_control(&self) -> &Arc<dyn FloodControl> {
        &self.inner.flood
    }

    /// Records a request answered with a 4xx.
    pub async fn record_rejected(&self, request: NewRequest) {
        if let Err(e) = self.inner.storage.record_rejected(&request).await {
            tracing::error!(error = %e, flow_id = %request.flow_id, "Could not record a rejected request.");
        }
    }

    /// Executes a run in the background in `slot`, unless this process is already executing
    /// it. `claimed`: when this node's claim on the run was taken (no later than the moment its
    /// lease was computed), so the run knows how long the claim holds without renewing it.
    /// `fresh`: the run was just accepted, so it has no recorded steps to read back.
    fn spawn_run(
        &self,
        slot: queue::Slot,
        flow: Arc<LoadedFlow>,
        run_id: String,
        trigger: Value,
        claimed: std::time::Instant,
        fresh: bool,
    ) -> bool {
        if !self
            .inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run_id.clone())
        {
            return false;
        }
        let engine = self.clone();
        let slot = Arc::new(lending::RunSlot::new(self.clone(), slot));
        tokio::spawn(async move {
            let finished = engine
                .execute_run(&flow, &run_id, trigger, claimed, fresh, &slot)
                .await;
            if finished.is_some() && engine.integration_flow(flow.flow.id()).is_some() {
                engine.record_request_outcome(&run_id).await;
            }
            engine
                .inner
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&run_id);
            drop(slot);
            engine.slot_freed();
            // Told last, so whoever waits for the run finds its room freed too.
            let _ = engine.inner.finished.send(run_id);
        });
        true
    }

    /// Continues every run no live node holds: runs a previous process (this node before a
    /// restart, or a node whose claim expired) accepted and did not finish, and runs queued
    /// for a free slot. Queued runs start; interrupted ones resume after their last finished
    /// step. As many start as this node has free slots, oldest first; the rest start as slots
    /// free. Returns how many started here.
    pub async fn resume_unfinished_runs(&self) -> Result<usize, StorageError> {
        let slots = self.take_slots(1000);
        let asked = slots.len();
        if asked == 0 {
            // No room to look with: a slot freed looks instead.
            self.runs_wait();
            return Ok(0);
        }
        let (found, started) = self.start_claimable(slots).await?;
        if found == asked {
            self.runs_wait(); // there may be more
        }
        Ok(started)
    }

    /// Starts the background work of a serving engine, after it is built and before it takes
    /// requests: rebuilds flood control (a flood in progress at a restart stays suppressed),
    /// continues unfinished runs, then keeps taking over runs of dead nodes and starts the
    /// integrations' jobs (an integrator's scans, say). Returns (flood-control runs replayed,
    /// runs resumed).
    pub async fn start(&self) -> Result<(usize, usize), StorageError> {
        let replayed = self.restore_flood_control().await?;
        let resumed = self.resume_unfinished_runs().await?;
        self.spawn_takeover_loop();
        self.follow_waiting_runs();
        self.inner.integrations.start(self);
        Ok((replayed, resumed))
    }

    /// Runs `job` now and then every `every`, while the engine lives and until it shuts
    /// down: an integration's background job ([`crate::engine::integration::Integration::start`]).
    /// The job holds the engine only while it runs.
    pub fn spawn_every<F, Fut>(&self, every: Duration, job: F)
    where
        F: Fn(Engine) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        self.spawn_loop(every, false, job);
    }

    /// Runs `job` every `every` (the first time at once unless `wait_first`) while the engine
    /// lives and until it shuts down.
    fn spawn_loop<F, Fut>(&self, every: Duration, wait_first: bool, job: F)
    where
        F: Fn(Engine) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            if wait_first {
                tick.tick().await;
            }
            loop {
                tick.tick().await;
                let Some(inner) = inner.upgrade() else { break };
                let engine = Engine { inner };
                if engine.is_shutting_down() {
                    break;
                }
                job(engine).await;
            }
        });
    }

    /// Looks for runs to take over (their node died) every half lease, while the engine lives.
    pub fn spawn_takeover_loop(&self) {
        let every = (self.inner.lease / 2).max(Duration::from_millis(200));
        self.spawn_loop(every, true, |engine| async move {
            match engine.resume_unfinished_runs().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(runs = n, "Took over unfinished runs."),
                Err(e) => {
                    tracing::warn!(error = %e, "Could not look for unfinished runs; trying again.")
                }
            }
        });
    }

    /// Starts queued runs as soon as any node says some wait in the database (a backend
    /// several nodes share), not at the next look for unfinished runs.
    fn follow_waiting_runs(&self) {
        let Some(mut notices) = self.inner.storage.runs_waiting_notices() else {
            return;
        };
        let inner = Arc::downgrade(&self.inner);
        // Ends when the engine stops or is gone (its sender dropped), not at the next notice:
        // the notices' connection stays open while anyone follows them.
        let mut shutdown = self.inner.shutdown.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    noticed = notices.changed() => if noticed.is_err() { break },
                    _ = shutdown.changed() => break,
                }
                let Some(inner) = inner.upgrade() else { break };
                let engine = Engine { inner };
                if engine.is_shutting_down() {
                    break;
                }
                engine.runs_wait();
            }
        });
    }

    /// How many runs this process executes.
    fn running_here(&self) -> usize {
        self.inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    fn is_running_here(&self, run_id: &str) -> bool {
        self.inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(run_id)
    }

    /// When a claim made now expires.
    fn lease_until(&self) -> i64 {
        now_ms() + self.inner.lease.as_millis() as i64
    }

    /// This node's name in run claims.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// Waits until no run executes in this process, or `timeout` passes; call after
    /// [`Engine::shutdown`]. Returns how many runs were still executing (they resume on the
    /// next start, from their last finished step).
    pub async fn drain(&self, timeout: Duration) -> usize {
        let mut active = self.inner.active_runs.subscribe();
        // A paced run takes a slot before it stops waiting without one, so the last change
        // of `active_runs` comes after the last paced run's.
        let idle = active.wait_for(|n| *n == 0 && self.paced_runs() == 0);
        let _ = tokio::time::timeout(timeout, idle).await;
        let executing = *active.borrow();
        executing + self.paced_runs()
    }

    /// Starts a new run of the same flow and trigger outputs as `run_id`, linked to it.
    /// Steps before the starting point are not run again: their outputs are copied.
    pub async fn replay(&self, run_id: &str, from: ReplayFrom) -> Result<String, ReplayError> {
        let storage = &self.inner.storage;
        let old = storage
            .get_run(run_id)
            .await?
            .ok_or_else(|| ReplayError::NotFound(run_id.to_owned()))?;
        if !old.summary.status.is_finished() {
            return Err(ReplayError::NotFinished {
                run_id: run_id.to_owned(),
                status: old.summary.status.as_str(),
            });
        }
        let flow =
            self.runnable_flow(&old.summary.flow_id)
                .ok_or_else(|| ReplayError::UnknownFlow {
                    run_id: run_id.to_owned(),
                    flow_id: old.summary.flow_id.clone(),
                })?;
        let reused = reused_steps(run_id, &old, from)?;
        let claimed = std::time::Instant::now();
        let run = NewRun {
            id: new_id(),
            flow_id: old.summary.flow_id.clone(),
            event_index: old.summary.event_index.max(0) as usize,
            trigger: old.trigger.clone(),
            created_at_ms: now_ms(),
            correlation_key: None,
            delivery_id: None,
            owner: Some(self.inner.node_id.clone()),
            lease_until_ms: Some(self.lease_until()),
        };
        storage
            .create_replay(&run, old.summary.request_id.as_deref(), run_id, &reused)
            .await?;
        let slot = self.extra_slot();
        self.spawn_run(slot, flow, run.id.clone(), run.trigger, claimed, false);
        Ok(run.id)
    }

    /// Deletes finished runs older than the configured retention; returns how many.
    pub async fn prune_finished_runs(&self) -> Result<u64, StorageError> {
        let days = self.inner.retention.max_age_days;
        if days == 0 {
            return Ok(0);
        }
        let cutoff = now_ms() - (days as i64) * 24 * 3600 * 1000;
        let pruned = self.inner.storage.prune_finished(cutoff).await?;
        self.inner.metrics.count_pruned(pruned);
        Ok(pruned)
    }

    /// The in-memory counters and histograms, for `/metrics`.
    pub fn metrics(&self) -> MetricsState {
        self.inner.metrics.snapshot()
    }

    /// Waits until the run has finished (and this process is done with it: its room freed,
    /// its request's outcome recorded) and returns it.
    pub async fn wait_for_run(&self, run_id: &str) -> Result<RunDetail, StorageError> {
        let mut finished = self.inner.finished.subscribe();
        loop {
            if let Some(detail) = self.inner.storage.get_run(run_id).await?
                && detail.summary.status.is_finished()
                && !self.is_running_here(run_id)
            {
                return Ok(detail);
            }
            // Either our run finished (checked again above) or the channel lagged: look again.
            let _ = finished.recv().await;
        }
    }
}

impl Engine {
    /// Records what a finished run of an integration's flow did on the request it came with
    /// (`RequestRecord::outcome`): its last step's outputs, or its error. The run history
    /// stays the record; a failure here is logged.
    async fn record_request_outcome(&self, run_id: &str) {
        let storage = &self.inner.storage;
        let recorded = async {
            let Some(run) = storage.get_run(run_id).await? else {
                return Ok(());
            };
            let Some(request_id) = &run.summary.request_id else {
                return Ok(());
            };
            storage
                .set_request_outcome(request_id, &run_outcome(&run))
                .await
        };
        if let Err(e) = recorded.await {
            tracing::warn!(%run_id, error = %e, "Could not record a run's outcome on its request; the run history has it.");
        }
    }
}

/// The steps a replay of `old` copies instead of running: those that succeeded before the
/// step it starts from (none when it starts from the trigger).
fn reused_steps(
    run_id: &str,
    old: &RunDetail,
    from: ReplayFrom,
) -> Result<Vec<crate::storage::StepRunRecord>, ReplayError> {
    let start_step = match from {
        ReplayFrom::Trigger => None,
        ReplayFrom::Failure => old
            .summary
            .failed_step
            .clone()
            .filter(|_| old.summary.status == RunStatus::Failed),
        ReplayFrom::Step(step_id) => Some(step_id),
    };
    let Some(step_id) = start_step else {
        return Ok(Vec::new());
    };
    let Some(start) = old.steps.iter().find(|s| s.step_id == step_id) else {
        return Err(ReplayError::StepNotInRun {
            run_id: run_id.to_owned(),
            step_id,
            steps: old
                .steps
                .iter()
                .map(|s| s.step_id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    Ok(old
        .steps
        .iter()
        .filter(|s| s.position < start.position && s.status == StepStatus::Succeeded)
        .cloned()
        .collect())
}

/// A finished run's outcome: its last step's outputs when it succeeded, else its error.
fn run_outcome(run: &RunDetail) -> Value {
    match run.summary.status {
        RunStatus::Succeeded => run
            .steps
            .last()
            .and_then(|step| step.outputs.clone())
            .unwrap_or(Value::Null),
        _ => serde_json::json!({"error": run.summary.error}),
    }
}

/// Time-ordered unique ids (UUIDv7), so listings sort by creation.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
