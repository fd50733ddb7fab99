//! Flood control in this process's memory: one keyed governor limiter per flow, plus the last
//! request that ran for each key. Idle keys are swept, so memory follows the number of keys
//! active within one window, not the number ever seen.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroU32;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use super::{Admission, FloodClock, FloodControl};
use crate::flow::FloodControlDef;
use crate::storage::{Storage, StorageError, now_ms};

/// Keys are held as 64-bit hashes (SipHash with this process's random keys): a fraction of the
/// memory of the key text, and collisions cannot be precomputed by whoever sends webhooks.
type KeyHash = u64;
type KeyedLimiter =
    RateLimiter<KeyHash, DashMapStateStore<KeyHash>, FloodClock, NoOpMiddleware<Nanos>>;

#[derive(Debug)]
pub struct MemoryFloodControl {
    clock: FloodClock,
    hasher: RandomState,
    flows: RwLock<HashMap<String, FlowFlood>>,
}

#[derive(Debug)]
struct FlowFlood {
    settings: FloodControlDef,
    window: Duration,
    limiter: KeyedLimiter,
    parents: Mutex<HashMap<KeyHash, Parent>>,
}

/// The last request that ran for a key, and how many were suppressed under it.
#[derive(Debug)]
struct Parent {
    request_id: String,
    suppressed: u64,
    last_seen: Nanos,
}

/// `max_requests` per `window`: a burst of `max_requests`, one more every `window / max_requests`.
pub fn quota(max_requests: u32, window: Duration) -> Quota {
    let burst = NonZeroU32::new(max_requests.max(1)).expect("at least one");
    let period = (window / burst.get()).max(Duration::from_nanos(1));
    Quota::with_period(period)
        .expect("a non-zero period")
        .allow_burst(burst)
}

