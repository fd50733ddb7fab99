//! Flood control and request rate limiting for triggers, built on governor.
//!
//! Flood control follows xMatters' semantics: requests correlate when the chosen trigger outputs
//! have the same values; per correlation key a GCRA limiter allows `max_requests` within
//! `window_secs` (a burst of that size, refilling one every `window / max_requests`). Requests
//! over it are *suppressed*: stored with their payload, linked to the last request that ran for
//! that key (the parent) with a running count, and they start no run. The decision sits behind
//! [`FloodControl`] so that a database-backed implementation can replace the in-memory one when
//! several nodes share PostgreSQL.

mod memory;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use governor::clock::{Clock, FakeRelativeClock};
use governor::nanos::Nanos;
use serde::Serialize;
use serde_json::Value;

pub use memory::{MemoryFloodControl, quota};

use crate::flow::FloodControlDef;
use crate::storage::{Storage, StorageError};

/// The verdict on one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Admission {
    /// Run the flow; this request becomes the parent of later suppressed ones.
    Run,
    /// Start no run; listed under `parent_request_id`, the `suppressed_count`th so far.
    Suppress {
        parent_request_id: String,
        suppressed_count: u64,
    },
}

/// Decides which correlated events run. Implementations must be safe to call concurrently.
#[async_trait]
pub trait FloodControl: Send + Sync + fmt::Debug + 'static {
    /// Decides for one event of `request_id` whose correlation key is `key`.
    async fn admit(&self, flow_id: &str, key: &str, request_id: &str) -> Admission;
    /// Rebuilds the state after a restart from the runs stored within each flow's window.
    async fn restore(&self, storage: &dyn Storage) -> Result<usize, StorageError>;
    /// Applies new flood settings after a reload: flows whose settings did not change keep
    /// their state; new or changed ones start fresh; removed ones are dropped.
    fn configure(&self, flows: &[(&str, &FloodControlDef)]);
    /// Forgets keys that have been idle for a whole window; bounds memory.
    fn sweep(&self);
    /// Correlation keys currently held, per flow.
    fn tracked_keys(&self) -> Vec<(String, usize)>;
}

/// The correlation key of a trigger's outputs: the JSON array of the values at `correlate_on`
/// (a missing value is `null`).
pub fn correlation_key(settings: &FloodControlDef, outputs: &Value) -> String {
    let values: Vec<&Value> = settings
        .correlate_on
        .iter()
        .map(|path| {
            path.split('.')
                .try_fold(outputs, |v, segment| v.get(segment))
                .unwrap_or(&Value::Null)
        })
        .collect();
    serde_json::to_string(&values).expect("JSON values serialize")
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
        let settings = FloodControlDef::default();
        let outputs =
            json!({"ticket_id": 42, "event": "new ticket logged", "ticket": {"client_id": 7}});
        assert_eq!(
            correlation_key(&settings, &outputs),
            "[42,\"new ticket logged\"]"
        );
        let custom = FloodControlDef {
            correlate_on: vec!["ticket.client_id".into(), "nope".into()],
            ..settings
        };
        assert_eq!(correlation_key(&custom, &outputs), "[7,null]");
    }
}
