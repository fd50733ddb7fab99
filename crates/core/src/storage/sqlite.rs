//! The SQLite backend: one file, WAL journal, a busy timeout, migrations in `migrations/sqlite`.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};

use super::group_commit::{GroupCommit, Work};
use super::rows::{
    LINK_COLUMNS, RUN_COLUMNS, STEP_COLUMNS, conflict_or, flood_record, link as link_row,
    parse_json, request_record, run_summary, step_run, sync_failure, to_json_text,
};
use super::{
    AttemptRecord, FloodRecord, Link, NewRequest, NewRun, NewSuppressed, Progress, RequestFilter,
    RequestRecord, RunCount, RunDetail, RunFilter, RunFinish, RunStatus, RunSummary, StepOutcome,
    StepRunRecord, StepStart, Storage, StorageError, SyncFailure,
};
use crate::config::Durability;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// The file name inside the data directory.
pub const DATABASE_FILE: &str = "haloflow.db";

/// Owned statement arguments, in order: a write runs after the caller's borrows ended.
macro_rules! args {
    ($($value:expr),* $(,)?) => {{
        let mut args = SqliteArguments::default();
        (|| {
            $(sqlx::Arguments::add(&mut args, $value)
                .map_err(|e| StorageError::Database(sqlx::Error::Encode(e)))?;)*
            Ok::<_, StorageError>(())
        })()
        .map(|()| args)
    }};
}

/// Reads go through `pool`; writes through `writer`, one connection that commits them in
/// batches (see `group_commit`), or, without it (in memory), one transaction each on `pool`.
#[derive(Debug, Clone)]
pub struct SqliteStorage {
    pool: SqlitePool,
    writer: Option<GroupCommit>,
}

impl SqliteStorage {
    /// Opens (creating if needed) `haloflow.db` in `data_dir` and applies migrations; commits
    /// survive a process crash.
    pub async fn open_dir(data_dir: &Path) -> Result<Self, StorageError> {
        SqliteStorage::open_dir_with(data_dir, Durability::default()).await
    }

    /// [`SqliteStorage::open_dir`] with a chosen durability.
    pub async fn open_dir_with(
        data_dir: &Path,
        durability: Durability,
    ) -> Result<Self, StorageError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StorageError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let options = SqliteConnectOptions::new().filename(data_dir.join(DATABASE_FILE));
        SqliteStorage::open(options, durability).await
    }

    pub async fn open_file(path: &Path) -> Result<Self, StorageError> {
        let options = SqliteConnectOptions::new().filename(path);
        SqliteStorage::open(options, Durability::default()).await
    }

    /// A private in-memory database (one connection, so every query sees the same data); for
    /// dry runs and tests.
    pub async fn in_memory() -> Result<Self, StorageError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?;
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStorage { pool, writer: None })
    }

    /// Opens a `sqlite://` URL.
    pub async fn open_url(url: &str) -> Result<Self, StorageError> {
        SqliteStorage::open(SqliteConnectOptions::from_str(url)?, Durability::default()).await
    }

    async fn open(
        options: SqliteConnectOptions,
        durability: Durability,
    ) -> Result<Self, StorageError> {
        let synchronous = match durability {
            Durability::ProcessCrash => SqliteSynchronous::Normal,
            Durability::PowerLoss => SqliteSynchronous::Full,
        };
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&pool).await?;
        // The status columns' CHECK (status IN (<four values>)) makes SQLite build a
        // temporary table on every write that sets a status (a tenth of its work under load);
        // the writer only ever writes `RunStatus`/`StepStatus` text, so it skips the check.
        let writer_options = options
            .clone()
            .pragma("ignore_check_constraints", "ON")
            .pragma("wal_autocheckpoint", "0")
            // The WAL file is cut back to this when it starts over (it is reused, not shrunk).
            .pragma("journal_size_limit", "67108864");
        let connect = |options| <sqlx::SqliteConnection as sqlx::Connection>::connect_with(options);
        let writer = GroupCommit::start(
            connect(&writer_options).await?,
            Some(connect(&options).await?),
        );
        Ok(SqliteStorage {
            pool,
            writer: Some(writer),
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// One statement as a write, with owned arguments (see [`args!`]); returns the rows it
    /// changed.
    async fn execute(
        &self,
        sql: &'static str,
        args: Result<SqliteArguments, StorageError>,
    ) -> Result<u64, StorageError> {
        let args = args?;
        self.write(
            false,
            Box::new(move |conn| {
                Box::pin(async move {
                    Ok(sqlx::query_with(sql, args)
                        .execute(conn)
                        .await?
                        .rows_affected())
                })
            }),
        )
        .await
    }

    /// Runs `work` in a write transaction and returns once it committed. `atomic`: `work` has
    /// several statements (they commit together or not at all). Without the group-commit
    /// writer, the transaction takes the write lock at once (`BEGIN IMMEDIATE`): a deferred one
    /// that reads first fails with "database is locked" when another connection writes in
    /// between, which the busy timeout cannot wait out.
    async fn write<T: Send + 'static>(
        &self,
        atomic: bool,
        work: Work<T>,
    ) -> Result<T, StorageError> {
        match &self.writer {
            Some(writer) => writer.write(atomic, work).await,
            None => {
                let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
                let value = work(&mut tx).await?;
                tx.commit().await?;
                Ok(value)
            }
        }
    }
}

