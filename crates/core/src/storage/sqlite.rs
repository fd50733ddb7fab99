//! The SQLite backend: one file, WAL journal, a busy timeout, migrations in `migrations/sqlite`.
//! Reads go through a pool; writes through one connection that commits them in batches (see
//! `group_commit`). The stores themselves are shared with PostgreSQL (`shared`).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use futures_core::future::BoxFuture;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use super::error::{BackendError, database, migration, write_error};
use super::group_commit::{self, Batches, GroupCommit};
use super::rows::columns_for;
use super::sql::{Arg, Dialect, Sql, Statement, arguments};
use super::{Backend, DATABASE_FILE, StorageError, WriteQueue, WriteStats};
use crate::config::Durability;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

columns_for!(SqliteRow);

type Work<T> = group_commit::Work<sqlx::SqliteConnection, T>;

/// The group-commit writer's connection. With `background_checkpoints`, another connection
/// checkpoints the WAL (the writer's own automatic checkpoints are then off): a checkpoint
/// copies pages and syncs the file, and done by the writer at a commit it held every write
/// waiting behind it.
pub(super) struct SqliteBatches {
    conn: sqlx::SqliteConnection,
    background_checkpoints: bool,
    last_checkpoint: std::time::Instant,
}

impl SqliteBatches {
    pub(super) fn new(conn: sqlx::SqliteConnection, background_checkpoints: bool) -> Self {
        SqliteBatches {
            conn,
            background_checkpoints,
            last_checkpoint: std::time::Instant::now(),
        }
    }
}

impl Batches for SqliteBatches {
    type Connection = sqlx::SqliteConnection;

    fn begin(&mut self) -> BoxFuture<'_, Result<(), BackendError>> {
        self.run("BEGIN IMMEDIATE")
    }

    fn connection(&mut self) -> &mut sqlx::SqliteConnection {
        &mut self.conn
    }

    fn run(&mut self, sql: &'static str) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let done = sqlx::raw_sql(sql).execute(&mut self.conn).await;
            done.map(drop).map_err(BackendError::from_sqlx)
        })
    }

    /// Constraint violations (a taken key) and bad stored JSON leave the transaction open;
    /// any other database error (I/O, full disk, busy) may have rolled it back.
    fn ends_transaction(error: &StorageError, _in_savepoint: bool) -> bool {
        match error {
            StorageError::Database(e) => match e.as_sqlx() {
                Some(sqlx::Error::Database(e)) => !matches!(
                    e.kind(),
                    sqlx::error::ErrorKind::UniqueViolation
                        | sqlx::error::ErrorKind::ForeignKeyViolation
                        | sqlx::error::ErrorKind::NotNullViolation
                        | sqlx::error::ErrorKind::CheckViolation
                ),
                _ => true,
            },
            StorageError::Batch(_) => true,
            _ => false,
        }
    }

    /// Four times a second the writer checkpoints what little the background checkpointer
    /// left: under steady writes that one never catches up with the end of the WAL, and SQLite
    /// starts the WAL over only after a checkpoint that did (otherwise the WAL and its index in
    /// shared memory grow for ever).
    fn after_batch(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if !self.background_checkpoints
                || self.last_checkpoint.elapsed() < WRITER_CHECKPOINT_EVERY
            {
                return;
            }
            self.last_checkpoint = std::time::Instant::now();
            if let Err(e) = sqlx::raw_sql("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&mut self.conn)
                .await
            {
                tracing::warn!(error = %e, "A WAL checkpoint failed; the next one tries again.");
            }
        })
    }
}

