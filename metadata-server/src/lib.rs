//! dfs metadata server: the single source of truth for namespaces, file layouts, chunk-server
//! membership and shard placement. It never touches file data.
//!
//! # Layout
//! - [`store`]: redb, the schema and table access.
//! - [`command`]: the state machine's input (a logged [`command::Command`]) and output.
//! - [`committer`]: where mutations go to be logged, applied and acknowledged.
//! - [`raft`]: the metadata log (Raft): its storage, the state machine over redb, the group.
//! - [`state_machine`]: applies one command to a write transaction, deterministically.
//! - [`calls`]: the duplicate-request table that makes client retries exactly-once.
//! - [`access`]: what servers, administrators and client certificates may do.
//! - [`volumes`]: volume create/change/delete, exact usage and quotas.
//! - [`fsck`]: the read-only volume check behind `dfs fsck`.
//! - [`layout`]: extents over immutable blocks, block reference counts.
//! - [`queries`]: read-only operations on a snapshot.
//! - [`placement`]: choosing servers for shards (pure).
//! - [`membership`]: chunk-server liveness from heartbeats.
//! - [`locks`]: file locks of client sessions, in memory, with leases.
//! - [`repair`]: rebuilding lost shards and collecting garbage, from periodic scans.
//! - [`maintenance`]: the state-machine commands repair and collection use.
//! - [`space`]: refusing growth while the server's disk is nearly full.
//! - [`service`]: the QUIC request handler.
//! - [`web`]: Prometheus metrics and the status page over HTTP.

pub mod access;
pub mod calls;
pub mod changes;
pub mod command;
pub mod committer;
pub mod delegations;
pub mod fsck;
pub mod inline;
pub mod layout;
pub mod locks;
pub mod maintenance;
pub mod membership;
pub mod orphans;
pub mod placement;
pub mod queries;
pub mod raft;
pub mod repair;
pub mod reply;
pub mod service;
pub mod space;
pub mod state_machine;
pub mod store;
#[cfg(test)]
mod testing;
pub mod volumes;
pub mod web;

use dfs_common::fault::Faults;
use dfs_common::net::chunks::ChunkPool;
use dfs_common::net::endpoint::server_endpoint;
use dfs_common::net::server::serve;
use dfs_common::net::tls::Identity;
use dfs_common::FsResult;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Bound on one shard rebuild or delete sent to a chunk server.
const REPAIR_SHARD_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct MetaConfig {
    /// UDP address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The address other members and clients reach this server at (`HOST:PORT`); `None` is
    /// the bound address, which must then not be a wildcard in a group of several.
    pub advertise: Option<String>,
    /// On first start, wait to be added to an existing metadata group (`dfs meta add`)
    /// instead of creating one.
    pub join: bool,
    /// Log entries between snapshots of the store; a member further behind than the entries
    /// kept after a snapshot catches up by one.
    pub snapshot_every: u64,
    /// Bytes of log records between snapshots (or half the store, if more).
    pub snapshot_bytes: u64,
    /// Bytes of metadata log records kept decoded in memory (see `raft::log`).
    pub log_memory: usize,
    /// Bytes of the store's pages redb keeps in memory.
    pub store_cache: usize,
    pub data_dir: PathBuf,
    pub identity: Identity,
    /// A chunk server silent for longer is down.
    pub server_timeout: Duration,
    /// A client session's locks outlive its last request by this long.
    pub lock_lease: Duration,
    /// The files a mount reported open, unlinked since, outlive its last call by this long
    /// (see [`orphans`]).
    pub orphan_hold: Duration,
    /// Requests that grow the metadata are refused while the data directory's disk has less
    /// free (see [`space`]); 0 turns the check off.
    pub min_free_space: u64,
    pub repair: repair::RepairConfig,
    /// TCP address for metrics and the status page; `None` serves no HTTP.
    pub http: Option<SocketAddr>,
    /// Fault points tests arm (inert unless a test or `DFS_FAULTS` enables them).
    pub faults: Faults,
}

pub struct RunningMetaServer {
    pub addr: SocketAddr,
    /// Where metrics and the status page are served, if anywhere.
    pub http_addr: Option<SocketAddr>,
    /// Ends when the server has stopped: at `shutdown`, or on a failure of its own.
    pub task: JoinHandle<()>,
    /// Why the server stopped of its own accord (its metadata log failed), if it did.
    pub failure: Arc<std::sync::OnceLock<String>>,
}

