//! The PostgreSQL backend, for several nodes sharing one database: migrations in
//! `migrations/postgres`, the same statements and behaviour as SQLite (`shared`; one test suite
//! runs against both), and flood-control state kept in the database so every node sees the
//! same counts. Reads go through a pool; writes through one connection per node that commits
//! them in batches (see `group_commit`).

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use futures_core::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Row};
use tokio::sync::watch;

use super::error::{BackendError, database, migration, write_error};
use super::group_commit::{self, Batches, GroupCommit};
use super::rows::columns_for;
use super::sql::{Arg, Dialect, Sql, Statement, arguments, number, numbered};
use super::{Backend, FloodStore, StorageError, WriteQueue, WriteStats};
use crate::admission::{Admission, KeyState, Window};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

columns_for!(PgRow);

/// The channel a node notifies when it stored runs that wait for a slot.
macro_rules! runs_waiting_channel {
    () => {
        "haloflow_runs_waiting"
    };
}

/// The writer's `application_name`: how to find its backend in `pg_stat_activity`.
pub const WRITER_APPLICATION_NAME: &str = "haloflow writer";

#[derive(Debug, Clone)]
pub struct PostgresStorage {
    pool: PgPool,
    writer: GroupCommit<PgBatches>,
    /// Changes when some node stored runs that wait for a slot.
    runs_waiting: watch::Receiver<()>,
}

impl PostgresStorage {
    /// Connects to a `postgres://` URL and applies migrations (several nodes starting at once
    /// is safe: migrating takes an advisory lock).
    pub async fn connect(url: &str) -> Result<Self, StorageError> {
        let options = PgConnectOptions::from_str(url).map_err(database)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(database)?;
        MIGRATOR.run(&pool).await.map_err(migration)?;
        let options = options.application_name(WRITER_APPLICATION_NAME);
        let conn = PgConnection::connect_with(&options)
            .await
            .map_err(database)?;
        let writer = GroupCommit::start(PgBatches {
            options,
            conn: Some(conn),
        });
        let mut listener = PgListener::connect_with(&pool).await.map_err(database)?;
        let channel = runs_waiting_channel!();
        listener.listen(channel).await.map_err(database)?;
        let (notices, runs_waiting) = watch::channel(());
        tokio::spawn(relay_notices(listener, notices));
        Ok(PostgresStorage {
            pool,
            writer,
            runs_waiting,
        })
    }

    /// Gives the named lease back at once (the runtime lets leases expire; for tools and
    /// tests).
    pub async fn release_lease(&self, name: &str, owner: &str) -> Result<(), StorageError> {
        super::shared::release_lease(self, name, owner).await
    }
}

/// Passes each notice on until the storage is gone. The listener reconnects by itself; notices
/// sent meanwhile are lost, so a lost connection counts as a notice.
async fn relay_notices(mut listener: PgListener, notices: watch::Sender<()>) {
    loop {
        tokio::select! {
            () = notices.closed() => return,
            received = listener.recv() => {
                if let Err(error) = received {
                    tracing::warn!(%error, "Lost the connection that listens for queued runs; reconnecting.");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                notices.send_replace(());
            }
        }
    }
}

/// The group-commit writer's connection; reconnects for the next batch when it was lost.
struct PgBatches {
    options: PgConnectOptions,
    conn: Option<PgConnection>,
}

impl Batches for PgBatches {
    type Connection = PgConnection;

    fn begin(&mut self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            if self.conn.is_none() {
                let conn = PgConnection::connect_with(&self.options).await;
                self.conn = Some(conn.map_err(BackendError::from_sqlx)?);
            }
            let begun = self.run("BEGIN").await;
            if begun.is_err() {
                self.lost();
            }
            begun
        })
    }

    fn connection(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("a batch runs only after `begin` connected")
    }

    fn run(&mut self, sql: &'static str) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let Some(conn) = self.conn.as_mut() else {
                return Err(BackendError::new("the writer lost its connection", true));
            };
            let done = sqlx::raw_sql(sql).execute(conn).await;
            done.map(drop).map_err(BackendError::from_sqlx)
        })
    }

    /// Any error of a statement aborts a PostgreSQL transaction; inside a savepoint, rolling
    /// back to it recovers the transaction (unless the connection is gone).
    fn ends_transaction(error: &StorageError, in_savepoint: bool) -> bool {
        !in_savepoint
            && matches!(
                error,
                StorageError::Database(_) | StorageError::Conflict | StorageError::Batch(_)
            )
    }

    fn lost(&mut self) {
        self.conn = None;
    }
}

/// A statement with its `?`s numbered, and its arguments.
fn query(sql: &'static str, args: Vec<Arg>) -> Result<Query, StorageError> {
    Ok(sqlx::query_with(
        sqlx::AssertSqlSafe(numbered(sql)),
        arguments::<sqlx::Postgres>(args)?,
    ))
}

