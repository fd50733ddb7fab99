//! The storage contract, one trait per concern. [`Storage`] is all of them: the one object the
//! engine, the server and integrations hold (`Arc<dyn Storage>`). On `dyn Storage` every
//! method is callable without importing the traits; on a backend's own type, import the trait
//! (or `haloflow::prelude::*`).
//!
//! A backend of your own implements each trait; [`Storage`] then comes with them. Only a
//! backend several nodes may share implements [`FloodStore`] too.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use super::{
    AttemptRecord, FloodRecord, Link, LinkFilter, LinkPage, NewRequest, NewRun, NewSuppressed,
    Progress, QueuedRun, RequestFilter, RequestRecord, RunCount, RunDetail, RunFilter, RunSummary,
    StepRunRecord, StorageError, SyncFailure, WriteQueue, WriteStats,
};
use crate::admission::Admission;

/// Everything the runtime keeps in its database. Implemented for every type that implements
/// the focused traits (nothing to write for it): [`SqliteStorage`](super::SqliteStorage),
/// [`PostgresStorage`](super::PostgresStorage), or a backend of your own.
pub trait Storage:
    RunStore + LeaseStore + LinkStore + SyncStore + Backend + fmt::Debug + 'static
{
}

impl<T> Storage for T where
    T: RunStore + LeaseStore + LinkStore + SyncStore + Backend + fmt::Debug + 'static + ?Sized
{
}

/// Trigger requests, the runs they started and their steps: written as they happen, read
/// back as the run history.
#[async_trait]
pub trait RunStore: Send + Sync {
    /// Writes an accepted request, its runs and its suppressed events in one transaction;
    /// when this returns, they survive a crash. A run whose delivery id its flow already has
    /// fails the whole write with [`StorageError::Conflict`].
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
    /// Writes a run's progress (see [`Progress`]) in one write, its parts in order.
    async fn record_progress(
        &self,
        run_id: &str,
        progress: &Progress<'_>,
    ) -> Result<(), StorageError>;
    /// Appends a finished attempt to the step's attempt log.
    async fn record_attempt(
        &self,
        run_id: &str,
        step_id: &str,
        attempt: &AttemptRecord,
    ) -> Result<(), StorageError>;
    /// Runs, newest first.
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StorageError>;
    async fn get_run(&self, run_id: &str) -> Result<Option<RunDetail>, StorageError>;
    /// Trigger requests, newest first.
    async fn list_requests(
        &self,
        filter: &RequestFilter,
    ) -> Result<Vec<RequestRecord>, StorageError>;
    /// The requests that already carried these delivery ids for `flow_id`, as
    /// (delivery id, request id).
    async fn find_deliveries(
        &self,
        flow_id: &str,
        delivery_ids: &[String],
    ) -> Result<Vec<(String, String)>, StorageError>;
    /// Runs of `flow_id` admitted by flood control since `since_ms`, oldest first.
    async fn flood_history(
        &self,
        flow_id: &str,
        since_ms: i64,
    ) -> Result<Vec<FloodRecord>, StorageError>;
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
    /// Runs per flow and status: all of them, or those created at or after `since_ms` (one
    /// grouped query over the creation-time index).
    async fn run_counts(&self, since_ms: Option<i64>) -> Result<Vec<RunCount>, StorageError>;
}

