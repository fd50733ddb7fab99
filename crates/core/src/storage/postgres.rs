//! The PostgreSQL backend, for several nodes sharing one database: migrations in
//! `migrations/postgres`, the same behaviour as SQLite (one test suite runs against both), and
//! flood-control state kept in the database so every node sees the same counts.

use async_trait::async_trait;
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::rows::{
    LINK_COLUMNS, RUN_COLUMNS, STEP_COLUMNS, conflict_or, flood_record, link as link_row,
    parse_json, request_record, run_summary, step_run, sync_failure, to_json_text,
};
use super::{
    AttemptRecord, FloodRecord, Link, NewRequest, NewRun, NewSuppressed, RequestFilter,
    RequestRecord, RunCount, RunDetail, RunFilter, RunStatus, RunSummary, StepOutcome,
    StepRunRecord, Storage, StorageError, SyncFailure,
};
use crate::admission::{Admission, KeyState, Window};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Debug, Clone)]
pub struct PostgresStorage {
    pool: PgPool,
}

impl PostgresStorage {
    /// Connects to a `postgres://` URL and applies migrations (several nodes starting at once
    /// is safe: sqlx takes an advisory lock while migrating).
    pub async fn connect(url: &str) -> Result<Self, StorageError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(PostgresStorage { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

async fn insert_run(
    conn: &mut sqlx::PgConnection,
    run: &NewRun,
    request_id: Option<&str>,
    replay_of: Option<&str>,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO runs (id, request_id, flow_id, event_index, status, trigger, created_at_ms, correlation_key,
                           delivery_id, replay_of, owner, lease_until_ms)
         VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&run.id)
    .bind(request_id)
    .bind(&run.flow_id)
    .bind(run.event_index as i64)
    .bind(to_json_text(&run.trigger))
    .bind(run.created_at_ms)
    .bind(run.correlation_key.as_deref())
    .bind(run.delivery_id.as_deref())
    .bind(replay_of)
    .bind(run.owner.as_deref())
    .bind(run.lease_until_ms)
    .execute(conn)
    .await
    .map_err(conflict_or)?;
    Ok(())
}

#[async_trait]
impl Storage for PostgresStorage {
    async fn accept_request(
        &self,
        request: &NewRequest,
        runs: &[NewRun],
        suppressed: &[NewSuppressed],
    ) -> Result<(), StorageError> {
        let mut tx = self.pool.begin().await?;
        insert_request(&mut tx, request, "accepted").await?;
        for run in runs {
            insert_run(&mut tx, run, Some(&request.id), None).await?;
        }
        for event in suppressed {
            sqlx::query(
                "INSERT INTO suppressed_events
                    (request_id, event_index, flow_id, correlation_key, parent_request_id, received_at_ms, delivery_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&request.id)
            .bind(event.event_index as i64)
            .bind(&event.flow_id)
            .bind(&event.correlation_key)
            .bind(&event.parent_request_id)
            .bind(event.received_at_ms)
            .bind(event.delivery_id.as_deref())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn record_rejected(&self, request: &NewRequest) -> Result<(), StorageError> {
        let mut conn = self.pool.acquire().await?;
        insert_request(&mut conn, request, "rejected").await
    }

    async fn set_request_outcome(
        &self,
        request_id: &str,
        outcome: &Value,
    ) -> Result<(), StorageError> {
        sqlx::query("UPDATE trigger_requests SET outcome = $1 WHERE id = $2")
            .bind(to_json_text(outcome))
            .bind(request_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn start_run(&self, run_id: &str, at_ms: i64) -> Result<(), StorageError> {
        sqlx::query("UPDATE runs SET status = 'running', started_at_ms = coalesce(started_at_ms, $2) WHERE id = $1")
            .bind(run_id)
            .bind(at_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        failure: Option<(&str, &str)>,
        at_ms: i64,
    ) -> Result<(), StorageError> {
        sqlx::query("UPDATE runs SET status = $2, failed_step = $3, error = $4, finished_at_ms = $5, owner = NULL, lease_until_ms = NULL WHERE id = $1")
            .bind(run_id)
            .bind(status.as_str())
            .bind(failure.map(|f| f.0))
            .bind(failure.map(|f| f.1))
            .bind(at_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn start_step(
        &self,
        run_id: &str,
        step_id: &str,
        position: usize,
        step_type: &str,
        inputs: &Value,
        attempt: u32,
        at_ms: i64,
    ) -> Result<(), StorageError> {
        // The first attempt's start time stays; later attempts only bump the count.
        sqlx::query(
            "INSERT INTO step_runs (run_id, step_id, position, step_type, status, inputs, started_at_ms, attempts)
             VALUES ($1, $2, $3, $4, 'running', $5, $6, $7)
             ON CONFLICT (run_id, step_id) DO UPDATE SET
                status = 'running', inputs = excluded.inputs, attempts = excluded.attempts,
                outputs = NULL, error = NULL, error_code = NULL, finished_at_ms = NULL",
        )
        .bind(run_id)
        .bind(step_id)
        .bind(position as i64)
        .bind(step_type)
        .bind(to_json_text(inputs))
        .bind(at_ms)
        .bind(i64::from(attempt))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn record_attempt(
        &self,
        run_id: &str,
        step_id: &str,
        attempt: &AttemptRecord,
    ) -> Result<(), StorageError> {
        let record = serde_json::to_string(attempt).expect("attempt records serialize");
        sqlx::query(
            "UPDATE step_runs SET attempt_log = (COALESCE(attempt_log, '[]')::jsonb || jsonb_build_array($3::jsonb))::text
             WHERE run_id = $1 AND step_id = $2",
        )
        .bind(run_id)
        .bind(step_id)
        .bind(record)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn finish_step(
        &self,
        run_id: &str,
        step_id: &str,
        outcome: &StepOutcome,
    ) -> Result<(), StorageError> {
        let exchanges =
            serde_json::to_string(&outcome.exchanges).expect("exchange records serialize");
        let attempt = outcome
            .attempt
            .as_ref()
            .map(|a| serde_json::to_string(a).expect("attempt records serialize"));
        sqlx::query(
            "UPDATE step_runs SET status = $3, outputs = $4, error_code = $5, error = $6, exchanges = $7, finished_at_ms = $8,
                    attempt_log = CASE WHEN $9::text IS NULL THEN attempt_log ELSE (COALESCE(attempt_log, '[]')::jsonb || jsonb_build_array($9::jsonb))::text END
             WHERE run_id = $1 AND step_id = $2",
        )
        .bind(run_id)
        .bind(step_id)
        .bind(outcome.status.as_str())
        .bind(outcome.outputs.as_ref().map(to_json_text))
        .bind(outcome.error.as_ref().map(|e| e.0.as_str()))
        .bind(outcome.error.as_ref().map(|e| e.1.as_str()))
        .bind(exchanges)
        .bind(outcome.finished_at_ms)
        .bind(attempt)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StorageError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs
             WHERE ($1 IS NULL OR flow_id = $1) AND ($2 IS NULL OR status = $2)
               AND ($4 IS NULL OR created_at_ms >= $4) AND ($5 IS NULL OR created_at_ms < $5)
             ORDER BY created_at_ms DESC, id DESC LIMIT $3"
        ));
        let rows = sqlx::query(sql)
            .bind(filter.flow_id.as_deref())
            .bind(filter.status.map(RunStatus::as_str))
            .bind(i64::from(filter.limit.unwrap_or(50)))
            .bind(filter.since_ms)
            .bind(filter.until_ms)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(run_summary).collect()
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<RunDetail>, StorageError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS}, trigger FROM runs WHERE id = $1"
        ));
        let Some(row) = sqlx::query(sql)
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let summary = run_summary(&row)?;
        let trigger =
            parse_json(row.try_get("trigger")?, "trigger outputs")?.unwrap_or(Value::Null);
        let steps = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {STEP_COLUMNS} FROM step_runs WHERE run_id = $1 ORDER BY position"
        )))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(step_run)
        .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(RunDetail {
            summary,
            trigger,
            steps,
        }))
    }

    async fn list_requests(
        &self,
        filter: &RequestFilter,
    ) -> Result<Vec<RequestRecord>, StorageError> {
        let rows = sqlx::query(
            "SELECT r.id, r.flow_id, r.received_at_ms, r.status, r.http_status, r.error_code, r.error_message,
                    r.query, r.event_count, r.outcome,
                    (SELECT string_agg(id, ',' ORDER BY event_index) FROM runs WHERE request_id = r.id) AS run_ids,
                    (SELECT string_agg(request_id, ',' ORDER BY first_ms, request_id) FROM (SELECT request_id, min(received_at_ms) AS first_ms FROM suppressed_events
                        WHERE parent_request_id = r.id GROUP BY request_id) AS c) AS children,
                    (SELECT count(*) FROM suppressed_events WHERE parent_request_id = r.id) AS suppressed_count,
                    (SELECT parent_request_id FROM suppressed_events WHERE request_id = r.id ORDER BY event_index LIMIT 1) AS suppressed_under
             FROM trigger_requests r
             WHERE ($1 IS NULL OR r.flow_id = $1)
               AND ($2 = false OR EXISTS (SELECT 1 FROM suppressed_events s WHERE s.request_id = r.id))
             ORDER BY r.received_at_ms DESC, r.id DESC LIMIT $3",
        )
        .bind(filter.flow_id.as_deref())
        .bind(filter.suppressed_only)
        .bind(i64::from(filter.limit.unwrap_or(50)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(request_record).collect()
    }

    async fn flood_history(
        &self,
        flow_id: &str,
        since_ms: i64,
    ) -> Result<Vec<FloodRecord>, StorageError> {
        let rows = sqlx::query(
            "SELECT r.correlation_key, r.request_id, r.created_at_ms,
                    (SELECT count(*) FROM suppressed_events s
                     WHERE s.parent_request_id = r.request_id AND s.correlation_key = r.correlation_key) AS suppressed
             FROM runs r
             WHERE r.flow_id = $1 AND r.created_at_ms >= $2 AND r.correlation_key IS NOT NULL
             ORDER BY r.created_at_ms, r.id",
        )
        .bind(flow_id)
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(flood_record).collect()
    }

    async fn claimable_runs(
        &self,
        owner: &str,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StorageError> {
        let rows = sqlx::query(
            "SELECT id, flow_id FROM runs
             WHERE status IN ('queued', 'running')
               AND (owner IS NULL OR owner = $1 OR lease_until_ms < $2)
             ORDER BY created_at_ms, id LIMIT $3",
        )
        .bind(owner)
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("id")?, row.try_get("flow_id")?)))
            .collect()
    }

    async fn claim_run(
        &self,
        run_id: &str,
        owner: &str,
        lease_until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StorageError> {
        let done = sqlx::query(
            "UPDATE runs SET owner = $2, lease_until_ms = $3
             WHERE id = $1 AND status IN ('queued', 'running')
               AND (owner IS NULL OR owner = $2 OR lease_until_ms < $4)",
        )
        .bind(run_id)
        .bind(owner)
        .bind(lease_until_ms)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn renew_run_lease(
        &self,
        run_id: &str,
        owner: &str,
        lease_until_ms: i64,
    ) -> Result<bool, StorageError> {
        let done = sqlx::query(
            "UPDATE runs SET lease_until_ms = $3
             WHERE id = $1 AND owner = $2 AND status IN ('queued', 'running')",
        )
        .bind(run_id)
        .bind(owner)
        .bind(lease_until_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_run(&self, run_id: &str, owner: &str) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE runs SET owner = NULL, lease_until_ms = NULL WHERE id = $1 AND owner = $2",
        )
        .bind(run_id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn try_lease(
        &self,
        name: &str,
        owner: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StorageError> {
        let done = sqlx::query(
            "INSERT INTO leases (name, owner, until_ms) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until_ms = excluded.until_ms
             WHERE leases.owner = excluded.owner OR leases.until_ms < $4",
        )
        .bind(name)
        .bind(owner)
        .bind(until_ms)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_lease(&self, name: &str, owner: &str) -> Result<(), StorageError> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND owner = $2")
            .bind(name)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn find_deliveries(
        &self,
        flow_id: &str,
        delivery_ids: &[String],
    ) -> Result<Vec<(String, String)>, StorageError> {
        let mut found = Vec::new();
        for id in delivery_ids {
            let row = sqlx::query(
                "SELECT request_id FROM runs WHERE flow_id = $1 AND delivery_id = $2 AND request_id IS NOT NULL
                 UNION ALL
                 SELECT request_id FROM suppressed_events WHERE flow_id = $1 AND delivery_id = $2
                 LIMIT 1",
            )
            .bind(flow_id)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = row {
                found.push((id.clone(), row.try_get("request_id")?));
            }
        }
        Ok(found)
    }

    async fn create_replay(
        &self,
        run: &NewRun,
        request_id: Option<&str>,
        replay_of: &str,
        reused: &[StepRunRecord],
    ) -> Result<(), StorageError> {
        let mut tx = self.pool.begin().await?;
        insert_run(&mut tx, run, request_id, Some(replay_of)).await?;
        for step in reused {
            sqlx::query(
                "INSERT INTO step_runs (run_id, step_id, position, step_type, status, inputs, outputs,
                                        exchanges, started_at_ms, finished_at_ms, attempts, reused_from)
                 VALUES ($1, $2, $3, $4, 'succeeded', $5, $6, '[]', $7, $7, 0, $8)",
            )
            .bind(&run.id)
            .bind(&step.step_id)
            .bind(step.position)
            .bind(&step.step_type)
            .bind(step.inputs.as_ref().map(to_json_text))
            .bind(step.outputs.as_ref().map(to_json_text))
            .bind(run.created_at_ms)
            .bind(replay_of)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn prune_finished(&self, before_ms: i64) -> Result<u64, StorageError> {
        let mut tx = self.pool.begin().await?;
        // Replays keep their history readable: a run another run replays is kept until that
        // one goes too.
        let doomed = "SELECT id FROM runs r WHERE r.finished_at_ms < $1
                        AND NOT EXISTS (SELECT 1 FROM runs x WHERE x.replay_of = r.id)";
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM step_runs WHERE run_id IN ({doomed})"
        )))
        .bind(before_ms)
        .execute(&mut *tx)
        .await?;
        let runs = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM runs WHERE id IN ({doomed})"
        )))
        .bind(before_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "DELETE FROM suppressed_events WHERE received_at_ms < $1
               AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.request_id = suppressed_events.parent_request_id)",
        )
        .bind(before_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM trigger_requests WHERE received_at_ms < $1
               AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.request_id = trigger_requests.id)
               AND NOT EXISTS (SELECT 1 FROM suppressed_events s WHERE s.request_id = trigger_requests.id)",
        )
        .bind(before_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(runs)
    }

    async fn run_counts(&self) -> Result<Vec<RunCount>, StorageError> {
        let rows = sqlx::query(
            "SELECT flow_id, status, count(*) AS n FROM runs GROUP BY flow_id, status ORDER BY flow_id, status",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let status: String = row.try_get("status")?;
                Ok(RunCount {
                    flow_id: row.try_get("flow_id")?,
                    status: RunStatus::parse(&status).unwrap_or(RunStatus::Failed),
                    count: row.try_get("n")?,
                })
            })
            .collect()
    }

    async fn flood_admit(
        &self,
        flow_id: &str,
        key: &str,
        request_id: &str,
        now_ms: i64,
        window_ms: i64,
        max_requests: u32,
    ) -> Result<Admission, StorageError> {
        let mut tx = self.pool.begin().await?;
        // One row per key, locked while this event is decided: correlated requests on several
        // nodes queue on it, unrelated ones never meet.
        sqlx::query(
            "INSERT INTO flood_state (flow_id, correlation_key, arrivals, suppressed_count, last_ms)
             VALUES ($1, $2, '{}', 0, $3) ON CONFLICT (flow_id, correlation_key) DO NOTHING",
        )
        .bind(flow_id)
        .bind(key)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "SELECT arrivals, parent_request_id, suppressed_count FROM flood_state
             WHERE flow_id = $1 AND correlation_key = $2 FOR UPDATE",
        )
        .bind(flow_id)
        .bind(key)
        .fetch_one(&mut *tx)
        .await?;
        let mut state = KeyState::<String> {
            arrivals: row.try_get::<Vec<i64>, _>("arrivals")?.into(),
            parent: row.try_get("parent_request_id")?,
            suppressed: row.try_get::<i64, _>("suppressed_count")?.max(0) as u64,
        };
        let window = Window {
            length: window_ms,
            max_requests,
        };
        let admission = state.admit(request_id, now_ms, window);
        let arrivals = Vec::from(state.arrivals);
        sqlx::query(
            "UPDATE flood_state SET arrivals = $3, parent_request_id = $4, suppressed_count = $5, last_ms = $6
             WHERE flow_id = $1 AND correlation_key = $2",
        )
        .bind(flow_id)
        .bind(key)
        .bind(&arrivals)
        .bind(&state.parent)
        .bind(state.suppressed as i64)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(admission)
    }

    async fn flood_sweep(&self, idle_before_ms: i64) -> Result<u64, StorageError> {
        Ok(sqlx::query("DELETE FROM flood_state WHERE last_ms < $1")
            .bind(idle_before_ms)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    async fn flood_keys(&self) -> Result<Vec<(String, usize)>, StorageError> {
        let rows = sqlx::query(
            "SELECT flow_id, count(*) AS n FROM flood_state GROUP BY flow_id ORDER BY flow_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("flow_id")?,
                    row.try_get::<i64, _>("n")?.max(0) as usize,
                ))
            })
            .collect()
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn claim_sync_event(
        &self,
        servicenow: &str,
        sys_id: &str,
        version: &str,
        at_ms: i64,
    ) -> Result<bool, StorageError> {
        let done = sqlx::query(
            "INSERT INTO sync_events (servicenow, sys_id, version, received_at_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(servicenow)
        .bind(sys_id)
        .bind(version)
        .bind(at_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_sync_event(
        &self,
        servicenow: &str,
        sys_id: &str,
        version: &str,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "DELETE FROM sync_events WHERE servicenow = $1 AND sys_id = $2 AND version = $3",
        )
        .bind(servicenow)
        .bind(sys_id)
        .bind(version)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn claim_note(
        &self,
        servicenow: &str,
        journal_sys_id: &str,
        at_ms: i64,
    ) -> Result<bool, StorageError> {
        let done = sqlx::query(
            "INSERT INTO synced_notes (servicenow, journal_sys_id, synced_at_ms) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(servicenow)
        .bind(journal_sys_id)
        .bind(at_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_note(
        &self,
        servicenow: &str,
        journal_sys_id: &str,
    ) -> Result<(), StorageError> {
        sqlx::query("DELETE FROM synced_notes WHERE servicenow = $1 AND journal_sys_id = $2")
            .bind(servicenow)
            .bind(journal_sys_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn watermark(
        &self,
        servicenow: &str,
        table: &str,
    ) -> Result<Option<String>, StorageError> {
        let row = sqlx::query(
            "SELECT watermark FROM integrator_watermarks WHERE servicenow = $1 AND table_name = $2",
        )
        .bind(servicenow)
        .bind(table)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("watermark")).transpose()?)
    }

    async fn set_watermark(
        &self,
        servicenow: &str,
        table: &str,
        watermark: &str,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO integrator_watermarks (servicenow, table_name, watermark) VALUES ($1, $2, $3)
             ON CONFLICT (servicenow, table_name) DO UPDATE SET watermark = excluded.watermark",
        )
        .bind(servicenow)
        .bind(table)
        .bind(watermark)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn record_scan(
        &self,
        servicenow: &str,
        started_at_ms: i64,
        finished_at_ms: i64,
        result: &Value,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO integrator_scans (servicenow, started_at_ms, finished_at_ms, result) VALUES ($1, $2, $3, $4)
             ON CONFLICT (servicenow) DO UPDATE SET started_at_ms = excluded.started_at_ms,
                finished_at_ms = excluded.finished_at_ms, result = excluded.result",
        )
        .bind(servicenow)
        .bind(started_at_ms)
        .bind(finished_at_ms)
        .bind(to_json_text(result))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn integrator_start(&self, servicenow: &str, at_ms: i64) -> Result<i64, StorageError> {
        sqlx::query(
            "INSERT INTO integrator_starts (servicenow, started_at_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(servicenow)
        .bind(at_ms)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT started_at_ms FROM integrator_starts WHERE servicenow = $1")
            .bind(servicenow)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("started_at_ms")?)
    }

    async fn record_sync_failure(
        &self,
        servicenow: &str,
        table: &str,
        sys_id: &str,
        error: &str,
        at_ms: i64,
    ) -> Result<u32, StorageError> {
        let error: String = error.chars().take(500).collect();
        sqlx::query(
            "INSERT INTO integrator_failures (servicenow, sys_id, table_name, attempts, last_error, updated_at_ms) VALUES ($1, $2, $3, 1, $4, $5) ON CONFLICT (servicenow, sys_id) DO UPDATE SET attempts = integrator_failures.attempts + 1, last_error = excluded.last_error, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(servicenow)
        .bind(sys_id)
        .bind(table)
        .bind(error)
        .bind(at_ms)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query(
            "SELECT table_name, sys_id, attempts, last_error, updated_at_ms FROM integrator_failures WHERE servicenow = $1 AND sys_id = $2",
        )
        .bind(servicenow)
        .bind(sys_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(sync_failure(&row)?.attempts)
    }

    async fn clear_sync_failure(&self, servicenow: &str, sys_id: &str) -> Result<(), StorageError> {
        sqlx::query("DELETE FROM integrator_failures WHERE servicenow = $1 AND sys_id = $2")
            .bind(servicenow)
            .bind(sys_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn sync_failures(&self, servicenow: &str) -> Result<Vec<SyncFailure>, StorageError> {
        let rows = sqlx::query(
            "SELECT table_name, sys_id, attempts, last_error, updated_at_ms FROM integrator_failures WHERE servicenow = $1 ORDER BY updated_at_ms, sys_id",
        )
        .bind(servicenow)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(sync_failure).collect()
    }

    async fn scans(&self) -> Result<Vec<(String, i64, i64, Value)>, StorageError> {
        let rows = sqlx::query(
            "SELECT servicenow, started_at_ms, finished_at_ms, result FROM integrator_scans ORDER BY servicenow",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("servicenow")?,
                    row.try_get("started_at_ms")?,
                    row.try_get("finished_at_ms")?,
                    parse_json(row.try_get("result")?, "scan result")?.unwrap_or(Value::Null),
                ))
            })
            .collect()
    }

    async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn save_link(&self, link: &Link) -> Result<Option<Link>, StorageError> {
        let mut tx = self.pool.begin().await?;
        let previous = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {LINK_COLUMNS} FROM links WHERE halo_connection = $1 AND halo_ticket_id = $2"
        )))
        .bind(&link.halo_connection)
        .bind(link.halo_ticket_id)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(link_row)
        .transpose()?;
        // 1-1: the record loses any other ticket's link.
        sqlx::query(
            "DELETE FROM links WHERE servicenow = $1 AND sys_id = $2
               AND NOT (halo_connection = $3 AND halo_ticket_id = $4)",
        )
        .bind(&link.servicenow)
        .bind(&link.sys_id)
        .bind(&link.halo_connection)
        .bind(link.halo_ticket_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO links (halo_connection, halo_ticket_id, servicenow, table_name, sys_id, number,
                                created_by, created_at_ms, updated_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (halo_connection, halo_ticket_id) DO UPDATE SET
                servicenow = excluded.servicenow, table_name = excluded.table_name,
                sys_id = excluded.sys_id, number = excluded.number, created_by = excluded.created_by,
                created_at_ms = CASE WHEN links.sys_id = excluded.sys_id THEN links.created_at_ms
                                     ELSE excluded.created_at_ms END,
                updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&link.halo_connection)
        .bind(link.halo_ticket_id)
        .bind(&link.servicenow)
        .bind(&link.table)
        .bind(&link.sys_id)
        .bind(link.number.as_deref())
        .bind(link.created_by.as_str())
        .bind(link.created_at_ms)
        .bind(link.updated_at_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(previous)
    }

    async fn link_for_ticket(
        &self,
        halo_connection: &str,
        halo_ticket_id: i64,
    ) -> Result<Option<Link>, StorageError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {LINK_COLUMNS} FROM links WHERE halo_connection = $1 AND halo_ticket_id = $2"
        )))
        .bind(halo_connection)
        .bind(halo_ticket_id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(link_row)
        .transpose()
    }

    async fn link_for_record(
        &self,
        servicenow: &str,
        sys_id: &str,
    ) -> Result<Option<Link>, StorageError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {LINK_COLUMNS} FROM links WHERE servicenow = $1 AND sys_id = $2"
        )))
        .bind(servicenow)
        .bind(sys_id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(link_row)
        .transpose()
    }
}

async fn insert_request(
    conn: &mut sqlx::PgConnection,
    request: &NewRequest,
    status: &str,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO trigger_requests
            (id, flow_id, received_at_ms, status, http_status, error_code, error_message, query, body, event_count, outcome)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&request.id)
    .bind(&request.flow_id)
    .bind(request.received_at_ms)
    .bind(status)
    .bind(i64::from(request.http_status))
    .bind(request.error.as_ref().map(|e| e.0.as_str()))
    .bind(request.error.as_ref().map(|e| e.1.as_str()))
    .bind(request.query.as_ref().map(to_json_text))
    .bind(request.body.as_deref())
    .bind(request.event_count as i64)
    .bind(request.outcome.as_ref().map(to_json_text))
    .execute(conn)
    .await?;
    Ok(())
}