/// A run's progress, owned (it is written after the caller's borrow ended), written as one
/// multi-statement query: one round trip to SQLite's thread instead of one per statement.
/// The parameters are anonymous (`?`), so each statement takes the next ones in order.
struct ProgressRow {
    run_id: String,
    run_started_at_ms: Option<i64>,
    step_finished: Option<FinishedStep>,
    step_started: Option<StartedStep>,
    run_finished: Option<FinishedRun>,
}

struct FinishedRun {
    status: RunStatus,
    failure: Option<(String, String)>,
    at_ms: i64,
}

struct FinishedStep {
    step_id: String,
    status: super::StepStatus,
    outputs: Option<String>,
    error: Option<(String, String)>,
    exchanges: String,
    finished_at_ms: i64,
    attempt: Option<String>,
}

struct StartedStep {
    step_id: String,
    position: i64,
    step_type: String,
    inputs: String,
    attempt: i64,
    at_ms: i64,
}

impl ProgressRow {
    fn of(run_id: &str, progress: &Progress<'_>) -> ProgressRow {
        ProgressRow {
            run_id: run_id.to_owned(),
            run_started_at_ms: progress.run_started_at_ms,
            step_finished: progress
                .step_finished
                .map(|(step_id, outcome)| FinishedStep {
                    step_id: step_id.to_owned(),
                    status: outcome.status,
                    outputs: outcome.outputs.as_ref().map(to_json_text),
                    error: outcome.error.clone(),
                    exchanges: serde_json::to_string(&outcome.exchanges)
                        .expect("exchange records serialize"),
                    finished_at_ms: outcome.finished_at_ms,
                    attempt: outcome
                        .attempt
                        .as_ref()
                        .map(|a| serde_json::to_string(a).expect("attempt records serialize")),
                }),
            step_started: progress.step_started.map(|s| StartedStep {
                step_id: s.step_id.to_owned(),
                position: s.position as i64,
                step_type: s.step_type.to_owned(),
                inputs: to_json_text(s.inputs),
                attempt: i64::from(s.attempt),
                at_ms: s.at_ms,
            }),
            run_finished: progress.run_finished.map(|end| FinishedRun {
                status: end.status,
                failure: end
                    .failure
                    .map(|(step, error)| (step.to_owned(), error.to_owned())),
                at_ms: end.at_ms,
            }),
        }
    }

