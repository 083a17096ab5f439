//! The metadata server's HTTP side: Prometheus metrics at `/metrics` and a read-only status
//! page at `/` (servers, capacity, volumes, block health, repairs), plain HTML that refreshes
//! itself every few seconds and needs no script.

use crate::membership::Membership;
use crate::queries;
use crate::repair::Repair;
use crate::store::{self, tables::ReadTables};
use dfs_common::config::format_size as size;
use dfs_common::http::Page;
use dfs_common::metrics::{gauges, GaugeFamily, MetricsPage, OpMetrics};
use dfs_common::proto::meta::{BlockHealth, RepairProgress, ServerStatus, VolumeInfo};
use dfs_common::FsResult;
use prometheus_client::registry::Registry;
use redb::Database;
use std::fmt::Write;
use std::sync::Arc;

/// Seconds between refreshes of the status page.
const REFRESH_SECS: u32 = 5;

/// Everything the pages show, read at request time.
pub struct Sources {
    pub db: Arc<Database>,
    pub log: crate::raft::Group,
    pub membership: Arc<Membership>,
    pub repair: Arc<Repair>,
    pub space: Arc<crate::space::Space>,
}

impl Sources {
    fn servers(&self) -> Vec<ServerStatus> {
        let mut servers = self.membership.status();
        let placed = self.repair.placed();
        for s in &mut servers {
            s.placed = placed.get(&s.id).copied().unwrap_or(0);
        }
        servers
    }

    fn volumes(&self) -> FsResult<Vec<VolumeInfo>> {
        let tx = store::read(&self.db)?;
        queries::list_volumes(&ReadTables::open(&tx))
    }
}

/// Gauges read fresh at every scrape.
struct Gauges {
    servers: GaugeFamily,
    capacity: GaugeFamily,
    disk: GaugeFamily,
    blocks: GaugeFamily,
    repair: GaugeFamily,
    volume_bytes: GaugeFamily,
    volume_inodes: GaugeFamily,
    volume_quota_bytes: GaugeFamily,
    volume_quota_inodes: GaugeFamily,
    log: GaugeFamily,
}

impl Gauges {
    fn register(r: &mut Registry) -> Self {
        Gauges {
            servers: gauges(
                r,
                "dfs_meta_servers",
                "Chunk servers by state (up, down, draining)",
            ),
            capacity: gauges(
                r,
                "dfs_meta_capacity_bytes",
                "Raw bytes of live chunk servers: total and free",
            ),
            disk: gauges(
                r,
                "dfs_meta_disk_bytes",
                "The metadata server's own disk: bytes free, and the reserve below which growth is refused (--min-free-space)",
            ),
            blocks: gauges(
                r,
                "dfs_meta_blocks",
                "Blocks by health, as of the last repair scan",
            ),
            repair: gauges(
                r,
                "dfs_meta_repair",
                "Repair progress: shards done, left and failed, bytes done, scans",
            ),
            volume_bytes: gauges(
                r,
                "dfs_meta_volume_used_bytes",
                "Bytes of file data per volume",
            ),
            volume_inodes: gauges(r, "dfs_meta_volume_used_inodes", "Inodes per volume"),
            volume_quota_bytes: gauges(
                r,
                "dfs_meta_volume_quota_bytes",
                "Byte quota per volume (volumes with one)",
            ),
            volume_quota_inodes: gauges(
                r,
                "dfs_meta_volume_quota_inodes",
                "Inode quota per volume (volumes with one)",
            ),
            log: gauges(
                r,
                "dfs_meta_log",
                "The metadata log: term, last index, applied index, checkpoints, leading (1 or 0), voting members, appends flushed by Raft's own task and whether that is allowed now (1 or 0)",
            ),
        }
    }

