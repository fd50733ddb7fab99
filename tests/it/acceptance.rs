//! "Accepted" means stored: the answer waits for the database, and a request the database
//! cannot take is refused with 503 (Halo sends it again) rather than half accepted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::{Harness, Options, sample_payload};
use async_trait::async_trait;
use haloflow::storage::{
    AttemptRecord, Backend, BackendError, FloodRecord, LeaseStore, Link, LinkFilter, LinkPage,
    LinkStore, NewRequest, NewRun, NewSuppressed, Progress, QueuedRun, RequestFilter,
    RequestRecord, RunCount, RunDetail, RunFilter, RunStore, RunSummary, SqliteStorage,
    StepRunRecord, Storage, StorageError, SyncFailure, SyncStore, WriteQueue,
};
use serde_json::Value;
use tokio::sync::Semaphore;

/// SQLite with a gate in front of `accept_request`: it waits for a permit, or fails; and a
/// write queue reported as far behind while `behind` is set.
#[derive(Debug)]
struct Gated {
    inner: Arc<SqliteStorage>,
    gate: Arc<Semaphore>,
    fail: bool,
    behind: Arc<AtomicBool>,
}

#[async_trait]
impl RunStore for Gated {
    async fn accept_request(
        &self,
        request: &NewRequest,
        runs: &[NewRun],
        suppressed: &[NewSuppressed],
    ) -> Result<(), StorageError> {
        if self.fail {
            return Err(StorageError::Database(BackendError::new(
                "pool timed out while waiting for an open connection",
                true,
            )));
        }
        self.gate.acquire().await.unwrap().forget();
        self.inner.accept_request(request, runs, suppressed).await
    }
    async fn record_rejected(&self, request: &NewRequest) -> Result<(), StorageError> {
        self.inner.record_rejected(request).await
    }
    async fn set_request_outcome(
        &self,
        request_id: &str,
        outcome: &Value,
    ) -> Result<(), StorageError> {
        self.inner.set_request_outcome(request_id, outcome).await
    }
    async fn record_progress(
        &self,
        run_id: &str,
        progress: &Progress<'_>,
    ) -> Result<(), StorageError> {
        self.inner.record_progress(run_id, progress).await
    }
    async fn record_attempt(
        &self,
        run_id: &str,
        step_id: &str,
        attempt: &AttemptRecord,
    ) -> Result<(), StorageError> {
        self.inner.record_attempt(run_id, step_id, attempt).await
    }
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StorageError> {
        self.inner.list_runs(filter).await
    }
    async fn get_run(&self, run_id: &str) -> Result<Option<RunDetail>, StorageError> {
        self.inner.get_run(run_id).await
    }
    async fn list_requests(
        &self,
        filter: &RequestFilter,
    ) -> Result<Vec<RequestRecord>, StorageError> {
        self.inner.list_requests(filter).await
    }
    async fn find_deliveries(
        &self,
        flow_id: &str,
        delivery_ids: &[String],
    ) -> Result<Vec<(String, String)>, StorageError> {
        self.inner.find_deliveries(flow_id, delivery_ids).await
    }
    async fn flood_history(
        &self,
        flow_id: &str,
        since_ms: i64,
    ) -> Result<Vec<FloodRecord>, StorageError> {
        self.inner.flood_history(flow_id, since_ms).await
    }
    async fn create_replay(
        &self,
        run: &NewRun,
        request_id: Option<&str>,
        replay_of: &str,
        reused: &[StepRunRecord],
    ) -> Result<(), StorageError> {
        self.inner
            .create_replay(run, request_id, replay_of, reused)
            .await
    }
    async fn prune_finished(&self, before_ms: i64) -> Result<u64, StorageError> {
        self.inner.prune_finished(before_ms).await
    }
    async fn run_counts(&self, since_ms: Option<i64>) -> Result<Vec<RunCount>, StorageError> {
        self.inner.run_counts(since_ms).await
    }
}

