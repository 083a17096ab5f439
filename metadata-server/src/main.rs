//! `dfs-meta`: flags, config file and environment in; a running metadata server out.

use anyhow::Context;
use clap::Parser;
use dfs_common::config::{load_toml, parse_size, pick_identity, tls_paths};
use dfs_common::net::tls::Identity;
use dfs_meta::MetaConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// mimalloc rather than glibc's allocator: the metadata server allocates and frees many small
/// short-lived objects per command (requests, log records, redb pages), and glibc's malloc took
/// a tenth of its CPU (see docs/BENCHMARKS.md). Without transparent huge pages, which it asks
/// for and which cost another tenth (`main`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// dfs metadata server: namespaces, layouts, chunk-server membership and placement.
///
/// Every option can also be set in the TOML file given by --config (same names, with
/// underscores) or by its DFS_META_* environment variable; flags win over both.
#[derive(Parser, Deserialize, Default, Debug)]
#[serde(default, deny_unknown_fields)]
#[command(version)]
struct Args {
    /// TOML configuration file.
    #[arg(long, env = "DFS_META_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Log filter: error, warn, info, debug or trace, or per module as RUST_LOG takes it;
    /// RUST_LOG, when set, wins [default: info].
    #[arg(long, env = "DFS_META_LOG")]
    log: Option<String>,
    /// UDP address to listen on [default: 0.0.0.0:7000].
    #[arg(long, env = "DFS_META_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address the other metadata servers and clients reach this one at, HOST:PORT
    /// [default: the --listen address; this host's name when that is 0.0.0.0].
    #[arg(long, env = "DFS_META_ADVERTISE")]
    advertise: Option<String>,
    /// On first start, wait to be added to an existing metadata group (`dfs meta add ADDR`
    /// on its leader) instead of creating a group of one [default: false].
    #[arg(long, env = "DFS_META_JOIN", num_args = 0..=1, default_missing_value = "true")]
    join: Option<bool>,
    /// Metadata log entries between snapshots of the store [default: 100000].
    #[arg(long, env = "DFS_META_SNAPSHOT_EVERY")]
    snapshot_every: Option<u64>,
    /// Bytes of metadata log between snapshots of the store, or half the store's size if
    /// that is more, e.g. 1G [default: 1G].
    #[arg(long, env = "DFS_META_SNAPSHOT_EVERY_BYTES")]
    snapshot_every_bytes: Option<String>,
    /// Metadata log entries kept decoded in memory, as bytes of records (e.g. 64M); older
    /// ones are read back from the log's files when needed [default: 64M].
    #[arg(long, env = "DFS_META_LOG_MEMORY")]
    log_memory: Option<String>,
    /// Memory for pages of the metadata store (redb's cache), e.g. 256M; reads of pages not
    /// there go to the page cache or the disk [default: 1G].
    #[arg(long, env = "DFS_META_STORE_CACHE")]
    store_cache: Option<String>,
    /// TCP address of the status page (/) and Prometheus metrics (/metrics), or `off`
    /// [default: the --listen address, on TCP].
    #[arg(long, env = "DFS_META_HTTP")]
    http: Option<String>,
    /// Directory holding the metadata database [required].
    #[arg(long, env = "DFS_META_DATA")]
    data: Option<PathBuf>,
    /// Directory with ca.pem and meta.pem/meta.key (else server.pem/server.key); see
    /// `dfs cert init`.
    #[arg(long, env = "DFS_CERTS")]
    certs: Option<PathBuf>,
    /// CA certificate (overrides --certs).
    #[arg(long, env = "DFS_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// This server's certificate (overrides --certs).
    #[arg(long, env = "DFS_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// This server's private key (overrides --certs).
    #[arg(long, env = "DFS_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Seconds without a heartbeat after which a chunk server is down [default: 30].
    #[arg(long, env = "DFS_META_SERVER_TIMEOUT_SECS")]
    server_timeout_secs: Option<f64>,
    /// Seconds a client's file locks outlive its last contact (clients renew every 5 s)
    /// [default: 30, at least 15].
    #[arg(long, env = "DFS_META_LOCK_LEASE_SECS")]
    lock_lease_secs: Option<f64>,
    /// Seconds a mount cut off (or crashed) keeps the files it has open that were unlinked:
    /// back within that time, it goes on using them [default: 600].
    #[arg(long, env = "DFS_META_ORPHAN_HOLD_SECS")]
    orphan_hold_secs: Option<f64>,
    /// Requests that grow the metadata (creates, writes, links, extended attributes) are
    /// refused with ENOSPC while the disk of --data has less free, e.g. 256M; 0 turns the
    /// check off [default: 256M].
    #[arg(long, env = "DFS_META_MIN_FREE_SPACE")]
    min_free_space: Option<String>,
    /// Seconds between repair scans (rebuilding lost shards, collecting garbage) [default: 10].
    #[arg(long, env = "DFS_META_REPAIR_INTERVAL_SECS")]
    repair_interval_secs: Option<f64>,
    /// Shards rebuilt at once [default: 4].
    #[arg(long, env = "DFS_META_REPAIR_PARALLEL")]
    repair_parallel: Option<usize>,
    /// Bytes per second rebuilt at most, e.g. 100M [default: 100M].
    #[arg(long, env = "DFS_META_REPAIR_RATE")]
    repair_rate: Option<String>,
    /// Seconds an unreferenced block is kept before its shards are deleted [default: 600].
    #[arg(long, env = "DFS_META_GC_GRACE_SECS")]
    gc_grace_secs: Option<f64>,
    /// Seconds a block allocated but never committed (its writer died) is kept [default: 3600].
    #[arg(long, env = "DFS_META_PENDING_GRACE_SECS")]
    pending_grace_secs: Option<f64>,
    /// Move shards toward even counts per server whenever they are uneven (a new server
    /// joined, say), not only on `dfs rebalance` [default: false].
    #[arg(long, env = "DFS_META_AUTO_REBALANCE")]
    auto_rebalance: Option<bool>,
    /// Threads running requests; fewer than the cores keeps a lone request on one thread
    /// (see docs/ARCHITECTURE.md) [default: half the cores, at least 1].
    #[arg(long, env = "DFS_META_WORKER_THREADS")]
    worker_threads: Option<usize>,
}

