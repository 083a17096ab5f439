//! A connection to a dfs cluster: one QUIC endpoint, one connection to the metadata server,
//! one per chunk server in use, and the erasure codecs per policy.

mod calls;
pub mod clone;
pub mod dir_attrs;
pub mod dirty;
mod drops;
pub mod file;
pub mod file_attrs;
mod inline_tail;
pub mod layouts;
pub mod locks;
pub mod meta;
pub mod open_files;
mod opened_at;
pub mod pending_attrs;
mod quota;
pub mod reader;
pub mod shard_cache;
pub mod spare_blocks;
pub mod writer;

use dfs_common::erasure::Erasure;
use dfs_common::net::chunks::ChunkPool;
use dfs_common::net::endpoint::client_endpoint;
use dfs_common::net::endpoint::Endpoint;
use dfs_common::net::meta::MetaLink;
use dfs_common::net::tls::Identity;
use dfs_common::proto::meta::{req, MetaCallRef, MetaRequest, MetaRpc, VolumeInfo};
use dfs_common::{EcPolicy, FsError, FsResult, VolumeId};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The extent `[file_offset, file_offset + len)` of a file, from `block_offset` of block
/// `block`: for the layouts of unit tests.
#[cfg(test)]
pub(crate) fn test_extent(
    file_offset: u64,
    len: u64,
    block: u64,
    block_offset: u64,
) -> dfs_common::model::Extent {
    dfs_common::model::Extent {
        file_offset,
        len,
        block: dfs_common::BlockId(block),
        block_offset,
    }
}

/// Pauses between attempts to reach an unreachable metadata server.
const RETRY_PAUSE_MIN: Duration = Duration::from_millis(100);
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(2);

/// Default size of the [`ShardCache`](shard_cache::ShardCache): room for the working set of
/// a random reader of a few hundred MiB, small beside the write buffers' own bound.
pub const DEFAULT_READ_CACHE_BYTES: usize = 256 * 1024 * 1024;

/// Tunables of a client.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Blocks being uploaded at once per open file.
    pub write_blocks_in_flight: usize,
    /// Dirty bytes an open file may buffer before it flushes.
    pub max_dirty_bytes: usize,
    /// Dirty bytes all open files of this client may buffer together: past it, a writer
    /// uploads its own buffer before it goes on (back-pressure, not failure).
    pub max_dirty_total: usize,
    /// Bytes of blocks being uploaded at once by all open files of this client; a writer
    /// waits for room.
    pub max_upload_bytes: usize,
    /// A flush of at most this many bytes (at most
    /// [`MAX_INLINE_END`](dfs_common::proto::MAX_INLINE_END)) is kept in the metadata store,
    /// one metadata commit instead of a block of k+m shard writes, while the file's inline
    /// allowance lasts; 0 never does.
    pub inline_max: u64,
    /// Bound on one metadata call.
    pub meta_timeout: Duration,
    /// How long a metadata call keeps trying while the metadata server cannot be reached (it
    /// restarts, say) before failing with EIO; `None` waits for it without limit.
    pub meta_retry: Option<Duration>,
    /// Bound on one shard transfer.
    pub chunk_timeout: Duration,
    /// Bytes of recently read 64 KiB shard units kept for small reads
    /// ([`ShardCache`](shard_cache::ShardCache)); 0 keeps none.
    pub read_cache_bytes: usize,
    /// Block placements kept ready per volume while uploads follow each other
    /// ([`SpareBlocks`](spare_blocks::SpareBlocks)); 0 asks for each when it is needed.
    pub spare_blocks: usize,
    /// Fault points tests arm (inert by default).
    pub faults: dfs_common::fault::Faults,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            write_blocks_in_flight: 8,
            max_dirty_bytes: 64 * 1024 * 1024,
            max_dirty_total: 256 * 1024 * 1024,
            max_upload_bytes: 256 * 1024 * 1024,
            inline_max: dfs_common::proto::MAX_INLINE_END,
            meta_timeout: Duration::from_secs(20),
            meta_retry: Some(Duration::ZERO),
            chunk_timeout: Duration::from_secs(10),
            read_cache_bytes: DEFAULT_READ_CACHE_BYTES,
            spare_blocks: 0,
            faults: dfs_common::fault::Faults::default(),
        }
    }
}