#[async_trait]
impl LeaseStore for Gated {
    async fn claimable_runs(
        &self,
        owner: &str,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StorageError> {
        self.inner.claimable_runs(owner, now_ms, limit).await
    }
    async fn claim_queued_runs(
        &self,
        owner: &str,
        lease_until_ms: i64,
        limit: u32,
    ) -> Result<Vec<QueuedRun>, StorageError> {
        self.inner
            .claim_queued_runs(owner, lease_until_ms, limit)
            .await
    }
    async fn claim_run(
        &self,
        run_id: &str,
        owner: &str,
        lease_until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StorageError> {
        self.inner
            .claim_run(run_id, owner, lease_until_ms, now_ms)
            .await
    }
    async fn renew_run_lease(
        &self,
        run_id: &str,
        owner: &str,
        lease_until_ms: i64,
    ) -> Result<bool, StorageError> {
        self.inner
            .renew_run_lease(run_id, owner, lease_until_ms)
            .await
    }
    async fn release_run(&self, run_id: &str, owner: &str) -> Result<(), StorageError> {
        self.inner.release_run(run_id, owner).await
    }
    async fn try_lease(
        &self,
        name: &str,
        owner: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StorageError> {
        self.inner.try_lease(name, owner, until_ms, now_ms).await
    }
}

#[async_trait]
impl SyncStore for Gated {
    async fn claim_sync_event(
        &self,
        remote: &str,
        record_id: &str,
        version: &str,
        at_ms: i64,
    ) -> Result<bool, StorageError> {
        self.inner
            .claim_sync_event(remote, record_id, version, at_ms)
            .await
    }
    async fn release_sync_event(
        &self,
        remote: &str,
        record_id: &str,
        version: &str,
    ) -> Result<(), StorageError> {
        self.inner
            .release_sync_event(remote, record_id, version)
            .await
    }
    async fn claim_note(
        &self,
        remote: &str,
        note_id: &str,
        at_ms: i64,
    ) -> Result<bool, StorageError> {
        self.inner.claim_note(remote, note_id, at_ms).await
    }
    async fn release_note(&self, remote: &str, note_id: &str) -> Result<(), StorageError> {
        self.inner.release_note(remote, note_id).await
    }
    async fn watermark(&self, remote: &str, table: &str) -> Result<Option<String>, StorageError> {
        self.inner.watermark(remote, table).await
    }
    async fn set_watermark(
        &self,
        remote: &str,
        table: &str,
        watermark: &str,
    ) -> Result<(), StorageError> {
        self.inner.set_watermark(remote, table, watermark).await
    }
    async fn record_scan(
        &self,
        remote: &str,
        started_at_ms: i64,
        finished_at_ms: i64,
        result: &Value,
    ) -> Result<(), StorageError> {
        self.inner
            .record_scan(remote, started_at_ms, finished_at_ms, result)
            .await
    }
    async fn scans(&self) -> Result<Vec<(String, i64, i64, Value)>, StorageError> {
        self.inner.scans().await
    }
    async fn first_scan_start(&self, remote: &str, at_ms: i64) -> Result<i64, StorageError> {
        self.inner.first_scan_start(remote, at_ms).await
    }
    async fn record_sync_failure(
        &self,
        remote: &str,
        table: &str,
        record_id: &str,
        error: &str,
        at_ms: i64,
    ) -> Result<u32, StorageError> {
        self.inner
            .record_sync_failure(remote, table, record_id, error, at_ms)
            .await
    }
    async fn clear_sync_failure(&self, remote: &str, record_id: &str) -> Result<(), StorageError> {
        self.inner.clear_sync_failure(remote, record_id).await
    }
    async fn sync_failures(&self, remote: &str) -> Result<Vec<SyncFailure>, StorageError> {
        self.inner.sync_failures(remote).await
    }
}

#[async_trait]
impl LinkStore for Gated {
    async fn save_link(&self, link: &Link) -> Result<Option<Link>, StorageError> {
        self.inner.save_link(link).await
    }
    async fn link_for_ticket(
        &self,
        connection: &str,
        ticket_id: i64,
    ) -> Result<Option<Link>, StorageError> {
        self.inner.link_for_ticket(connection, ticket_id).await
    }
    async fn link_for_record(
        &self,
        remote: &str,
        record_id: &str,
    ) -> Result<Option<Link>, StorageError> {
        self.inner.link_for_record(remote, record_id).await
    }
    async fn list_links(&self, filter: &LinkFilter) -> Result<LinkPage, StorageError> {
        self.inner.list_links(filter).await
    }
}

#[async_trait]
impl Backend for Gated {
    async fn ping(&self) -> Result<(), StorageError> {
        self.inner.ping().await
    }
    fn write_queue(&self) -> Option<WriteQueue> {
        let real = self.inner.write_queue();
        match self.behind.load(Ordering::SeqCst) {
            true => real.map(|q| WriteQueue {
                waiting: q.capacity,
                ..q
            }),
            false => real,
        }
    }
}

fn gated(gate: Arc<Semaphore>, fail: bool) -> Options {
    gated_behind(gate, fail, Arc::default())
}

fn gated_behind(gate: Arc<Semaphore>, fail: bool, behind: Arc<AtomicBool>) -> Options {
    Options {
        wrap_storage: Some(Box::new(move |inner| {
            let gated = Gated {
                inner,
                gate,
                fail,
                behind,
            };
            Arc::new(gated) as Arc<dyn Storage>
        })),
        ..Options::default()
    }
}

#[tokio::test]
async fn the_answer_waits_until_the_request_is_stored() {
    let gate = Arc::new(Semaphore::new(0));
    let h = Harness::start_with(gated(gate.clone(), false)).await;
    let url = h.escalate_url("ops");
    let send = tokio::spawn({
        let client = h.client.clone();
        let payload = sample_payload("halo-new-ticket.json");
        async move { client.post(url).json(&payload).send().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!send.is_finished(), "no answer while the write is pending");
    let stored = h
        .engine
        .storage()
        .list_requests(&RequestFilter::default())
        .await
        .unwrap();
    assert!(stored.is_empty());
    gate.add_permits(1);
    let response = send.await.unwrap();
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    let stored = h
        .engine
        .storage()
        .list_requests(&RequestFilter::default())
        .await
        .unwrap();
    assert_eq!(stored[0].id, answer["request_id"].as_str().unwrap());
}

#[tokio::test]
async fn a_request_the_database_cannot_take_is_refused_with_503() {
    let h = Harness::start_with(gated(Arc::new(Semaphore::new(0)), true)).await;
    let (status, answer) = h
        .post_json(
            &h.escalate_url("ops"),
            &sample_payload("halo-new-ticket.json"),
        )
        .await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "storage_unavailable");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("send it again")
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(h.partner.requests().is_empty(), "no run started");
    assert!(
        h.engine
            .storage()
            .list_runs(&RunFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
}

/// In process, as over HTTP: a delivery seen before starts no second run, and the answer says
/// so (with the request that first carried it) instead of returning an empty list of runs.
#[tokio::test]
async fn in_process_a_delivery_seen_before_is_reported_with_its_first_request() {
    let h = Harness::start().await;
    let payload = sample_payload("halo-new-ticket.json");
    let query = haloflow::trigger::TriggerQuery::parse(Some("recipients=ops"), None);
    let first = (h.engine)
        .run_to_completion("escalate-to-partner", payload.clone(), &query)
        .await
        .unwrap();
    assert_eq!(first.runs.len(), 1);
    assert!(first.accepted.duplicates.is_empty());
    let again = (h.engine)
        .run_to_completion("escalate-to-partner", payload, &query)
        .await
        .unwrap();
    assert!(again.runs.is_empty());
    assert_eq!(again.accepted.duplicates.len(), 1);
    assert_eq!(
        again.accepted.duplicates[0].first_request_id,
        first.accepted.request_id
    );
}

/// The one overload that turns a request away: the database's write queue too far behind.
/// The answer is 503 with Retry-After, nothing is stored, and once the queue drains the same
/// webhook is accepted.
#[tokio::test]
async fn a_database_that_cannot_keep_up_answers_503_with_retry_after_and_stores_nothing() {
    let behind = Arc::new(AtomicBool::new(true));
    let gate = Arc::new(Semaphore::new(Semaphore::MAX_PERMITS));
    let h = Harness::start_with(gated_behind(gate, false, behind.clone())).await;
    let payload = sample_payload("halo-new-ticket.json");
    let response = (h.client.post(h.escalate_url("ops")).json(&payload))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "overloaded", "{answer}");
    let storage = h.engine.storage();
    let stored = storage.list_requests(&RequestFilter::default()).await;
    assert!(stored.unwrap().is_empty(), "nothing was stored");
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("haloflow_storage_write_queue 4096"),
        "{metrics}"
    );

    behind.store(false, Ordering::SeqCst);
    let (status, answer) = h.post_json(&h.escalate_url("ops"), &payload).await;
    assert_eq!(status, 202, "{answer}");
    let run = h.wait(answer["run_ids"][0].as_str().unwrap()).await;
    assert_eq!(run.summary.status, haloflow::storage::RunStatus::Succeeded);
}
