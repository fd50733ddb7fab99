//! Persistence of trigger requests, runs and their steps, links and sync state.
//!
//! The contract is a handful of focused traits ([`RunStore`], [`LeaseStore`], [`LinkStore`],
//! [`SyncStore`], [`Backend`]); [`Storage`] is all of them, the one object callers hold
//! (`Arc<dyn Storage>`). A backend several nodes share also keeps flood control
//! ([`FloodStore`], handed out by [`Backend::flood_store`]). [`open`] picks the backend from [`StorageSettings`]:
//! SQLite, the embedded default, or PostgreSQL for several nodes. Both backends run the same
//! statements (`sql`, `shared`), each with its own migrations folder; the driver stays inside
//! this module ([`StorageError`] carries an opaque [`BackendError`]).

mod error;
mod records;
mod stores;

// What the SQL backends share; a build without either has only the contract.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod rows;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod shared;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod group_commit;
#[cfg(all(test, feature = "sqlite"))]
mod group_commit_tests;
/// The list queries' plans: each filter is served by an index (a documented check, not a timing).
#[cfg(all(test, feature = "sqlite"))]
mod plans;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "postgres")]
mod postgres;

use std::path::PathBuf;
use std::sync::Arc;

pub use crate::config::Durability;
pub use error::{BackendError, StorageError};
#[cfg(feature = "postgres")]
pub use postgres::PostgresStorage;
pub use records::{
    AttemptOutcome, AttemptRecord, Cursor, FloodRecord, Link, LinkCursor, LinkFilter, LinkOrigin,
    LinkPage, NewRequest, NewRun, NewSuppressed, Progress, QueuedRun, RequestFilter, RequestRecord,
    RunCount, RunDetail, RunFilter, RunFinish, RunStatus, RunSummary, StepOutcome, StepRunRecord,
    StepStart, StepStatus, SyncFailure, Verdict, WriteQueue, WriteStats,
};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStorage;
pub use stores::{Backend, FloodStore, LeaseStore, LinkStore, RunStore, Storage, SyncStore};

/// Where the run history lives. [`open`] reads it; the CLI fills it from `--data`,
/// `--database` (`HALOFLOW_DATABASE_URL`) and `[server]`.
#[derive(Debug, Clone, Default)]
pub struct StorageSettings {
    /// `sqlite://<file>` or `postgres://user@host/db`; without it, SQLite's [`DATABASE_FILE`]
    /// in `data_dir`.
    pub database_url: Option<String>,
    /// Where SQLite's file is kept when no URL is given (created if missing).
    pub data_dir: PathBuf,
    /// What a SQLite commit survives.
    pub durability: Durability,
}

impl StorageSettings {
    /// SQLite in `data_dir`, or the database `database_url` names.
    pub fn new(data_dir: impl Into<PathBuf>, database_url: Option<String>) -> Self {
        StorageSettings {
            database_url,
            data_dir: data_dir.into(),
            durability: Durability::default(),
        }
    }
}

/// SQLite's file in the data directory.
pub const DATABASE_FILE: &str = "haloflow.db";

/// Opens (creating if needed, and migrating) the storage `settings` name: the database URL's,
/// else SQLite in the data directory.
pub async fn open(settings: &StorageSettings) -> Result<Arc<dyn Storage>, StorageError> {
    match settings.database_url.as_deref() {
        None => open_sqlite(settings, None).await,
        Some(url) if url.starts_with("sqlite:") => open_sqlite(settings, Some(url)).await,
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            open_postgres(url).await
        }
        Some(url) => Err(StorageError::UnknownUrl(crate::outbound::redact_url(url))),
    }
}

/// A private, empty database that lives as long as the returned storage (SQLite in memory):
/// for dry runs and tests.
pub async fn open_in_memory() -> Result<Arc<dyn Storage>, StorageError> {
    #[cfg(feature = "sqlite")]
    return Ok(Arc::new(SqliteStorage::in_memory().await?));
    #[cfg(not(feature = "sqlite"))]
    return Err(StorageError::NotBuilt("sqlite"));
}

#[cfg(feature = "sqlite")]
async fn open_sqlite(
    settings: &StorageSettings,
    url: Option<&str>,
) -> Result<Arc<dyn Storage>, StorageError> {
    let durability = settings.durability;
    let storage = match url {
        Some(url) => SqliteStorage::open_url_with(url, durability).await?,
        None => SqliteStorage::open_dir_with(&settings.data_dir, durability).await?,
    };
    Ok(Arc::new(storage))
}

#[cfg(not(feature = "sqlite"))]
async fn open_sqlite(
    _settings: &StorageSettings,
    _url: Option<&str>,
) -> Result<Arc<dyn Storage>, StorageError> {
    Err(StorageError::NotBuilt("sqlite"))
}

#[cfg(feature = "postgres")]
async fn open_postgres(url: &str) -> Result<Arc<dyn Storage>, StorageError> {
    Ok(Arc::new(PostgresStorage::connect(url).await?))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(_url: &str) -> Result<Arc<dyn Storage>, StorageError> {
    Err(StorageError::NotBuilt("postgres"))
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

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_picks_the_backend_from_the_settings() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(&StorageSettings::new(dir.path(), None)).await.unwrap();
        storage.ping().await.unwrap();
        assert!(storage.flood_store().is_none(), "flood control in memory");
        assert!(
            dir.path().join(DATABASE_FILE).exists(),
            "SQLite in the data directory"
        );
        let url = format!("sqlite://{}", dir.path().join("other.db").display());
        open(&StorageSettings::new(dir.path(), Some(url)))
            .await
            .unwrap();
        assert!(dir.path().join("other.db").exists());
        let unknown = StorageSettings::new(dir.path(), Some("mysql://me:secret@db/x".into()));
        match open(&unknown).await {
            Err(StorageError::UnknownUrl(url)) => assert_eq!(url, "mysql://***@db/x"),
            other => panic!("{other:?}"),
        }
    }
}
