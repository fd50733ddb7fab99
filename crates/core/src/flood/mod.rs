//! Flood control and request rate limiting for triggers.
//!
//! Flood control follows xMatters' semantics: requests correlate when the chosen trigger outputs
//! have the same values, and a request is *suppressed* when `max_requests` correlated requests,
//! run or suppressed, arrived within the `window_secs` before it (so more than `max_requests` in
//! any window never all run, and a flood stays suppressed for as long as it keeps that rate).
//! Suppressed requests are stored with their payload, linked to the last request that ran for
//! that key (the parent) with a running count, and they start no run. The decision sits behind
//! [`FloodControl`] so that a database-backed implementation can replace the in-memory one when
//! several nodes share PostgreSQL.
//!
//! The rate limit is a governor limiter (`quota`); flood control reads governor's clock, whose
//! fake variant lets tests move time. Flood control itself is a sliding window, not governor's
//! GCRA: GCRA spreads the window (a burst of 4, then one every 15 s), so a steady request every
//! 5 s would get a fifth run 20 s into the flood and one every 15 s after that.

mod database;
mod memory;

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use async_trait::async_trait;
use governor::Quota;
use governor::clock::{Clock, FakeRelativeClock};
use governor::nanos::Nanos;
use serde_json::Value;

pub use crate::admission::Admission;
pub(crate) use database::DatabaseFloodControl;
pub use memory::MemoryFloodControl;

use crate::flow::FloodControlDef;
use crate::storage::{Storage, StorageError};

/// Decides which correlated events run. Implementations must be safe to call concurrently, and
/// each admission must be atomic per key: the verdict, the recorded arrival and the parent it
/// names are decided together, so concurrent requests cannot be linked to a stale parent.
#[async_trait]
pub trait FloodControl: Send + Sync + fmt::Debug + 'static {
    /// Decides for one event of `request_id` whose correlation key is `key`, and counts it
    /// (suppressed events count toward the rate too).
    async fn admit(&self, flow_id: &str, key: &str, request_id: &str) -> Admission;
    /// Rebuilds the state at start, before requests arrive, from the stored runs and suppressed
    /// requests, so a flood in progress stays suppressed. Returns how many runs of the last
    /// window were replayed.
    async fn restore(&self, storage: &dyn Storage) -> Result<usize, StorageError>;
    /// Applies new flood settings after a reload: flows whose settings did not change keep
    /// their state; new or changed ones start fresh; removed ones are dropped.
    fn configure(&self, flows: &[(&str, &FloodControlDef)]);
    /// Forgets keys that have been idle for a whole window; bounds memory.
    fn sweep(&self);
    /// Correlation keys currently held, per flow.
    fn tracked_keys(&self) -> Vec<(String, usize)>;
}

/// `max_requests` per `window` for the rate limit: a burst of `max_requests`, one more every
/// `window / max_requests`.
pub(crate) fn quota(max_requests: u32, window: Duration) -> Quota {
    let burst = NonZeroU32::new(max_requests.max(1)).expect("at least one");
    let period = (window / burst.get()).max(Duration::from_nanos(1));
    Quota::with_period(period)
        .expect("a non-zero period")
        .allow_burst(burst)
}

/// The correlation key of a trigger's outputs: the JSON array of the values at `correlate_on`
/// (a missing value is `null`). `None` when every value is missing: a payload that carries
/// none of them (say a custom one without `object_id` or `ticket.id`) says nothing about which
/// requests belong together, and one shared `[null,null]` key would suppress them all.
pub fn correlation_key(settings: &FloodControlDef, outputs: &Value) -> Option<String> {
    let values: Vec<&Value> = settings
        .correlate_on
        .iter()
        .map(|path| {
            path.split('.')
                .try_fold(outputs, |v, segment| v.get(segment))
                .unwrap_or(&Value::Null)
        })
        .collect();
    if values.iter().all(|v| v.is_null()) {
        return None;
    }
    Some(serde_json::to_string(&values).expect("JSON values serialize"))
}

/// The time source of the limiters: the real monotonic clock, or a manual one for tests.
#[derive(Debug, Clone)]
pub enum FloodClock {
    Real(std::time::Instant),
    Manual(FakeRelativeClock),
}

impl Default for FloodClock {
    fn default() -> Self {
        FloodClock::Real(std::time::Instant::now())
    }
}

impl FloodClock {
    /// A clock that only moves when [`FloodClock::advance`] is called.
    pub fn manual() -> Self {
        FloodClock::Manual(FakeRelativeClock::default())
    }

    /// Moves a manual clock forward; a real clock cannot be moved.
    pub fn advance(&self, by: Duration) {
        match self {
            FloodClock::Manual(clock) => clock.advance(by),
            FloodClock::Real(_) => panic!("only a manual FloodClock can be advanced"),
        }
    }
}

impl Clock for FloodClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        match self {
            FloodClock::Real(start) => Nanos::from(start.elapsed()),
            FloodClock::Manual(clock) => clock.now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_the_values_at_the_chosen_outputs() {
        // Halo's default correlation (its trigger type's; the core's default is none).
        let settings = FloodControlDef {
            correlate_on: vec!["ticket_id".into(), "event".into()],
            ..FloodControlDef::default()
        };
        let outputs =
            json!({"ticket_id": 42, "event": "new ticket logged", "ticket": {"client_id": 7}});
        assert_eq!(
            correlation_key(&settings, &outputs).as_deref(),
            Some("[42,\"new ticket logged\"]")
        );
        let custom = FloodControlDef {
            correlate_on: vec!["ticket.client_id".into(), "nope".into()],
            ..settings
        };
        assert_eq!(
            correlation_key(&custom, &outputs).as_deref(),
            Some("[7,null]")
        );
        assert_eq!(
            correlation_key(&settings, &json!({"ticket_id": null, "event": null})),
            None,
            "no value, no correlation"
        );
    }

    #[test]
    fn quota_spreads_the_window() {
        let q = quota(4, Duration::from_secs(60));
        assert_eq!(q.burst_size().get(), 4);
        assert_eq!(q.replenish_interval(), Duration::from_secs(15));
    }
}