    fn refresh(&self, sources: &Sources) {
        let set = |g: &GaugeFamily, label: &'static str, value: &str, v: u64| {
            g.get_or_create(&vec![(label, value.to_string())])
                .set(v as f64);
        };
        let servers = sources.servers();
        let count = |f: &dyn Fn(&ServerStatus) -> bool| servers.iter().filter(|s| f(s)).count();
        set(&self.servers, "state", "up", count(&|s| s.up) as u64);
        set(&self.servers, "state", "down", count(&|s| !s.up) as u64);
        set(
            &self.servers,
            "state",
            "draining",
            count(&|s| s.draining) as u64,
        );
        let (total, free) = sources.membership.capacity();
        set(&self.capacity, "kind", "total", total);
        set(&self.capacity, "kind", "free", free);
        set(&self.disk, "kind", "free", sources.space.free());
        set(&self.disk, "kind", "reserve", sources.space.reserve());
        let h = sources.repair.health();
        for (name, v) in [
            ("healthy", h.healthy),
            ("degraded", h.degraded),
            ("unavailable", h.unavailable),
            ("pending", h.pending),
            ("garbage", h.garbage),
        ] {
            set(&self.blocks, "health", name, v);
        }
        let log = sources.log.status();
        for (name, v) in [
            ("term", log.term),
            ("last_index", log.last_index),
            ("applied_index", log.applied_index),
            ("checkpoints", log.checkpoints),
            ("leading", u64::from(log.leader == Some(log.member))),
            ("voters", sources.log.voters() as u64),
            ("appends_flushed_inline", log.appends_flushed_inline),
            ("appends_inline", u64::from(log.appends_inline)),
        ] {
            set(&self.log, "what", name, v);
        }
        let p = sources.repair.progress();
        for (name, v) in [
            ("shards_done", p.shards_done),
            ("shards_left", p.shards_left),
            ("failures", p.failures),
            ("bytes_done", p.bytes_done),
            ("scans", p.scans),
            ("blocks_collected", p.blocks_collected),
        ] {
            set(&self.repair, "what", name, v);
        }
        // A volume deleted since the last scrape leaves no stale series behind.
        for g in [
            &self.volume_bytes,
            &self.volume_inodes,
            &self.volume_quota_bytes,
            &self.volume_quota_inodes,
        ] {
            g.clear();
        }
        match sources.volumes() {
            Ok(volumes) => {
                for v in volumes {
                    set(&self.volume_bytes, "volume", &v.name, v.used_bytes);
                    set(&self.volume_inodes, "volume", &v.name, v.used_inodes);
                    if let Some(q) = v.limits.quota_bytes {
                        set(&self.volume_quota_bytes, "volume", &v.name, q);
                    }
                    if let Some(q) = v.limits.quota_inodes {
                        set(&self.volume_quota_inodes, "volume", &v.name, q);
                    }
                }
            }
            Err(e) => tracing::warn!("metrics: cannot list volumes: {e}"),
        }
    }
}

/// Builds the page handler; `ops` (registered in `registry`) counts the service's requests.
pub fn handler(mut registry: Registry, sources: Sources) -> dfs_common::http::Handler {
    let gauges = Gauges::register(&mut registry);
    let sources = Arc::new(sources);
    let for_metrics = sources.clone();
    let metrics = MetricsPage::new(registry, move || gauges.refresh(&for_metrics));
    Arc::new(move |path: &str| match path {
        "/metrics" => Some(Page {
            content_type: dfs_common::metrics::CONTENT_TYPE,
            body: metrics.render(),
        }),
        "/" => Some(Page {
            content_type: "text/html; charset=utf-8",
            body: status_page(&sources),
        }),
        _ => None,
    })
}

