//! The chunk server's Prometheus metrics over HTTP (`/metrics`): requests by kind with their
//! latency, shard bytes in and out, shards and bytes stored, capacity, and scrub progress.

use crate::scrub::Scrubber;
use crate::service::ChunkService;
use dfs_common::http::{Handler, Page};
use dfs_common::metrics::{counter, gauges, MetricsPage, OpMetrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use std::sync::{Arc, OnceLock};

/// What the request handler records.
#[derive(Clone)]
pub struct ChunkMetrics {
    pub ops: OpMetrics,
    /// Shard bytes stored by `Put` and sent by `Get`.
    pub bytes_in: Counter,
    pub bytes_out: Counter,
}

impl ChunkMetrics {
    pub fn register(r: &mut Registry) -> Self {
        ChunkMetrics {
            ops: OpMetrics::register(r, "dfs_chunk", "chunk-server requests"),
            bytes_in: counter(r, "dfs_chunk_received_bytes", "Shard bytes received (puts)"),
            bytes_out: counter(r, "dfs_chunk_sent_bytes", "Shard bytes sent (reads)"),
        }
    }
}

/// The `/metrics` handler. The service is set once it exists (it needs the metrics first).
pub fn handler(
    mut registry: Registry,
    service: Arc<OnceLock<Arc<ChunkService>>>,
    scrubber: Arc<Scrubber>,
) -> Handler {
    let store = gauges(
        &mut registry,
        "dfs_chunk_store",
        "Shards and bytes stored, and the capacity offered",
    );
    let scrub = gauges(
        &mut registry,
        "dfs_chunk_scrub",
        "Scrub progress: passes, shards checked and total in this pass, corrupt found",
    );
    let page = MetricsPage::new(registry, move || {
        let set = |g: &dfs_common::metrics::GaugeFamily, what: &str, v: u64| {
            g.get_or_create(&vec![("what", what.to_string())])
                .set(v as f64);
        };
        if let Some(service) = service.get() {
            let info = service.info();
            set(&store, "shards", info.shards);
            set(&store, "used_bytes", info.used);
            set(&store, "capacity_bytes", info.capacity);
        }
        let p = scrubber.progress();
        set(&scrub, "passes", p.passes);
        set(&scrub, "checked", p.checked);
        set(&scrub, "total", p.total);
        set(&scrub, "corrupt", p.corrupt);
        set(&scrub, "running", p.running as u64);
    });
    Arc::new(move |path: &str| {
        (path == "/metrics").then(|| Page {
            content_type: dfs_common::metrics::CONTENT_TYPE,
            body: page.render(),
        })
    })
}
