//! dfs chunk server: stores, verifies, serves and deletes erasure-coded shards. It knows nothing
//! of files; the metadata server and clients decide what goes where.
//!
//! # Layout
//! - [`store`]: shard files with per-sub-block blake3 checksums, written durably.
//! - [`service`]: the QUIC request handler.
//! - [`heartbeat`]: registration with, and liveness reports to, the metadata server.
//! - [`identity`]: the server id and reset key kept in the data directory.

pub mod heartbeat;
pub mod identity;
pub mod service;
pub mod store;

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
    /// The metadata server's address.
    pub meta: SocketAddr,
    pub identity: Identity,
    /// Bytes this server offers; `None` means the free space of the data directory's disk.
    pub capacity: Option<u64>,
    pub heartbeat_interval: Duration,
}

/// A started chunk server.
pub struct RunningChunkServer {
    pub id: ServerId,
    pub addr: SocketAddr,
    pub task: JoinHandle<()>,
}

/// Opens the store, binds the endpoint and starts serving and heartbeating until `shutdown`.
pub async fn start(
    config: ChunkConfig,
    shutdown: CancellationToken,
) -> FsResult<RunningChunkServer> {
    let node = identity::NodeIdentity::load_or_create(&config.data_dir)?;
    let store = Arc::new(store::ShardStore::open(&config.data_dir)?);
    let endpoint = server_endpoint(config.listen, &config.identity, Some(node.reset_key))?;
    let addr = endpoint.local_addr()?;
    let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());
    let service = Arc::new(service::ChunkService::new(
        node.id,
        store.clone(),
        config.capacity,
    ));
    let beat = heartbeat::Heartbeat {
        server: node.id,
        advertise,
        meta: config.meta,
        interval: config.heartbeat_interval,
        service: service.clone(),
    };
    tracing::info!(id = %node.id, %addr, data = %config.data_dir.display(), "chunk server listening");
    let heartbeat_task = tokio::spawn(beat.run(endpoint.clone(), shutdown.clone()));
    let task = tokio::spawn(async move {
        serve(endpoint, service, shutdown).await;
        let _ = heartbeat_task.await;
    });
    Ok(RunningChunkServer {
        id: node.id,
        addr,
        task,
    })
}