/// A handle on a cluster; cheap to clone and share between tasks.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) meta: MetaLink,
    pub(crate) chunks: ChunkPool,
    pub(crate) options: ClientOptions,
    codecs: Mutex<HashMap<EcPolicy, Arc<Erasure>>>,
    volumes: Mutex<HashMap<VolumeId, VolumeInfo>>,
    quotas: Mutex<HashMap<VolumeId, quota::QuotaView>>,
    pub(crate) locks: locks::LockSession,
    calls: calls::CallIds,
    /// Reads that had to rebuild a piece from other shards (a server down, failed or slow):
    /// a handle that sees this move fetches its layout again, in case shards moved.
    pub(crate) fallback_reads: std::sync::atomic::AtomicU64,
    /// Shard writes given up because enough of their block was stored while they were slow.
    pub(crate) shard_writes_left: std::sync::atomic::AtomicU64,
    /// Dirty bytes buffered by all open files (see [`ClientOptions::max_dirty_total`]).
    pub(crate) dirty_total: std::sync::atomic::AtomicUsize,
    /// Room for block uploads, in KiB (see [`ClientOptions::max_upload_bytes`]).
    pub(crate) upload_budget: Arc<tokio::sync::Semaphore>,
    /// Directories' attributes as this client's changes and questions last gave them.
    pub(crate) dir_attrs: dir_attrs::DirAttrs,
    /// Files' attributes (all but directories') as the metadata server last gave them.
    pub(crate) file_attrs: file_attrs::FileAttrs,
    /// Where in the change feed files were last opened through a call.
    pub(crate) opened_at: opened_at::OpenedAt,
    /// Sub-blocks of shards read recently.
    pub(crate) shard_cache: shard_cache::ShardCache,
    /// Block placements fetched ahead of uploads.
    pub(crate) spare_blocks: spare_blocks::SpareBlocks,
    _endpoint: Endpoint,
}

/// Drops, when a call ends (answered, failed or abandoned), the file attributes its change
/// may have made stale (see [`file_attrs`]), and directories' when it was not answered.
struct StaleFileAttrs<'a> {
    client: &'a Client,
    request: &'a MetaRequest,
    /// The metadata server answered: a commit's answer carries the file's new attributes.
    answered: bool,
}

impl Drop for StaleFileAttrs<'_> {
    fn drop(&mut self) {
        use MetaRequest as R;
        // Unanswered, a change may or may not have been made, to any directory's attributes
        // (the answers name the directories a change touched).
        if !self.answered && self.request.is_mutation() {
            self.client.inner.dir_attrs.clear();
        }
        let kept = &self.client.inner.file_attrs;
        match self.request {
            // Answered, the change's outcome is noted from its answer where it is made.
            R::SetAttr(q) if !self.answered => kept.forget(q.ino),
            R::SetAttr(_) => {}
            R::SetXattr(q) => kept.forget(q.ino),
            R::RemoveXattr(q) => kept.forget(q.ino),
            // A commit's outcome is unknown when it was not answered.
            R::CommitWrite(req::CommitWrite { ino, .. })
            | R::WriteInline(req::WriteInline { ino, .. })
            | R::CommitIfUnchanged(req::CommitIfUnchanged { ino, .. })
                if !self.answered =>
            {
                kept.forget(*ino)
            }
            // The inode a name was removed from is named by the answer, and dropped where
            // it comes; unanswered, it could be any file.
            R::UnlinkOrHide(_) if !self.answered => kept.clear(),
            R::UnlinkOrHide(_) => {}
            // So are the inodes a move changed.
            R::Move(_) if !self.answered => kept.clear(),
            R::Move(_) => {}
            // A link changes the inode it names; answered, its attributes come with it.
            R::Link(q) if !self.answered => kept.forget(q.ino),
            R::Link(_) => {}
            // An answered commit (noted from its answer where it is made), a new inode, or
            // no file's attributes touched (an rmdir removes an empty directory, answered or
            // not).
            R::Rmdir(_)
            | R::CommitWrite(_)
            | R::WriteInline(_)
            | R::CommitIfUnchanged(_)
            | R::MakeNode(_)
            | R::Symlink(_)
            | R::AllocateBlock(_)
            | R::ReplaceShard(_)
            | R::ReportBadShard(_) => {}
            // An unlink or rename (of a file this client does not know the inode of), and
            // whatever else: any file may have changed.
            request if request.is_mutation() => kept.clear(),
            _ => {}
        }
    }
}

