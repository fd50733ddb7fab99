//! Counters and histograms the engine keeps in memory for `/metrics` (run counts by status come
//! from the database, so they survive restarts), and [`Exposition`]: the metrics of one scrape,
//! gathered from wherever they live, encoded as Prometheus text by `prometheus-client`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

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
pub(crate) struct EngineMetrics {
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

impl MetricsState {
    /// Adds the engine's own families: step attempt latency, retries, adoptions, interrupted
    /// and pruned runs.
    pub fn expose(&self, exposition: &mut Exposition) {
        exposition.histogram(
            "haloflow_step_attempt_duration_seconds",
            "Duration of step attempts by step type and outcome, since start.",
            self.step_latency.iter().map(|((step_type, outcome), h)| {
                let labels =
                    Exposition::labels([("step_type", step_type.as_str()), ("outcome", outcome)]);
                (labels, h.clone())
            }),
        );
        exposition.counter(
            "haloflow_step_retries",
            "Step attempts after the first, by step type, since start.",
            by_step_type(&self.retries),
        );
        exposition.counter(
            "haloflow_step_adopted",
            "Creates whose earlier attempt was found and adopted instead of sent again, since start.",
            by_step_type(&self.adopted),
        );
        exposition.counter(
            "haloflow_runs_interrupted",
            "Runs stopped by a shutdown and left to resume, since start.",
            [(Labels::new(), self.interrupted_runs)],
        );
        exposition.counter(
            "haloflow_runs_pruned",
            "Finished runs deleted by retention, since start.",
            [(Labels::new(), self.pruned_runs)],
        );
    }
}

/// Counts by step type as samples.
fn by_step_type(counts: &BTreeMap<String, u64>) -> Vec<(Labels, u64)> {
    let samples = counts.iter();
    let label = |step_type: &str| Exposition::labels([("step_type", step_type)]);
    samples
        .map(|(step_type, n)| (label(step_type), *n))
        .collect()
}

/// The labels of one sample, in the order they are written.
pub type Labels = Vec<(&'static str, String)>;

/// The metrics of one scrape as families of samples, in the order they were added; encoded as
/// Prometheus text (format 0.0.4) by `prometheus-client`, which writes the `# HELP` and
/// `# TYPE` lines, the `_total` of counters and the buckets of histograms, and escapes labels.
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<Family>,
}

#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    samples: Samples,
}

#[derive(Debug)]
enum Samples {
    Counter(Vec<(Labels, u64)>),
    Gauge(Vec<(Labels, i64)>),
    FloatGauge(Vec<(Labels, f64)>),
    Histogram(Vec<(Labels, Histogram)>),
}

impl Exposition {
    /// The `Content-Type` of the text [`Exposition::encode`] writes.
    pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

    /// A sample's labels from `(name, value)` pairs, written in this order.
    pub fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
        pairs.map(|(name, value)| (name, value.to_owned())).into()
    }

    /// A counter family; `name` without the `_total` the encoder adds.
    pub fn counter(
        &mut self,
        name: &'static str,
        help: &'static str,
        samples: impl IntoIterator<Item = (Labels, u64)>,
    ) {
        self.add(name, help, Samples::Counter(samples.into_iter().collect()));
    }

    pub fn gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        samples: impl IntoIterator<Item = (Labels, i64)>,
    ) {
        self.add(name, help, Samples::Gauge(samples.into_iter().collect()));
    }

    pub fn float_gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        samples: impl IntoIterator<Item = (Labels, f64)>,
    ) {
        self.add(
            name,
            help,
            Samples::FloatGauge(samples.into_iter().collect()),
        );
    }

    /// A histogram family over [`LATENCY_BUCKETS`].
    pub fn histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        samples: impl IntoIterator<Item = (Labels, Histogram)>,
    ) {
        self.add(
            name,
            help,
            Samples::Histogram(samples.into_iter().collect()),
        );
    }

    fn add(&mut self, name: &'static str, help: &'static str, samples: Samples) {
        self.families.push(Family {
            name,
            help,
            samples,
        });
    }

    /// The Prometheus text of every family.
    pub fn encode(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).expect("a String takes any text");
        text
    }
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        for family in &self.families {
            family.encode(&mut encoder)?;
        }
        Ok(())
    }
}

impl Family {
    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let kind = match self.samples {
            Samples::Counter(_) => MetricType::Counter,
            Samples::Gauge(_) | Samples::FloatGauge(_) => MetricType::Gauge,
            Samples::Histogram(_) => MetricType::Histogram,
        };
        let mut metric = encoder.encode_descriptor(self.name, self.help, None, kind)?;
        match &self.samples {
            Samples::Counter(s) => encode_samples(&mut metric, s, |n| ConstCounter::new(*n)),
            Samples::Gauge(s) => encode_samples(&mut metric, s, |n| ConstGauge::new(*n)),
            Samples::FloatGauge(s) => encode_samples(&mut metric, s, |n| ConstGauge::new(*n)),
            Samples::Histogram(s) => encode_samples(&mut metric, s, Clone::clone),
        }
    }
}

/// Encodes each sample of a family under its labels.
fn encode_samples<V, M: EncodeMetric>(
    metric: &mut MetricEncoder<'_>,
    samples: &[(Labels, V)],
    make: impl Fn(&V) -> M,
) -> fmt::Result {
    for (labels, value) in samples {
        make(value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

impl EncodeMetric for Histogram {
    /// The encoder takes each bucket's own count and accumulates them itself.
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> fmt::Result {
        let mut below = 0;
        let buckets: Vec<(f64, u64)> = (LATENCY_BUCKETS.iter().zip(self.buckets))
            .map(|(bound, cumulative)| {
                let own = cumulative - below;
                below = cumulative;
                (*bound, own)
            })
            .collect();
        encoder.encode_histogram::<NoLabelSet>(self.sum_secs, self.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
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

    #[test]
    fn exposition_writes_prometheus_text_with_the_names_given() {
        let m = EngineMetrics::default();
        m.observe_attempt("t", true, Duration::from_millis(3));
        m.count_retry("t");
        let mut exposition = Exposition::default();
        exposition.gauge(
            "x_runs",
            "Runs.",
            [(Exposition::labels([("flow", "a\"b")]), 2)],
        );
        m.snapshot().expose(&mut exposition);
        let text = exposition.encode();
        for line in [
            "# HELP x_runs Runs.",
            "# TYPE x_runs gauge",
            "x_runs{flow=\"a\\\"b\"} 2",
            "# TYPE haloflow_step_retries_total counter",
            "haloflow_step_retries_total{step_type=\"t\"} 1",
            "haloflow_runs_interrupted_total 0",
            "# TYPE haloflow_step_attempt_duration_seconds histogram",
            "haloflow_step_attempt_duration_seconds_bucket{step_type=\"t\",outcome=\"succeeded\",le=\"0.0025\"} 0",
            "haloflow_step_attempt_duration_seconds_bucket{step_type=\"t\",outcome=\"succeeded\",le=\"0.005\"} 1",
            "haloflow_step_attempt_duration_seconds_bucket{step_type=\"t\",outcome=\"succeeded\",le=\"10\"} 1",
            "haloflow_step_attempt_duration_seconds_bucket{step_type=\"t\",outcome=\"succeeded\",le=\"+Inf\"} 1",
            "haloflow_step_attempt_duration_seconds_count{step_type=\"t\",outcome=\"succeeded\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(!text.contains("# EOF"), "{text}");
    }
}
