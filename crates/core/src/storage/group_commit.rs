//! Group commit for SQLite: one task owns the write connection and commits every write that
//! queued while the previous batch was committing in one transaction, then answers each
//! writer. SQLite has one write lock per file, so writers on several connections only take
//! turns at it (and each commit invalidates the other connections' page caches); one writer
//! that batches turns many commits, fsyncs and lock handoffs into one.
//!
//! A write is answered only after its batch committed, so "returned Ok" still means "on
//! disk (as far as the durability level promises)". A write that fails is rolled back on its
//! own (a savepoint for a write of several statements) and the rest of its batch commits;
//! an error that may have ended the transaction fails the whole batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_core::future::BoxFuture;
use sqlx::SqliteConnection;
use tokio::sync::{mpsc, oneshot};

use super::error::{BackendError, database};
use super::{StorageError, WriteQueue, WriteStats};

/// The most writes committed in one transaction: bounds one batch's latency.
const MAX_BATCH: usize = 512;
/// Writes waiting for the writer; callers wait for room beyond this (back-pressure).
const QUEUE: usize = 4096;

/// The statements of one write, run inside the batch's transaction.
pub(super) type Work<T> = Box<
    dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, StorageError>> + Send,
>;

/// A handle to the writer task; clones share it. The task ends when the last handle is gone.
#[derive(Debug, Clone)]
pub(super) struct GroupCommit {
    jobs: mpsc::Sender<Box<dyn Job>>,
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    writes: AtomicU64,
    commits: AtomicU64,
}

impl GroupCommit {
    /// Starts the writer task on `connection` (which must not be used elsewhere). With
    /// `checkpoints`, a second connection checkpoints the WAL in the background (the writer's
    /// own automatic checkpoints must then be off): a checkpoint copies pages and syncs the
    /// file, and done by the writer at a commit it held every write waiting behind it.
    pub(super) fn start(
        connection: SqliteConnection,
        checkpoints: Option<SqliteConnection>,
    ) -> GroupCommit {
        let (jobs, queue) = mpsc::channel(QUEUE);
        let counters = Arc::new(Counters::default());
        let background = checkpoints.is_some();
        if let Some(checkpointer) = checkpoints {
            tokio::spawn(checkpoint(checkpointer, jobs.downgrade()));
        }
        tokio::spawn(writer(connection, queue, counters.clone(), background));
        GroupCommit { jobs, counters }
    }

    pub(super) fn stats(&self) -> WriteStats {
        WriteStats {
            writes: self.counters.writes.load(Ordering::Relaxed),
            commits: self.counters.commits.load(Ordering::Relaxed),
        }
    }

    /// Writes waiting for the writer (sent, not yet taken into a batch), of the most that
    /// wait before callers wait for room.
    pub(super) fn queue(&self) -> WriteQueue {
        WriteQueue {
            waiting: self.jobs.max_capacity() - self.jobs.capacity(),
            capacity: self.jobs.max_capacity(),
        }
    }

    /// Runs `work` in the next batch and returns its result once the batch committed.
    /// `atomic`: the work has several statements that must commit together or not at all.
    pub(super) async fn write<T: Send + 'static>(
        &self,
        atomic: bool,
        work: Work<T>,
    ) -> Result<T, StorageError> {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Write {
            work,
            atomic,
            reply,
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| StorageError::WriterStopped)?;
        answer.await.map_err(|_| StorageError::WriterStopped)?
    }
}

/// A queued write, its result type erased.
trait Job: Send {
    /// Runs the statements; returns how to answer once the batch's fate is known, and
    /// whether the error (if any) may have ended the whole transaction.
    fn run<'c>(self: Box<Self>, conn: &'c mut SqliteConnection) -> BoxFuture<'c, Ran>;
    /// Answers without running (the batch could not begin).
    fn fail(self: Box<Self>, error: StorageError);
}

struct Ran {
    answer: Box<dyn Answer>,
    fatal: bool,
}

/// Sends a write's result, or the batch's commit error in its place.
trait Answer: Send {
    fn send(self: Box<Self>, commit: Result<(), &BackendError>);
}

struct Write<T> {
    work: Work<T>,
    atomic: bool,
    reply: oneshot::Sender<Result<T, StorageError>>,
}

struct Done<T> {
    result: Result<T, StorageError>,
    reply: oneshot::Sender<Result<T, StorageError>>,
}

impl<T: Send + 'static> Answer for Done<T> {
    fn send(self: Box<Self>, commit: Result<(), &BackendError>) {
        let result = match (self.result, commit) {
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(StorageError::Batch(e.clone())),
            (Ok(value), Ok(())) => Ok(value),
        };
        // The caller may have given up waiting; its write is done all the same.
        let _ = self.reply.send(result);
    }
}

