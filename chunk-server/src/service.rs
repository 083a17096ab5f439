//! The chunk server's request handler: validates, then does blocking disk work off the runtime.

use crate::access::ClientAccess;
use crate::rebuild::rebuild;
use crate::scrub::Scrubber;
use crate::store::{validate_put, ShardStore};
use crate::web::ChunkMetrics;
use dfs_common::capability::{CapabilityKey, ShardCapability};
use dfs_common::net::chunks::ChunkPool;
use dfs_common::net::rpc::read_body_into;
use dfs_common::net::server::{PeerInfo, Response, Service};
use dfs_common::proto::chunk::{ChunkReply, ChunkRequest, ChunkServerInfo, ShardKey};
use dfs_common::proto::MAX_BLOCK_SIZE;
use dfs_common::{FsError, FsResult, ServerId};
use quinn::RecvStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Memory allowed for shard bodies being received at once; further puts wait their turn.
const RECEIVE_BUDGET: u64 = 512 * 1024 * 1024;
/// Memory allowed for shard data read for replies and not yet acknowledged by their readers;
/// further reads wait their turn.
const SEND_BUDGET: u64 = 512 * 1024 * 1024;
/// Unit of the receive budget, so permits fit a u32.
const BUDGET_UNIT: u64 = 64 * 1024;

pub struct ChunkService {
    id: ServerId,
    store: Arc<ShardStore>,
    capacity: Option<u64>,
    receive_budget: Semaphore,
    send_budget: Arc<Semaphore>,
    /// Connections to other chunk servers, for rebuilds.
    peers: Arc<ChunkPool>,
    scrubber: Arc<Scrubber>,
    access: ClientAccess,
    metrics: ChunkMetrics,
    /// Bytes of shards accepted but not yet on disk, so that concurrent writes cannot
    /// together overfill the server.
    reserved: Mutex<u64>,
    /// The key that checks shard capabilities, learned from the metadata server's answer to
    /// the first heartbeat; no shard is stored before.
    capability_key: std::sync::RwLock<Option<CapabilityKey>>,
}

/// Shard bytes on their way out, holding their share of the send budget.
struct Budgeted {
    data: bytes::Bytes,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// Space held for one incoming shard until it is stored (or fails).
struct Reservation<'a> {
    reserved: &'a Mutex<u64>,
    len: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        *self.reserved.lock().expect("reservation lock") -= self.len;
    }
}

impl ChunkService {
    pub fn new(
        id: ServerId,
        store: Arc<ShardStore>,
        capacity: Option<u64>,
        peers: Arc<ChunkPool>,
        scrubber: Arc<Scrubber>,
        access: ClientAccess,
        metrics: ChunkMetrics,
    ) -> Self {
        ChunkService {
            id,
            store,
            capacity,
            receive_budget: Semaphore::new((RECEIVE_BUDGET / BUDGET_UNIT) as usize),
            send_budget: Arc::new(Semaphore::new((SEND_BUDGET / BUDGET_UNIT) as usize)),
            peers,
            scrubber,
            access,
            metrics,
            reserved: Mutex::new(0),
            capability_key: std::sync::RwLock::new(None),
        }
    }

    pub fn learn_capability_key(&self, key: CapabilityKey) {
        *self.capability_key.write().expect("capability key") = Some(key);
    }

    /// Refuses a put without the metadata server's permission for exactly this shard, its
    /// volume and this server.
    fn check_capability(
        &self,
        cap: &ShardCapability,
        key: ShardKey,
        volume: dfs_common::VolumeId,
    ) -> FsResult<()> {
        let guard = self.capability_key.read().expect("capability key");
        let Some(secret) = guard.as_ref() else {
            return Err(FsError::unavailable(
                "this chunk server has not registered with the metadata server yet",
            ));
        };
        secret.check(cap, key, volume, self.id, dfs_common::Timestamp::now())
    }