impl Client {
    /// Connects to the metadata server at `meta` and checks that it answers.
    pub async fn connect(
        meta: SocketAddr,
        identity: &Identity,
        options: ClientOptions,
    ) -> FsResult<Client> {
        Self::connect_group(&[meta], identity, options).await
    }

    /// Connects to the metadata group whose members are at `members` (calls go to its
    /// leader, found by asking) and checks that it answers.
    pub async fn connect_group(
        members: &[SocketAddr],
        identity: &Identity,
        options: ClientOptions,
    ) -> FsResult<Client> {
        let endpoint = client_endpoint(identity)?;
        let upload_units = (options.max_upload_bytes / 1024).max(1);
        let shard_cache = shard_cache::ShardCache::new(options.read_cache_bytes);
        let spare_blocks = spare_blocks::SpareBlocks::new(options.spare_blocks);
        let client = Client {
            inner: Arc::new(Inner {
                meta: MetaLink::new(endpoint.clone(), members, options.meta_timeout)?,
                chunks: ChunkPool::new(endpoint.clone(), options.chunk_timeout),
                options,
                codecs: Mutex::new(HashMap::new()),
                volumes: Mutex::new(HashMap::new()),
                quotas: Mutex::new(HashMap::new()),
                locks: locks::LockSession::new(),
                calls: calls::CallIds::new(),
                fallback_reads: std::sync::atomic::AtomicU64::new(0),
                shard_writes_left: std::sync::atomic::AtomicU64::new(0),
                dirty_total: std::sync::atomic::AtomicUsize::new(0),
                upload_budget: Arc::new(tokio::sync::Semaphore::new(upload_units)),
                dir_attrs: dir_attrs::DirAttrs::default(),
                file_attrs: file_attrs::FileAttrs::default(),
                opened_at: opened_at::OpenedAt::default(),
                shard_cache,
                spare_blocks,
                _endpoint: endpoint,
            }),
        };
        tokio::spawn(locks::renew_leases(Arc::downgrade(&client.inner)));
        // The first contact fails at once: an unreachable cluster is reported, not waited for.
        let list = MetaRequest::from(req::ListVolumes);
        let _: <req::ListVolumes as MetaRpc>::Reply = client
            .exchange(MetaCallRef {
                id: None,
                request: &list,
            })
            .await??;
        Ok(client)
    }

