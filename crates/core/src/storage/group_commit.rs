//! Group commit: one task owns a write connection and commits every write that queued while
//! the previous batch was committing in one transaction, then answers each writer. SQLite has
//! one write lock per file, so writers on several connections only take turns at it; on
//! PostgreSQL each commit is a round trip and a WAL flush. Either way one writer that batches
//! turns many commits (and fsyncs, lock handoffs) into one. What differs per database (how to
//! begin, when an error ended the transaction, reconnecting) is the [`Batches`] it drives.
//!
//! A write is answered only after its batch committed, so "returned Ok" still means "on
//! disk (as far as the durability level promises)". A write that fails is rolled back on its
//! own (a savepoint for a write that may fail alone) and the rest of its batch commits;
//! an error that may have ended the transaction fails the whole batch, retryably.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_core::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::error::BackendError;
use super::{StorageError, WriteQueue, WriteStats};

/// The most writes committed in one transaction: bounds one batch's latency.
const MAX_BATCH: usize = 512;
/// Writes waiting for the writer; callers wait for room beyond this (back-pressure).
pub(super) const QUEUE: usize = 4096;

/// The one connection a writer drives, and what its database needs around a batch.
pub(super) trait Batches: Send + 'static {
    type Connection: Send;
    /// Begins a batch's transaction (connecting first if there is no connection).
    fn begin(&mut self) -> BoxFuture<'_, Result<(), BackendError>>;
    /// The connection, inside a begun transaction.
    fn connection(&mut self) -> &mut Self::Connection;
    /// Runs one fixed statement (`COMMIT`, `SAVEPOINT write`, ...).
    fn run(&mut self, sql: &'static str) -> BoxFuture<'_, Result<(), BackendError>>;
    /// Whether `error`, from a write's statements, may have ended the transaction;
    /// `in_savepoint`: a `ROLLBACK TO` comes next and says for itself whether it could.
    fn ends_transaction(error: &StorageError, in_savepoint: bool) -> bool;
    /// A rollback failed: the connection is not trusted with another batch.
    fn lost(&mut self) {}
    /// Between two batches (SQLite finishes a WAL checkpoint).
    fn after_batch(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The statements of one write, run inside the batch's transaction.
pub(super) type Work<C, T> =
    Box<dyn for<'c> FnOnce(&'c mut C) -> BoxFuture<'c, Result<T, StorageError>> + Send>;

/// A handle to the writer task; clones share it. The task ends when the last handle is gone.
pub(super) struct GroupCommit<B: Batches> {
    jobs: mpsc::Sender<Box<dyn Job<B>>>,
    counters: Arc<Counters>,
}

impl<B: Batches> Clone for GroupCommit<B> {
    fn clone(&self) -> Self {
        GroupCommit {
            jobs: self.jobs.clone(),
            counters: self.counters.clone(),
        }
    }
}

impl<B: Batches> std::fmt::Debug for GroupCommit<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("queue", &self.queue())
            .finish()
    }
}

#[derive(Debug, Default)]
struct Counters {
    writes: AtomicU64,
    commits: AtomicU64,
}

impl<B: Batches> GroupCommit<B> {
    /// Starts the writer task on `batches` (whose connection must not be used elsewhere).
    pub(super) fn start(batches: B) -> GroupCommit<B> {
        let (jobs, queue) = mpsc::channel(QUEUE);
        let counters = Arc::new(Counters::default());
        tokio::spawn(writer(batches, queue, counters.clone()));
        GroupCommit { jobs, counters }
    }

    /// True while a handle to the writer is left (for helpers that end with it).
    pub(super) fn alive(&self) -> impl Fn() -> bool + Send + 'static {
        let weak = self.jobs.downgrade();
        move || weak.upgrade().is_some()
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
    /// `alone`: the work runs in a savepoint, so that its failure (several statements, or one
    /// that may conflict) undoes it alone and the batch goes on.
    pub(super) async fn write<T: Send + 'static>(
        &self,
        alone: bool,
        work: Work<B::Connection, T>,
    ) -> Result<T, StorageError> {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Write { work, alone, reply });
        self.jobs
            .send(job)
            .await
            .map_err(|_| StorageError::WriterStopped)?;
        answer.await.map_err(|_| StorageError::WriterStopped)?
    }
}

