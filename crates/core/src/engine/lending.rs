//! Slot lending: a run that must wait on something outside this process which only time
//! cures (an API's pacing, say) gives its execution slot back to the pool while it waits, so
//! one tenant's backlog waiting out its rate limit never holds every slot while other
//! tenants' runs queue behind it. At most `server.max_paced_runs` runs wait this way at once
//! (beyond that a run waits in its slot, as before); a run whose wait ends takes a slot
//! again at once, even above `server.max_active_runs` (new and queued runs then wait until
//! the count is under it): it never waits for one, so runs holding the pacing's places can
//! never wait on runs holding the slots, and the other way round.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::Engine;
use super::queue::Slot;
use crate::outbound::SlotLender;

/// A run's execution slot, which its steps may lend back while they wait (see
/// [`Outbound::wait_without_slot`](crate::outbound::Outbound::wait_without_slot), through
/// [`SlotLender`]).
#[derive(Clone)]
pub struct RunSlot {
    engine: Engine,
    /// None while lent.
    slot: Arc<Mutex<Option<Slot>>>,
}

impl std::fmt::Debug for RunSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunSlot")
    }
}

impl RunSlot {
    pub(super) fn new(engine: Engine, slot: Slot) -> Self {
        RunSlot {
            engine,
            slot: Arc::new(Mutex::new(Some(slot))),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<Slot>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives the slot back to the pool, unless `server.max_paced_runs` runs already wait
    /// without one (or this run's slot is lent already, by a step waiting beside this one).
    fn lend_slot(&self) -> Option<Lent> {
        let inner = &self.engine.inner;
        let max = inner.server.max_paced_runs;
        (inner.paced_runs)
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        let Some(slot) = self.held().take() else {
            inner.paced_runs.fetch_sub(1, Ordering::SeqCst);
            return None;
        };
        drop(slot);
        self.engine.slot_freed();
        Some(Lent { run: self.clone() })
    }
}

/// A slot lent out; dropped when the wait ends (or is cancelled), it takes a slot at once,
/// even above the bound, so the run goes on holding a slot as it started.
struct Lent {
    run: RunSlot,
}

impl Drop for Lent {
    fn drop(&mut self) {
        *self.run.held() = Some(self.run.engine.extra_slot());
        // After the slot is taken: `Engine::drain` sees a run either paced or in a slot.
        (self.run.engine.inner.paced_runs).fetch_sub(1, Ordering::SeqCst);
    }
}

impl SlotLender for RunSlot {
    fn lend(&self) -> Option<Box<dyn Send>> {
        self.lend_slot().map(|lent| Box::new(lent) as Box<dyn Send>)
    }
}

impl Engine {
    /// Runs waiting without their execution slot (on an API's pacing, say), for `/metrics`.
    pub fn paced_runs(&self) -> usize {
        self.inner.paced_runs.load(Ordering::SeqCst)
    }
}
