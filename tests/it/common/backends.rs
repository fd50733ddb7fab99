//! The storage backends a behaviour test runs against: SQLite always, PostgreSQL when a server
//! is reachable. Each PostgreSQL test gets a database of its own, dropped afterwards.
//!
//! Without a server the PostgreSQL half is skipped with a message, unless `CI` is set: then a
//! missing server fails the test, so CI never passes by skipping.

use std::sync::Arc;

use haloflow::storage::{PostgresStorage, SqliteStorage, Storage, StorageError};
use sqlx::Connection;

/// The server's maintenance database; override with `HALOFLOW_TEST_POSTGRES`.
pub fn admin_url() -> String {
    std::env::var("HALOFLOW_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A database created for one test; dropped when this goes (after the pools are closed).
pub struct TestDatabase {
    pub url: String,
    name: String,
}

impl TestDatabase {
    /// A fresh database, or `None` (with a message) when no server answers outside CI.
    pub async fn create() -> Option<TestDatabase> {
        let admin = admin_url();
        let mut connection = match sqlx::PgConnection::connect(&admin).await {
            Ok(c) => c,
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!(
                    "skipping the PostgreSQL half of this test: no server at {admin} ({e}); CI runs it"
                );
                return None;
            }
            Err(e) => panic!("CI is set but PostgreSQL at {admin} is not reachable: {e}"),
        };
        let name = format!("haloflow_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut connection)
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        Some(TestDatabase {
            url: format!("{base}/{name}"),
            name,
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A separate thread with its own runtime: Drop may run inside a test's runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                }
            });
        })
        .join();
    }
}

/// One backend under test.
pub struct Backend {
    pub name: &'static str,
    pub storage: Arc<dyn Storage>,
    /// The same storage as its own type, for what only the backend types offer.
    concrete: Concrete,
    _dir: Option<tempfile::TempDir>,
    _database: Option<TestDatabase>,
}

enum Concrete {
    Sqlite(Arc<SqliteStorage>),
    Postgres(Arc<PostgresStorage>),
}

impl Backend {
    /// The backend's `release_lease` (not part of the storage traits: the runtime never
    /// gives a lease back).
    pub async fn release_lease(&self, name: &str, owner: &str) -> Result<(), StorageError> {
        match &self.concrete {
            Concrete::Sqlite(s) => s.release_lease(name, owner).await,
            Concrete::Postgres(s) => s.release_lease(name, owner).await,
        }
    }
}

/// SQLite in a temporary file, and PostgreSQL in a fresh database when a server answers.
pub async fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(SqliteStorage::open_dir(dir.path()).await.unwrap());
    let mut all = vec![Backend {
        name: "sqlite",
        storage: sqlite.clone(),
        concrete: Concrete::Sqlite(sqlite),
        _dir: Some(dir),
        _database: None,
    }];
    if let Some(database) = TestDatabase::create().await {
        let postgres = Arc::new(PostgresStorage::connect(&database.url).await.unwrap());
        all.push(Backend {
            name: "postgres",
            storage: postgres.clone(),
            concrete: Concrete::Postgres(postgres),
            _dir: None,
            _database: Some(database),
        });
    }
    all
}