    async fn write(&self, conn: &mut sqlx::SqliteConnection) -> Result<(), StorageError> {
        let mut sql: Vec<&str> = Vec::with_capacity(4);
        if self.run_started_at_ms.is_some() {
            sql.push(
                "UPDATE runs SET status = 'running', started_at_ms = coalesce(started_at_ms, ?) WHERE id = ?",
            );
        }
        if self.step_finished.is_some() {
            sql.push(
                "UPDATE step_runs SET status = ?, outputs = ?, error_code = ?, error = ?, exchanges = ?, finished_at_ms = ?,
                    attempt_log = CASE WHEN ? IS NULL THEN attempt_log
                                       WHEN attempt_log IS NULL THEN '[' || ? || ']'
                                       ELSE json_insert(attempt_log, '$[#]', json(?)) END
                 WHERE run_id = ? AND step_id = ?",
            );
        }
        if self.step_started.is_some() {
            // The first attempt's start time stays; later attempts only bump the count.
            sql.push(
                "INSERT INTO step_runs (run_id, step_id, position, step_type, status, inputs, started_at_ms, attempts)
                 VALUES (?, ?, ?, ?, 'running', ?, ?, ?)
                 ON CONFLICT (run_id, step_id) DO UPDATE SET
                    status = 'running', inputs = excluded.inputs, attempts = excluded.attempts,
                    outputs = NULL, error = NULL, error_code = NULL, finished_at_ms = NULL",
            );
        }
        if self.run_finished.is_some() {
            sql.push(
                "UPDATE runs SET status = ?, failed_step = ?, error = ?, finished_at_ms = ?, owner = NULL, lease_until_ms = NULL WHERE id = ?",
            );
        }
        if sql.is_empty() {
            return Ok(());
        }
        let sql = sql.join(";\n");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        let run_id = self.run_id.as_str();
        if let Some(at_ms) = self.run_started_at_ms {
            query = query.bind(at_ms).bind(run_id);
        }
        if let Some(f) = &self.step_finished {
            query = query
                .bind(f.status.as_str())
                .bind(f.outputs.as_deref())
                .bind(f.error.as_ref().map(|e| e.0.as_str()))
                .bind(f.error.as_ref().map(|e| e.1.as_str()))
                .bind(f.exchanges.as_str())
                .bind(f.finished_at_ms)
                .bind(f.attempt.as_deref())
                .bind(f.attempt.as_deref())
                .bind(f.attempt.as_deref())
                .bind(run_id)
                .bind(f.step_id.as_str());
        }
        if let Some(s) = &self.step_started {
            query = query
                .bind(run_id)
                .bind(s.step_id.as_str())
                .bind(s.position)
                .bind(s.step_type.as_str())
                .bind(s.inputs.as_str())
                .bind(s.at_ms)
                .bind(s.attempt);
        }
        if let Some(end) = &self.run_finished {
            query = query
                .bind(end.status.as_str())
                .bind(end.failure.as_ref().map(|f| f.0.as_str()))
                .bind(end.failure.as_ref().map(|f| f.1.as_str()))
                .bind(end.at_ms)
                .bind(run_id);
        }
        query.execute(conn).await?;
        Ok(())
    }
}

/// A run's columns, owned, with its trigger outputs as stored text (a write outlives the
/// caller's borrow).
struct RunRow {
    id: String,
    flow_id: String,
    event_index: i64,
    trigger: String,
    created_at_ms: i64,
    correlation_key: Option<String>,
    delivery_id: Option<String>,
    owner: Option<String>,
    lease_until_ms: Option<i64>,
}

impl RunRow {
    fn of(run: &NewRun) -> RunRow {
        RunRow {
            id: run.id.clone(),
            flow_id: run.flow_id.clone(),
            event_index: run.event_index as i64,
            trigger: to_json_text(&run.trigger),
            created_at_ms: run.created_at_ms,
            correlation_key: run.correlation_key.clone(),
            delivery_id: run.delivery_id.clone(),
            owner: run.owner.clone(),
            lease_until_ms: run.lease_until_ms,
        }
    }
}

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

/// Statements with anonymous parameters (`?`), so that several go in one query, each taking
/// the next parameters in order (see [`ProgressRow`]).
const INSERT_REQUEST: &str = "INSERT INTO trigger_requests
    (id, flow_id, received_at_ms, status, http_status, error_code, error_message, query, body, event_count, outcome)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

