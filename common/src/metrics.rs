//! Prometheus metrics of a process: counters and latency histograms per operation, and gauges
//! that are read fresh when scraped. `prometheus-client` keeps the values and writes the text
//! exposition format; [`crate::http`] serves it.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// A label set with one label, `op`: the operation (request kind, FUSE call).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

/// Labels of a gauge, e.g. `[("volume", "default")]`.
pub type Labels = Vec<(&'static str, String)>;

/// A float gauge family.
pub type GaugeFamily = Family<Labels, Gauge<f64, AtomicU64>>;

fn latency_histogram() -> Histogram {
    // 50 µs to about 50 s, four buckets per decade.
    Histogram::new(exponential_buckets(50e-6, 1.778, 25))
}

/// Requests, failures and latency per operation.
#[derive(Clone)]
pub struct OpMetrics {
    requests: Family<OpLabel, Counter>,
    /// Absent where outcomes are not seen (FUSE replies are sent by each operation).
    errors: Option<Family<OpLabel, Counter>>,
    seconds: Family<OpLabel, Histogram, fn() -> Histogram>,
}

impl OpMetrics {
    /// Registers `PREFIX_requests_total`, `PREFIX_errors_total` and `PREFIX_seconds`.
    pub fn register(registry: &mut Registry, prefix: &str, what: &str) -> Self {
        let mut m = Self::register_without_errors(registry, prefix, what);
        let errors = Family::default();
        registry.register(
            format!("{prefix}_errors"),
            format!("{what} that failed, by operation"),
            errors.clone(),
        );
        m.errors = Some(errors);
        m
    }

    /// Registers `PREFIX_requests_total` and `PREFIX_seconds` only.
    pub fn register_without_errors(registry: &mut Registry, prefix: &str, what: &str) -> Self {
        let m = OpMetrics {
            requests: Family::default(),
            errors: None,
            seconds: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        };
        registry.register(
            format!("{prefix}_requests"),
            format!("{what} handled, by operation"),
            m.requests.clone(),
        );
        registry.register(
            format!("{prefix}_seconds"),
            format!("Time to handle {what}, by operation"),
            m.seconds.clone(),
        );
        m
    }

    pub fn record(&self, op: &'static str, elapsed: Duration, ok: bool) {
        if !ok {
            if let Some(errors) = &self.errors {
                errors.get_or_create(&OpLabel { op }).inc();
            }
        }
        self.record_done(op, elapsed);
    }

    /// Records an operation whose outcome is not known here.
    pub fn record_done(&self, op: &'static str, elapsed: Duration) {
        let label = OpLabel { op };
        self.requests.get_or_create(&label).inc();
        self.seconds
            .get_or_create(&label)
            .observe(elapsed.as_secs_f64());
    }
}

/// Registers a counter.
pub fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let c = Counter::default();
    registry.register(name, help, c.clone());
    c
}

/// Registers a gauge family.
pub fn gauges(registry: &mut Registry, name: &str, help: &str) -> GaugeFamily {
    let g = GaugeFamily::default();
    registry.register(name, help, g.clone());
    g
}

/// A process's metrics, ready to serve: the registry, and what refreshes its gauges first.
pub struct MetricsPage {
    registry: Registry,
    refresh: Box<dyn Fn() + Send + Sync>,
}

impl MetricsPage {
    /// Also registers `dfs_quic`, the process's transport counters (see [`crate::net::stats`]).
    pub fn new(mut registry: Registry, refresh: impl Fn() + Send + Sync + 'static) -> Arc<Self> {
        let quic = gauges(
            &mut registry,
            "dfs_quic",
            "QUIC transport: open connections (all, and those peers made to this process), datagrams sent and received, send calls, lost packets, black holes detected, smallest datagram size in use",
        );
        let refresh = move || {
            let t = crate::net::stats::totals();
            for (what, v) in [
                ("open_connections", t.open_connections),
                ("accepted_connections", t.accepted_connections),
                ("datagrams_sent", t.datagrams_sent),
                ("datagrams_received", t.datagrams_received),
                ("send_calls", t.send_calls),
                ("lost_packets", t.lost_packets),
                ("black_holes", t.black_holes),
                ("smallest_datagram_bytes", t.smallest_datagram),
            ] {
                quic.get_or_create(&vec![("what", what.to_string())])
                    .set(v as f64);
            }
            refresh();
        };
        Arc::new(MetricsPage {
            registry,
            refresh: Box::new(refresh),
        })
    }

    /// The exposition text (OpenMetrics, which Prometheus reads).
    pub fn render(&self) -> String {
        (self.refresh)();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Content type of [`MetricsPage::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let mut registry = Registry::default();
        let ops = OpMetrics::register(&mut registry, "dfs_test", "requests");
        let g = gauges(&mut registry, "dfs_test_used_bytes", "Bytes used");
        let g2 = g.clone();
        let page = MetricsPage::new(registry, move || {
            g2.get_or_create(&vec![("volume", "a".to_string())])
                .set(42.0);
        });
        ops.record("Lookup", Duration::from_millis(3), true);
        ops.record("Lookup", Duration::from_millis(5), false);
        let text = page.render();
        assert!(
            text.contains("dfs_test_requests_total{op=\"Lookup\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("dfs_test_errors_total{op=\"Lookup\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("dfs_test_seconds_count{op=\"Lookup\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("dfs_test_used_bytes{volume=\"a\"} 42"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