/// How often the background checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// How often the writer finishes a checkpoint itself, between two batches.
const WRITER_CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Checkpoints until the writer is gone. PASSIVE: never waits for readers or the writer; what
/// it cannot copy now it copies next time.
async fn checkpoint(mut conn: sqlx::SqliteConnection, writer_alive: impl Fn() -> bool) {
    loop {
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        if !writer_alive() {
            return;
        }
        if let Err(e) = sqlx::raw_sql("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut conn)
            .await
        {
            tracing::warn!(error = %e, "A background WAL checkpoint failed; the next one tries again.");
        }
    }
}

/// Reads go through `pool`; writes through `writer`, one connection that commits them in
/// batches (see `group_commit`), or, without it (in memory), one transaction each on `pool`.
#[derive(Debug, Clone)]
pub struct SqliteStorage {
    pool: SqlitePool,
    writer: Option<GroupCommit<SqliteBatches>>,
}

impl SqliteStorage {
    /// Opens (creating if needed) `haloflow.db` in `data_dir` and applies migrations; commits
    /// survive a process crash.
    /// The pool, for tests that read query plans.
    #[cfg(test)]
    pub(super) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

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
        let options = SqliteConnectOptions::from_str("sqlite::memory:").map_err(database)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(database)?;
        MIGRATOR.run(&pool).await.map_err(migration)?;
        Ok(SqliteStorage { pool, writer: None })
    }

    /// Opens a `sqlite://` URL (created if missing).
    pub async fn open_url(url: &str) -> Result<Self, StorageError> {
        SqliteStorage::open_url_with(url, Durability::default()).await
    }

    /// [`SqliteStorage::open_url`] with a chosen durability.
    pub async fn open_url_with(url: &str, durability: Durability) -> Result<Self, StorageError> {
        let options = SqliteConnectOptions::from_str(url).map_err(database)?;
        SqliteStorage::open(options, durability).await
    }

    /// Gives the named lease back at once (the runtime lets leases expire; for tools and
    /// tests).
    pub async fn release_lease(&self, name: &str, owner: &str) -> Result<(), StorageError> {
        super::shared::release_lease(self, name, owner).await
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
            .await
            .map_err(database)?;
        MIGRATOR.run(&pool).await.map_err(migration)?;
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
        let writer_connection = connect(&writer_options).await.map_err(database)?;
        let writer = GroupCommit::start(SqliteBatches::new(writer_connection, true));
        let checkpointer = connect(&options).await.map_err(database)?;
        tokio::spawn(checkpoint(checkpointer, writer.alive()));
        Ok(SqliteStorage {
            pool,
            writer: Some(writer),
        })
    }

    /// Runs `work` in a write transaction and returns once it committed (statements that must
    /// take effect together bring their own savepoint: see [`one_query`]). Without the
    /// group-commit writer, the transaction takes the write lock at once (`BEGIN IMMEDIATE`):
    /// a deferred one that reads first fails with "database is locked" when another
    /// connection writes in between, which the busy timeout cannot wait out.
    async fn write<T: Send + 'static>(&self, work: Work<T>) -> Result<T, StorageError> {
        match &self.writer {
            Some(writer) => writer.write(false, work).await,
            None => {
                let mut tx = self
                    .pool
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(database)?;
                let value = work(&mut tx).await?;
                tx.commit().await.map_err(database)?;
                Ok(value)
            }
        }
    }
}

/// `statements` in one query, in one round trip to SQLite's thread; inside a savepoint with
/// `atomic` (they take effect together or not at all). Their `?` parameters take the
/// arguments in order.
fn one_query(statements: Vec<Statement>, atomic: bool) -> (String, Vec<Arg>) {
    let length: usize = statements.iter().map(|s| s.sql.len() + 2).sum();
    let mut sql = String::with_capacity(length + 32);
    let mut args = Vec::with_capacity(statements.iter().map(|s| s.args.len()).sum());
    if atomic {
        sql.push_str("SAVEPOINT write;\n");
    }
    for statement in statements {
        sql.push_str(statement.sql);
        sql.push_str(";\n");
        args.extend(statement.args);
    }
    if atomic {
        sql.push_str("RELEASE write");
    }
    (sql, args)
}

/// Runs an atomic query made by [`one_query`]; on an error, undoes what it did.
async fn fetch_atomic(
    conn: &mut sqlx::SqliteConnection,
    sql: String,
    args: Vec<Arg>,
) -> Result<Vec<SqliteRow>, StorageError> {
    let query = sqlx::query_with(sqlx::AssertSqlSafe(sql), arguments::<sqlx::Sqlite>(args)?);
    match query.fetch_all(&mut *conn).await {
        Ok(rows) => Ok(rows),
        Err(error) => {
            // Fails harmlessly when the error already ended the transaction.
            let _ = sqlx::raw_sql("ROLLBACK TO write; RELEASE write")
                .execute(&mut *conn)
                .await;
            Err(write_error(error))
        }
    }
}

#[async_trait]
impl Sql for SqliteStorage {
    type Row = SqliteRow;

