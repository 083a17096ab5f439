//! A connection to a dfs cluster: one QUIC endpoint, one connection to the metadata server,
//! one per chunk server in use, and the erasure codecs per policy.

pub mod chunks;
pub mod dirty;
pub mod file;
pub mod meta;
pub mod reader;
pub mod writer;

use chunks::ChunkPool;
use dfs_common::erasure::Erasure;
use dfs_common::net::endpoint::client_endpoint;
use dfs_common::net::tls::Identity;
use dfs_common::net::Peer;
use dfs_common::proto::meta::{MetaReply, MetaRequest, VolumeInfo};
use dfs_common::{EcPolicy, FsError, FsResult, VolumeId};
use quinn::Endpoint;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Tunables of a client.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Blocks being uploaded at once per open file.
    pub write_blocks_in_flight: usize,
    /// Dirty bytes an open file may buffer before it flushes.
    pub max_dirty_bytes: usize,
    /// Bound on one metadata call.
    pub meta_timeout: Duration,
    /// Bound on one shard transfer.
    pub chunk_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            write_blocks_in_flight: 8,
            max_dirty_bytes: 64 * 1024 * 1024,
            meta_timeout: Duration::from_secs(20),
            chunk_timeout: Duration::from_secs(10),
        }
    }
}

/// A handle on a cluster; cheap to clone and share between tasks.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) meta: Peer,
    pub(crate) chunks: ChunkPool,
    pub(crate) options: ClientOptions,
    codecs: Mutex<HashMap<EcPolicy, Arc<Erasure>>>,
    volumes: Mutex<HashMap<VolumeId, VolumeInfo>>,
    _endpoint: Endpoint,
}

impl Client {
    /// Connects to the metadata server at `meta` and checks that it answers.
    pub async fn connect(
        meta: SocketAddr,
        identity: &Identity,
        options: ClientOptions,
    ) -> FsResult<Client> {
        let endpoint = client_endpoint(identity)?;
        let client = Client {
            inner: Arc::new(Inner {
                meta: Peer::new(endpoint.clone(), meta).with_timeout(options.meta_timeout),
                chunks: ChunkPool::new(endpoint.clone(), options.chunk_timeout),
                options,
                codecs: Mutex::new(HashMap::new()),
                volumes: Mutex::new(HashMap::new()),
                _endpoint: endpoint,
            }),
        };
        client.list_volumes().await?;
        Ok(client)
    }

    /// Sends one metadata request.
    pub async fn call(&self, request: &MetaRequest) -> FsResult<MetaReply> {
        let (reply, _) = self
            .inner
            .meta
            .call::<_, MetaReply>(request, None, dfs_common::codec::MAX_FRAME)
            .await?;
        Ok(reply)
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
        if let Some(v) = self.inner.volumes.lock().expect("volume lock").get(&id) {
            return Ok(v.clone());
        }
        self.list_volumes()
            .await?
            .into_iter()
            .find(|v| v.id == id)
            .ok_or_else(|| FsError::Corrupt(format!("volume {id} not found")))
    }

    pub(crate) fn remember_volumes(&self, volumes: &[VolumeInfo]) {
        let mut cache = self.inner.volumes.lock().expect("volume lock");
        for v in volumes {
            cache.insert(v.id, v.clone());
        }
    }
}

/// Unwraps the one reply variant a request expects; anything else is a protocol error.
macro_rules! expect_reply {
    ($reply:expr, $variant:path) => {
        match $reply {
            $variant(value) => Ok(value),
            other => Err(dfs_common::FsError::protocol(format!(
                "unexpected reply {other:?}"
            ))),
        }
    };
}
pub(crate) use expect_reply;
