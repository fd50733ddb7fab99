//! Persistence of trigger requests, runs and step runs behind one trait. SQLite is the embedded
//! default; each backend has its own implementation and its own migrations folder.

mod group_commit;
mod postgres;
mod rows;
mod sqlite;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::config::Durability;
pub use group_commit::WriteStats;
pub use postgres::PostgresStorage;
pub use sqlite::{DATABASE_FILE, SqliteStorage};

use crate::admission::Admission;
use crate::outbound::ExchangeRecord;

#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    /// A unique key was taken by a concurrent writer (e.g. the same Halo delivery twice).
    #[error("a concurrent write took the same key")]
    Conflict,
    #[error("this database backend does not support {0}")]
    Unsupported(&'static str),
    #[error("unsupported database URL `{0}`; use sqlite://<file> or postgres://user@host/db")]
    UnknownUrl(String),
    /// The batch this write was committed in failed (see `group_commit`).
    #[error("database write failed: {0}")]
    Batch(std::sync::Arc<sqlx::Error>),
    #[error("the database writer has stopped")]
    WriterStopped,
    #[error("stored {what} is not valid JSON: {source}")]
    Corrupt {
        what: &'static str,
        source: serde_json::Error,
    },
}

impl StorageError {
    /// Busy databases and dropped connections can succeed on a later try.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StorageError::Conflict
                | StorageError::Batch(_)
                | StorageError::Database(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_))
        )
    }
}

/// A trigger request as written when it arrives.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub id: String,
    pub flow_id: String,
    pub received_at_ms: i64,
    pub http_status: u16,
    /// `None` for an accepted request.
    pub error: Option<(String, String)>,
    pub query: Option<Value>,
    pub body: Option<String>,
    pub event_count: usize,
    /// What was done with it, when it is not runs (a ServiceNow webhook's sync outcome).
    pub outcome: Option<Value>,
}

/// A run created with its request.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub id: String,
    pub flow_id: String,
    pub event_index: usize,
    pub trigger: Value,
    pub created_at_ms: i64,
    /// The flood-control key the run was admitted under (none without flood control).
    pub correlation_key: Option<String>,
    /// Halo's delivery GUID: a second request with the same one starts no run.
    pub delivery_id: Option<String>,
    /// The node that will execute it, and until when its claim holds (see
    /// [`Storage::claim_run`]); the accepting node claims its runs as it stores them.
    pub owner: Option<String>,
    pub lease_until_ms: Option<i64>,
}

/// An event that flood control suppressed: stored with its request, started no run.
#[derive(Debug, Clone)]
pub struct NewSuppressed {
    pub event_index: usize,
    pub flow_id: String,
    pub correlation_key: String,
    pub parent_request_id: String,
    pub received_at_ms: i64,
    pub delivery_id: Option<String>,
}

/// A run admitted by flood control, as replayed at start.
#[derive(Debug, Clone, PartialEq)]
pub struct FloodRecord {
    pub correlation_key: String,
    pub request_id: String,
    pub created_at_ms: i64,
    /// Events suppressed under this request (for this key).
    pub suppressed_count: u64,
}

/// Which trigger requests to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    pub flow_id: Option<String>,
    /// Only requests whose events were suppressed.
    pub suppressed_only: bool,
    pub limit: Option<u32>,
}

#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<RunStatus> {
        [
            RunStatus::Queued,
            RunStatus::Running,
            RunStatus::Succeeded,
            RunStatus::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    pub fn is_finished(self) -> bool {
        matches!(self, RunStatus::Succeeded | RunStatus::Failed)
    }
}

#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Running,
    Succeeded,
    Failed,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
        }
    }
}

/// How a step run ended.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    pub status: StepStatus,
    pub outputs: Option<Value>,
    pub error: Option<(String, String)>,
    pub exchanges: Vec<ExchangeRecord>,
    pub finished_at_ms: i64,
    /// The attempt that ended the step, appended to its attempt log in the same write.
    pub attempt: Option<AttemptRecord>,
}

/// What a run did since its last write, written at once, in this order: the run starts, a
/// step ends, the next step starts (its intent, before it sends anything), the run ends.
/// Nothing is sent between a step's end and the next step's start, so one write holds both.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress<'a> {
    pub run_started_at_ms: Option<i64>,
    pub step_finished: Option<(&'a str, &'a StepOutcome)>,
    pub step_started: Option<StepStart<'a>>,
    pub run_finished: Option<RunFinish<'a>>,
}

/// An attempt of a step about to send (see [`Storage::start_step`]).
#[derive(Debug, Clone, Copy)]
pub struct StepStart<'a> {
    pub step_id: &'a str,
    pub position: usize,
    pub step_type: &'a str,
    pub inputs: &'a Value,
    pub attempt: u32,
    pub at_ms: i64,
}

