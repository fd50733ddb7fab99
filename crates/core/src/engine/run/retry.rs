//! How often and how soon a failed step is tried again.

use std::time::Duration;

use crate::config::RetrySettings;

/// Attempts and backoff of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
}

/// The longest `Retry-After` honoured: Halo's rate-limit window (halo-api.md §6).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

impl RetryPolicy {
    /// Five attempts, 1 s doubling up to 60 s.
    pub const BUILT_IN: RetrySettings = RetrySettings {
        max_attempts: Some(5),
        initial_delay_ms: Some(1000),
        max_delay_ms: Some(60_000),
    };

    pub fn from_settings(settings: RetrySettings) -> RetryPolicy {
        let built_in = Self::BUILT_IN;
        RetryPolicy {
            max_attempts: settings
                .max_attempts
                .or(built_in.max_attempts)
                .unwrap_or(1)
                .max(1),
            initial_delay: Duration::from_millis(
                settings
                    .initial_delay_ms
                    .or(built_in.initial_delay_ms)
                    .unwrap_or(0),
            ),
            max_delay: Duration::from_millis(
                settings.max_delay_ms.or(built_in.max_delay_ms).unwrap_or(0),
            ),
        }
    }

    /// The wait after failed attempt `attempt` (1-based): exponential with "equal jitter"
    /// (half fixed, half random), capped; a longer `Retry-After` wins, up to 5 minutes.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let base = self
            .initial_delay
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay);
        let jittered = base / 2 + base.mul_f64(random_fraction() / 2.0);
        match retry_after {
            Some(wanted) => jittered.max(wanted.min(MAX_RETRY_AFTER)),
            None => jittered,
        }
    }
}

/// A number in [0, 1) from the random bits of a v4 UUID (no extra dependency).
fn random_fraction() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() as u64 >> 11;
    bits as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_caps_and_honours_retry_after() {
        let policy = RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        for _ in 0..100 {
            let first = policy.delay(1, None);
            assert!((50..=100).contains(&first.as_millis()), "{first:?}");
            let third = policy.delay(3, None);
            assert!((200..=400).contains(&third.as_millis()), "{third:?}");
            let capped = policy.delay(10, None);
            assert!((500..=1000).contains(&capped.as_millis()), "{capped:?}");
        }
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(3600))),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn step_settings_win_over_config_and_built_in() {
        let step = RetrySettings {
            max_attempts: Some(2),
            ..RetrySettings::default()
        };
        let config = RetrySettings {
            max_attempts: Some(9),
            initial_delay_ms: Some(5),
            max_delay_ms: None,
        };
        let policy = RetryPolicy::from_settings(step.or(config).or(RetryPolicy::BUILT_IN));
        assert_eq!(policy.max_attempts, 2);
        assert_eq!(policy.initial_delay, Duration::from_millis(5));
        assert_eq!(policy.max_delay, Duration::from_secs(60));
    }
}
