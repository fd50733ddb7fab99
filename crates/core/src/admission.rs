//! The sliding-window rule of flood control, written once for every backend (in memory and in
//! the database). It imports nothing of the crate, so `storage` can apply it without knowing
//! `flood` (which builds on `storage`).

use std::collections::VecDeque;
use std::fmt::Display;

use serde::Serialize;

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

/// At most `max_requests` correlated requests within `length`, in whatever unit the arrivals
/// are counted in (the caller's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub length: i64,
    pub max_requests: u32,
}

impl Window {
    /// The most arrivals a key holds; a limit of 0 is taken as 1, as the flow's settings are.
    pub fn capacity(&self) -> usize {
        self.max_requests.max(1) as usize
    }
}

/// What flood control remembers of one correlation key; `P` is how the parent's id is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyState<P> {
    /// When the correlated requests (run or suppressed) of the last window arrived, in arrival
    /// order; at most [`Window::capacity`] of them.
    pub arrivals: VecDeque<i64>,
    /// The last request that ran for this key; none before the first.
    pub parent: Option<P>,
    /// Events suppressed under `parent`.
    pub suppressed: u64,
}

impl<P> Default for KeyState<P> {
    fn default() -> Self {
        KeyState {
            arrivals: VecDeque::new(),
            parent: None,
            suppressed: 0,
        }
    }
}

impl<P: for<'a> From<&'a str> + Display> KeyState<P> {
    /// Decides for `request_id` arriving at `now` and records it: suppressed when `window`'s
    /// limit of correlated requests (run or suppressed) arrived within the window before it;
    /// otherwise it runs and becomes the key's parent.
    pub fn admit(&mut self, request_id: &str, now: i64, window: Window) -> Admission {
        // Arrivals that left the window no longer count. Not only from the front: several
        // nodes' clocks may record them out of order.
        self.arrivals
            .retain(|&t| now.saturating_sub(t) < window.length);
        let flooded = self.arrivals.len() >= window.capacity();
        while self.arrivals.len() >= window.capacity() {
            self.arrivals.pop_front();
        }
        self.arrivals.push_back(now);
        match self.parent.as_ref().filter(|_| flooded) {
            Some(parent) => {
                self.suppressed += 1;
                Admission::Suppress {
                    parent_request_id: parent.to_string(),
                    suppressed_count: self.suppressed,
                }
            }
            None => {
                self.parent = Some(P::from(request_id));
                self.suppressed = 0;
                Admission::Run
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Window = Window {
        length: 10,
        max_requests: 2,
    };

    fn suppressed(parent: &str, count: u64) -> Admission {
        Admission::Suppress {
            parent_request_id: parent.into(),
            suppressed_count: count,
        }
    }

    #[test]
    fn more_than_the_limit_in_the_window_are_suppressed_under_the_last_run() {
        let mut key = KeyState::<String>::default();
        assert_eq!(key.admit("a", 0, WINDOW), Admission::Run);
        assert_eq!(key.admit("b", 1, WINDOW), Admission::Run);
        assert_eq!(key.admit("c", 2, WINDOW), suppressed("b", 1));
        assert_eq!(key.admit("d", 3, WINDOW), suppressed("b", 2));
        assert_eq!(key.arrivals, [2, 3], "only the limit of arrivals is held");
        // t = 13: `d` (t = 3) left the window; `c` did already.
        assert_eq!(key.admit("e", 13, WINDOW), Admission::Run);
        assert_eq!((key.parent.as_deref(), key.suppressed), (Some("e"), 0));
    }

    #[test]
    fn the_window_slides_over_every_correlated_request() {
        let mut key = KeyState::<String>::default();
        assert_eq!(key.admit("a", 0, WINDOW), Admission::Run);
        assert_eq!(key.admit("b", 6, WINDOW), Admission::Run);
        assert_eq!(key.admit("c", 9, WINDOW), suppressed("b", 1));
        // t = 10: `a` left the window, but `b` and the suppressed `c` are in it.
        assert_eq!(key.admit("d", 10, WINDOW), suppressed("b", 2));
        // t = 19: only `d` (t = 10) is within the last 10.
        assert_eq!(key.admit("e", 19, WINDOW), Admission::Run);
    }

    #[test]
    fn arrivals_out_of_order_still_leave_the_window() {
        let mut key = KeyState::<String> {
            arrivals: [20, 5].into(),
            parent: Some("p".into()),
            suppressed: 0,
        };
        assert_eq!(key.admit("a", 21, WINDOW), Admission::Run, "5 left it");
        assert_eq!(key.arrivals, [20, 21]);
    }

    #[test]
    fn a_limit_of_zero_is_one() {
        let window = Window {
            length: 10,
            max_requests: 0,
        };
        let mut key = KeyState::<String>::default();
        assert_eq!(key.admit("a", 0, window), Admission::Run);
        assert_eq!(key.admit("b", 5, window), suppressed("a", 1));
        assert_eq!(key.admit("c", 20, window), Admission::Run);
    }
}