/// How a run ended (see [`Storage::finish_run`]).
#[derive(Debug, Clone, Copy)]
pub struct RunFinish<'a> {
    pub status: RunStatus,
    /// The failed step and why.
    pub failure: Option<(&'a str, &'a str)>,
    pub at_ms: i64,
}

/// A run as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: String,
    pub flow_id: String,
    pub request_id: Option<String>,
    pub event_index: i64,
    pub status: RunStatus,
    pub error: Option<String>,
    pub failed_step: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    /// The run this one replays.
    pub replay_of: Option<String>,
}

/// One step of a run as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRunRecord {
    pub step_id: String,
    pub position: i64,
    pub step_type: String,
    pub status: StepStatus,
    pub inputs: Option<Value>,
    pub outputs: Option<Value>,
    pub error_code: Option<String>,
    pub error: Option<String>,
    pub exchanges: Vec<ExchangeRecord>,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    /// Attempts made so far (0 for outputs reused from a replayed run).
    pub attempts: u32,
    pub attempt_log: Vec<AttemptRecord>,
    /// The run whose outputs this step reused (a replay from a later step).
    pub reused_from: Option<String>,
}

/// A run with its trigger outputs and steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub summary: RunSummary,
    pub trigger: Value,
    pub steps: Vec<StepRunRecord>,
}

/// A trigger request as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub id: String,
    pub flow_id: String,
    pub received_at_ms: i64,
    pub status: String,
    pub http_status: i64,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub query: Option<Value>,
    pub event_count: i64,
    pub run_ids: Vec<String>,
    /// Requests suppressed under this one (it was the last to run for their key).
    pub suppressed_children: Vec<String>,
    /// How many events were suppressed under this one.
    pub suppressed_count: i64,
    /// For a suppressed request: the request it is listed under.
    pub suppressed_under: Option<String>,
    /// For a ServiceNow webhook: what sync back did (its run's outputs, or its error).
    pub outcome: Option<Value>,
}

/// Which runs to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub flow_id: Option<String>,
    pub status: Option<RunStatus>,
    /// Created at or after (unix ms).
    pub since_ms: Option<i64>,
    /// Created before (unix ms).
    pub until_ms: Option<i64>,
    pub limit: Option<u32>,
}

/// How one attempt of a step ended.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Succeeded,
    Failed,
    /// An earlier attempt's effect was found and taken over instead of sending again.
    Adopted,
}

/// One attempt of a step, as kept in the run history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub number: u32,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub outcome: AttemptOutcome,
    pub error_code: Option<String>,
    pub error: Option<String>,
    /// The wait before the next attempt, when there is one.
    pub retry_in_ms: Option<u64>,
    /// The attempt may have taken effect although it failed (its answer was lost).
    #[serde(default)]
    pub outcome_unknown: bool,
    pub exchanges: Vec<ExchangeRecord>,
}

/// Which side created the linked pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkOrigin {
    Halo,
    Servicenow,
}

impl LinkOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkOrigin::Halo => "halo",
            LinkOrigin::Servicenow => "servicenow",
        }
    }
}

/// A record whose sync back failed in integrator scans.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncFailure {
    pub table: String,
    pub sys_id: String,
    pub attempts: u32,
    pub last_error: String,
    pub updated_at_ms: i64,
}

/// The 1-1 pairing of a Halo ticket with a ServiceNow record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// The Halo connection the ticket lives in.
    pub halo_connection: String,
    pub halo_ticket_id: i64,
    /// The ServiceNow connection: `customers/<client id>` or `suppliers/<supplier id>`.
    pub servicenow: String,
    pub table: String,
    pub sys_id: String,
    pub number: Option<String>,
    pub created_by: LinkOrigin,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A run's status count, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCount {
    pub flow_id: String,
    pub status: RunStatus,
    pub count: i64,
}

