//! Flood control in this process's memory. Per flow, each correlation key holds the arrival times
//! of its last `max_requests` correlated requests (run or suppressed) and the last request that ran
//! for it; one lock covers the decision and the parent update. Idle keys are swept, so memory
//! follows the number of keys active within one window, not the number ever seen.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use governor::clock::Clock;

use super::{Admission, FloodClock, FloodControl};
use crate::admission::{KeyState, Window};
use crate::flow::FloodControlDef;
use crate::storage::{FloodRecord, RequestFilter, Storage, StorageError, now_ms};

/// Keys are held as 64-bit hashes (SipHash with this process's random keys): a fraction of the
/// memory of the key text, and collisions cannot be precomputed by whoever sends webhooks.
type KeyHash = u64;

/// What is remembered of one correlation key.
type Key = KeyState<RequestId>;

/// Each flow's keys are spread over this many maps, each with its own lock.
const SHARDS: usize = 16;

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
    max_requests: usize,
    shards: Box<[Mutex<HashMap<KeyHash, Key>>]>,
}

/// A request id, held in 16 bytes when it is a UUID (as the engine's ids are).
#[derive(Debug)]
enum RequestId {
    Uuid(uuid::Uuid),
    Text(Box<str>),
}

impl RequestId {
    fn new(id: &str) -> Self {
        match uuid::Uuid::try_parse(id) {
            // Only when it prints back the same, so the id answered is the id stored.
            Ok(uuid)
                if uuid
                    .hyphenated()
                    .encode_lower(&mut uuid::Uuid::encode_buffer())
                    == id =>
            {
                RequestId::Uuid(uuid)
            }
            _ => RequestId::Text(id.into()),
        }
    }
}

impl From<&str> for RequestId {
    fn from(id: &str) -> Self {
        RequestId::new(id)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestId::Uuid(uuid) => uuid.hyphenated().fmt(f),
            RequestId::Text(text) => f.write_str(text),
        }
    }
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
    fn new(settings: &FloodControlDef) -> Self {
        FlowFlood {
            settings: settings.clone(),
            window: Duration::from_secs(settings.window_secs),
            max_requests: settings.max_requests.max(1) as usize,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, key: KeyHash) -> MutexGuard<'_, HashMap<KeyHash, Key>> {
        self.shards[key as usize % SHARDS]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The window in the unit of [`nanos`].
    fn rule(&self) -> Window {
        Window {
            length: self.window.as_nanos() as i64,
            max_requests: self.max_requests as u32,
        }
    }

    /// Decides for one request and records it, under the key's lock (see [`KeyState::admit`]).
    fn decide(&self, key: KeyHash, request_id: &str, clock: &FloodClock) -> Admission {
        let mut shard = self.shard(key);
        // Read under the lock, so each key's arrivals are in order.
        let now = nanos(clock);
        shard
            .entry(key)
            .or_default()
            .admit(request_id, now, self.rule())
    }

    /// Restores a key as if `arrivals` requests had just arrived, the last to run being
    /// `parent`. A key that requests reached meanwhile keeps its state.
    fn restore_key(
        &self,
        key: KeyHash,
        parent: &str,
        suppressed: u64,
        arrivals: usize,
        clock: &FloodClock,
    ) {
        let mut shard = self.shard(key);
        let now = nanos(clock);
        shard.entry(key).or_insert_with(|| KeyState {
            arrivals: std::iter::repeat_n(now, arrivals).collect(),
            parent: Some(RequestId::new(parent)),
            suppressed,
        });
    }

    fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.shard(i as KeyHash).len()).sum()
    }
}

/// The clock's time in nanoseconds, the unit of the arrivals held.
fn nanos(clock: &FloodClock) -> i64 {
    clock.now().as_u64() as i64
}

/// The parents of this flow's requests suppressed since `since_ms` (for a request with several
/// suppressed events, the parent of the first). Reads newest first, widening until it passes
/// `since_ms` or the end.
async fn suppressed_parents(
    storage: &dyn Storage,
    flow_id: &str,
    since_ms: i64,
) -> Result<HashSet<String>, StorageError> {
    let mut limit: u32 = 1_000;
    loop {
        let requests = storage
            .list_requests(&RequestFilter {
                flow_id: Some(flow_id.to_owned()),
                suppressed_only: true,
                limit: Some(limit),
                ..Default::default()
            })
            .await?;
        let complete = requests.len() < limit as usize
            || requests.last().is_some_and(|r| r.received_at_ms < since_ms)
            || limit == u32::MAX;
        if complete {
            return Ok(requests
                .into_iter()
                .filter(|r| r.received_at_ms >= since_ms)
                .filter_map(|r| r.suppressed_under)
                .collect());
        }
        limit = limit.saturating_mul(4);
    }
}

/// The flow's runs admitted by flood control since `since_ms`, reaching further back (doubling)
/// until the runs of all `parents` are included or the whole history is read.
async fn history_with(
    storage: &dyn Storage,
    flow_id: &str,
    since_ms: i64,
    parents: &HashSet<String>,
) -> Result<Vec<FloodRecord>, StorageError> {
    let now = now_ms();
    let mut lookback = (now - since_ms).max(1);
    loop {
        let from = now.saturating_sub(lookback).max(0);
        let history = storage.flood_history(flow_id, from).await?;
        let found: HashSet<&str> = history.iter().map(|r| r.request_id.as_str()).collect();
        if from == 0 || parents.iter().all(|p| found.contains(p.as_str())) {
            return Ok(history);
        }
        lookback = lookback.saturating_mul(2);
    }
}