fn resolve(args: Args, file: Args) -> anyhow::Result<MetaConfig> {
    let certs = args.certs.or(file.certs);
    // `meta.pem` (made by `dfs cert init`) holds the metadata role that chunk servers require
    // for deletes and rebuilds; `server.pem` alone is what older certificate directories have.
    let name = certs
        .as_deref()
        .map_or("meta", |dir| pick_identity(dir, &["meta", "server"]));
    if name == "server" {
        tracing::warn!(
            "no meta.pem in the certificate directory: chunk servers will refuse this server's deletes and repairs; issue one with `dfs cert issue --meta-server --name meta`"
        );
    }
    let tls = tls_paths(
        certs,
        name,
        args.tls_ca.or(file.tls_ca),
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
    )?;
    let timeout = args
        .server_timeout_secs
        .or(file.server_timeout_secs)
        .unwrap_or(30.0);
    anyhow::ensure!(
        timeout > 0.0 && timeout < 1e6,
        "--server-timeout-secs must be positive"
    );
    let lease = args
        .lock_lease_secs
        .or(file.lock_lease_secs)
        .unwrap_or(30.0);
    anyhow::ensure!(
        (15.0..1e6).contains(&lease),
        "--lock-lease-secs must be at least 15 (clients renew every 5 s)"
    );
    let defaults = dfs_meta::repair::RepairConfig::default();
    let secs = |v: Option<f64>, default: Duration, flag: &str| -> anyhow::Result<Duration> {
        let v = v.unwrap_or(default.as_secs_f64());
        anyhow::ensure!(
            (0.0..1e9).contains(&v),
            "{flag} must be a positive number of seconds"
        );
        Ok(Duration::from_secs_f64(v))
    };
    let size = |v: Option<String>, default: u64, flag: &str| -> anyhow::Result<u64> {
        match v {
            Some(v) => parse_size(&v)
                .map_err(anyhow::Error::msg)
                .with_context(|| flag.to_string()),
            None => Ok(default),
        }
    };
    let repair = dfs_meta::repair::RepairConfig {
        interval: secs(
            args.repair_interval_secs.or(file.repair_interval_secs),
            defaults.interval,
            "--repair-interval-secs",
        )?
        .max(Duration::from_millis(100)),
        parallel: args
            .repair_parallel
            .or(file.repair_parallel)
            .unwrap_or(defaults.parallel)
            .max(1),
        rate: size(
            args.repair_rate.or(file.repair_rate),
            defaults.rate,
            "--repair-rate",
        )?
        .max(1),
        gc_grace: secs(
            args.gc_grace_secs.or(file.gc_grace_secs),
            defaults.gc_grace,
            "--gc-grace-secs",
        )?,
        pending_grace: secs(
            args.pending_grace_secs.or(file.pending_grace_secs),
            defaults.pending_grace,
            "--pending-grace-secs",
        )?,
        auto_rebalance: args
            .auto_rebalance
            .or(file.auto_rebalance)
            .unwrap_or(defaults.auto_rebalance),
    };
    let orphan_hold = secs(
        args.orphan_hold_secs.or(file.orphan_hold_secs),
        dfs_meta::orphans::DEFAULT_HOLD,
        "--orphan-hold-secs",
    )?;
    let min_free_space = size(
        args.min_free_space.or(file.min_free_space),
        dfs_meta::space::DEFAULT_RESERVE,
        "--min-free-space",
    )?;
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "0.0.0.0:7000".parse().expect("valid default"));
    let advertise = match args.advertise.or(file.advertise) {
        Some(a) => Some(a),
        None if listen.ip().is_unspecified() => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default();
            anyhow::ensure!(
                !host.is_empty(),
                "--listen is a wildcard address and this host has no name: set --advertise HOST:PORT"
            );
            Some(format!("{host}:{}", listen.port()))
        }
        None => None,
    };
    Ok(MetaConfig {
        listen,
        advertise,
        join: args.join.or(file.join).unwrap_or(false),
        snapshot_every: args
            .snapshot_every
            .or(file.snapshot_every)
            .unwrap_or(dfs_meta::raft::state::SNAPSHOT_EVERY)
            .max(1),
        snapshot_bytes: size(
            args.snapshot_every_bytes.or(file.snapshot_every_bytes),
            dfs_meta::raft::state::SNAPSHOT_EVERY_BYTES,
            "--snapshot-every-bytes",
        )?
        .max(1),
        log_memory: size(
            args.log_memory.or(file.log_memory),
            dfs_meta::raft::log::MEMORY_BUDGET as u64,
            "--log-memory",
        )? as usize,
        store_cache: size(
            args.store_cache.or(file.store_cache),
            dfs_meta::store::CACHE as u64,
            "--store-cache",
        )? as usize,
        http: dfs_common::config::http_addr(args.http.or(file.http), listen)?,
        data_dir: args.data.or(file.data).context("--data DIR is required")?,
        identity: Identity::load(&tls)?,
        server_timeout: Duration::from_secs_f64(timeout),
        lock_lease: Duration::from_secs_f64(lease),
        orphan_hold,
        min_free_space,
        repair,
        faults: dfs_common::fault::Faults::from_env()?,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let file: Args = load_toml(args.config.as_deref())?;
    let level = args.log.clone().or(file.log.clone());
    dfs_common::telemetry::init_logging(level.as_deref().unwrap_or("info"));
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "dfs-meta starting");
    if !dfs_common::memory::no_transparent_huge_pages() {
        tracing::debug!("transparent huge pages stay as the system sets them");
    }
    let workers = args.worker_threads.or(file.worker_threads);
    let runtime = dfs_common::runtime::build(workers).context("--worker-threads")?;
    let config = resolve(args, file)?;
    runtime.block_on(serve(config))
}

/// Runs the metadata server until a signal stops it or it fails.
async fn serve(config: MetaConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let running = dfs_meta::start(config, shutdown.clone())
        .await
        .context("starting metadata server")?;
    tokio::select! {
        _ = dfs_common::shutdown::wait_for_signal() => shutdown.cancel(),
        _ = shutdown.cancelled() => {}
    }
    let _ = running.task.await;
    match running.failure.get() {
        Some(why) => anyhow::bail!("{why}"),
        None => Ok(()),
    }
}
