//! The PostgreSQL backend, for several nodes sharing one database: migrations in
//! `migrations/postgres`, the same statements and behaviour as SQLite (`shared`; one test suite
//! runs against both), and flood-control state kept in the database so every node sees the
//! same counts.

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};

use super::error::{database, migration, write_error};
use super::rows::columns_for;
use super::sql::{Arg, Dialect, Sql, Statement, arguments, numbered};
use super::{Backend, FloodStore, StorageError};
use crate::admission::{Admission, KeyState, Window};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

columns_for!(PgRow);

#[derive(Debug, Clone)]
pub struct PostgresStorage {
    pool: PgPool,
}

impl PostgresStorage {
    /// Connects to a `postgres://` URL and applies migrations (several nodes starting at once
    /// is safe: migrating takes an advisory lock).
    pub async fn connect(url: &str) -> Result<Self, StorageError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(database)?;
        MIGRATOR.run(&pool).await.map_err(migration)?;
        Ok(PostgresStorage { pool })
    }

    /// Gives the named lease back at once (the runtime lets leases expire; for tools and
    /// tests).
    pub async fn release_lease(&self, name: &str, owner: &str) -> Result<(), StorageError> {
        super::shared::release_lease(self, name, owner).await
    }
}

/// A statement with its `?`s numbered, and its arguments.
fn query(
    sql: &'static str,
    args: Vec<Arg>,
) -> Result<sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments>, StorageError>
{
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

    async fn execute(&self, sql: &'static str, args: Vec<Arg>) -> Result<u64, StorageError> {
        let done = query(sql, args)?.execute(&self.pool).await;
        Ok(done.map_err(write_error)?.rows_affected())
    }

    async fn execute_atomic(&self, statements: Vec<Statement>) -> Result<Vec<PgRow>, StorageError> {
        let mut tx = self.pool.begin().await.map_err(database)?;
        let mut rows = Vec::new();
        for Statement { sql, args } in statements {
            let read = query(sql, args)?.fetch_all(&mut *tx).await;
            rows.extend(read.map_err(write_error)?);
        }
        tx.commit().await.map_err(database)?;
        Ok(rows)
    }
}

#[async_trait]
impl Backend for PostgresStorage {
    async fn ping(&self) -> Result<(), StorageError> {
        self.fetch_all("SELECT 1", Vec::new()).await.map(drop)
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