/// Registers the request metrics of the metadata service.
pub fn register_ops(registry: &mut Registry) -> OpMetrics {
    OpMetrics::register(registry, "dfs_meta", "metadata requests")
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One HTML table; cells are escaped here.
fn table(out: &mut String, id: &str, header: &[&str], rows: &[Vec<String>]) {
    let _ = write!(out, "<table id=\"{id}\"><thead><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
}

fn status_page(sources: &Sources) -> String {
    let servers = sources.servers();
    let (total, free) = sources.membership.capacity();
    let health: BlockHealth = sources.repair.health();
    let repair: RepairProgress = sources.repair.progress();
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <title>dfs cluster status</title><style>\
         body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:1.5em}}\
         th,td{{border:1px solid #bbb;padding:.3em .7em;text-align:left}}th{{background:#eee}}\
         .down{{color:#b00;font-weight:bold}}</style></head><body><h1>dfs cluster status</h1>"
    );
    let up = servers.iter().filter(|s| s.up).count();
    let _ = write!(
        out,
        "<p id=\"summary\"><span id=\"servers-up\">{up}</span> of \
         <span id=\"servers-total\">{}</span> chunk servers up; \
         capacity {} of which {} free.</p>",
        servers.len(),
        size(total),
        size(free)
    );
    let log = sources.log.status();
    let role = if log.leader == Some(log.member) {
        "leader"
    } else {
        "not leading"
    };
    let _ = write!(
        out,
        "<p id=\"log\">Metadata log: member {} ({role}), term {}, last entry {}, applied {}; \
         its disk has {} free (creates and writes are refused below {}).</p>",
        log.member,
        log.term,
        log.last_index,
        log.applied_index,
        size(sources.space.free()),
        size(sources.space.reserve())
    );
    out.push_str("<h2>Metadata group</h2>");
    let known = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
    let rows: Vec<Vec<String>> = sources
        .log
        .members()
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.addr.clone(),
                m.role.clone(),
                known(m.last_index),
                known(m.lag),
            ]
        })
        .collect();
    table(
        &mut out,
        "members",
        &["member", "address", "role", "last entry", "lag"],
        &rows,
    );
    out.push_str("<h2>Chunk servers</h2>");
    let rows: Vec<Vec<String>> = servers
        .iter()
        .map(|s| {
            vec![
                s.id.to_string(),
                s.addr.clone(),
                s.state().to_string(),
                size(s.capacity),
                size(s.used),
                s.shards.to_string(),
                s.placed.to_string(),
            ]
        })
        .collect();
    table(
        &mut out,
        "servers",
        &[
            "id", "address", "state", "capacity", "used", "shards", "placed",
        ],
        &rows,
    );
    out.push_str("<h2>Volumes</h2>");
    match sources.volumes() {
        Ok(volumes) => {
            let quota = |q: Option<u64>, f: &dyn Fn(u64) -> String| q.map_or("-".into(), f);
            let rows: Vec<Vec<String>> = volumes
                .iter()
                .map(|v| {
                    vec![
                        v.name.clone(),
                        v.policy.to_string(),
                        size(v.used_bytes),
                        quota(v.limits.quota_bytes, &size),
                        v.used_inodes.to_string(),
                        quota(v.limits.quota_inodes, &|n| n.to_string()),
                        if v.limits.read_only { "ro" } else { "rw" }.into(),
                    ]
                })
                .collect();
            table(
                &mut out,
                "volumes",
                &[
                    "name",
                    "ec",
                    "used",
                    "byte quota",
                    "inodes",
                    "inode quota",
                    "mode",
                ],
                &rows,
            );
        }
        Err(e) => {
            let _ = write!(
                out,
                "<p class=\"down\">volumes unavailable: {}</p>",
                escape(&e.to_string())
            );
        }
    }
    out.push_str("<h2>Blocks</h2>");
    table(
        &mut out,
        "blocks",
        &["healthy", "degraded", "unavailable", "pending", "garbage"],
        &[vec![
            health.healthy.to_string(),
            health.degraded.to_string(),
            health.unavailable.to_string(),
            health.pending.to_string(),
            health.garbage.to_string(),
        ]],
    );
    out.push_str("<h2>Repair</h2>");
    let rate = if repair.busy_ms > 0 {
        format!(
            "{}/s",
            size(repair.bytes_done * 1000 / repair.busy_ms.max(1))
        )
    } else {
        "-".into()
    };
    table(
        &mut out,
        "repair",
        &[
            "shards rebuilt",
            "left",
            "bytes rebuilt",
            "rate",
            "failures",
            "rebalancing",
        ],
        &[vec![
            repair.shards_done.to_string(),
            repair.shards_left.to_string(),
            size(repair.bytes_done),
            rate,
            repair.failures.to_string(),
            repair.rebalancing.to_string(),
        ]],
    );
    let _ = write!(
        out,
        "<p><small>Refreshes every {REFRESH_SECS} s. Metrics: <a href=\"/metrics\">/metrics</a>.\
         </small></p></body></html>"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        let mut out = String::new();
        table(&mut out, "t", &["h"], &[vec!["<b>".into()]]);
        assert!(out.contains("<td>&lt;b&gt;</td>"), "{out}");
    }
}
