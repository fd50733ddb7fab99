//! The bound on execution: at most `server.max_active_runs` runs execute in this process, each
//! holding a [`Slot`]. Accepting never waits for one: a run accepted without a free slot is
//! stored unowned (`queued`, no claim) and started, oldest first, when a slot frees, here or on
//! any node sharing the database (claims decide who). Queued runs live in the database only:
//! this process holds a flag and, while starting them, one bounded batch of ids.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::{Engine, Inner};
use crate::storage::{StorageError, now_ms};

/// The most queued runs claimed in one look at the database.
const BATCH: usize = 256;

/// One place to execute a run in this process; given back when dropped.
pub(super) struct Slot {
    inner: Arc<Inner>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inner.active_runs.send_modify(|n| *n -= 1);
    }
}

impl Drop for Inner {
    /// Lets the dispatcher see that the engine is gone.
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

impl Engine {
    /// Up to `wanted` free slots, taken at once (so concurrent requests never exceed the bound).
    pub(super) fn take_slots(&self, wanted: usize) -> Vec<Slot> {
        let max = self.inner.server.max_active_runs;
        let mut got = 0;
        self.inner.active_runs.send_if_modified(|active| {
            got = wanted.min(max.saturating_sub(*active));
            *active += got;
            got > 0
        });
        (0..got)
            .map(|_| Slot {
                inner: self.inner.clone(),
            })
            .collect()
    }

    /// A slot beyond the bound: a replay an operator asked for starts at once, and a run
    /// whose wait without its slot ended goes on (see `lending`).
    pub(super) fn extra_slot(&self) -> Slot {
        self.inner.active_runs.send_modify(|active| *active += 1);
        Slot {
            inner: self.inner.clone(),
        }
    }

    /// Runs executing in this process (and slots taken for runs about to start).
    pub fn active_runs(&self) -> usize {
        *self.inner.active_runs.borrow()
    }

    /// True while runs may wait in the database for a slot: new runs queue behind them.
    pub(super) fn runs_are_waiting(&self) -> bool {
        self.inner.waiting.load(Ordering::SeqCst)
    }

    /// Runs wait in the database: starts them as slots free (now, if some are free).
    pub(super) fn runs_wait(&self) {
        self.inner.waiting.store(true, Ordering::SeqCst);
        if !self.inner.dispatching.swap(true, Ordering::SeqCst) {
            tokio::spawn(dispatch(
                Arc::downgrade(&self.inner),
                self.inner.wake.clone(),
            ));
        }
        self.inner.wake.notify_one();
    }

    /// A slot was given back: a waiting run may take it.
    pub(super) fn slot_freed(&self) {
        if self.runs_are_waiting() {
            self.inner.wake.notify_one();
        }
    }

    /// Starts waiting runs while there are free slots and runs to start. The flag is cleared
    /// before each look, so a run queued meanwhile sets it again (and wakes the dispatcher).
    async fn start_waiting_runs(&self) -> Result<(), StorageError> {
        while !self.is_shutting_down() {
            let slots = self.take_slots(BATCH);
            if slots.is_empty() {
                return Ok(()); // the next slot freed wakes the dispatcher again
            }
            let asked = slots.len();
            self.inner.waiting.store(false, Ordering::SeqCst);
            // Only runs no node holds: this node's own are resumed by
            // `resume_unfinished_runs`, and one write claims as many as there are slots.
            let found = self.start_queued(slots).await;
            let (found, started) = found.inspect_err(|_| {
                self.inner.waiting.store(true, Ordering::SeqCst);
            })?;
            if found < asked {
                return Ok(()); // none left that this node may take
            }
            self.inner.waiting.store(true, Ordering::SeqCst);
            if started == 0 {
                return Ok(()); // another node took them, or their flows are not loaded
            }
        }
        Ok(())
    }

    /// Claims the oldest queued runs no node holds, one per slot, in one write, and starts
    /// them (unused slots are given back). Returns how many were claimed and how many started.
    async fn start_queued(&self, slots: Vec<Slot>) -> Result<(usize, usize), StorageError> {
        let storage = &self.inner.storage;
        let node = &self.inner.node_id;
        let limit = slots.len().min(u32::MAX as usize) as u32;
        let claimed_at = std::time::Instant::now();
        let queued = storage
            .claim_queued_runs(node, self.lease_until(), limit)
            .await?;
        let found = queued.len();
        let mut started = 0;
        for (run, slot) in queued.into_iter().zip(slots) {
            let Some(flow) = self.runnable_flow(&run.flow_id) else {
                tracing::warn!(run_id = %run.run_id, flow_id = %run.flow_id, "A queued run's flow is not loaded; it waits until the flow is back.");
                storage.release_run(&run.run_id, node).await?;
                continue;
            };
            // A queued run has no steps of its own; a replay's are copied from its original.
            let fresh = run.replay_of.is_none();
            if self.spawn_run(slot, flow, run.run_id, run.trigger, claimed_at, fresh) {
                started += 1;
            }
        }
        Ok((found, started))
    }

    /// Claims and starts the oldest unfinished runs this node may take (its own after a
    /// restart, unowned ones, and those whose claim expired), one per slot (unused slots are
    /// given back). Returns how many such runs were found (at most one per slot) and how many
    /// started here.
    pub(super) async fn start_claimable(
        &self,
        slots: Vec<Slot>,
    ) -> Result<(usize, usize), StorageError> {
        let storage = &self.inner.storage;
        let node = &self.inner.node_id;
        // The runs executing here are this node's and come back too: ask for them on top.
        let limit = slots.len() + self.running_here();
        let claimable = storage
            .claimable_runs(node, now_ms(), limit.min(u32::MAX as usize) as u32)
            .await?;
        let mut slots = slots.into_iter();
        let (mut found, mut started) = (0, 0);
        for (run_id, flow_id) in claimable {
            if self.is_running_here(&run_id) {
                continue;
            }
            let Some(slot) = slots.next() else { break };
            found += 1;
            let Some(flow) = self.runnable_flow(&flow_id) else {
                tracing::warn!(%run_id, %flow_id, "An unfinished run's flow is not loaded; it waits until the flow is back.");
                continue;
            };
            let claimed = std::time::Instant::now();
            if !storage
                .claim_run(&run_id, node, self.lease_until(), now_ms())
                .await?
            {
                continue; // another node was quicker
            }
            let Some(detail) = storage.get_run(&run_id).await? else {
                continue;
            };
            // A run queued and never started has no steps to read back.
            let fresh = detail.steps.is_empty() && detail.summary.replay_of.is_none();
            if self.spawn_run(slot, flow, run_id, detail.trigger, claimed, fresh) {
                started += 1;
            }
        }
        Ok((found, started))
    }
}

/// Starts waiting runs each time it is woken (a run queued, a slot freed), until the engine is
/// gone or shuts down.
async fn dispatch(inner: Weak<Inner>, wake: Arc<tokio::sync::Notify>) {
    loop {
        wake.notified().await;
        let Some(inner) = inner.upgrade() else { return };
        let engine = Engine { inner };
        if engine.is_shutting_down() {
            return;
        }
        if let Err(e) = engine.start_waiting_runs().await {
            tracing::warn!(error = %e, "Could not start queued runs; trying again when a run ends or on the next look for unfinished runs.");
        }
    }
}