/// Where runs live. One implementation per database.
#[async_trait]
pub trait Storage: Send + Sync + std::fmt::Debug + 'static {
    /// Writes an accepted request, its runs and its suppressed events in one transaction; when this returns, they
    /// survive a crash.
    async fn accept_request(
        &self,
        request: &NewRequest,
        runs: &[NewRun],
        suppressed: &[NewSuppressed],
    ) -> Result<(), StorageError>;
    /// Writes a rejected request (its 4xx answer and why).
    async fn record_rejected(&self, request: &NewRequest) -> Result<(), StorageError>;
    /// Records what an accepted request led to (an integration's run outcome, listed as
    /// [`RequestRecord::outcome`]), replacing any earlier one.
    async fn set_request_outcome(
        &self,
        request_id: &str,
        outcome: &Value,
    ) -> Result<(), StorageError>;
    async fn start_run(&self, run_id: &str, at_ms: i64) -> Result<(), StorageError>;
    async fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        failure: Option<(&str, &str)>,
        at_ms: i64,
    ) -> Result<(), StorageError>;
    /// Records that attempt `attempt` of a step is about to send: the intent, before any
    /// request leaves. Earlier attempts stay in the attempt log.
    #[allow(clippy::too_many_arguments)]
    async fn start_step(
        &self,
        run_id: &str,
        step_id: &str,
        position: usize,
        step_type: &str,
        inputs: &Value,
        attempt: u32,
        at_ms: i64,
    ) -> Result<(), StorageError>;
    /// Appends a finished attempt to the step's attempt log.
    async fn record_attempt(
        &self,
        run_id: &str,
        step_id: &str,
        attempt: &AttemptRecord,
    ) -> Result<(), StorageError>;
    async fn finish_step(
        &self,
        run_id: &str,
        step_id: &str,
        outcome: &StepOutcome,
    ) -> Result<(), StorageError>;
    /// Writes a run's progress (see [`Progress`]); a backend may do it in one statement batch.
    async fn record_progress(
        &self,
        run_id: &str,
        progress: &Progress<'_>,
    ) -> Result<(), StorageError> {
        if let Some(at_ms) = progress.run_started_at_ms {
            self.start_run(run_id, at_ms).await?;
        }
        if let Some((step_id, outcome)) = progress.step_finished {
            self.finish_step(run_id, step_id, outcome).await?;
        }
        if let Some(s) = progress.step_started {
            self.start_step(
                run_id,
                s.step_id,
                s.position,
                s.step_type,
                s.inputs,
                s.attempt,
                s.at_ms,
            )
            .await?;
        }
        if let Some(end) = progress.run_finished {
            self.finish_run(run_id, end.status, end.failure, end.at_ms)
                .await?;
        }
        Ok(())
    }
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StorageError>;
    async fn get_run(&self, run_id: &str) -> Result<Option<RunDetail>, StorageError>;
    async fn list_requests(
        &self,
        filter: &RequestFilter,
    ) -> Result<Vec<RequestRecord>, StorageError>;
    /// Runs of `flow_id` admitted by flood control since `since_ms`, oldest first.
    async fn flood_history(
        &self,
        flow_id: &str,
        since_ms: i64,
    ) -> Result<Vec<FloodRecord>, StorageError>;
    /// Unfinished runs (queued, or interrupted while running) that `owner` may claim: unowned,
    /// with an expired lease, or its own. Oldest first, as (run id, flow id).
    async fn claimable_runs(
        &self,
        owner: &str,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StorageError>;
    /// Takes an unfinished run for `owner` until `lease_until_ms`, when it is unowned, its
    /// lease expired, or it is already `owner`'s. Atomic: two nodes never both get it.
    async fn claim_run(
        &self,
        run_id: &str,
        owner: &str,
        lease_until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StorageError>;
    /// Extends `owner`'s lease; false when the run is no longer its (taken over, or finished):
    /// the node must stop working on it.
    async fn renew_run_lease(
        &self,
        run_id: &str,
        owner: &str,
        lease_until_ms: i64,
    ) -> Result<bool, StorageError>;
    /// Gives a run back (a graceful stop), so another node can take it at once.
    async fn release_run(&self, run_id: &str, owner: &str) -> Result<(), StorageError>;
    /// Takes or extends the named lease for `owner` (one node at a time does that work);
    /// false while another owner's lease is live.
    async fn try_lease(
        &self,
        name: &str,
        owner: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StorageError>;
    async fn release_lease(&self, name: &str, owner: &str) -> Result<(), StorageError>;
    /// The requests that already carried these delivery ids for `flow_id`, as
    /// (delivery id, request id).
    async fn find_deliveries(
        &self,
        flow_id: &str,
        delivery_ids: &[String],
    ) -> Result<Vec<(String, String)>, StorageError>;
    /// Creates a run that replays `replay_of`, with the given steps' outputs copied from it.
    async fn create_replay(
        &self,
        run: &NewRun,
        request_id: Option<&str>,
        replay_of: &str,
        reused: &[StepRunRecord],
    ) -> Result<(), StorageError>;
    /// Deletes runs finished before `before_ms` (with their steps), and trigger requests
    /// received before it that no longer have runs. Returns the number of runs deleted.
    async fn prune_finished(&self, before_ms: i64) -> Result<u64, StorageError>;
    /// Runs per flow and status.
    async fn run_counts(&self) -> Result<Vec<RunCount>, StorageError>;
    /// Flood control kept in the database, for several nodes: decides one event of
    /// `request_id` under `key` atomically per key, by the rule of [`crate::admission`].
    /// Backends without it answer [`StorageError::Unsupported`].
    async fn flood_admit(
        &self,
        _flow_id: &str,
        _key: &str,
        _request_id: &str,
        _now_ms: i64,
        _window_ms: i64,
        _max_requests: u32,
    ) -> Result<Admission, StorageError> {
        Err(StorageError::Unsupported("flood control in the database"))
    }
    /// Forgets flood-control keys idle since before `idle_before_ms`; returns how many.
    async fn flood_sweep(&self, _idle_before_ms: i64) -> Result<u64, StorageError> {
        Err(StorageError::Unsupported("flood control in the database"))
    }
    /// Flood-control keys held in the database, per flow.
    async fn flood_keys(&self) -> Result<Vec<(String, usize)>, StorageError> {
        Err(StorageError::Unsupported("flood control in the database"))
    }
    /// A cheap query that proves the database answers.
    async fn ping(&self) -> Result<(), StorageError>;
    /// Claims a version of a ServiceNow record (its `sys_updated_on`) for syncing back; false
    /// when a webhook or the integrator already took it.
    async fn claim_sync_event(
        &self,
        servicenow: &str,
        sys_id: &str,
        version: &str,
        at_ms: i64,
    ) -> Result<bool, StorageError>;
    /// Gives a claimed version back when acting on it failed, so a later delivery retries.
    async fn release_sync_event(
        &self,
        servicenow: &str,
        sys_id: &str,
        version: &str,
    ) -> Result<(), StorageError>;
    /// Claims a journal entry (work note or comment) to become a Halo action; false when it
    /// already was.
    async fn claim_note(
        &self,
        servicenow: &str,
        journal_sys_id: &str,
        at_ms: i64,
    ) -> Result<bool, StorageError>;
    async fn release_note(
        &self,
        servicenow: &str,
        journal_sys_id: &str,
    ) -> Result<(), StorageError>;
    async fn watermark(
        &self,
        servicenow: &str,
        table: &str,
    ) -> Result<Option<String>, StorageError>;
    async fn set_watermark(
        &self,
        servicenow: &str,
        table: &str,
        watermark: &str,
    ) -> Result<(), StorageError>;
    /// Records an integrator scan's times and result (JSON).
    async fn record_scan(
        &self,
        servicenow: &str,
        started_at_ms: i64,
        finished_at_ms: i64,
        result: &Value,
    ) -> Result<(), StorageError>;
    /// The last scan of each instance: (instance, started, finished, result).
    async fn scans(&self) -> Result<Vec<(String, i64, i64, Value)>, StorageError>;
    /// Records `at_ms` as when an instance's integrator started, unless a start is recorded
    /// already; returns the recorded start.
    async fn integrator_start(&self, servicenow: &str, at_ms: i64) -> Result<i64, StorageError>;
    /// Counts one failed attempt to sync a record in a scan; returns the attempts so far.
    async fn record_sync_failure(
        &self,
        servicenow: &str,
        table: &str,
        sys_id: &str,
        error: &str,
        at_ms: i64,
    ) -> Result<u32, StorageError>;
    /// Forgets a record's failures (it synced).
    async fn clear_sync_failure(&self, servicenow: &str, sys_id: &str) -> Result<(), StorageError>;
    /// The records of an instance whose sync failed, oldest failure first.
    async fn sync_failures(&self, servicenow: &str) -> Result<Vec<SyncFailure>, StorageError>;
    /// Writes and the commits they took (a backend that groups commits); `None` otherwise.
    fn write_stats(&self) -> Option<WriteStats> {
        None
    }
    /// True when several nodes may share this database: flood control then lives in it.
    fn is_shared(&self) -> bool {
        false
    }
    /// Records a link; an earlier link of the same ticket, or to the same record, is replaced.
    /// Returns the ticket's previous link, if any.
    async fn save_link(&self, link: &Link) -> Result<Option<Link>, StorageError>;
    async fn link_for_ticket(
        &self,
        halo_connection: &str,
        halo_ticket_id: i64,
    ) -> Result<Option<Link>, StorageError>;
    async fn link_for_record(
        &self,
        servicenow: &str,
        sys_id: &str,
    ) -> Result<Option<Link>, StorageError>;
}

/// Opens the storage a database URL names: `sqlite://<file>` (created if missing) or
/// `postgres://user@host/db`. No `sqlx::Any`: each backend is its own implementation.
pub async fn open_url(url: &str) -> Result<std::sync::Arc<dyn Storage>, StorageError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(PostgresStorage::connect(url).await?))
    } else if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(SqliteStorage::open_url(url).await?))
    } else {
        Err(StorageError::UnknownUrl(crate::outbound::redact_url(url)))
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Reads RFC 3339 text or unix milliseconds.
pub fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// RFC 3339 text for a millisecond timestamp.
pub fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}