    /// Bytes written to open files and not yet handed to an upload.
    pub fn dirty_bytes(&self) -> usize {
        self.inner
            .dirty_total
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The fault points this client was given (inert outside tests).
    pub fn faults(&self) -> &dfs_common::fault::Faults {
        &self.inner.options.faults
    }

    /// How many reads so far had to rebuild data from other shards.
    pub fn fallback_reads(&self) -> u64 {
        self.inner
            .fallback_reads
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many shard writes so far were left behind, their block stored without them, as
    /// their servers were too slow (see [`writer::upload_block`]).
    pub fn shard_writes_left(&self) -> u64 {
        self.inner
            .shard_writes_left
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Recently read 64 KiB shard units.
    pub fn shard_cache(&self) -> &shard_cache::ShardCache {
        &self.inner.shard_cache
    }

    /// Block placements fetched ahead of uploads.
    pub fn spare_blocks(&self) -> &spare_blocks::SpareBlocks {
        &self.inner.spare_blocks
    }

    /// The id this client's mutations carry: the origin of the changes it makes.
    pub fn call_origin(&self) -> u64 {
        self.inner.calls.client()
    }

    /// One attempt at a metadata request; the outer error is a failed exchange.
    async fn exchange<R: DeserializeOwned>(&self, call: MetaCallRef<'_>) -> FsResult<FsResult<R>> {
        let wait = call.request.wait();
        let (reply, _) = self
            .inner
            .meta
            .exchange_waiting::<_, R>(&call, None, dfs_common::codec::MAX_FRAME, wait)
            .await?;
        let faults = &self.inner.options.faults;
        if faults.is_enabled() {
            // "The reply was lost": the server applied the call, the client never heard.
            faults
                .hit(&format!("client.lose_reply.{}", call.request.name()))
                .await?;
        }
        Ok(reply)
    }

    /// Sends one metadata request. While the metadata server cannot be reached, it tries again
    /// for [`ClientOptions::meta_retry`], then fails with EIO. A mutation keeps one call id
    /// across its retries, so one whose reply was lost is not applied twice: the retry gets
    /// the first reply. The reply is decoded as the request's reply type.
    pub async fn call<Q: MetaRpc>(&self, request: Q) -> FsResult<Q::Reply> {
        let request: MetaRequest = request.into();
        let outstanding = request.is_mutation().then(|| self.inner.calls.begin());
        // However the call ends: one that failed may still have been applied.
        let mut stale = StaleFileAttrs {
            client: self,
            request: &request,
            answered: false,
        };
        let call = MetaCallRef {
            id: outstanding.as_ref().map(|o| o.id),
            request: &request,
        };
        let deadline = self.inner.options.meta_retry.map(|d| Instant::now() + d);
        let mut pause = RETRY_PAUSE_MIN;
        let mut warned = false;
        loop {
            let failure = match self.exchange(call).await {
                Ok(reply) => {
                    if warned {
                        tracing::info!("metadata server reachable again");
                    }
                    stale.answered = true;
                    return reply;
                }
                Err(e) => e,
            };
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(FsError::unavailable(format!(
                    "metadata server unreachable: {failure}"
                )));
            }
            if !warned {
                tracing::warn!("metadata server unreachable, retrying: {failure}");
                warned = true;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_PAUSE_MAX);
        }
    }

    /// Sends a frame-only request to the chunk server at `addr` (scrub control, for admins).
    pub async fn chunk_request(
        &self,
        addr: &str,
        request: &dfs_common::proto::chunk::ChunkRequest,
    ) -> FsResult<dfs_common::proto::chunk::ChunkReply> {
        self.inner.chunks.request(addr, request).await
    }

    pub(crate) fn codec(&self, policy: EcPolicy) -> FsResult<Arc<Erasure>> {
        let mut codecs = self.inner.codecs.lock().expect("codec lock");
        if let Some(c) = codecs.get(&policy) {
            return Ok(c.clone());
        }
        let c = Arc::new(Erasure::new(policy)?);
        codecs.insert(policy, c.clone());
        Ok(c)
    }

    /// A volume's description by id (cached: policy and block size never change).
    pub async fn volume_by_id(&self, id: VolumeId) -> FsResult<VolumeInfo> {
        if let Some(v) = self.known_volume(id) {
            return Ok(v);
        }
        self.list_volumes()
            .await?
            .into_iter()
            .find(|v| v.id == id)
            .ok_or_else(|| FsError::Corrupt(format!("volume {id} not found")))
    }

    /// The volume, if this client has seen it.
    pub(crate) fn known_volume(&self, id: VolumeId) -> Option<VolumeInfo> {
        self.inner
            .volumes
            .lock()
            .expect("volume lock")
            .get(&id)
            .cloned()
    }

    pub(crate) fn remember_volumes(&self, volumes: &[VolumeInfo]) {
        let mut cache = self.inner.volumes.lock().expect("volume lock");
        for v in volumes {
            cache.insert(v.id, v.clone());
        }
    }
}
