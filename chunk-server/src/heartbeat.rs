//! Registration and liveness: the chunk server tells the metadata server, at a fixed interval,
//! where it is and how full it is. The first heartbeat registers it.

use crate::service::ChunkService;
use dfs_common::net::endpoint::Endpoint;
use dfs_common::net::Peer;
use dfs_common::proto::meta::{req, MetaCall, Registered};
use dfs_common::{FsError, ServerId};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct Heartbeat {
    pub server: ServerId,
    pub advertise: String,
    pub meta: SocketAddr,
    pub interval: Duration,
    pub service: Arc<ChunkService>,
}

impl Heartbeat {
    pub async fn run(self, endpoint: Endpoint, shutdown: CancellationToken) {
        // A heartbeat that goes unanswered this long is given up and the next one goes out
        // on a new connection: a metadata server that was restarted knows no chunk server
        // until each heartbeats again, and holds allocations meanwhile only for its server
        // timeout (2 s in the tests), so a call stuck on the dead process's connection must
        // not take longer than that.
        let peer = Peer::new(endpoint, self.meta)
            .with_timeout((self.interval * 2).max(Duration::from_secs(1)));
        let mut reachable = true;
        loop {
            match self.beat(&peer).await {
                Ok(()) if !reachable => {
                    tracing::info!(meta = %self.meta, "metadata server reachable again");
                    reachable = true;
                }
                Ok(()) => {}
                Err(e) if reachable => {
                    tracing::warn!(meta = %self.meta, "heartbeat failed: {e}");
                    reachable = false;
                }
                Err(e) => tracing::debug!(meta = %self.meta, "heartbeat failed: {e}"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    async fn beat(&self, peer: &Peer) -> Result<(), FsError> {
        let info = self.service.info();
        let request = req::Heartbeat {
            server: self.server,
            addr: self.advertise.clone(),
            capacity: info.capacity,
            used: info.used,
            shards: info.shards,
        };
        let (Registered { capability_key }, _) = peer
            .call(&MetaCall::untracked(request.into()), None, 4096)
            .await?;
        self.service.learn_capability_key(capability_key);
        Ok(())
    }
}
