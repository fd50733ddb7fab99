//! The stores, written once for every SQL backend over what it provides ([`Sql`]): the same
//! statements (`sql`), arguments and row mapping (`rows`) for SQLite and PostgreSQL.

use async_trait::async_trait;
use serde_json::Value;

use super::rows::{
    Columns, flood_record, link as link_row, parse_json, queued_run, request_record, run_count,
    run_summary, scan, step_run, sync_failure, to_json_text,
};
use super::sql::{self, Arg, Sql, Statement, args};
use super::{
    AttemptRecord, FloodRecord, LeaseStore, Link, LinkCursor, LinkFilter, LinkPage, LinkStore,
    NewRequest, NewRun, NewSuppressed, Progress, QueuedRun, RequestFilter, RequestRecord, RunCount,
    RunDetail, RunFilter, RunStore, RunSummary, StepOutcome, StepRunRecord, StepStart,
    StorageError, SyncFailure, SyncStore,
};

/// Listings without a limit show this many.
const DEFAULT_LIMIT: u32 = 50;

/// Sync failures keep this many characters of the error.
const ERROR_CHARS: usize = 500;

fn request_args(request: &NewRequest, status: &str) -> Vec<Arg> {
    let (code, message) = split(request.error.as_ref());
    args![
        request.id.as_str(),
        request.flow_id.as_str(),
        request.received_at_ms,
        status,
        i64::from(request.http_status),
        code,
        message,
        request.query.as_ref().map(to_json_text),
        request.body.as_deref(),
        request.event_count as i64,
        request.outcome.as_ref().map(to_json_text),
    ]
}

fn run_args(run: &NewRun, request_id: Option<&str>, replay_of: Option<&str>) -> Vec<Arg> {
    args![
        run.id.as_str(),
        request_id,
        run.flow_id.as_str(),
        run.event_index as i64,
        to_json_text(&run.trigger),
        run.created_at_ms,
        run.correlation_key.as_deref(),
        run.delivery_id.as_deref(),
        replay_of,
        run.owner.as_deref(),
        run.lease_until_ms,
    ]
}

fn suppressed_args(request_id: &str, event: &NewSuppressed) -> Vec<Arg> {
    args![
        request_id,
        event.event_index as i64,
        event.flow_id.as_str(),
        event.correlation_key.as_str(),
        event.parent_request_id.as_str(),
        event.received_at_ms,
        event.delivery_id.as_deref(),
    ]
}

/// A step a replay copies, finished when the replay was created.
fn reused_step_args(run: &NewRun, step: &StepRunRecord, replay_of: &str) -> Vec<Arg> {
    args![
        run.id.as_str(),
        step.step_id.as_str(),
        step.position,
        step.step_type.as_str(),
        step.inputs.as_ref().map(to_json_text),
        step.outputs.as_ref().map(to_json_text),
        run.created_at_ms,
        run.created_at_ms,
        replay_of,
    ]
}

fn step_start_args(run_id: &str, s: &StepStart<'_>) -> Vec<Arg> {
    args![
        run_id,
        s.step_id,
        s.position as i64,
        s.step_type,
        to_json_text(s.inputs),
        s.at_ms,
        i64::from(s.attempt),
    ]
}

fn step_finish_args(run_id: &str, step_id: &str, outcome: &StepOutcome) -> Vec<Arg> {
    let (code, message) = split(outcome.error.as_ref());
    let exchanges = serde_json::to_string(&outcome.exchanges).expect("exchange records serialize");
    let attempt = outcome.attempt.as_ref().map(attempt_text);
    args![
        outcome.status.as_str(),
        outcome.outputs.as_ref().map(to_json_text),
        code,
        message,
        exchanges,
        outcome.finished_at_ms,
        attempt.clone(),
        attempt.clone(),
        attempt,
        run_id,
        step_id,
    ]
}

