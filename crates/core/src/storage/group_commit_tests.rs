//! The group-commit writer driven on a real SQLite database: kept apart from
//! `group_commit.rs`, which names no database.

use super::group_commit::*;
use crate::storage::sqlite::SqliteBatches;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};
use tokio::sync::oneshot;

type Writer = GroupCommit<SqliteBatches>;
type Work<T> = super::group_commit::Work<SqliteConnection, T>;

async fn open(dir: &std::path::Path) -> (Writer, sqlx::SqlitePool) {
    let options = SqliteConnectOptions::new()
        .filename(dir.join("t.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
    let pool = sqlx::SqlitePool::connect_with(options.clone())
        .await
        .unwrap();
    sqlx::raw_sql("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let conn = SqliteConnection::connect_with(&options).await.unwrap();
    (GroupCommit::start(SqliteBatches::new(conn, false)), pool)
}

fn insert(k: i64, v: Option<&'static str>) -> Work<()> {
    Box::new(move |conn| {
        Box::pin(async move {
            sqlx::query("INSERT INTO t (k, v) VALUES ($1, $2)")
                .bind(k)
                .bind(v)
                .execute(conn)
                .await
                .map_err(super::error::write_error)?;
            Ok(())
        })
    })
}

/// Two statements; the second fails when `k + 1000` is taken.
fn insert_pair(k: i64) -> Work<()> {
    Box::new(move |conn| {
        Box::pin(async move {
            for key in [k, k + 1000] {
                sqlx::query("INSERT INTO t (k, v) VALUES ($1, 'pair')")
                    .bind(key)
                    .execute(&mut *conn)
                    .await
                    .map_err(super::error::write_error)?;
            }
            Ok(())
        })
    })
}

#[tokio::test]
async fn concurrent_writes_share_commits_and_a_failed_write_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, pool) = open(dir.path()).await;
    writer
        .write(false, insert(1001, Some("taken")))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for k in 0..300 {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            match k {
                // A taken key, a NOT NULL violation, and a pair whose second row is taken.
                7 => writer.write(false, insert(1001, Some("again"))).await,
                8 => writer.write(false, insert(8, None)).await,
                1 => writer.write(true, insert_pair(1)).await,
                _ => writer.write(false, insert(k, Some("ok"))).await,
            }
        }));
    }
    let mut failed = Vec::new();
    for (k, task) in tasks.into_iter().enumerate() {
        if task.await.unwrap().is_err() {
            failed.push(k);
        }
    }
    assert_eq!(failed, [1, 7, 8]);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM t WHERE v = 'ok'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 297, "every other write committed");
    // The failed pair left nothing behind: its savepoint was rolled back.
    let pair: i64 = sqlx::query_scalar("SELECT count(*) FROM t WHERE v = 'pair'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pair, 0);
    let stats = writer.stats();
    assert_eq!(stats.writes, 301);
    assert!(
        stats.commits < 100,
        "300 concurrent writes took {} commits",
        stats.commits
    );
}

/// Holds the writer inside a write until `release` is sent; `started` says it is there.
fn blocking(started: oneshot::Sender<()>, release: oneshot::Receiver<()>) -> Work<()> {
    Box::new(move |_conn| {
        Box::pin(async move {
            let _ = started.send(());
            let _ = release.await;
            Ok(())
        })
    })
}

/// Waits (without a clock) until `waiting` writes wait for the writer.
async fn until_waiting(writer: &Writer, waiting: usize) {
    while writer.queue().waiting < waiting {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn the_queue_refuses_requests_when_three_quarters_full_and_drains() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, pool) = open(dir.path()).await;
    let (started, is_started) = oneshot::channel();
    let (release, released) = oneshot::channel();
    let held = tokio::spawn({
        let writer = writer.clone();
        async move { writer.write(false, blocking(started, released)).await }
    });
    is_started.await.unwrap();
    let threshold = QUEUE - QUEUE / 4;
    let mut tasks = Vec::new();
    for k in 0..QUEUE as i64 {
        if k as usize == threshold - 1 {
            until_waiting(&writer, threshold - 1).await;
            assert!(!writer.queue().refuses_requests(), "{:?}", writer.queue());
        }
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            writer.write(false, insert(k, Some("q"))).await
        }));
    }
    until_waiting(&writer, QUEUE).await;
    let queue = writer.queue();
    assert_eq!((queue.waiting, queue.capacity), (QUEUE, QUEUE));
    assert!(queue.refuses_requests());
    release.send(()).unwrap();
    held.await.unwrap().unwrap();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(writer.queue().waiting, 0);
    assert!(!writer.queue().refuses_requests());
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM t WHERE v = 'q'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, QUEUE as i64, "every queued write committed");
}

#[tokio::test]
async fn a_write_returns_after_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, pool) = open(dir.path()).await;
    writer.write(false, insert(5, Some("x"))).await.unwrap();
    // Another connection sees it at once: it was committed before the answer.
    let v: String = sqlx::query_scalar("SELECT v FROM t WHERE k = 5")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(v, "x");
}
