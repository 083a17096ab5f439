//! `dfs-chunk`: flags, config file and environment in; a running chunk server out.

use anyhow::Context;
use clap::Parser;
use dfs_chunk::{ChunkConfig, MaintenanceConfig};
use dfs_common::config::{load_toml, parse_size, tls_paths};
use dfs_common::net::tls::Identity;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// dfs chunk server: stores erasure-coded shards and serves them over QUIC.
///
/// Every option can also be set in the TOML file given by --config (same names, with
/// underscores) or by its DFS_CHUNK_* environment variable; flags win over both.
#[derive(Parser, Deserialize, Default, Debug)]
#[serde(default, deny_unknown_fields)]
#[command(version)]
struct Args {
    /// TOML configuration file.
    #[arg(long, env = "DFS_CHUNK_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Log filter: error, warn, info, debug or trace, or per module as RUST_LOG takes it;
    /// RUST_LOG, when set, wins [default: info].
    #[arg(long, env = "DFS_CHUNK_LOG")]
    log: Option<String>,
    /// UDP address to listen on [default: 0.0.0.0:7100].
    #[arg(long, env = "DFS_CHUNK_LISTEN")]
    listen: Option<SocketAddr>,
    /// TCP address of the Prometheus metrics (/metrics), or `off` [default: the --listen
    /// address, on TCP].
    #[arg(long, env = "DFS_CHUNK_HTTP")]
    http: Option<String>,
    /// Address clients use to reach this server [default: the listen address].
    #[arg(long, env = "DFS_CHUNK_ADVERTISE")]
    advertise: Option<String>,
    /// Directory holding the shards [required].
    #[arg(long, env = "DFS_CHUNK_DATA")]
    data: Option<PathBuf>,
    /// Metadata server address, HOST:PORT; for a group of several, every member's,
    /// comma-separated [required].
    #[arg(long, env = "DFS_META")]
    meta: Option<String>,
    /// Directory with ca.pem, server.pem and server.key (see `dfs cert init`).
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
    /// Space offered, e.g. 500G [default: free space of the data directory's disk].
    #[arg(long, env = "DFS_CHUNK_CAPACITY")]
    capacity: Option<String>,
    /// Milliseconds between heartbeats to the metadata server [default: 1000].
    #[arg(long, env = "DFS_CHUNK_HEARTBEAT_MS")]
    heartbeat_ms: Option<u64>,
    /// Store shards of up to 128 KiB in slots of preallocated files (one write and one
    /// fdatasync each) rather than a file each; shards already in slots are read either way
    /// [default: true].
    #[arg(long, env = "DFS_CHUNK_SMALL_SHARD_SLOTS")]
    small_shard_slots: Option<bool>,
    /// Bytes per second the background scrub reads at most, e.g. 32M [default: 32M].
    #[arg(long, env = "DFS_CHUNK_SCRUB_RATE")]
    scrub_rate: Option<String>,
    /// Hours between automatic scrub passes over every shard [default: 168].
    #[arg(long, env = "DFS_CHUNK_SCRUB_INTERVAL_HOURS")]
    scrub_interval_hours: Option<f64>,
    /// Seconds between reconciliations with the metadata server (deleting shards it no
    /// longer places here) [default: 300].
    #[arg(long, env = "DFS_CHUNK_RECONCILE_SECS")]
    reconcile_secs: Option<f64>,
    /// Seconds a shard must exist before reconciliation may delete it [default: 600].
    #[arg(long, env = "DFS_CHUNK_ORPHAN_GRACE_SECS")]
    orphan_grace_secs: Option<f64>,
}

fn resolve(args: Args, file: Args) -> anyhow::Result<ChunkConfig> {
    let meta = args
        .meta
        .or(file.meta)
        .context("--meta HOST:PORT is required")?;
    let meta = dfs_common::net::meta::resolve_list(&meta)?;
    let tls = tls_paths(
        args.certs.or(file.certs),
        "server",
        args.tls_ca.or(file.tls_ca),
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
    )?;
    let capacity = match args.capacity.or(file.capacity) {
        Some(c) => Some(parse_size(&c).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let defaults = MaintenanceConfig::default();
    let secs = |v: Option<f64>, default: Duration, flag: &str| -> anyhow::Result<Duration> {
        let v = v.unwrap_or(default.as_secs_f64());
        anyhow::ensure!(
            v > 0.0 && v < 1e9,
            "{flag} must be a positive number of seconds"
        );
        Ok(Duration::from_secs_f64(v))
    };
    let maintenance = MaintenanceConfig {
        scrub_rate: match args.scrub_rate.or(file.scrub_rate) {
            Some(r) => parse_size(&r).map_err(anyhow::Error::msg)?.max(1),
            None => defaults.scrub_rate,
        },
        scrub_interval: secs(
            args.scrub_interval_hours
                .or(file.scrub_interval_hours)
                .map(|h| h * 3600.0),
            defaults.scrub_interval,
            "--scrub-interval-hours",
        )?,
        reconcile_interval: secs(
            args.reconcile_secs.or(file.reconcile_secs),
            defaults.reconcile_interval,
            "--reconcile-secs",
        )?,
        orphan_grace: secs(
            args.orphan_grace_secs.or(file.orphan_grace_secs),
            defaults.orphan_grace,
            "--orphan-grace-secs",
        )?,
    };
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "0.0.0.0:7100".parse().expect("valid default"));
    Ok(ChunkConfig {
        listen,
        http: dfs_common::config::http_addr(args.http.or(file.http), listen)?,
        advertise: args.advertise.or(file.advertise),
        data_dir: args.data.or(file.data).context("--data DIR is required")?,
        meta,
        identity: Identity::load(&tls)?,
        capacity,
        small_shard_slots: args
            .small_shard_slots
            .or(file.small_shard_slots)
            .unwrap_or(true),
        heartbeat_interval: Duration::from_millis(
            args.heartbeat_ms
                .or(file.heartbeat_ms)
                .unwrap_or(1000)
                .max(10),
        ),
        maintenance,
        faults: dfs_common::fault::Faults::from_env()?,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dfs_common::memory::keep_freed_memory();
    let args = Args::parse();
    let file: Args = load_toml(args.config.as_deref())?;
    let level = args.log.clone().or(file.log.clone());
    dfs_common::telemetry::init_logging(level.as_deref().unwrap_or("info"));
    let config = resolve(args, file)?;
    let shutdown = CancellationToken::new();
    let running = dfs_chunk::start(config, shutdown.clone())
        .await
        .context("starting chunk server")?;
    dfs_common::shutdown::run_until_signal(shutdown, running.task).await;
    Ok(())
}