/// A run's progress as statements, in the order [`Progress`] describes.
fn progress_statements<B: Sql>(run_id: &str, progress: &Progress<'_>) -> Vec<Statement> {
    let mut out = Vec::with_capacity(4);
    if let Some(at_ms) = progress.run_started_at_ms {
        out.push(Statement::new(sql::START_RUN, args![at_ms, run_id]));
    }
    if let Some((step_id, outcome)) = progress.step_finished {
        let args = step_finish_args(run_id, step_id, outcome);
        out.push(Statement::new(B::DIALECT.finish_step, args));
    }
    if let Some(start) = &progress.step_started {
        out.push(Statement::new(
            sql::START_STEP,
            step_start_args(run_id, start),
        ));
    }
    if let Some(end) = progress.run_finished {
        let (step, error) = split(end.failure.as_ref());
        let args = args![end.status.as_str(), step, error, end.at_ms, run_id];
        out.push(Statement::new(sql::FINISH_RUN, args));
    }
    out
}

/// An (error code, message) or (step, error) pair as two nullable columns.
fn split<A: AsRef<str>, B: AsRef<str>>(pair: Option<&(A, B)>) -> (Option<&str>, Option<&str>) {
    match pair {
        Some((a, b)) => (Some(a.as_ref()), Some(b.as_ref())),
        None => (None, None),
    }
}

fn attempt_text(attempt: &AttemptRecord) -> String {
    serde_json::to_string(attempt).expect("attempt records serialize")
}

#[async_trait]
impl<B: Sql> RunStore for B {
    async fn accept_request(
        &self,
        request: &NewRequest,
        runs: &[NewRun],
        suppressed: &[NewSuppressed],
    ) -> Result<(), StorageError> {
        let mut batch = Vec::with_capacity(1 + runs.len() + suppressed.len());
        batch.push(Statement::new(
            sql::INSERT_REQUEST,
            request_args(request, "accepted"),
        ));
        for run in runs {
            let args = run_args(run, Some(&request.id), None);
            batch.push(Statement::new(sql::INSERT_RUN, args));
        }
        for event in suppressed {
            let args = suppressed_args(&request.id, event);
            batch.push(Statement::new(sql::INSERT_SUPPRESSED, args));
        }
        // A run stored without an owner waits for a slot: any node with one may take it now.
        if let Some(notice) = B::DIALECT.runs_waiting_notice
            && runs.iter().any(|run| run.owner.is_none())
        {
            batch.push(Statement::new(notice, args![]));
        }
        self.execute_atomic(batch).await.map(drop)
    }

    async fn record_rejected(&self, request: &NewRequest) -> Result<(), StorageError> {
        let args = request_args(request, "rejected");
        self.execute(sql::INSERT_REQUEST, args).await.map(drop)
    }

    async fn set_request_outcome(
        &self,
        request_id: &str,
        outcome: &Value,
    ) -> Result<(), StorageError> {
        let args = args![to_json_text(outcome), request_id];
        self.execute(sql::SET_REQUEST_OUTCOME, args).await.map(drop)
    }

    async fn record_progress(
        &self,
        run_id: &str,
        progress: &Progress<'_>,
    ) -> Result<(), StorageError> {
        let statements = progress_statements::<B>(run_id, progress);
        if statements.is_empty() {
            return Ok(());
        }
        self.execute_all(statements).await
    }

