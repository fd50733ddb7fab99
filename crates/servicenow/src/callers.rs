//! The ServiceNow user found for an end user's email, remembered for a while: a ticket's caller
//! is looked up for every record created, and most tickets come from a few people. A user
//! made active, deactivated or given the email meanwhile is seen once the entry expires
//! (`caller_cache_secs`); until then the earlier answer (or the default caller) is used.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The most emails remembered per connection: what a stranger's tickets can make it hold.
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug)]
pub(crate) struct CallerCache {
    ttl: Duration,
    /// email (trimmed, lower case) → (the user's sys_id, or none found; when it expires).
    entries: Mutex<HashMap<String, (Option<String>, Instant)>>,
}

impl CallerCache {
    pub(crate) fn new(ttl_secs: u64) -> Self {
        CallerCache {
            ttl: Duration::from_secs(ttl_secs),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// What was found for `email`, while it has not expired: `Some(None)` when no user matched.
    pub(crate) fn get(&self, email: &str) -> Option<Option<String>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (caller, expires) = entries.get(email)?;
        (Instant::now() < *expires).then(|| caller.clone())
    }

    /// Remembers what a lookup found (nothing with a zero lifetime).
    pub(crate) fn put(&self, email: &str, caller: Option<String>) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(email.to_owned(), (caller, now + self.ttl));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn found_and_not_found_are_remembered_until_they_expire() {
        let cache = CallerCache::new(300);
        assert_eq!(cache.get("a@x"), None);
        cache.put("a@x", Some("u1".into()));
        cache.put("b@x", None);
        assert_eq!(cache.get("a@x"), Some(Some("u1".into())));
        assert_eq!(cache.get("b@x"), Some(None));
        let expired = CallerCache::new(0);
        expired.put("a@x", Some("u1".into()));
        assert_eq!(expired.get("a@x"), None, "0 remembers nothing");
    }

    #[test]
    fn a_full_cache_starts_over_instead_of_growing() {
        let cache = CallerCache::new(300);
        for n in 0..MAX_ENTRIES + 5 {
            cache.put(&format!("{n}@x"), None);
        }
        let held = cache.entries.lock().unwrap().len();
        assert!(held <= MAX_ENTRIES, "{held}");
        assert_eq!(cache.get(&format!("{}@x", MAX_ENTRIES + 4)), Some(None));
    }
}