    /// Holds space for a shard of `len` bytes, or refuses it when it would overfill this
    /// server (counting shards still being received).
    fn reserve(&self, shard_len: u64) -> FsResult<Reservation<'_>> {
        let len = crate::store::file_len(shard_len);
        let info = self.info();
        let mut reserved = self.reserved.lock().expect("reservation lock");
        if info.used.saturating_add(*reserved).saturating_add(len) > info.capacity {
            return Err(FsError::NoSpace(format!(
                "chunk server {} is full",
                self.id
            )));
        }
        *reserved += len;
        Ok(Reservation {
            reserved: &self.reserved,
            len,
        })
    }

    /// Identity and usage, as reported in heartbeats.
    pub fn info(&self) -> ChunkServerInfo {
        let used = self.store.used_bytes();
        let disk_free = dfs_common::disk::free_bytes(self.store.root()).unwrap_or(0);
        let capacity = match self.capacity {
            Some(c) => c,
            None => used.saturating_add(disk_free),
        };
        ChunkServerInfo {
            id: self.id,
            capacity,
            used,
            shards: self.store.shard_count(),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ShardStore) -> FsResult<T> + Send + 'static,
    ) -> FsResult<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| FsError::io(format!("disk task failed: {e}")))?
    }
}

impl Service for ChunkService {
    type Request = ChunkRequest;
    type Reply = ChunkReply;
    const MAX_REQUEST: usize = 4096;
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

    fn op_name(request: &ChunkRequest) -> &'static str {
        request.name()
    }

    fn op_metrics(&self) -> Option<&dfs_common::metrics::OpMetrics> {
        Some(&self.metrics.ops)
    }

    async fn handle(
        &self,
        request: ChunkRequest,
        body: &mut RecvStream,
        peer: &PeerInfo,
    ) -> Response<ChunkReply> {
        let principal = &peer.principal;
        match request {
            ChunkRequest::Put {
                key,
                owner,
                len,
                cap,
            } => {
                validate_put(&key, &owner, len)?;
                self.check_capability(&cap, key, owner.volume)?;
                self.access.check(principal, owner.volume, true).await?;
                let _space = self.reserve(len)?;
                let units = (len / BUDGET_UNIT + 1) as u32;
                let _permit = self
                    .receive_budget
                    .acquire_many(units)
                    .await
                    .map_err(|_| FsError::unavailable("shutting down"))?;
                let mut shard = self.store.buffer(len as usize);
                read_body_into(body, shard.data_mut(), Self::REQUEST_TIMEOUT).await?;
                self.blocking(move |s| s.put_buffer(key, owner, shard))
                    .await?;
                self.metrics.bytes_in.inc_by(len);
                Ok((ChunkReply::Stored, None))
            }
            ChunkRequest::Get { key, offset, len } => {
                if len > MAX_BLOCK_SIZE {
                    return Err(FsError::TooBig(format!("read of {len} bytes")));
                }
                // The permit travels with the bytes and is returned when the transport has
                // sent them and dropped its copy.
                let permit = self
                    .send_budget
                    .clone()
                    .acquire_many_owned((len / BUDGET_UNIT + 1) as u32)
                    .await
                    .map_err(|_| FsError::unavailable("shutting down"))?;
                // One trip to the disk thread reads the bytes and whose they are; nothing is
                // sent before the owner's volume passes the access check.
                let (owner, data) = match self.store.get_cached(&key, offset, len) {
                    Some(read) => read?,
                    None => {
                        self.blocking(move |s| s.get_with_owner(&key, offset, len))
                            .await?
                    }
                };
                if !principal.is_privileged() {
                    self.access.check(principal, owner.volume, false).await?;
                }
                self.metrics.bytes_out.inc_by(data.len() as u64);
                let len = data.len() as u64;
                let data = bytes::Bytes::from_owner(Budgeted {
                    data,
                    _permit: permit,
                });
                Ok((ChunkReply::Data { len }, Some(data)))
            }
            ChunkRequest::Delete { key } => {
                self.access.directing(principal)?;
                let existed = self.blocking(move |s| s.delete(&key)).await?;
                Ok((ChunkReply::Deleted { existed }, None))
            }
            ChunkRequest::Verify { key } => {
                self.access.directing(principal)?;
                self.blocking(move |s| s.verify(&key)).await?;
                Ok((ChunkReply::Verified, None))
            }
            ChunkRequest::Info => Ok((ChunkReply::Info(self.info()), None)),
            ChunkRequest::Rebuild {
                key,
                owner,
                sources,
            } => {
                self.access.directing(principal)?;
                let _space = self.reserve(owner.policy.shard_len(owner.block_len))?;
                rebuild(&self.peers, &self.store, key, owner, sources).await?;
                Ok((ChunkReply::Stored, None))
            }
            ChunkRequest::ScrubStart => {
                self.access.directing(principal)?;
                self.scrubber.start();
                Ok((ChunkReply::Scrub(self.scrubber.progress()), None))
            }
            ChunkRequest::ScrubStatus => Ok((ChunkReply::Scrub(self.scrubber.progress()), None)),
        }
    }
}
