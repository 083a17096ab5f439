//! What a mount measures, served as Prometheus metrics with the `metrics=ADDR` option:
//! FUSE operations by kind with their latency (from the kernel's request to the reply), those
//! in progress (what a stuck application waits for), the bytes applications read and
//! wrote, how the read cache does, and the block placements fetched ahead.

use crate::Client;
use dfs_common::http::{Handler, Page};
use dfs_common::metrics::{counter, gauges, MetricsPage, OpLabel, OpMetrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone)]
pub struct FuseMetrics {
    pub ops: OpMetrics,
    /// Requests answered on the thread that read them from the kernel (also in `ops`).
    pub on_arrival: Family<OpLabel, Counter>,
    pub in_flight: Family<OpLabel, Gauge>,
    pub bytes_read: Counter,
    pub bytes_written: Counter,
    /// Drops of a file's kernel state the change feed asked for, left out because an open
    /// since had shown the file after the change.
    pub kernel_drops_skipped: Counter,
    /// Directory listings answered from the contents and attributes this mount holds.
    pub listings_from_memory: Counter,
}

impl FuseMetrics {
    /// Registers the mount's metrics, `client`'s read cache among them; returns them and the
    /// `/metrics` handler.
    pub fn new(client: Client) -> (FuseMetrics, Handler) {
        let mut r = Registry::default();
        let in_flight = Family::default();
        r.register(
            "dfs_fuse_in_flight",
            "FUSE operations in progress, by operation",
            in_flight.clone(),
        );
        let on_arrival = Family::default();
        r.register(
            "dfs_fuse_answered_on_arrival",
            "FUSE operations answered as they arrived, with nothing to wait for, by operation",
            on_arrival.clone(),
        );
        let metrics = FuseMetrics {
            on_arrival,
            ops: OpMetrics::register_without_errors(&mut r, "dfs_fuse", "FUSE operations"),
            in_flight,
            bytes_read: counter(&mut r, "dfs_fuse_read_bytes", "Bytes applications read"),
            bytes_written: counter(&mut r, "dfs_fuse_written_bytes", "Bytes applications wrote"),
            kernel_drops_skipped: counter(
                &mut r,
                "dfs_fuse_kernel_drops_skipped",
                "Drops of a file's kernel caches the change feed asked for, left out because an open since had shown the file after the change",
            ),
            listings_from_memory: counter(
                &mut r,
                "dfs_fuse_listings_from_memory",
                "Directory listings answered from the contents and attributes this mount holds, without asking the metadata server",
            ),
        };
        let cache = gauges(
            &mut r,
            "dfs_fuse_read_cache",
            "Read cache of 64 KiB shard units: bytes kept, small shard reads answered from it (hits) and fetched (misses)",
        );
        let spares = gauges(
            &mut r,
            "dfs_fuse_spare_blocks",
            "Block placements fetched ahead of uploads (fetched) and uploads that started with one (used)",
        );
        let shard_writes = gauges(
            &mut r,
            "dfs_fuse_shard_writes",
            "Shard writes left behind (left), their block stored without them as their server was too slow",
        );
        let page = MetricsPage::new(r, move || {
            shard_writes
                .get_or_create(&vec![("what", "left".to_string())])
                .set(client.shard_writes_left() as f64);
            let (used, fetched) = client.spare_blocks().used_and_fetched();
            for (what, v) in [("used", used), ("fetched", fetched)] {
                spares
                    .get_or_create(&vec![("what", what.to_string())])
                    .set(v as f64);
            }
            let shards = client.shard_cache();
            let (hits, misses) = shards.hits_and_misses();
            for (what, v) in [
                ("bytes", shards.bytes() as u64),
                ("hits", hits),
                ("misses", misses),
            ] {
                cache
                    .get_or_create(&vec![("what", what.to_string())])
                    .set(v as f64);
            }
        });
        let handler: Handler = Arc::new(move |path: &str| {
            (path == "/metrics").then(|| Page {
                content_type: dfs_common::metrics::CONTENT_TYPE,
                body: page.render(),
            })
        });
        (metrics, handler)
    }
}