fn bind_request<'q>(query: SqliteQuery<'q>, request: &'q RequestRow) -> SqliteQuery<'q> {
    let r = &request.request;
    query
        .bind(&r.id)
        .bind(&r.flow_id)
        .bind(r.received_at_ms)
        .bind(request.status)
        .bind(i64::from(r.http_status))
        .bind(r.error.as_ref().map(|e| e.0.as_str()))
        .bind(r.error.as_ref().map(|e| e.1.as_str()))
        .bind(request.query.as_deref())
        .bind(r.body.as_deref())
        .bind(r.event_count as i64)
        .bind(request.outcome.as_deref())
}

const INSERT_RUN: &str = "INSERT INTO runs
    (id, request_id, flow_id, event_index, status, trigger, created_at_ms, correlation_key, delivery_id, replay_of, owner, lease_until_ms)
    VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)";

fn bind_run<'q>(
    query: SqliteQuery<'q>,
    run: &'q RunRow,
    request_id: Option<&'q str>,
    replay_of: Option<&'q str>,
) -> SqliteQuery<'q> {
    query
        .bind(&run.id)
        .bind(request_id)
        .bind(&run.flow_id)
        .bind(run.event_index)
        .bind(&run.trigger)
        .bind(run.created_at_ms)
        .bind(run.correlation_key.as_deref())
        .bind(run.delivery_id.as_deref())
        .bind(replay_of)
        .bind(run.owner.as_deref())
        .bind(run.lease_until_ms)
}

const INSERT_SUPPRESSED: &str = "INSERT INTO suppressed_events
    (request_id, event_index, flow_id, correlation_key, parent_request_id, received_at_ms, delivery_id)
    VALUES (?, ?, ?, ?, ?, ?, ?)";

/// A trigger request to insert, owned, with its JSON as text.
struct RequestRow {
    request: NewRequest,
    status: &'static str,
    query: Option<String>,
    outcome: Option<String>,
}

impl RequestRow {
    fn of(request: &NewRequest, status: &'static str) -> RequestRow {
        RequestRow {
            query: request.query.as_ref().map(to_json_text),
            outcome: request.outcome.as_ref().map(to_json_text),
            request: NewRequest {
                query: None,
                outcome: None,
                ..request.clone()
            },
            status,
        }
    }
}

/// `statements` in one query, inside a savepoint, in one round trip to SQLite's thread: they
/// take effect together or not at all. Returns the rows they read.
fn in_savepoint(statements: &[&str]) -> String {
    let mut sql = String::from("SAVEPOINT write;\n");
    for statement in statements {
        sql.push_str(statement);
        sql.push_str(";\n");
    }
    sql.push_str("RELEASE write");
    sql
}

/// Runs a query made by [`in_savepoint`]; on an error, undoes what it did.
async fn fetch_atomic(
    conn: &mut sqlx::SqliteConnection,
    query: SqliteQuery<'_>,
) -> Result<Vec<sqlx::sqlite::SqliteRow>, StorageError> {
    match query.fetch_all(&mut *conn).await {
        Ok(rows) => Ok(rows),
        Err(error) => {
            // Fails harmlessly when the error already ended the transaction.
            let _ = sqlx::raw_sql("ROLLBACK TO write; RELEASE write")
                .execute(&mut *conn)
                .await;
            Err(conflict_or(error))
        }
    }
}

#[async_trait]
impl Storage for SqliteStorage {
    async fn accept_request(
        &self,
        request: &NewRequest,
        runs: &[NewRun],
        suppressed: &[NewSuppressed],
    ) -> Result<(), StorageError> {
        let request = RequestRow::of(request, "accepted");
        let runs: Vec<RunRow> = runs.iter().map(RunRow::of).collect();
        let suppressed = suppressed.to_vec();
        self.write(
            false,
            Box::new(move |conn| {
                Box::pin(async move {
                    let mut statements = vec![INSERT_REQUEST];
                    statements.extend(runs.iter().map(|_| INSERT_RUN));
                    statements.extend(suppressed.iter().map(|_| INSERT_SUPPRESSED));
                    let sql = in_savepoint(&statements);
                    let mut query = bind_request(sqlx::query(sqlx::AssertSqlSafe(sql)), &request);
                    let request_id = request.request.id.as_str();
                    for run in &runs {
                        query = bind_run(query, run, Some(request_id), None);
                    }
                    for event in &suppressed {
                        query = query
                            .bind(request_id)
                            .bind(event.event_index as i64)
                            .bind(&event.flow_id)
                            .bind(&event.correlation_key)
                            .bind(&event.parent_request_id)
                            .bind(event.received_at_ms)
                            .bind(event.delivery_id.as_deref());
                    }
                    fetch_atomic(conn, query).await?;
                    Ok(())
                })
            }),
        )
        .await
    }

