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

/// How long a heartbeat may go unanswered: long enough for a busy metadata server (a call
/// given up costs a new connection, whose handshake costs the server more).
fn heartbeat_timeout(interval: Duration) -> Duration {
    interval.max(Duration::from_secs(2)) * 2
}

pub struct Heartbeat {
    pub server: ServerId,
    pub advertise: String,
    pub meta: SocketAddr,
    pub interval: Duration,
    pub service: Arc<ChunkService>,
}

impl Heartbeat {
    pub async fn run(self, endpoint: Endpoint, shutdown: CancellationToken) {
        // A heartbeat unanswered this long is given up, and the next goes out on a new
        // connection (a restarted metadata server waits for that: `Membership::live_when_known`).
        let peer = Peer::new(endpoint, self.meta).with_timeout(heartbeat_timeout(self.interval));
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
