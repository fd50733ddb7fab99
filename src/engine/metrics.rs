//! Counters and histograms the engine keeps in memory for `/metrics` (run counts by status come
//! from the database, so they survive restarts).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the step latency buckets, in seconds (Prometheus `le`).
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// One step type's latency histogram.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS`].
    pub buckets: [u64; LATENCY_BUCKETS.len()],
    pub count: u64,
    pub sum_secs: f64,
}

#[derive(Debug, Default)]
pub struct EngineMetrics {
    inner: Mutex<MetricsState>,
}

#[derive(Debug, Default, Clone)]
pub struct MetricsState {
    /// Step attempt latency by step type and outcome (`succeeded`, `failed`).
    pub step_latency: BTreeMap<(String, &'static str), Histogram>,
    /// Retries (attempts after the first) by step type.
    pub retries: BTreeMap<String, u64>,
    /// Earlier attempts' effects found and adopted instead of sending again, by step type.
    pub adopted: BTreeMap<String, u64>,
    /// Runs whose work was interrupted by a shutdown, left to resume.
    pub interrupted_runs: u64,
    /// Finished runs deleted by retention.
    pub pruned_runs: u64,
}

impl EngineMetrics {
    fn with<T>(&self, f: impl FnOnce(&mut MetricsState) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn observe_attempt(&self, step_type: &str, succeeded: bool, took: Duration) {
        let outcome = if succeeded { "succeeded" } else { "failed" };
        let secs = took.as_secs_f64();
        self.with(|m| {
            let h = m
                .step_latency
                .entry((step_type.to_owned(), outcome))
                .or_default();
            for (bucket, bound) in h.buckets.iter_mut().zip(LATENCY_BUCKETS) {
                if secs <= bound {
                    *bucket += 1;
                }
            }
            h.count += 1;
            h.sum_secs += secs;
        });
    }

    pub fn count_retry(&self, step_type: &str) {
        self.with(|m| *m.retries.entry(step_type.to_owned()).or_default() += 1);
    }

    pub fn count_adopted(&self, step_type: &str) {
        self.with(|m| *m.adopted.entry(step_type.to_owned()).or_default() += 1);
    }

    pub fn count_interrupted(&self) {
        self.with(|m| m.interrupted_runs += 1);
    }

    pub fn count_pruned(&self, runs: u64) {
        self.with(|m| m.pruned_runs += runs);
    }

    pub fn snapshot(&self) -> MetricsState {
        self.with(|m| m.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let m = EngineMetrics::default();
        m.observe_attempt("t", true, Duration::from_millis(3));
        m.observe_attempt("t", true, Duration::from_secs(20));
        let h = &m.snapshot().step_latency[&("t".to_owned(), "succeeded")];
        assert_eq!(h.buckets[0], 0);
        assert_eq!(h.buckets[2], 1, "3 ms is under 5 ms");
        assert_eq!(
            h.buckets[LATENCY_BUCKETS.len() - 1],
            1,
            "20 s is over every bound"
        );
        assert_eq!(h.count, 2);
    }
}