impl<T: Send + 'static> Job for Write<T> {
    fn run<'c>(self: Box<Self>, conn: &'c mut SqliteConnection) -> BoxFuture<'c, Ran> {
        Box::pin(async move {
            let Write {
                work,
                atomic,
                reply,
            } = *self;
            let result = if atomic {
                run_in_savepoint(conn, work).await
            } else {
                work(conn).await
            };
            let fatal = result.as_ref().err().is_some_and(ends_transaction);
            Ran {
                answer: Box::new(Done { result, reply }),
                fatal,
            }
        })
    }

    fn fail(self: Box<Self>, error: StorageError) {
        let _ = self.reply.send(Err(error));
    }
}

async fn run_in_savepoint<T>(
    conn: &mut SqliteConnection,
    work: Work<T>,
) -> Result<T, StorageError> {
    sqlx::raw_sql("SAVEPOINT write")
        .execute(&mut *conn)
        .await
        .map_err(database)?;
    match work(&mut *conn).await {
        Ok(value) => {
            sqlx::raw_sql("RELEASE write")
                .execute(&mut *conn)
                .await
                .map_err(database)?;
            Ok(value)
        }
        Err(error) => {
            if !ends_transaction(&error) {
                sqlx::raw_sql("ROLLBACK TO write; RELEASE write")
                    .execute(&mut *conn)
                    .await
                    .map_err(database)?;
            }
            Err(error)
        }
    }
}

/// Constraint violations (a taken key) and bad stored JSON leave the transaction open; any
/// other database error (I/O, full disk, busy) may have rolled it back.
fn ends_transaction(error: &StorageError) -> bool {
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

/// How often the background checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// How often the writer finishes a checkpoint itself, between two batches.
const WRITER_CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Checkpoints until the writer is gone. PASSIVE: never waits for readers or the writer; what
/// it cannot copy now it copies next time. Under steady writes it never catches up with the
/// end of the WAL, though, and SQLite starts the WAL over only after a checkpoint that did
/// (otherwise the WAL and its index in shared memory grow for ever): so four times a second the
/// writer, between batches, checkpoints what little the background left.
async fn checkpoint(mut conn: SqliteConnection, writer: mpsc::WeakSender<Box<dyn Job>>) {
    loop {
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        if writer.upgrade().is_none() {
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

async fn writer(
    mut conn: SqliteConnection,
    mut queue: mpsc::Receiver<Box<dyn Job>>,
    counters: Arc<Counters>,
    background_checkpoints: bool,
) {
    let mut last_checkpoint = std::time::Instant::now();
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    let mut answers: Vec<Box<dyn Answer>> = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if let Err(e) = sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut conn).await {
            tracing::error!(error = %e, "Could not begin a database write; its writes failed.");
            let error = BackendError::from_sqlx(e);
            for job in batch.drain(..) {
                job.fail(StorageError::Batch(error.clone()));
            }
            continue;
        }
        let outcome = run_batch(&mut conn, &mut batch, &mut answers).await;
        if outcome.is_ok() {
            counters.commits.fetch_add(1, Ordering::Relaxed);
            counters
                .writes
                .fetch_add(answers.len() as u64, Ordering::Relaxed);
        }
        for answer in answers.drain(..) {
            answer.send(outcome.as_ref().map(|_| ()));
        }
        if background_checkpoints && last_checkpoint.elapsed() >= WRITER_CHECKPOINT_EVERY {
            last_checkpoint = std::time::Instant::now();
            if let Err(e) = sqlx::raw_sql("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&mut conn)
                .await
            {
                tracing::warn!(error = %e, "A WAL checkpoint failed; the next one tries again.");
            }
        }
    }
}

/// Runs the writes of a begun batch, collecting how to answer them, and ends its transaction:
/// committed, or rolled back when a write's error may have ended it (the writes after that
/// one fail without running).
async fn run_batch(
    conn: &mut SqliteConnection,
    batch: &mut Vec<Box<dyn Job>>,
    answers: &mut Vec<Box<dyn Answer>>,
) -> Result<(), BackendError> {
    let mut jobs = batch.drain(..);
    for job in jobs.by_ref() {
        let ran = job.run(conn).await;
        answers.push(ran.answer);
        if ran.fatal {
            let error = BackendError::new(
                "a write in the same batch failed and the batch was rolled back",
                true,
            );
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
            for job in jobs {
                job.fail(StorageError::Batch(error.clone()));
            }
            return Err(error);
        }
    }
    match sqlx::raw_sql("COMMIT").execute(&mut *conn).await {
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::error!(error = %e, "A database commit failed; its writes failed.");
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
            Err(BackendError::from_sqlx(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Connection;
    use sqlx::sqlite::SqliteConnectOptions;

    async fn open(dir: &std::path::Path) -> (GroupCommit, sqlx::SqlitePool) {
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
        (GroupCommit::start(conn, None), pool)
    }

    fn insert(k: i64, v: Option<&'static str>) -> Work<()> {
        Box::new(move |conn| {
            Box::pin(async move {
                sqlx::query("INSERT INTO t (k, v) VALUES ($1, $2)")
                    .bind(k)
                    .bind(v)
                    .execute(conn)
                    .await
                    .map_err(super::super::error::write_error)?;
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
                        .map_err(super::super::error::write_error)?;
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
    async fn until_waiting(writer: &GroupCommit, waiting: usize) {
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
}