/// Opens the store, binds the endpoint and serves until `shutdown`.
pub async fn start(config: MetaConfig, shutdown: CancellationToken) -> FsResult<RunningMetaServer> {
    std::fs::create_dir_all(&config.data_dir)?;
    let reset_key =
        dfs_common::net::endpoint::load_or_create_secret(&config.data_dir.join("reset-key"))?;
    // The key of shard capabilities; chunk servers learn it when they register.
    let capability_key = dfs_common::capability::CapabilityKey(
        dfs_common::net::endpoint::load_or_create_secret(&config.data_dir.join("capability-key"))?,
    );
    // After a crash the store is repaired as it opens, which takes time on a large one.
    let opening = std::time::Instant::now();
    let db = store::open_with_cache(&config.data_dir.join("meta.redb"), config.store_cache)?;
    tracing::info!(
        ms = opening.elapsed().as_millis() as u64,
        "metadata store opened"
    );
    let (registered, draining) = {
        let tx = store::read(&db)?;
        let t = store::tables::ReadTables::open(&tx);
        (
            queries::registered_servers(&t)?,
            queries::draining_servers(&t)?,
        )
    };
    let membership = Arc::new(membership::Membership::new(
        config.server_timeout,
        registered,
    ));
    for server in draining {
        membership.set_draining(server, true);
    }
    let endpoint = server_endpoint(config.listen, &config.identity, Some(reset_key))?;
    let addr = endpoint.local_addr()?;
    let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());
    let how = if config.join {
        raft::Start::Join
    } else {
        raft::Start::Create
    };
    let group = raft::start(
        &config.data_dir.join("raft"),
        db.clone(),
        endpoint.clone(),
        &advertise,
        how,
        config.snapshot_every,
        config.log_memory,
    )
    .await?;
    group.snapshot_by_size(config.data_dir.join("meta.redb"), config.snapshot_bytes);
    let committer = committer::Committer::start(group.clone());
    let pool = Arc::new(ChunkPool::new(endpoint.clone(), REPAIR_SHARD_TIMEOUT));
    let repair = Arc::new(repair::Repair::new(
        db.clone(),
        committer.clone(),
        membership.clone(),
        pool,
        config.repair.clone(),
        config.faults.clone(),
    ));
    tokio::spawn(repair.clone().run(shutdown.clone()));
    let mut registry = prometheus_client::registry::Registry::default();
    let ops = web::register_ops(&mut registry);
    let delegation_lapses = dfs_common::metrics::counter(
        &mut registry,
        "dfs_meta_delegation_lapses",
        "Changes that waited for a mount's open delegation to lapse (a mount that stopped \
         following the change feed without saying so)",
    );
    let orphans_kept = dfs_common::metrics::counter(
        &mut registry,
        "dfs_meta_orphans_kept",
        "Files that lost their last name and were kept for the mounts that may have them open",
    );
    let orphans_reaped = dfs_common::metrics::counter(
        &mut registry,
        "dfs_meta_orphans_reaped",
        "Orphans freed once no mount had them open",
    );
    let space = Arc::new(space::Space::new(
        config.data_dir.clone(),
        config.min_free_space,
    ));
    let http_addr = match config.http {
        Some(http) => {
            let sources = web::Sources {
                db: db.clone(),
                log: group.clone(),
                membership: membership.clone(),
                repair: repair.clone(),
                space: space.clone(),
            };
            let handler = web::handler(registry, sources);
            let bound = dfs_common::http::serve(http, handler, shutdown.clone()).await?;
            tracing::info!(%bound, "status page and metrics on http://{bound}/");
            Some(bound)
        }
        None => None,
    };
    let failure = Arc::new(std::sync::OnceLock::new());
    let service = Arc::new(service::MetaService::new(service::ServiceParts {
        db,
        log: group.clone(),
        committer,
        membership,
        locks: locks::LockTable::new(config.lock_lease),
        repair,
        ops,
        delegation_lapses,
        orphans_kept,
        orphans_reaped,
        orphan_hold: config.orphan_hold,
        space,
        capability_key,
        capability_key_path: config.data_dir.join("capability-key"),
        data_dir: config.data_dir.clone(),
        faults: config.faults.clone(),
        stopping: shutdown.clone(),
        failure: failure.clone(),
    })?);
    tokio::spawn(service.clone().follow_leadership(shutdown.clone()));
    tokio::spawn(service.clone().reap_orphans(shutdown.clone()));
    tracing::info!(%addr, data = %config.data_dir.display(), "metadata server listening");
    let task = tokio::spawn(async move {
        serve(endpoint, service, shutdown).await;
        group.shutdown().await;
    });
    Ok(RunningMetaServer {
        addr,
        http_addr,
        task,
        failure,
    })
}