    async fn record_rejected(&self, request: &NewRequest) -> Result<(), StorageError> {
        let request = RequestRow::of(request, "rejected");
        self.write(
            false,
            Box::new(move |conn| {
                Box::pin(async move {
                    bind_request(sqlx::query(INSERT_REQUEST), &request)
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            }),
        )
        .await
    }

    async fn set_request_outcome(
        &self,
        request_id: &str,
        outcome: &Value,
    ) -> Result<(), StorageError> {
        self.execute(
            "UPDATE trigger_requests SET outcome = $1 WHERE id = $2",
            args![to_json_text(outcome), request_id],
        )
        .await
        .map(drop)
    }

    async fn start_run(&self, run_id: &str, at_ms: i64) -> Result<(), StorageError> {
        let progress = Progress {
            run_started_at_ms: Some(at_ms),
            ..Progress::default()
        };
        self.record_progress(run_id, &progress).await
    }

    async fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        failure: Option<(&str, &str)>,
        at_ms: i64,
    ) -> Result<(), StorageError> {
        let progress = Progress {
            run_finished: Some(RunFinish {
                status,
                failure,
                at_ms,
            }),
            ..Progress::default()
        };
        self.record_progress(run_id, &progress).await
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
        let progress = Progress {
            step_started: Some(StepStart {
                step_id,
                position,
                step_type,
                inputs,
                attempt,
                at_ms,
            }),
            ..Progress::default()
        };
        self.record_progress(run_id, &progress).await
    }

    async fn record_progress(
        &self,
        run_id: &str,
        progress: &Progress<'_>,
    ) -> Result<(), StorageError> {
        let row = ProgressRow::of(run_id, progress);
        self.write(
            false,
            Box::new(move |conn| Box::pin(async move { row.write(conn).await })),
        )
        .await
    }

    async fn record_attempt(
        &self,
        run_id: &str,
        step_id: &str,
        attempt: &AttemptRecord,
    ) -> Result<(), StorageError> {
        let record = serde_json::to_string(attempt).expect("attempt records serialize");
        self.execute(
            "UPDATE step_runs SET attempt_log = json_insert(coalesce(attempt_log, '[]'), '$[#]', json($3))
             WHERE run_id = $1 AND step_id = $2",
            args![run_id, step_id, record],
        )
        .await
        .map(drop)
    }

    async fn finish_step(
        &self,
        run_id: &str,
        step_id: &str,
        outcome: &StepOutcome,
    ) -> Result<(), StorageError> {
        let progress = Progress {
            step_finished: Some((step_id, outcome)),
            ..Progress::default()
        };
        self.record_progress(run_id, &progress).await
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
                    (SELECT group_concat(id, ',') FROM (SELECT id FROM runs WHERE request_id = r.id ORDER BY event_index)) AS run_ids,
                    (SELECT group_concat(request_id, ',') FROM (SELECT DISTINCT request_id FROM suppressed_events
                        WHERE parent_request_id = r.id ORDER BY received_at_ms, request_id)) AS children,
                    (SELECT count(*) FROM suppressed_events WHERE parent_request_id = r.id) AS suppressed_count,
                    (SELECT parent_request_id FROM suppressed_events WHERE request_id = r.id ORDER BY event_index LIMIT 1) AS suppressed_under
             FROM trigger_requests r
             WHERE ($1 IS NULL OR r.flow_id = $1)
               AND ($2 = 0 OR EXISTS (SELECT 1 FROM suppressed_events s WHERE s.request_id = r.id))
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
        self.execute(
            "UPDATE runs SET owner = $2, lease_until_ms = $3
             WHERE id = $1 AND status IN ('queued', 'running')
               AND (owner IS NULL OR owner = $2 OR lease_until_ms < $4)",
            args![run_id, owner, lease_until_ms, now_ms],
        )
        .await
        .map(|rows| rows == 1)
    }

    async fn renew_run_lease(
        &self,
        run_id: &str,
        owner: &str,
        lease_until_ms: i64,
    ) -> Result<bool, StorageError> {
        self.execute(
            "UPDATE runs SET lease_until_ms = $3
             WHERE id = $1 AND owner = $2 AND status IN ('queued', 'running')",
            args![run_id, owner, lease_until_ms],
        )
        .await
        .map(|rows| rows == 1)
    }

    async fn release_run(&self, run_id: &str, owner: &str) -> Result<(), StorageError> {
        self.execute(
            "UPDATE runs SET owner = NULL, lease_until_ms = NULL WHERE id = $1 AND owner = $2",
            args![run_id, owner],
        )
        .await
        .map(drop)
    }

    async fn try_lease(
        &self,
        name: &str,
        owner: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StorageError> {
        self.execute(
            "INSERT INTO leases (name, owner, until_ms) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until_ms = excluded.until_ms
             WHERE leases.owner = excluded.owner OR leases.until_ms < $4",
            args![name, owner, until_ms, now_ms],
        )
        .await
        .map(|rows| rows == 1)
    }

    async fn release_lease(&self, name: &str, owner: &str) -> Result<(), StorageError> {
        self.execute(
            "DELETE FROM leases WHERE name = $1 AND owner = $2",
            args![name, owner],
        )
        .await
        .map(drop)
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
        let run = RunRow::of(run);
        let request_id = request_id.map(str::to_owned);
        let replay_of = replay_of.to_owned();
        let reused: Vec<(String, i64, String, Option<String>, Option<String>)> = reused
            .iter()
            .map(|s| {
                (
                    s.step_id.clone(),
                    s.position,
                    s.step_type.clone(),
                    s.inputs.as_ref().map(to_json_text),
                    s.outputs.as_ref().map(to_json_text),
                )
            })
            .collect();
        self.write(
            false,
            Box::new(move |conn| {
                Box::pin(async move {
                    let mut statements = vec![INSERT_RUN];
                    statements.extend(reused.iter().map(|_| {
                        "INSERT INTO step_runs (run_id, step_id, position, step_type, status, inputs, outputs,
                                                exchanges, started_at_ms, finished_at_ms, attempts, reused_from)
                         VALUES (?, ?, ?, ?, 'succeeded', ?, ?, '[]', ?, ?, 0, ?)"
                    }));
                    let sql = in_savepoint(&statements);
                    let mut query = bind_run(
                        sqlx::query(sqlx::AssertSqlSafe(sql)),
                        &run,
                        request_id.as_deref(),
                        Some(&replay_of),
                    );
                    for (step_id, position, step_type, inputs, outputs) in &reused {
                        query = query
                            .bind(&run.id)
                            .bind(step_id)
                            .bind(*position)
                            .bind(step_type)
                            .bind(inputs.as_deref())
                            .bind(outputs.as_deref())
                            .bind(run.created_at_ms)
                            .bind(run.created_at_ms)
                            .bind(&replay_of);
                    }
                    fetch_atomic(conn, query).await?;
                    Ok(())
                })
            }),
        )
        .await
    }

    async fn prune_finished(&self, before_ms: i64) -> Result<u64, StorageError> {
        self.write(
            true,
            Box::new(move |conn| {
                Box::pin(async move {
                    // Replays keep their history readable: a run another run replays is kept
                    // until that one goes too.
                    let doomed = "SELECT id FROM runs r WHERE r.finished_at_ms < $1
                                    AND NOT EXISTS (SELECT 1 FROM runs x WHERE x.replay_of = r.id)";
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DELETE FROM step_runs WHERE run_id IN ({doomed})"
                    )))
                    .bind(before_ms)
                    .execute(&mut *conn)
                    .await?;
                    let runs = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DELETE FROM runs WHERE id IN ({doomed})"
                    )))
                    .bind(before_ms)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                    sqlx::query(
                        "DELETE FROM suppressed_events WHERE received_at_ms < $1
                           AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.request_id = suppressed_events.parent_request_id)",
                    )
                    .bind(before_ms)
                    .execute(&mut *conn)
                    .await?;
                    sqlx::query(
                        "DELETE FROM trigger_requests WHERE received_at_ms < $1
                           AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.request_id = trigger_requests.id)
                           AND NOT EXISTS (SELECT 1 FROM suppressed_events s WHERE s.request_id = trigger_requests.id)",
                    )
                    .bind(before_ms)
                    .execute(&mut *conn)
                    .await?;
                    Ok(runs)
                })
            }),
        )
        .await
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

    async fn claim_sync_event(
        &self,
        servicenow: &str,
        sys_id: &str,
        version: &str,
        at_ms: i64,
    ) -> Result<bool, StorageError> {
        self.execute(
            "INSERT INTO sync_events (servicenow, sys_id, version, received_at_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
            args![servicenow, sys_id, version, at_ms],
        )
        .await
        .map(|rows| rows == 1)
    }

    async fn release_sync_event(
        &self,
        servicenow: &str,
        sys_id: &str,
        version: &str,
    ) -> Result<(), StorageError> {
        self.execute(
            "DELETE FROM sync_events WHERE servicenow = $1 AND sys_id = $2 AND version = $3",
            args![servicenow, sys_id, version],
        )
        .await
        .map(drop)
    }

    async fn claim_note(
        &self,
        servicenow: &str,
        journal_sys_id: &str,
        at_ms: i64,
    ) -> Result<bool, StorageError> {
        self.execute(
            "INSERT INTO synced_notes (servicenow, journal_sys_id, synced_at_ms) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            args![servicenow, journal_sys_id, at_ms],
        )
        .await
        .map(|rows| rows == 1)
    }

    async fn release_note(
        &self,
        servicenow: &str,
        journal_sys_id: &str,
    ) -> Result<(), StorageError> {
        self.execute(
            "DELETE FROM synced_notes WHERE servicenow = $1 AND journal_sys_id = $2",
            args![servicenow, journal_sys_id],
        )
        .await
        .map(drop)
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
        self.execute(
            "INSERT INTO integrator_watermarks (servicenow, table_name, watermark) VALUES ($1, $2, $3)
             ON CONFLICT (servicenow, table_name) DO UPDATE SET watermark = excluded.watermark",
            args![servicenow, table, watermark],
        )
        .await
        .map(drop)
    }

    async fn record_scan(
        &self,
        servicenow: &str,
        started_at_ms: i64,
        finished_at_ms: i64,
        result: &Value,
    ) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO integrator_scans (servicenow, started_at_ms, finished_at_ms, result) VALUES ($1, $2, $3, $4)
             ON CONFLICT (servicenow) DO UPDATE SET started_at_ms = excluded.started_at_ms,
                finished_at_ms = excluded.finished_at_ms, result = excluded.result",
            args![servicenow, started_at_ms, finished_at_ms, to_json_text(result)],
        )
        .await
        .map(drop)
    }

    async fn integrator_start(&self, servicenow: &str, at_ms: i64) -> Result<i64, StorageError> {
        self.execute(
            "INSERT INTO integrator_starts (servicenow, started_at_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            args![servicenow, at_ms],
        )
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
        self.execute(
            "INSERT INTO integrator_failures (servicenow, sys_id, table_name, attempts, last_error, updated_at_ms) VALUES ($1, $2, $3, 1, $4, $5) ON CONFLICT (servicenow, sys_id) DO UPDATE SET attempts = integrator_failures.attempts + 1, last_error = excluded.last_error, updated_at_ms = excluded.updated_at_ms",
            args![servicenow, sys_id, table, error, at_ms],
        )
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
        self.execute(
            "DELETE FROM integrator_failures WHERE servicenow = $1 AND sys_id = $2",
            args![servicenow, sys_id],
        )
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

    fn write_stats(&self) -> Option<super::WriteStats> {
        self.writer.as_ref().map(GroupCommit::stats)
    }

    async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn save_link(&self, link: &Link) -> Result<Option<Link>, StorageError> {
        let link = link.clone();
        self.write(
            false,
            Box::new(move |conn| {
                Box::pin(async move {
                    let select = format!(
                        "SELECT {LINK_COLUMNS} FROM links WHERE halo_connection = ? AND halo_ticket_id = ?"
                    );
                    let sql = in_savepoint(&[
                        &select,
                        // 1-1: the record loses any other ticket's link.
                        "DELETE FROM links WHERE servicenow = ? AND sys_id = ?
                           AND NOT (halo_connection = ? AND halo_ticket_id = ?)",
                        "INSERT INTO links (halo_connection, halo_ticket_id, servicenow, table_name, sys_id, number,
                                            created_by, created_at_ms, updated_at_ms)
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                         ON CONFLICT (halo_connection, halo_ticket_id) DO UPDATE SET
                            servicenow = excluded.servicenow, table_name = excluded.table_name,
                            sys_id = excluded.sys_id, number = excluded.number, created_by = excluded.created_by,
                            created_at_ms = CASE WHEN links.sys_id = excluded.sys_id THEN links.created_at_ms
                                                 ELSE excluded.created_at_ms END,
                            updated_at_ms = excluded.updated_at_ms",
                    ]);
                    let query = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(&link.halo_connection)
                        .bind(link.halo_ticket_id)
                        .bind(&link.servicenow)
                        .bind(&link.sys_id)
                        .bind(&link.halo_connection)
                        .bind(link.halo_ticket_id)
                        .bind(&link.halo_connection)
                        .bind(link.halo_ticket_id)
                        .bind(&link.servicenow)
                        .bind(&link.table)
                        .bind(&link.sys_id)
                        .bind(link.number.as_deref())
                        .bind(link.created_by.as_str())
                        .bind(link.created_at_ms)
                        .bind(link.updated_at_ms);
                    let rows = fetch_atomic(conn, query).await?;
                    rows.first().map(link_row).transpose()
                })
            }),
        )
        .await
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(i: usize, body: &str) -> NewRequest {
        NewRequest {
            id: format!("req-{i}"),
            flow_id: "f".into(),
            received_at_ms: i as i64,
            http_status: 202,
            error: None,
            query: None,
            body: Some(body.to_owned()),
            event_count: 0,
            outcome: None,
        }
    }

    #[tokio::test]
    async fn the_wal_starts_over_under_steady_writes() {
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open_dir(dir.path()).await.unwrap();
        let body = "y".repeat(3000);
        let until = std::time::Instant::now() + Duration::from_millis(3500);
        let mut writes = 0;
        while std::time::Instant::now() < until {
            storage
                .accept_request(&request(writes, &body), &[], &[])
                .await
                .unwrap();
            writes += 1;
        }
        // Frames in the WAL now: every write added at least one, so without a checkpoint that
        // caught up (and the WAL starting over after it) there would be at least `writes`.
        let (_, frames, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(storage.pool())
            .await
            .unwrap();
        assert!(
            frames < writes as i64 / 2,
            "{frames} frames in the WAL after {writes} writes: it never started over"
        );
    }

    #[tokio::test]
    async fn the_wal_is_checkpointed_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open_dir(dir.path()).await.unwrap();
        let file = dir.path().join(DATABASE_FILE);
        let before = std::fs::metadata(&file).unwrap().len();
        let body = "x".repeat(2000);
        for i in 0..300 {
            storage
                .accept_request(&request(i, &body), &[], &[])
                .await
                .unwrap();
        }
        // The writer never checkpoints itself; the background checkpointer moves the pages
        // from the WAL into the database file within a second or so.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let now = std::fs::metadata(&file).unwrap().len();
            if now > before + 300 * 2000 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the database file stayed at {now} bytes (from {before}): no checkpoint"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