/// A queued write, its result type erased.
trait Job<B: Batches>: Send {
    /// Runs the statements; returns how to answer once the batch's fate is known, and
    /// whether the error (if any) may have ended the whole transaction.
    fn run<'c>(self: Box<Self>, batches: &'c mut B) -> BoxFuture<'c, Ran>;
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

struct Write<C, T> {
    work: Work<C, T>,
    alone: bool,
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

impl<B: Batches, T: Send + 'static> Job<B> for Write<B::Connection, T> {
    fn run<'c>(self: Box<Self>, batches: &'c mut B) -> BoxFuture<'c, Ran> {
        Box::pin(async move {
            let Write { work, alone, reply } = *self;
            let (result, fatal) = if alone {
                run_in_savepoint(batches, work).await
            } else {
                let result = work(batches.connection()).await;
                let fatal = result
                    .as_ref()
                    .err()
                    .is_some_and(|e| B::ends_transaction(e, false));
                (result, fatal)
            };
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

/// Runs `work` in a savepoint; returns its result and whether the transaction is lost.
async fn run_in_savepoint<B: Batches, T>(
    batches: &mut B,
    work: Work<B::Connection, T>,
) -> (Result<T, StorageError>, bool) {
    if let Err(e) = batches.run("SAVEPOINT write").await {
        return (Err(StorageError::Database(e)), true);
    }
    match work(batches.connection()).await {
        Ok(value) => match batches.run("RELEASE write").await {
            Ok(()) => (Ok(value), false),
            Err(e) => (Err(StorageError::Database(e)), true),
        },
        Err(error) => {
            if B::ends_transaction(&error, true) {
                return (Err(error), true);
            }
            let undone = batches.run("ROLLBACK TO write; RELEASE write").await;
            (Err(error), undone.is_err())
        }
    }
}

async fn writer<B: Batches>(
    mut batches: B,
    mut queue: mpsc::Receiver<Box<dyn Job<B>>>,
    counters: Arc<Counters>,
) {
    let mut batch: Vec<Box<dyn Job<B>>> = Vec::with_capacity(MAX_BATCH);
    let mut answers: Vec<Box<dyn Answer>> = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if let Err(error) = batches.begin().await {
            tracing::error!(%error, "Could not begin a database write; its writes failed.");
            for job in batch.drain(..) {
                job.fail(StorageError::Batch(error.clone()));
            }
            continue;
        }
        let outcome = run_batch(&mut batches, &mut batch, &mut answers).await;
        if outcome.is_ok() {
            counters.commits.fetch_add(1, Ordering::Relaxed);
            counters
                .writes
                .fetch_add(answers.len() as u64, Ordering::Relaxed);
        }
        for answer in answers.drain(..) {
            answer.send(outcome.as_ref().map(|_| ()));
        }
        batches.after_batch().await;
    }
}

/// Runs the writes of a begun batch, collecting how to answer them, and ends its transaction:
/// committed, or rolled back when a write's error may have ended it (the writes after that
/// one fail without running).
async fn run_batch<B: Batches>(
    batches: &mut B,
    batch: &mut Vec<Box<dyn Job<B>>>,
    answers: &mut Vec<Box<dyn Answer>>,
) -> Result<(), BackendError> {
    let mut jobs = batch.drain(..);
    for job in jobs.by_ref() {
        let ran = job.run(batches).await;
        answers.push(ran.answer);
        if ran.fatal {
            let error = BackendError::new(
                "a write in the same batch failed and the batch was rolled back",
                true,
            );
            rollback(batches).await;
            for job in jobs {
                job.fail(StorageError::Batch(error.clone()));
            }
            return Err(error);
        }
    }
    match batches.run("COMMIT").await {
        Ok(()) => Ok(()),
        Err(error) => {
            tracing::error!(%error, "A database commit failed; its writes failed.");
            rollback(batches).await;
            Err(error)
        }
    }
}

/// Rolls the batch back; a connection that cannot is given up (the next batch reconnects).
async fn rollback<B: Batches>(batches: &mut B) {
    if batches.run("ROLLBACK").await.is_err() {
        batches.lost();
    }
}
