//! dfs chunk server: stores, verifies, serves and deletes erasure-coded shards. It knows nothing
//! of files; the metadata server and clients decide what goes where.
//!
//! # Layout
//! - [`store`]: shard files with per-sub-block blake3 checksums, written durably.
//! - [`slots`]: small shards kept in slots of preallocated files.
//! - [`cached_read`]: reads from the page cache alone, for the network thread.
//! - [`service`]: the QUIC request handler.
//! - [`heartbeat`]: registration with, and liveness reports to, the metadata server.
//! - [`identity`]: the server id and reset key kept in the data directory.
//! - [`rebuild`]: rebuilding a lost shard from other shards, when repair asks.
//! - [`scrub`]: background re-verification of every shard.
//! - [`reconcile`]: deleting shards the metadata server no longer places here.

pub mod access;
pub mod cached_read;
pub mod heartbeat;
pub mod identity;
pub mod rebuild;
pub mod reconcile;
pub mod scrub;
pub mod service;
pub mod slots;
pub mod store;
pub mod web;

use dfs_common::net::endpoint::server_endpoint;
use dfs_common::net::server::serve;
use dfs_common::net::tls::Identity;
use dfs_common::{FsResult, ServerId};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Everything a chunk server needs to run, already resolved from flags, file and environment.
#[derive(Clone, Debug)]
pub struct ChunkConfig {
    /// UDP address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Address clients should use to reach this server; defaults to the bound address.
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    /// The addresses of the metadata group's members (one for a server that runs alone).
    pub meta: Vec<SocketAddr>,
    pub identity: Identity,
    /// Bytes this server offers; `None` means the free space of the data directory's disk.
    pub capacity: Option<u64>,
    /// Whether new small shards go into slot files (see [`slots`]) rather than a file each.
    pub small_shard_slots: bool,
    pub heartbeat_interval: Duration,
    pub maintenance: MaintenanceConfig,
    /// TCP address for Prometheus metrics; `None` serves no HTTP.
    pub http: Option<SocketAddr>,
    /// Fault points tests arm (inert unless a test or `DFS_FAULTS` enables them).
    pub faults: dfs_common::fault::Faults,
}

/// Background upkeep of the shards on this server.
#[derive(Clone, Debug)]
pub struct MaintenanceConfig {
    /// Bytes per second the scrubber reads at most.
    pub scrub_rate: u64,
    /// Time between automatic scrub passes.
    pub scrub_interval: Duration,
    /// Time between reconciliations with the metadata server.
    pub reconcile_interval: Duration,
    /// Shards younger than this are never deleted as orphans.
    pub orphan_grace: Duration,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            scrub_rate: 32 << 20,
            scrub_interval: Duration::from_secs(7 * 24 * 3600),
            reconcile_interval: Duration::from_secs(300),
            orphan_grace: Duration::from_secs(600),
        }
    }
}

/// Bound on reading one shard from another chunk server during a rebuild.
const PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// A started chunk server.
pub struct RunningChunkServer {
    pub id: ServerId,
    pub addr: SocketAddr,
    /// Where metrics are served, if anywhere.
    pub http_addr: Option<SocketAddr>,
    pub task: JoinHandle<()>,
}

/// Opens the store, binds the endpoint and starts serving and heartbeating until `shutdown`.
pub async fn start(
    config: ChunkConfig,
    shutdown: CancellationToken,
) -> FsResult<RunningChunkServer> {
    let node = identity::NodeIdentity::load_or_create(&config.data_dir)?;
    let store = Arc::new(store::ShardStore::open_with(
        &config.data_dir,
        config.small_shard_slots,
    )?);
    let endpoint = server_endpoint(config.listen, &config.identity, Some(node.reset_key))?;
    let addr = endpoint.local_addr()?;
    let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());
    let maintenance = &config.maintenance;
    let scrubber = Arc::new(scrub::Scrubber::new(
        store.clone(),
        node.id,
        maintenance.scrub_rate,
        maintenance.scrub_interval,
        config.faults.clone(),
    ));
    let meta_peer = || {
        dfs_common::net::meta::MetaLink::new(
            endpoint.clone(),
            &config.meta,
            Duration::from_secs(30),
        )
    };
    tokio::spawn(scrubber.clone().run(meta_peer()?, shutdown.clone()));
    let reconciler = reconcile::Reconciler {
        store: store.clone(),
        server: node.id,
        interval: maintenance.reconcile_interval,
        grace: maintenance.orphan_grace,
    };
    tokio::spawn(reconciler.run(meta_peer()?, shutdown.clone()));
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = web::ChunkMetrics::register(&mut registry);
    let service_cell = Arc::new(std::sync::OnceLock::new());
    let http_addr = match config.http {
        Some(http) => {
            let handler = web::handler(registry, service_cell.clone(), scrubber.clone());
            let bound = dfs_common::http::serve(http, handler, shutdown.clone()).await?;
            tracing::info!(%bound, "metrics on http://{bound}/metrics");
            Some(bound)
        }
        None => None,
    };
    let service = Arc::new(service::ChunkService::new(
        node.id,
        store.clone(),
        config.capacity,
        Arc::new(dfs_common::net::chunks::ChunkPool::new(
            endpoint.clone(),
            PEER_TIMEOUT,
        )),
        scrubber,
        access::ClientAccess::new(meta_peer()?),
        metrics,
    ));
    let _ = service_cell.set(service.clone());
    tracing::info!(id = %node.id, %addr, data = %config.data_dir.display(), "chunk server listening");
    // Every member of the metadata group hears the heartbeats, so that a new leader knows at
    // once which servers are alive.
    let heartbeats: Vec<_> = config
        .meta
        .iter()
        .map(|&meta| {
            let beat = heartbeat::Heartbeat {
                server: node.id,
                advertise: advertise.clone(),
                meta,
                interval: config.heartbeat_interval,
                service: service.clone(),
            };
            tokio::spawn(beat.run(endpoint.clone(), shutdown.clone()))
        })
        .collect();
    let task = tokio::spawn(async move {
        serve(endpoint, service, shutdown).await;
        for beat in heartbeats {
            let _ = beat.await;
        }
    });
    Ok(RunningChunkServer {
        id: node.id,
        addr,
        http_addr,
        task,
    })
}