    async fn record_attempt(
        &self,
        run_id: &str,
        step_id: &str,
        attempt: &AttemptRecord,
    ) -> Result<(), StorageError> {
        let args = args![attempt_text(attempt), run_id, step_id];
        self.execute(B::DIALECT.append_attempt, args)
            .await
            .map(drop)
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StorageError> {
        let (text, args) = sql::list_runs(filter, filter.limit.unwrap_or(DEFAULT_LIMIT));
        let rows = self.fetch_listing(text, args).await?;
        rows.iter().map(run_summary).collect()
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<RunDetail>, StorageError> {
        let Some(row) = self.fetch_optional(sql::GET_RUN, args![run_id]).await? else {
            return Ok(None);
        };
        let summary = run_summary(&row)?;
        let trigger = parse_json(row.text_opt("trigger")?, "trigger outputs")?;
        let steps = self.fetch_all(sql::RUN_STEPS, args![run_id]).await?;
        Ok(Some(RunDetail {
            summary,
            trigger: trigger.unwrap_or(Value::Null),
            steps: steps.iter().map(step_run).collect::<Result<_, _>>()?,
        }))
    }

    async fn list_requests(
        &self,
        filter: &RequestFilter,
    ) -> Result<Vec<RequestRecord>, StorageError> {
        let (text, args) = sql::list_requests(filter, filter.limit.unwrap_or(DEFAULT_LIMIT));
        let rows = self.fetch_listing(text, args).await?;
        rows.iter().map(request_record).collect()
    }

    async fn find_deliveries(
        &self,
        flow_id: &str,
        delivery_ids: &[String],
    ) -> Result<Vec<(String, String)>, StorageError> {
        let mut found = Vec::new();
        for id in delivery_ids {
            let args = args![flow_id, id.as_str()];
            if let Some(row) = self.fetch_optional(sql::FIND_DELIVERY, args).await? {
                found.push((id.clone(), row.text("request_id")?));
            }
        }
        Ok(found)
    }

    async fn flood_history(
        &self,
        flow_id: &str,
        since_ms: i64,
    ) -> Result<Vec<FloodRecord>, StorageError> {
        let rows = self
            .fetch_all(sql::FLOOD_HISTORY, args![flow_id, since_ms])
            .await?;
        rows.iter().map(flood_record).collect()
    }

    async fn create_replay(
        &self,
        run: &NewRun,
        request_id: Option<&str>,
        replay_of: &str,
        reused: &[StepRunRecord],
    ) -> Result<(), StorageError> {
        let mut batch = Vec::with_capacity(1 + reused.len());
        let args = run_args(run, request_id, Some(replay_of));
        batch.push(Statement::new(sql::INSERT_RUN, args));
        for step in reused {
            let args = reused_step_args(run, step, replay_of);
            batch.push(Statement::new(sql::INSERT_REUSED_STEP, args));
        }
        self.execute_atomic(batch).await.map(drop)
    }

    async fn prune_finished(&self, before_ms: i64) -> Result<u64, StorageError> {
        let batch = sql::PRUNE
            .iter()
            .map(|statement| Statement::new(statement, args![before_ms]))
            .collect();
        // The only rows returned are the deleted runs' ids.
        let deleted = self.execute_atomic(batch).await?;
        Ok(deleted.len() as u64)
    }

    async fn run_counts(&self, since_ms: Option<i64>) -> Result<Vec<RunCount>, StorageError> {
        let rows = match since_ms {
            None => self.fetch_all(sql::RUN_COUNTS, args![]).await?,
            Some(since) => {
                let counts = B::DIALECT.run_counts_since;
                self.fetch_all(counts, args![since]).await?
            }
        };
        rows.iter().map(run_count).collect()
    }
}

#[async_trait]
impl<B: Sql> LeaseStore for B {
    async fn claimable_runs(
        &self,
        owner: &str,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StorageError> {
        let args = args![owner, now_ms, i64::from(limit)];
        let rows = self.fetch_all(B::DIALECT.claimable_runs, args).await?;
        rows.iter()
            .map(|row| Ok((row.text("id")?, row.text("flow_id")?)))
            .collect()
    }

    async fn claim_queued_runs(
        &self,
        owner: &str,
        lease_until_ms: i64,
        limit: u32,
    ) -> Result<Vec<QueuedRun>, StorageError> {
        let args = args![owner, lease_until_ms, i64::from(limit)];
        let claim = Statement::new(B::DIALECT.claim_queued_runs, args);
        let rows = self.execute_atomic(vec![claim]).await?;
        let mut runs = rows.iter().map(queued_run).collect::<Result<Vec<_>, _>>()?;
        // RETURNING gives no order.
        runs.sort_by(|a, b| (a.created_at_ms, &a.run_id).cmp(&(b.created_at_ms, &b.run_id)));
        Ok(runs)
    }

    async fn claim_run(
        &self,
        run_id: &str,
        owner: &str,
        lease_until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StorageError> {
        let args = args![run_id, owner, lease_until_ms, now_ms];
        Ok(self.execute(sql::CLAIM_RUN, args).await? == 1)
    }

    async fn renew_run_lease(
        &self,
        run_id: &str,
        owner: &str,
        lease_until_ms: i64,
    ) -> Result<bool, StorageError> {
        let args = args![run_id, owner, lease_until_ms];
        Ok(self.execute(sql::RENEW_RUN_LEASE, args).await? == 1)
    }

    async fn release_run(&self, run_id: &str, owner: &str) -> Result<(), StorageError> {
        let args = args![run_id, owner];
        self.execute(sql::RELEASE_RUN, args).await.map(drop)
    }

    async fn try_lease(
        &self,
        name: &str,
        owner: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StorageError> {
        let args = args![name, owner, until_ms, now_ms];
        Ok(self.execute(sql::TRY_LEASE, args).await? == 1)
    }
}

#[async_trait]
impl<B: Sql> LinkStore for B {
    async fn save_link(&self, link: &Link) -> Result<Option<Link>, StorageError> {
        let (connection, ticket) = (link.ticket_connection.as_str(), link.ticket_id);
        let (remote, record) = (link.remote.as_str(), link.remote_id.as_str());
        let save = args![
            connection,
            ticket,
            remote,
            link.remote_table.as_str(),
            record,
            link.number.as_deref(),
            link.created_by.as_str(),
            link.created_at_ms,
            link.updated_at_ms,
        ];
        let batch = vec![
            Statement::new(sql::LINK_FOR_TICKET, args![connection, ticket]),
            Statement::new(
                sql::UNLINK_RECORD,
                args![remote, record, connection, ticket],
            ),
            Statement::new(sql::SAVE_LINK, save),
        ];
        // The only rows returned are the ticket's previous link.
        let previous = self.execute_atomic(batch).await?;
        previous.first().map(link_row).transpose()
    }

    async fn link_for_ticket(
        &self,
        connection: &str,
        ticket_id: i64,
    ) -> Result<Option<Link>, StorageError> {
        let args = args![connection, ticket_id];
        let row = self.fetch_optional(sql::LINK_FOR_TICKET, args).await?;
        row.as_ref().map(link_row).transpose()
    }

    async fn link_for_record(
        &self,
        remote: &str,
        record_id: &str,
    ) -> Result<Option<Link>, StorageError> {
        let args = args![remote, record_id];
        let row = self.fetch_optional(sql::LINK_FOR_RECORD, args).await?;
        row.as_ref().map(link_row).transpose()
    }

    async fn list_links(&self, filter: &LinkFilter) -> Result<LinkPage, StorageError> {
        let limit = (filter.limit.unwrap_or(DEFAULT_LIMIT)).clamp(1, LinkFilter::MAX_LIMIT);
        let before = filter.before.as_ref();
        let args = args![
            filter.remote.as_deref(),
            filter.ticket_id,
            before.map(|c| c.created_at_ms),
            before.map(|c| c.ticket_connection.as_str()),
            before.map(|c| c.ticket_id),
            // One more than the page: whether there is a next one.
            i64::from(limit) + 1,
        ];
        let rows = self.fetch_all(sql::LIST_LINKS, args).await?;
        let mut links = rows.iter().map(link_row).collect::<Result<Vec<_>, _>>()?;
        let more = links.len() > limit as usize;
        links.truncate(limit as usize);
        let next_cursor = links.last().filter(|_| more).map(LinkCursor::after);
        Ok(LinkPage { links, next_cursor })
    }
}

#[async_trait]
impl<B: Sql> SyncStore for B {
    async fn claim_sync_event(
        &self,
        remote: &str,
        record_id: &str,
        version: &str,
        at_ms: i64,
    ) -> Result<bool, StorageError> {
        let args = args![remote, record_id, version, at_ms];
        Ok(self.execute(sql::CLAIM_SYNC_EVENT, args).await? == 1)
    }

    async fn release_sync_event(
        &self,
        remote: &str,
        record_id: &str,
        version: &str,
    ) -> Result<(), StorageError> {
        let args = args![remote, record_id, version];
        self.execute(sql::RELEASE_SYNC_EVENT, args).await.map(drop)
    }

    async fn claim_note(
        &self,
        remote: &str,
        note_id: &str,
        at_ms: i64,
    ) -> Result<bool, StorageError> {
        let args = args![remote, note_id, at_ms];
        Ok(self.execute(sql::CLAIM_NOTE, args).await? == 1)
    }

    async fn release_note(&self, remote: &str, note_id: &str) -> Result<(), StorageError> {
        let args = args![remote, note_id];
        self.execute(sql::RELEASE_NOTE, args).await.map(drop)
    }

    async fn watermark(&self, remote: &str, table: &str) -> Result<Option<String>, StorageError> {
        let row = self
            .fetch_optional(sql::WATERMARK, args![remote, table])
            .await?;
        row.map(|row| row.text("watermark")).transpose()
    }

    async fn set_watermark(
        &self,
        remote: &str,
        table: &str,
        watermark: &str,
    ) -> Result<(), StorageError> {
        let args = args![remote, table, watermark];
        self.execute(sql::SET_WATERMARK, args).await.map(drop)
    }

    async fn record_scan(
        &self,
        remote: &str,
        started_at_ms: i64,
        finished_at_ms: i64,
        result: &Value,
    ) -> Result<(), StorageError> {
        let args = args![remote, started_at_ms, finished_at_ms, to_json_text(result)];
        self.execute(sql::RECORD_SCAN, args).await.map(drop)
    }

    async fn scans(&self) -> Result<Vec<(String, i64, i64, Value)>, StorageError> {
        let rows = self.fetch_all(sql::SCANS, args![]).await?;
        rows.iter().map(scan).collect()
    }

    async fn first_scan_start(&self, remote: &str, at_ms: i64) -> Result<i64, StorageError> {
        let args = args![remote, at_ms];
        self.execute(sql::RECORD_FIRST_SCAN_START, args).await?;
        let row = self.fetch_one(sql::FIRST_SCAN_START, args![remote]).await?;
        row.int("started_at_ms")
    }

    async fn record_sync_failure(
        &self,
        remote: &str,
        table: &str,
        record_id: &str,
        error: &str,
        at_ms: i64,
    ) -> Result<u32, StorageError> {
        let error: String = error.chars().take(ERROR_CHARS).collect();
        let args = args![remote, record_id, table, error, at_ms];
        self.execute(sql::RECORD_SYNC_FAILURE, args).await?;
        let row = self.fetch_one(sql::SYNC_FAILURE, args![remote, record_id]);
        Ok(sync_failure(&row.await?)?.attempts)
    }

    async fn clear_sync_failure(&self, remote: &str, record_id: &str) -> Result<(), StorageError> {
        let args = args![remote, record_id];
        self.execute(sql::CLEAR_SYNC_FAILURE, args).await.map(drop)
    }

    async fn sync_failures(&self, remote: &str) -> Result<Vec<SyncFailure>, StorageError> {
        let rows = self.fetch_all(sql::SYNC_FAILURES, args![remote]).await?;
        rows.iter().map(sync_failure).collect()
    }
}

/// Gives the named lease back, so another owner can take it at once: each backend's
/// `release_lease` (nothing in the runtime gives a lease back; leases expire).
pub(super) async fn release_lease<B: Sql>(
    backend: &B,
    name: &str,
    owner: &str,
) -> Result<(), StorageError> {
    let args = args![name, owner];
    backend.execute(sql::RELEASE_LEASE, args).await.map(drop)
}