#[async_trait]
impl FloodControl for MemoryFloodControl {
    async fn admit(&self, flow_id: &str, key: &str, request_id: &str) -> Admission {
        match self.flows().get(flow_id) {
            Some(flow) => flow.decide(self.hasher.hash_one(key), request_id, &self.clock),
            None => Admission::Run,
        }
    }

    /// For each key, counts the runs of the last window and finds whether requests were
    /// suppressed within it; the key is restored as if those requests had just arrived (a key
    /// suppressed within the window as if `max_requests` had), under its last run with its
    /// stored count. A flood in progress thus stays suppressed, however long ago its last run
    /// was; a key may be held back up to one window longer than without the restart, never less.
    async fn restore(&self, storage: &dyn Storage) -> Result<usize, StorageError> {
        let windows: Vec<(String, Duration)> = self
            .flows()
            .iter()
            .map(|(id, f)| (id.clone(), f.window))
            .collect();
        let mut replayed = 0;
        for (flow_id, window) in windows {
            let since_ms = now_ms() - window.as_millis() as i64;
            let parents = suppressed_parents(storage, &flow_id, since_ms).await?;
            let history = history_with(storage, &flow_id, since_ms, &parents).await?;
            // Per key: its last run, and how many of its runs fall within the window.
            let mut keys: HashMap<KeyHash, (&FloodRecord, usize)> = HashMap::new();
            for record in &history {
                let recent = usize::from(record.created_at_ms >= since_ms);
                replayed += recent;
                keys.entry(self.hasher.hash_one(&record.correlation_key))
                    .and_modify(|(last, count)| {
                        *last = record;
                        *count += recent;
                    })
                    .or_insert((record, recent));
            }
            let flows = self.flows();
            let Some(flow) = flows.get(&flow_id) else {
                continue;
            };
            for (key, (last, recent)) in keys {
                let flooding = last.suppressed_count > 0 && parents.contains(&last.request_id);
                let arrivals = if flooding {
                    flow.max_requests
                } else {
                    recent.min(flow.max_requests)
                };
                if arrivals > 0 {
                    flow.restore_key(
                        key,
                        &last.request_id,
                        last.suppressed_count,
                        arrivals,
                        &self.clock,
                    );
                }
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
                _ => FlowFlood::new(settings),
            };
            next.insert((*flow_id).to_owned(), flood);
        }
        *current = next;
    }

    fn sweep(&self) {
        for flow in self.flows().values() {
            let window = flow.rule().length;
            for i in 0..SHARDS {
                let mut shard = flow.shard(i as KeyHash);
                let now = nanos(&self.clock);
                shard.retain(|_, state| {
                    state
                        .arrivals
                        .back()
                        .is_some_and(|&last| now.saturating_sub(last) < window)
                });
                shard.shrink_to_fit();
            }
        }
    }

    fn tracked_keys(&self) -> Vec<(String, usize)> {
        let mut keys: Vec<(String, usize)> = self
            .flows()
            .iter()
            .map(|(id, f)| (id.clone(), f.len()))
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
        clock.advance(Duration::from_secs(60));
        assert_eq!(
            flood.admit("f", "k", "r7").await,
            Admission::Run,
            "after a window without requests, requests run again"
        );
    }

    #[tokio::test]
    async fn the_window_slides_over_every_correlated_request() {
        let (flood, clock) = flood(2, 10);
        let at = |secs| Duration::from_secs(secs);
        assert_eq!(flood.admit("f", "k", "a").await, Admission::Run); // t = 0
        clock.advance(at(6));
        assert_eq!(flood.admit("f", "k", "b").await, Admission::Run); // t = 6
        clock.advance(at(3));
        assert!(matches!(
            flood.admit("f", "k", "c").await,
            Admission::Suppress { .. }
        )); // t = 9
        clock.advance(at(1));
        // t = 10: `a` left the window, but `b` and the suppressed `c` are in it.
        assert!(matches!(
            flood.admit("f", "k", "d").await,
            Admission::Suppress { .. }
        ));
        clock.advance(at(9));
        // t = 19: only `d` (t = 10) is within the last 10 s.
        assert_eq!(flood.admit("f", "k", "e").await, Admission::Run);
    }

    #[tokio::test]
    async fn a_key_holds_only_the_arrivals_of_the_last_window() {
        let (flood, clock) = flood(100, 10);
        for i in 0..1000 {
            assert_eq!(
                flood.admit("f", "k", &format!("r{i}")).await,
                Admission::Run
            );
            clock.advance(Duration::from_secs(4));
        }
        let flows = flood.flows();
        let held: usize = (0..SHARDS as KeyHash)
            .map(|i| {
                let shard = flows["f"].shard(i);
                shard.values().map(|s| s.arrivals.len()).sum::<usize>()
            })
            .sum();
        assert_eq!(
            held, 3,
            "one request every 4 s leaves three in a 10 s window"
        );
    }

    #[test]
    fn uuid_ids_are_held_compactly_and_given_back_unchanged() {
        let id = uuid::Uuid::now_v7().to_string();
        assert!(matches!(RequestId::new(&id), RequestId::Uuid(_)));
        assert_eq!(RequestId::new(&id).to_string(), id);
        let upper = id.to_uppercase();
        assert_eq!(RequestId::new(&upper).to_string(), upper);
        assert_eq!(RequestId::new("r1").to_string(), "r1");
    }
}
