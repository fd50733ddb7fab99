//! A database written before a migration reads back after it: rows stored under the schema
//! before the neutral names (links, sync state) are found through today's storage, on both
//! backends.

use std::path::Path;

use crate::common::backends::TestDatabase;
use haloflow::storage::{LinkOrigin, PostgresStorage, SqliteStorage, Storage};
use sqlx::migrate::Migrator;

/// The first migration of each backend that renamed the links and sync state columns.
const NEUTRAL_NAMES: [(&str, i64); 2] = [("sqlite", 9), ("postgres", 5)];

/// A migrator with `backend`'s migrations before the neutral names, copied into `dir`
/// unchanged (so the full migrator later finds them applied, same checksums).
async fn migrator_before_neutral_names(backend: &str, dir: &Path) -> Migrator {
    let (_, first) = NEUTRAL_NAMES.iter().find(|(b, _)| *b == backend).unwrap();
    for entry in std::fs::read_dir(format!("crates/core/migrations/{backend}")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let version: i64 = name.split('_').next().unwrap().parse().unwrap();
        if version < *first {
            std::fs::copy(&path, dir.join(&name)).unwrap();
        }
    }
    Migrator::new(dir).await.unwrap()
}

/// Rows as the old schema named them: a link from each side, a scan start, a failing record.
const OLD_ROWS: [&str; 4] = [
    "INSERT INTO links (halo_connection, halo_ticket_id, servicenow, table_name, sys_id, number,
                        created_by, created_at_ms, updated_at_ms)
     VALUES ('halo', 7, 'customers/12', 'incident', 'rec-a', 'INC7', 'halo', 1, 2),
            ('halo', 8, 'customers/12', 'problem', 'rec-b', NULL, 'servicenow', 3, 4)",
    "INSERT INTO integrator_starts (servicenow, started_at_ms) VALUES ('customers/12', 100)",
    "INSERT INTO integrator_failures (servicenow, sys_id, table_name, attempts, last_error, updated_at_ms)
     VALUES ('customers/12', 'rec-c', 'incident', 2, 'boom', 50)",
    "INSERT INTO synced_notes (servicenow, journal_sys_id, synced_at_ms) VALUES ('customers/12', 'note-1', 5)",
];

/// What [`OLD_ROWS`] must read back as.
async fn assert_old_rows_found(storage: &dyn Storage, backend: &str) {
    let a = storage.link_for_ticket("halo", 7).await.unwrap().unwrap();
    assert_eq!(
        (
            a.remote.as_str(),
            a.remote_table.as_str(),
            a.remote_id.as_str()
        ),
        ("customers/12", "incident", "rec-a"),
        "{backend}"
    );
    assert_eq!(
        (a.number.as_deref(), a.created_by),
        (Some("INC7"), LinkOrigin::Ticket)
    );
    assert_eq!((a.created_at_ms, a.updated_at_ms), (1, 2), "{backend}");
    let b = storage
        .link_for_record("customers/12", "rec-b")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (b.ticket_connection.as_str(), b.ticket_id),
        ("halo", 8),
        "{backend}"
    );
    assert_eq!(b.created_by, LinkOrigin::Remote, "{backend}");
    assert_eq!(
        storage.first_scan_start("customers/12", 999).await.unwrap(),
        100
    );
    let failures = storage.sync_failures("customers/12").await.unwrap();
    assert_eq!(failures.len(), 1, "{backend}");
    assert_eq!(
        (failures[0].record_id.as_str(), failures[0].attempts),
        ("rec-c", 2)
    );
    assert!(
        !storage
            .claim_note("customers/12", "note-1", 6)
            .await
            .unwrap(),
        "{backend}: a note synced before is not synced again"
    );
}

#[tokio::test]
async fn sqlite_rows_stored_under_the_old_names_are_found_after_migrating() {
    let dir = tempfile::tempdir().unwrap();
    let migrations = tempfile::tempdir().unwrap();
    let file = dir.path().join("old.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&file)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let old = migrator_before_neutral_names("sqlite", migrations.path()).await;
    old.run(&pool).await.unwrap();
    for statement in OLD_ROWS {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    pool.close().await;
    let storage = SqliteStorage::open_file(&file).await.unwrap();
    assert_old_rows_found(&storage, "sqlite").await;
}

#[tokio::test]
async fn postgres_rows_stored_under_the_old_names_are_found_after_migrating() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let migrations = tempfile::tempdir().unwrap();
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    let old = migrator_before_neutral_names("postgres", migrations.path()).await;
    old.run(&pool).await.unwrap();
    for statement in OLD_ROWS {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    pool.close().await;
    let storage = PostgresStorage::connect(&database.url).await.unwrap();
    assert_old_rows_found(&storage, "postgres").await;
}