/// Who works on what, when several nodes share the database: claims on runs, and named leases
/// for work one node at a time does. Each is atomic: two nodes never both get it.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Unfinished runs (queued, or interrupted while running) that `owner` may claim: unowned,
    /// with an expired lease, or its own. Oldest first, as (run id, flow id).
    async fn claimable_runs(
        &self,
        owner: &str,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StorageError>;
    /// Takes up to `limit` of the oldest queued runs no node holds (runs stored while every
    /// slot was taken) for `owner` until `lease_until_ms`, in one atomic write, and returns
    /// them oldest first: a run is taken by one node only.
    async fn claim_queued_runs(
        &self,
        owner: &str,
        lease_until_ms: i64,
        limit: u32,
    ) -> Result<Vec<QueuedRun>, StorageError>;
    /// Takes an unfinished run for `owner` until `lease_until_ms`, when it is unowned, its
    /// lease expired, or it is already `owner`'s.
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
    /// Takes or extends the named lease for `owner`; false while another owner's lease is
    /// live.
    async fn try_lease(
        &self,
        name: &str,
        owner: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StorageError>;
}

/// Links: each joins a ticket (a connection and a ticket id) with one record of a remote
/// system (a remote connection, a table and the record's id), one to one.
#[async_trait]
pub trait LinkStore: Send + Sync {
    /// Records a link; an earlier link of the same ticket, or to the same record, is replaced.
    /// Returns the ticket's previous link, if any.
    async fn save_link(&self, link: &Link) -> Result<Option<Link>, StorageError>;
    async fn link_for_ticket(
        &self,
        connection: &str,
        ticket_id: i64,
    ) -> Result<Option<Link>, StorageError>;
    async fn link_for_record(
        &self,
        remote: &str,
        record_id: &str,
    ) -> Result<Option<Link>, StorageError>;
    /// Links, newest first (by creation, then ticket), one page of `filter.limit` at a time.
    async fn list_links(&self, filter: &LinkFilter) -> Result<LinkPage, StorageError>;
}

/// What syncing from a remote system remembers, per remote connection (`remote`): which
/// record versions and notes were already acted on (claims, so a webhook and a scan never both
/// act), how far scans have read (watermarks), the last scan, and the records that keep
/// failing.
#[async_trait]
pub trait SyncStore: Send + Sync {
    /// Claims one version of a remote record (e.g. its update time) to act on; false when
    /// something already took it.
    async fn claim_sync_event(
        &self,
        remote: &str,
        record_id: &str,
        version: &str,
        at_ms: i64,
    ) -> Result<bool, StorageError>;
    /// Gives a claimed version back when acting on it failed, so a later delivery retries.
    async fn release_sync_event(
        &self,
        remote: &str,
        record_id: &str,
        version: &str,
    ) -> Result<(), StorageError>;
    /// Claims a remote note (a comment or work note) to copy over; false when it already was.
    async fn claim_note(
        &self,
        remote: &str,
        note_id: &str,
        at_ms: i64,
    ) -> Result<bool, StorageError>;
    async fn release_note(&self, remote: &str, note_id: &str) -> Result<(), StorageError>;
    /// How far scans of `table` have read.
    async fn watermark(&self, remote: &str, table: &str) -> Result<Option<String>, StorageError>;
    async fn set_watermark(
        &self,
        remote: &str,
        table: &str,
        watermark: &str,
    ) -> Result<(), StorageError>;
    /// Records a scan's times and result (JSON).
    async fn record_scan(
        &self,
        remote: &str,
        started_at_ms: i64,
        finished_at_ms: i64,
        result: &Value,
    ) -> Result<(), StorageError>;
    /// The last scan of each remote: (remote, started, finished, result).
    async fn scans(&self) -> Result<Vec<(String, i64, i64, Value)>, StorageError>;
    /// Records `at_ms` as when scanning `remote` started, unless a start is recorded already;
    /// returns the recorded start.
    async fn first_scan_start(&self, remote: &str, at_ms: i64) -> Result<i64, StorageError>;
    /// Counts one failed attempt to sync a record in a scan; returns the attempts so far.
    async fn record_sync_failure(
        &self,
        remote: &str,
        table: &str,
        record_id: &str,
        error: &str,
        at_ms: i64,
    ) -> Result<u32, StorageError>;
    /// Forgets a record's failures (it synced).
    async fn clear_sync_failure(&self, remote: &str, record_id: &str) -> Result<(), StorageError>;
    /// The records of `remote` whose sync failed, oldest failure first.
    async fn sync_failures(&self, remote: &str) -> Result<Vec<SyncFailure>, StorageError>;
}

/// Flood control kept in the database, for several nodes sharing it: only a backend that may
/// be shared implements it, and hands it out through [`Backend::flood_store`].
#[async_trait]
pub trait FloodStore: Send + Sync + fmt::Debug {
    /// Decides one event of `request_id` under `key` atomically per key, by the rule of
    /// [`crate::admission`].
    async fn flood_admit(
        &self,
        flow_id: &str,
        key: &str,
        request_id: &str,
        now_ms: i64,
        window_ms: i64,
        max_requests: u32,
    ) -> Result<Admission, StorageError>;
    /// Forgets flood-control keys idle since before `idle_before_ms`; returns how many.
    async fn flood_sweep(&self, idle_before_ms: i64) -> Result<u64, StorageError>;
    /// Flood-control keys held in the database, per flow.
    async fn flood_keys(&self) -> Result<Vec<(String, usize)>, StorageError>;
}

/// The database itself: whether it answers, whether nodes share it, how it commits.
#[async_trait]
pub trait Backend: Send + Sync {
    /// A cheap query that proves the database answers.
    async fn ping(&self) -> Result<(), StorageError>;
    /// The database's flood control when several nodes may share it (flood control must
    /// then live in it); `None` for a database one node has to itself, whose flood control
    /// lives in memory.
    fn flood_store(self: Arc<Self>) -> Option<Arc<dyn FloodStore>> {
        None
    }
    /// Writes and the commits they took, for a backend that groups commits; `None` otherwise.
    fn write_stats(&self) -> Option<WriteStats> {
        None
    }
    /// Changes whenever a node sharing the database stored runs that wait for a slot (this
    /// one's included), so that nodes with room start them at once; `None` for a database one
    /// node has to itself (its own free slots start them).
    fn runs_waiting_notices(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        None
    }
    /// How full the write queue is, for a backend that queues its writes; `None` otherwise.
    /// The engine refuses trigger requests with 503 and `Retry-After` while
    /// [`WriteQueue::refuses_requests`]: the one overload that turns requests away.
    fn write_queue(&self) -> Option<WriteQueue> {
        None
    }
}
