//! What can go wrong in storage, and whether trying again may help. The database driver's own
//! error stays inside: callers see its text and a retryable flag ([`BackendError`]).

use std::error::Error;
use std::fmt;
use std::sync::Arc;

#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database failed: a lost connection, a full disk, a statement it refused.
    #[error("database error: {0}")]
    Database(BackendError),
    #[error("database migration failed: {0}")]
    Migration(BackendError),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    /// A unique key was taken by a concurrent writer (e.g. the same delivery twice).
    #[error("a concurrent write took the same key")]
    Conflict,
    #[error("this database backend does not support {0}")]
    Unsupported(&'static str),
    #[error("unsupported database URL `{0}`; use sqlite://<file> or postgres://user@host/db")]
    UnknownUrl(String),
    /// The backend the settings name was left out of this build (its cargo feature is off).
    #[error("this build has no {0} storage (the `{0}` feature is off)")]
    NotBuilt(&'static str),
    /// The batch this write was committed in failed (a backend that groups commits); the
    /// write itself may have been fine, so it may succeed on a later try.
    #[error("database write failed: {0}")]
    Batch(BackendError),
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
        match self {
            StorageError::Conflict | StorageError::Batch(_) => true,
            StorageError::Database(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// An error the database reported, opaque: its text, and whether a later try may succeed.
/// Cheap to clone (a failed batch answers every write in it with the same error).
#[derive(Debug, Clone)]
pub struct BackendError {
    error: Arc<dyn Error + Send + Sync>,
    retryable: bool,
}

impl BackendError {
    /// An error of a backend of your own; `retryable` when a later try may succeed (a lost
    /// connection, a busy database), not when the statement itself is wrong.
    pub fn new(error: impl Into<Box<dyn Error + Send + Sync>>, retryable: bool) -> Self {
        BackendError {
            error: Arc::from(error.into()),
            retryable,
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    /// The driver's error: a pool that timed out or an I/O failure may pass.
    pub(super) fn from_sqlx(error: sqlx::Error) -> Self {
        let retryable = matches!(error, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_));
        BackendError::new(error, retryable)
    }

    /// The driver's error, for the backends' own decisions (e.g. whether it ended a
    /// transaction).
    #[cfg(feature = "sqlite")]
    pub(super) fn as_sqlx(&self) -> Option<&sqlx::Error> {
        self.error.downcast_ref()
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl Error for BackendError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.error.source()
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
/// A driver error as a [`StorageError::Database`].
pub(super) fn database(error: sqlx::Error) -> StorageError {
    StorageError::Database(BackendError::from_sqlx(error))
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
/// A write's driver error: a unique-index violation becomes [`StorageError::Conflict`].
pub(super) fn write_error(error: sqlx::Error) -> StorageError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StorageError::Conflict,
        _ => database(error),
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
/// A migration's driver error.
pub(super) fn migration(error: sqlx::migrate::MigrateError) -> StorageError {
    StorageError::Migration(BackendError::new(error, false))
}

#[cfg(all(test, any(feature = "sqlite", feature = "postgres")))]
mod tests {
    use super::*;

    #[test]
    fn passing_failures_are_retryable_and_wrong_statements_are_not() {
        let passing = [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::Io(std::io::ErrorKind::BrokenPipe.into()),
        ];
        for error in passing {
            assert!(database(error).is_retryable());
        }
        assert!(!database(sqlx::Error::RowNotFound).is_retryable());
        assert!(StorageError::Conflict.is_retryable());
        assert!(StorageError::Batch(BackendError::new("the batch failed", false)).is_retryable());
        assert!(!StorageError::Unsupported("x").is_retryable());
        let own = StorageError::Database(BackendError::new("lost the connection", true));
        assert!(own.is_retryable());
        assert_eq!(own.to_string(), "database error: lost the connection");
    }
}