#[async_trait]
impl Sql for PostgresStorage {
    type Row = PgRow;

    const DIALECT: Dialect = Dialect {
        finish_step: "UPDATE step_runs SET status = ?, outputs = ?, error_code = ?, error = ?, exchanges = ?, finished_at_ms = ?,
                attempt_log = CASE WHEN ?::text IS NULL THEN attempt_log
                                   WHEN attempt_log IS NULL THEN '[' || ?::text || ']'
                                   ELSE (attempt_log::jsonb || jsonb_build_array(?::jsonb))::text END
             WHERE run_id = ? AND step_id = ?",
        append_attempt: "UPDATE step_runs
             SET attempt_log = (COALESCE(attempt_log, '[]')::jsonb || jsonb_build_array(?::jsonb))::text
             WHERE run_id = ? AND step_id = ?",
        run_counts_since: super::sql::run_counts_since!(""),
        claimable_runs: super::sql::claimable_runs!(""),
        claim_queued_runs: super::sql::claim_queued_runs!("", "FOR UPDATE SKIP LOCKED"),
        // Several in one transaction (one batch) are delivered once.
        runs_waiting_notice: Some(concat!(
            "SELECT pg_notify('",
            runs_waiting_channel!(),
            "', '')"
        )),
    };

    async fn fetch_all(
        &self,
        sql: &'static str,
        args: Vec<Arg>,
    ) -> Result<Vec<PgRow>, StorageError> {
        query(sql, args)?
            .fetch_all(&self.pool)
            .await
            .map_err(database)
    }

    async fn fetch_listing(&self, sql: String, args: Vec<Arg>) -> Result<Vec<PgRow>, StorageError> {
        sqlx::query_with(sqlx::AssertSqlSafe(sql), arguments::<sqlx::Postgres>(args)?)
            .fetch_all(&self.pool)
            .await
            .map_err(database)
    }

    /// In a savepoint: a statement that fails (a conflict, a lock another node's batch
    /// holds in a deadlock) fails alone, not the batch.
    async fn execute(&self, sql: &'static str, args: Vec<Arg>) -> Result<u64, StorageError> {
        let query = query(sql, args)?;
        let work: Work<u64> = Box::new(move |conn| {
            Box::pin(async move {
                let done = query.execute(conn).await;
                Ok(done.map_err(write_error)?.rows_affected())
            })
        });
        self.writer.write(true, work).await
    }

    async fn execute_atomic(&self, statements: Vec<Statement>) -> Result<Vec<PgRow>, StorageError> {
        let queries = queries(statements)?;
        let work: Work<Vec<PgRow>> = Box::new(move |conn| {
            Box::pin(async move {
                let mut rows = Vec::new();
                for query in queries {
                    rows.extend(query.fetch_all(&mut *conn).await.map_err(write_error)?);
                }
                Ok(rows)
            })
        });
        self.writer.write(true, work).await
    }

    /// Without a savepoint (two round trips saved per write): a run's progress touches only
    /// rows its owner writes, so only a lost connection fails it, and with it the batch.
    async fn execute_all(&self, statements: Vec<Statement>) -> Result<(), StorageError> {
        let queries = progress_queries(statements)?;
        let work: Work<()> = Box::new(move |conn| {
            Box::pin(async move {
                for query in queries {
                    query.execute(&mut *conn).await.map_err(write_error)?;
                }
                Ok(())
            })
        });
        self.writer.write(false, work).await
    }
}

type Work<T> = group_commit::Work<PgConnection, T>;

type Query = sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// A run's progress in as few statements as it can: all in one (data-modifying `WITH` parts
/// ahead of the last), one round trip, when each names another table. Two on one table stay
/// apart: the parts of one statement see one snapshot, so a second change to a row would not
/// see the first.
fn progress_queries(statements: Vec<Statement>) -> Result<Vec<Query>, StorageError> {
    let tables: Vec<_> = statements.iter().map(|s| table(s.sql)).collect();
    let apart = tables
        .iter()
        .enumerate()
        .all(|(i, t)| t.is_some() && !tables[..i].contains(t));
    // Numbered once for the whole: only statements with `?` parameters throughout.
    let unnumbered = statements.iter().all(|s| !s.sql.contains('$'));
    if statements.len() < 2 || !apart || !unnumbered {
        return queries(statements);
    }
    let last = statements.len() - 1;
    let mut sql = String::from("WITH ");
    let mut args = Vec::new();
    for (i, statement) in statements.into_iter().enumerate() {
        match i {
            _ if i == last => sql.push_str(statement.sql),
            0 => sql.push_str(&format!("w0 AS ({})\n", statement.sql)),
            _ => sql.push_str(&format!(", w{i} AS ({})\n", statement.sql)),
        }
        args.extend(statement.args);
    }
    let query = sqlx::query_with(
        sqlx::AssertSqlSafe(number(&sql)),
        arguments::<sqlx::Postgres>(args)?,
    );
    Ok(vec![query])
}