    const DIALECT: Dialect = Dialect {
        // A first attempt makes the list without parsing JSON.
        finish_step: "UPDATE step_runs SET status = ?, outputs = ?, error_code = ?, error = ?, exchanges = ?, finished_at_ms = ?,
                attempt_log = CASE WHEN ? IS NULL THEN attempt_log
                                   WHEN attempt_log IS NULL THEN '[' || ? || ']'
                                   ELSE json_insert(attempt_log, '$[#]', json(?)) END
             WHERE run_id = ? AND step_id = ?",
        append_attempt: "UPDATE step_runs SET attempt_log = json_insert(coalesce(attempt_log, '[]'), '$[#]', json(?))
             WHERE run_id = ? AND step_id = ?",
        run_counts_since: super::sql::run_counts_since!("INDEXED BY runs_by_time"),
        claimable_runs: super::sql::claimable_runs!("INDEXED BY runs_waiting"),
        claim_queued_runs: super::sql::claim_queued_runs!("INDEXED BY runs_queued", ""),
        runs_waiting_notice: None,
    };

    async fn fetch_all(
        &self,
        sql: &'static str,
        args: Vec<Arg>,
    ) -> Result<Vec<SqliteRow>, StorageError> {
        sqlx::query_with(sql, arguments::<sqlx::Sqlite>(args)?)
            .fetch_all(&self.pool)
            .await
            .map_err(database)
    }

    async fn fetch_listing(
        &self,
        sql: String,
        args: Vec<Arg>,
    ) -> Result<Vec<SqliteRow>, StorageError> {
        sqlx::query_with(sqlx::AssertSqlSafe(sql), arguments::<sqlx::Sqlite>(args)?)
            .fetch_all(&self.pool)
            .await
            .map_err(database)
    }

    async fn execute(&self, sql: &'static str, args: Vec<Arg>) -> Result<u64, StorageError> {
        let args = arguments::<sqlx::Sqlite>(args)?;
        self.write(Box::new(move |conn| {
            Box::pin(async move {
                let done = sqlx::query_with(sql, args).execute(conn).await;
                Ok(done.map_err(write_error)?.rows_affected())
            })
        }))
        .await
    }

    async fn execute_atomic(
        &self,
        statements: Vec<Statement>,
    ) -> Result<Vec<SqliteRow>, StorageError> {
        let (sql, args) = one_query(statements, true);
        self.write(Box::new(move |conn| {
            Box::pin(async move { fetch_atomic(conn, sql, args).await })
        }))
        .await
    }

    /// One query, without the savepoint: the group commit's transaction already holds the
    /// writes together, and a savepoint per progress write costs a tenth of the throughput.
    async fn execute_all(&self, statements: Vec<Statement>) -> Result<(), StorageError> {
        let (sql, args) = one_query(statements, false);
        let args = arguments::<sqlx::Sqlite>(args)?;
        self.write(Box::new(move |conn| {
            Box::pin(async move {
                let query = sqlx::query_with(sqlx::AssertSqlSafe(sql), args);
                query.execute(conn).await.map_err(write_error)?;
                Ok(())
            })
        }))
        .await
    }
}

#[async_trait]
impl Backend for SqliteStorage {
    async fn ping(&self) -> Result<(), StorageError> {
        self.fetch_all("SELECT 1", Vec::new()).await.map(drop)
    }

    fn write_stats(&self) -> Option<WriteStats> {
        self.writer.as_ref().map(GroupCommit::stats)
    }

    fn write_queue(&self) -> Option<WriteQueue> {
        self.writer.as_ref().map(GroupCommit::queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{NewRequest, RunStore};

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
        let wal = dir.path().join(format!("{DATABASE_FILE}-wal"));
        // Salt-1 of the WAL header (big-endian at byte 16): SQLite changes it each time the WAL
        // starts over from its beginning, and at no other time. Read without a lock, so the
        // test observes and does not itself checkpoint.
        let salt = || {
            let head = std::fs::read(&wal).ok()?;
            Some(u32::from_be_bytes(head.get(16..20)?.try_into().ok()?))
        };
        let body = "y".repeat(3000);
        let mut writes = 0;
        let mut first = None;
        // However loaded the machine, writes never pause here: the WAL must start over anyway
        // (the writer checkpoints between batches). Bounded, so a WAL that never does fails.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            storage
                .accept_request(&request(writes, &body), &[], &[])
                .await
                .unwrap();
            writes += 1;
            let now = salt();
            match first {
                None => first = now,
                Some(before) if now.is_some_and(|now| now != before) => break,
                Some(_) => {}
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the WAL never started over in {writes} writes"
            );
        }
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