impl MemoryFloodControl {
    /// Flood control for the flows whose settings are given (disabled flows are left out).
    pub fn new<'a>(
        flows: impl IntoIterator<Item = (&'a str, &'a FloodControlDef)>,
        clock: FloodClock,
    ) -> Self {
        let flood = MemoryFloodControl {
            clock,
            hasher: RandomState::new(),
            flows: RwLock::default(),
        };
        flood.configure(&flows.into_iter().collect::<Vec<_>>());
        flood
    }

    fn flows(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, FlowFlood>> {
        self.flows
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl FlowFlood {
    fn parents(&self) -> std::sync::MutexGuard<'_, HashMap<KeyHash, Parent>> {
        self.parents
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn decide(
        &self,
        key: KeyHash,
        request_id: &str,
        now: Nanos,
        suppressed_so_far: u64,
    ) -> Admission {
        let allowed = self.limiter.check_key(&key).is_ok();
        let mut parents = self.parents();
        match (allowed, parents.get_mut(&key)) {
            (false, Some(parent)) => {
                parent.suppressed += 1;
                parent.last_seen = now;
                Admission::Suppress {
                    parent_request_id: parent.request_id.clone(),
                    suppressed_count: parent.suppressed,
                }
            }
            // Over the limit with no request to link to (swept meanwhile): let it run and lead.
            _ => {
                parents.insert(
                    key,
                    Parent {
                        request_id: request_id.to_owned(),
                        suppressed: suppressed_so_far,
                        last_seen: now,
                    },
                );
                Admission::Run
            }
        }
    }
}

#[async_trait]
impl FloodControl for MemoryFloodControl {
    async fn admit(&self, flow_id: &str, key: &str, request_id: &str) -> Admission {
        match self.flows().get(flow_id) {
            Some(flow) => flow.decide(self.hasher.hash_one(key), request_id, self.clock.now(), 0),
            None => Admission::Run,
        }
    }

    /// Replays each flow's runs of the last window as if they had just arrived, in order, so a
    /// flood in progress stays suppressed after a restart. A key may be held back up to one
    /// window longer than without the restart, never less.
    async fn restore(&self, storage: &dyn Storage) -> Result<usize, StorageError> {
        let windows: Vec<(String, Duration)> = self
            .flows()
            .iter()
            .map(|(id, f)| (id.clone(), f.window))
            .collect();
        let mut replayed = 0;
        for (flow_id, window) in windows {
            let history = storage
                .flood_history(&flow_id, now_ms() - window.as_millis() as i64)
                .await?;
            let flows = self.flows();
            let Some(flow) = flows.get(&flow_id) else {
                continue;
            };
            for record in history {
                let key = self.hasher.hash_one(&record.correlation_key);
                flow.decide(
                    key,
                    &record.request_id,
                    self.clock.now(),
                    record.suppressed_count,
                );
                replayed += 1;
            }
        }
        Ok(replayed)
    }

    fn configure(&self, flows: &[(&str, &FloodControlDef)]) {
        let mut current = self
            .flows
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut next = HashMap::new();
        for (flow_id, settings) in flows.iter().filter(|(_, s)| s.enabled) {
            let flood = match current.remove(*flow_id) {
                Some(existing) if existing.settings == **settings => existing,
                _ => {
                    let window = Duration::from_secs(settings.window_secs);
                    let limiter = RateLimiter::new(
                        quota(settings.max_requests, window),
                        DashMapStateStore::default(),
                        self.clock.clone(),
                    );
                    FlowFlood {
                        settings: (*settings).clone(),
                        window,
                        limiter,
                        parents: Mutex::new(HashMap::new()),
                    }
                }
            };
            next.insert((*flow_id).to_owned(), flood);
        }
        *current = next;
    }

    fn sweep(&self) {
        let now = self.clock.now();
        for flow in self.flows().values() {
            flow.limiter.retain_recent();
            flow.limiter.shrink_to_fit();
            let window = Nanos::from(flow.window);
            let mut parents = flow.parents();
            parents.retain(|_, p| now.saturating_sub(p.last_seen) < window);
            parents.shrink_to_fit();
        }
    }

    fn tracked_keys(&self) -> Vec<(String, usize)> {
        let mut keys: Vec<(String, usize)> = self
            .flows()
            .iter()
            .map(|(id, f)| (id.clone(), f.limiter.len().max(f.parents().len())))
            .collect();
        keys.sort();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flood(max: u32, window_secs: u64) -> (MemoryFloodControl, FloodClock) {
        let clock = FloodClock::manual();
        let settings = FloodControlDef {
            max_requests: max,
            window_secs,
            ..FloodControlDef::default()
        };
        (
            MemoryFloodControl::new([("f", &settings)], clock.clone()),
            clock,
        )
    }

    #[tokio::test]
    async fn more_than_max_in_the_window_are_suppressed_under_the_last_run() {
        let (flood, clock) = flood(4, 60);
        let mut verdicts = Vec::new();
        for i in 1..=6 {
            verdicts.push(flood.admit("f", "k", &format!("r{i}")).await);
        }
        assert_eq!(verdicts[..4], vec![Admission::Run; 4][..]);
        assert_eq!(
            verdicts[4],
            Admission::Suppress {
                parent_request_id: "r4".into(),
                suppressed_count: 1
            }
        );
        assert_eq!(
            verdicts[5],
            Admission::Suppress {
                parent_request_id: "r4".into(),
                suppressed_count: 2
            }
        );
        assert_eq!(
            flood.admit("f", "other", "o1").await,
            Admission::Run,
            "other keys are not correlated"
        );
        assert_eq!(
            flood.admit("g", "k", "g1").await,
            Admission::Run,
            "flows without flood control always run"
        );
        clock.advance(Duration::from_secs(61));
        assert_eq!(
            flood.admit("f", "k", "r7").await,
            Admission::Run,
            "after the window, requests run again"
        );
    }

    #[test]
    fn quota_spreads_the_window() {
        let q = quota(4, Duration::from_secs(60));
        assert_eq!(q.burst_size().get(), 4);
        assert_eq!(q.replenish_interval(), Duration::from_secs(15));
    }
}