/// The table an `UPDATE` or `INSERT` writes.
fn table(sql: &str) -> Option<&str> {
    let rest = sql
        .strip_prefix("UPDATE ")
        .or_else(|| sql.strip_prefix("INSERT INTO "))?;
    rest.split_whitespace().next()
}

fn queries(statements: Vec<Statement>) -> Result<Vec<Query>, StorageError> {
    statements
        .into_iter()
        .map(|Statement { sql, args }| query(sql, args))
        .collect()
}

#[async_trait]
impl Backend for PostgresStorage {
    async fn ping(&self) -> Result<(), StorageError> {
        self.fetch_all("SELECT 1", Vec::new()).await.map(drop)
    }

    fn write_stats(&self) -> Option<WriteStats> {
        Some(self.writer.stats())
    }

    fn write_queue(&self) -> Option<WriteQueue> {
        Some(self.writer.queue())
    }

    fn runs_waiting_notices(&self) -> Option<watch::Receiver<()>> {
        Some(self.runs_waiting.clone())
    }

    /// Several nodes share it: flood control lives in it.
    fn flood_store(self: Arc<Self>) -> Option<Arc<dyn FloodStore>> {
        Some(self)
    }
}

#[async_trait]
impl FloodStore for PostgresStorage {
    async fn flood_admit(
        &self,
        flow_id: &str,
        key: &str,
        request_id: &str,
        now_ms: i64,
        window_ms: i64,
        max_requests: u32,
    ) -> Result<Admission, StorageError> {
        let window = Window {
            length: window_ms,
            max_requests,
        };
        self.admit(flow_id, key, request_id, now_ms, window)
            .await
            .map_err(database)
    }

    async fn flood_sweep(&self, idle_before_ms: i64) -> Result<u64, StorageError> {
        let sql = "DELETE FROM flood_state WHERE last_ms < $1";
        self.execute(sql, vec![Arg::from(idle_before_ms)]).await
    }

    async fn flood_keys(&self) -> Result<Vec<(String, usize)>, StorageError> {
        let sql =
            "SELECT flow_id, count(*) AS n FROM flood_state GROUP BY flow_id ORDER BY flow_id";
        let rows = self.fetch_all(sql, Vec::new()).await?;
        rows.iter()
            .map(|row| {
                let count: i64 = row.try_get("n").map_err(database)?;
                Ok((
                    row.try_get("flow_id").map_err(database)?,
                    count.max(0) as usize,
                ))
            })
            .collect()
    }
}

impl PostgresStorage {
    /// One row per key, locked while this event is decided: correlated requests on several
    /// nodes queue on it, unrelated ones never meet. The rule is [`KeyState::admit`].
    async fn admit(
        &self,
        flow_id: &str,
        key: &str,
        request_id: &str,
        now_ms: i64,
        window: Window,
    ) -> Result<Admission, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
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
        let admission = state.admit(request_id, now_ms, window);
        sqlx::query(
            "UPDATE flood_state SET arrivals = $3, parent_request_id = $4, suppressed_count = $5, last_ms = $6
             WHERE flow_id = $1 AND correlation_key = $2",
        )
        .bind(flow_id)
        .bind(key)
        .bind(Vec::from(state.arrivals))
        .bind(&state.parent)
        .bind(state.suppressed as i64)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(admission)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sql::{self, args};
    use sqlx::Execute;

    fn sql_of(statements: Vec<Statement>) -> Vec<String> {
        let queries = progress_queries(statements).unwrap();
        queries
            .into_iter()
            .map(|q| q.sql().as_str().to_owned())
            .collect()
    }

    #[test]
    fn progress_on_different_tables_is_one_statement_and_on_one_table_stays_apart() {
        let start = || Statement::new(sql::START_RUN, args![1_i64, "r"]);
        let step = || {
            let args = args!["r", "s", 0_i64, "t", "{}", 1_i64, 1_i64];
            Statement::new(sql::START_STEP, args)
        };
        let one = sql_of(vec![start(), step()]);
        assert_eq!(one.len(), 1, "{one:?}");
        assert!(one[0].starts_with("WITH w0 AS (UPDATE runs"), "{}", one[0]);
        assert!(one[0].contains("$3") && one[0].contains("$9"), "{}", one[0]);
        assert_eq!(sql_of(vec![step(), step()]).len(), 2);
        assert_eq!(sql_of(vec![start(), start()]).len(), 2);
    }
}
