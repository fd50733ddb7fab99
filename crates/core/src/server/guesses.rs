//! Guessing the API's credentials costs a stranger time: failed attempts (sign-in, a wrong
//! `Authorization`, a forged session cookie) are counted per client address, and a client over
//! the limit is refused before its credentials are compared. Successes are not counted, and
//! each client has its own allowance, so a stranger's guessing never locks a user out
//! elsewhere.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::rejections::lock;

/// Failed attempts a client may make at once; then one more per [`PERIOD`].
const BURST: u32 = 10;
const PERIOD: Duration = Duration::from_secs(6);
/// Clients remembered at most; beyond them (a stranger with very many addresses) new clients
/// share one allowance, so memory stays bounded and guessing stays limited.
const CAPACITY: usize = 10_000;

/// Per client: when its failures will have been forgiven (GCRA's theoretical arrival time).
/// `None` is a client of unknown address, or any client once [`CAPACITY`] is reached.
#[derive(Debug)]
pub(super) struct Guesses {
    clients: Mutex<(HashMap<Option<IpAddr>, Instant>, Instant)>,
}

impl Default for Guesses {
    fn default() -> Self {
        Guesses {
            clients: Mutex::new((HashMap::new(), Instant::now())),
        }
    }
}

impl Guesses {
    /// Whole seconds `peer` must wait before its next attempt; None when it may try now.
    pub(super) fn wait(&self, peer: Option<IpAddr>) -> Option<u64> {
        self.wait_at(peer, Instant::now())
    }

    fn wait_at(&self, peer: Option<IpAddr>, now: Instant) -> Option<u64> {
        let clients = lock(&self.clients);
        let key = key_of(peer);
        let forgiven = match clients.0.get(&key) {
            Some(forgiven) => forgiven,
            None if clients.0.len() >= CAPACITY => clients.0.get(&None)?,
            None => return None,
        };
        let ahead = forgiven.checked_duration_since(now)?;
        let over = ahead.checked_sub(PERIOD * (BURST - 1))?;
        (!over.is_zero()).then(|| over.as_secs() + u64::from(over.subsec_nanos() > 0))
    }

    /// Counts a failed attempt of `peer`.
    pub(super) fn failed(&self, peer: Option<IpAddr>) {
        self.failed_at(peer, Instant::now());
    }

    fn failed_at(&self, peer: Option<IpAddr>, now: Instant) {
        let mut clients = lock(&self.clients);
        let (map, pruned) = &mut *clients;
        let mut key = key_of(peer);
        if !map.contains_key(&key) && map.len() >= CAPACITY {
            // Forget forgiven clients, at most once a second so a flood of new addresses
            // does not make every failure walk the whole map.
            if now.duration_since(*pruned) >= Duration::from_secs(1) {
                map.retain(|_, forgiven| *forgiven > now);
                *pruned = now;
            }
            if map.len() >= CAPACITY {
                key = None;
            }
        }
        let forgiven = map.entry(key).or_insert(now);
        *forgiven = (*forgiven).max(now) + PERIOD;
    }
}

/// The client an address stands for: an IPv6 client by its /64 (one subscriber's network).
fn key_of(peer: Option<IpAddr>) -> Option<IpAddr> {
    match peer?.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            Some(IpAddr::V6(bits.into()))
        }
        v4 => Some(v4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn failures_beyond_the_burst_wait_and_are_forgiven_over_time() {
        let guesses = Guesses::default();
        let now = Instant::now();
        for _ in 0..BURST {
            assert_eq!(guesses.wait_at(ip("10.0.0.1"), now), None);
            guesses.failed_at(ip("10.0.0.1"), now);
        }
        assert_eq!(guesses.wait_at(ip("10.0.0.1"), now), Some(6));
        assert_eq!(guesses.wait_at(ip("10.0.0.2"), now), None, "per client");
        assert_eq!(guesses.wait_at(ip("10.0.0.1"), now + PERIOD), None);
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_network() {
        let guesses = Guesses::default();
        let now = Instant::now();
        for i in 0..BURST {
            guesses.failed_at(ip(&format!("2001:db8::{i:x}")), now);
        }
        assert!(guesses.wait_at(ip("2001:db8::ffff"), now).is_some());
        assert_eq!(guesses.wait_at(ip("2001:db8:0:1::1"), now), None);
    }

    #[test]
    fn memory_is_bounded_and_strangers_beyond_it_share_one_allowance() {
        let guesses = Guesses::default();
        let now = Instant::now() + Duration::from_secs(2);
        for i in 0..CAPACITY as u32 {
            guesses.failed_at(Some(IpAddr::V4(i.into())), now);
        }
        for i in 0..BURST {
            guesses.failed_at(Some(IpAddr::V4((u32::MAX - i).into())), now);
        }
        assert_eq!(lock(&guesses.clients).0.len(), CAPACITY + 1);
        assert!(guesses.wait_at(ip("255.1.1.1"), now).is_some());
        assert_eq!(
            guesses.wait_at(ip("0.0.0.1"), now),
            None,
            "known clients keep theirs"
        );
    }
}
