//! Rejected requests cost their sender, not us: each is counted by flow and reason, and only a
//! few per second per flow are logged and stored (as a bounded summary); the next line logged
//! says how many were left out.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::json;

use super::error::ApiError;
use crate::engine::{Engine, new_id};
use crate::storage::{NewRequest, now_ms};

/// The label of connections closed before a whole request arrived.
pub(super) const CONNECTION: &str = "connection";

/// The label of refused API calls.
pub(super) const API: &str = "api";

/// The label for requests to a flow or connection that does not exist: the id is the
/// sender's choice, so it never becomes a label or a map key.
pub const UNKNOWN: &str = "unknown";

/// Shared by the listeners of one server.
#[derive(Debug)]
pub struct Rejections {
    per_second: u32,
    started: Instant,
    /// By flow: (the second, lines admitted in it, left out since the last admitted line).
    windows: Mutex<HashMap<String, (u64, u32, u64)>>,
    counts: Mutex<BTreeMap<(String, &'static str), u64>>,
}

/// One rejected request, as it is logged and stored.
pub struct Rejected<'a> {
    /// The flow id (`servicenow:<side>:<id>` for a ServiceNow connection) or [`UNKNOWN`].
    pub flow: &'a str,
    pub error: &'a ApiError,
    /// What is logged, not sent: the reason in the operator's terms.
    pub detail: &'a str,
    pub peer: Option<SocketAddr>,
    /// Query and body bytes, as sent or declared.
    pub bytes: usize,
    /// Whether to keep a summary in the run history.
    pub store: bool,
}

impl Rejections {
    pub fn new(per_second: u32) -> Rejections {
        Rejections {
            per_second,
            started: Instant::now(),
            windows: Mutex::default(),
            counts: Mutex::default(),
        }
    }

    /// Counts, logs and stores (within the budget) a rejection.
    pub async fn record(&self, engine: &Engine, rejected: Rejected<'_>) {
        let Some(client) = self.count_and_log(&rejected) else {
            return;
        };
        if rejected.store && rejected.flow != UNKNOWN {
            let code = rejected.error.code.as_str();
            engine
                .record_rejected(NewRequest {
                    id: new_id(),
                    flow_id: rejected.flow.to_owned(),
                    received_at_ms: now_ms(),
                    http_status: rejected.error.code.status().as_u16(),
                    error: Some((code.to_owned(), rejected.error.message.clone())),
                    query: None,
                    body: None,
                    event_count: 0,
                    outcome: Some(json!({"rejected": {"client": client, "bytes": rejected.bytes}})),
                })
                .await;
        }
    }

    /// Counts a rejection and logs it within the budget; the client address when it was logged
    /// (and so may be stored).
    pub(super) fn count_and_log(&self, rejected: &Rejected<'_>) -> Option<String> {
        let code = rejected.error.code.as_str();
        *lock(&self.counts)
            .entry((rejected.flow.to_owned(), code))
            .or_default() += 1;
        let suppressed = self.admit(rejected.flow)?;
        let client = rejected
            .peer
            .map_or_else(|| "unknown".to_owned(), |p| p.to_string());
        tracing::warn!(
            flow_id = %rejected.flow,
            reason = code,
            client = %client,
            bytes = rejected.bytes,
            suppressed,
            "Rejected a request: {}. If this is your sender, fix its settings; repeated rejections from a stranger need no action.",
            printable(rejected.detail)
        );
        Some(client)
    }

    /// `Some(left out since the last admitted)` when this rejection is within the budget.
    fn admit(&self, flow: &str) -> Option<u64> {
        let second = self.started.elapsed().as_secs();
        let mut windows = lock(&self.windows);
        let window = windows.entry(flow.to_owned()).or_insert((second, 0, 0));
        if window.0 != second {
            window.0 = second;
            window.1 = 0;
        }
        if window.1 >= self.per_second {
            window.2 += 1;
            return None;
        }
        window.1 += 1;
        Some(std::mem::take(&mut window.2))
    }

    /// (flow, reason, count) of every rejection since start.
    pub(super) fn counts(&self) -> Vec<(String, &'static str, u64)> {
        lock(&self.counts)
            .iter()
            .map(|((flow, reason), n)| (flow.clone(), *reason, *n))
            .collect()
    }
}

/// A sender's text made safe for a log line: no control characters (a forged line or terminal
/// escape), at most 300 characters.
fn printable(text: &str) -> String {
    text.chars()
        .take(300)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// A mutex's guard; a panic elsewhere while it was held leaves data that is still usable here.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_a_few_per_second_and_counts_the_rest() {
        let rejections = Rejections::new(2);
        assert_eq!(rejections.admit("f"), Some(0));
        assert_eq!(rejections.admit("f"), Some(0));
        assert_eq!(rejections.admit("f"), None);
        assert_eq!(rejections.admit("g"), Some(0), "per flow");
    }

    #[test]
    fn log_text_has_no_control_characters() {
        assert_eq!(printable("a\nb\u{1b}[31m"), "a\u{fffd}b\u{fffd}[31m");
        assert_eq!(printable(&"x".repeat(1000)).len(), 300);
    }
}
