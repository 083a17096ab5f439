//! Connections to chunk servers, one per address, and the two shard transfers.
//!
//! A server that just failed a request is remembered as suspect for a while, so readers go
//! straight to other shards instead of waiting on it again.

use super::endpoint::Endpoint;
use super::rpc::read_body_into;
use super::{lookup, Peer};
use crate::capability::ShardCapability;
use crate::error::{FsError, FsResult};
use crate::proto::chunk::{ChunkReply, ChunkRequest, ShardKey, ShardOwner, ShardSource};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a server that failed a request is avoided by readers.
const SUSPECT_FOR: Duration = Duration::from_secs(10);

pub struct ChunkPool {
    endpoint: Endpoint,
    timeout: Duration,
    peers: Mutex<HashMap<String, Arc<Peer>>>,
    suspects: Mutex<HashMap<String, Instant>>,
}

impl ChunkPool {
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Self {
        ChunkPool {
            endpoint,
            timeout,
            peers: Mutex::new(HashMap::new()),
            suspects: Mutex::new(HashMap::new()),
        }
    }

    async fn peer(&self, addr: &str) -> FsResult<Arc<Peer>> {
        if let Some(p) = self.peers.lock().expect("peer lock").get(addr) {
            return Ok(p.clone());
        }
        // Resolved without holding the lock, and without blocking the runtime on DNS.
        let socket = lookup(addr).await?;
        let peer = Arc::new(Peer::new(self.endpoint.clone(), socket).with_timeout(self.timeout));
        Ok(self
            .peers
            .lock()
            .expect("peer lock")
            .entry(addr.to_string())
            .or_insert(peer)
            .clone())
    }

    pub fn is_suspect(&self, addr: &str) -> bool {
        let mut suspects = self.suspects.lock().expect("suspect lock");
        match suspects.get(addr) {
            Some(since) if since.elapsed() < SUSPECT_FOR => true,
            Some(_) => {
                suspects.remove(addr);
                false
            }
            None => false,
        }
    }

    /// Remembers `addr` as failing, so readers avoid it for a while.
    pub fn mark_suspect(&self, addr: &str) {
        self.suspects
            .lock()
            .expect("suspect lock")
            .insert(addr.to_string(), Instant::now());
    }

    fn note<T>(&self, addr: &str, result: FsResult<T>) -> FsResult<T> {
        if let Err(e) = &result {
            if matches!(e, FsError::Unavailable(_) | FsError::TimedOut(_)) {
                self.mark_suspect(addr);
            }
        }
        result
    }

    pub async fn put_shard(
        &self,
        addr: &str,
        key: ShardKey,
        owner: ShardOwner,
        cap: ShardCapability,
        data: Bytes,
    ) -> FsResult<()> {
        let result = async {
            let peer = self.peer(addr).await?;
            let request = ChunkRequest::Put {
                key,
                owner,
                len: data.len() as u64,
                cap,
            };
            let (reply, _) = peer
                .call::<_, ChunkReply>(&request, Some(data), 4096)
                .await?;
            match reply {
                ChunkReply::Stored => Ok(()),
                other => Err(FsError::protocol(format!("unexpected reply {other:?}"))),
            }
        }
        .await;
        self.note(addr, result)
    }

    /// Reads `buf.len()` bytes at `offset` of a shard straight into `buf`.
    pub async fn get_shard_into(
        &self,
        addr: &str,
        key: ShardKey,
        offset: u64,
        buf: &mut [u8],
    ) -> FsResult<()> {
        let len = buf.len() as u64;
        let result = async {
            let peer = self.peer(addr).await?;
            let request = ChunkRequest::Get { key, offset, len };
            let (reply, mut recv) = peer.call::<_, ChunkReply>(&request, None, 4096).await?;
            match reply {
                ChunkReply::Data { len: got } if got == len => {
                    read_body_into(&mut recv, buf, self.timeout).await
                }
                other => Err(FsError::protocol(format!(
                    "unexpected reply {other:?} to a {len}-byte read"
                ))),
            }
        }
        .await;
        self.note(addr, result)
    }

    /// Reads `len` bytes at `offset` of a shard into a new buffer.
    pub async fn get_shard(
        &self,
        addr: &str,
        key: ShardKey,
        offset: u64,
        len: u64,
    ) -> FsResult<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        self.get_shard_into(addr, key, offset, &mut buf).await?;
        Ok(buf)
    }

    /// Deletes a shard; returns whether it existed.
    pub async fn delete_shard(&self, addr: &str, key: ShardKey) -> FsResult<bool> {
        let result = async {
            let peer = self.peer(addr).await?;
            let (reply, _) = peer
                .call::<_, ChunkReply>(&ChunkRequest::Delete { key }, None, 4096)
                .await?;
            match reply {
                ChunkReply::Deleted { existed } => Ok(existed),
                other => Err(FsError::protocol(format!("unexpected reply {other:?}"))),
            }
        }
        .await;
        self.note(addr, result)
    }

    /// Asks the server at `addr` to rebuild shard `key` from `sources` and store it.
    pub async fn rebuild_shard(
        &self,
        addr: &str,
        key: ShardKey,
        owner: ShardOwner,
        sources: Vec<ShardSource>,
    ) -> FsResult<()> {
        let result = async {
            let peer = self.peer(addr).await?;
            let request = ChunkRequest::Rebuild {
                key,
                owner,
                sources,
            };
            let (reply, _) = peer.call::<_, ChunkReply>(&request, None, 4096).await?;
            match reply {
                ChunkReply::Stored => Ok(()),
                other => Err(FsError::protocol(format!("unexpected reply {other:?}"))),
            }
        }
        .await;
        self.note(addr, result)
    }

    /// Sends any request that has a frame-only reply (scrub control, listings).
    pub async fn request(&self, addr: &str, request: &ChunkRequest) -> FsResult<ChunkReply> {
        let result = async {
            let peer = self.peer(addr).await?;
            let (reply, _) = peer
                .call::<_, ChunkReply>(request, None, crate::codec::MAX_FRAME)
                .await?;
            Ok(reply)
        }
        .await;
        self.note(addr, result)
    }
}
