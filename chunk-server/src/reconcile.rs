//! Reconciliation: the server asks the metadata server which of its shards it should still
//! hold, and deletes the rest: shards rebuilt elsewhere while it was down, shards of collected
//! garbage, copies a writer placed elsewhere after a timeout. Shards younger than the grace
//! period are left alone, so a write or rebuild in progress is never taken for an orphan.

use crate::store::ShardStore;
use dfs_common::net::meta::MetaLink;
use dfs_common::proto::meta::req;
use dfs_common::proto::MAX_CHECK_SHARDS;
use dfs_common::{FsError, FsResult, ServerId};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

pub struct Reconciler {
    pub store: Arc<ShardStore>,
    pub server: ServerId,
    pub interval: Duration,
    pub grace: Duration,
}

impl Reconciler {
    pub async fn run(self, meta: MetaLink, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
            match self.pass(&meta).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "reconciled with the metadata server"),
                Err(e) => tracing::debug!("reconciliation failed: {e}"),
            }
        }
    }

    /// One reconciliation; returns how many shards were deleted.
    pub async fn pass(&self, meta: &MetaLink) -> FsResult<usize> {
        let store = self.store.clone();
        let held = tokio::task::spawn_blocking(move || store.list())
            .await
            .map_err(|e| FsError::io(format!("listing task: {e}")))??;
        let cutoff = SystemTime::now() - self.grace;
        let old: Vec<_> = held
            .into_iter()
            .filter(|(_, written)| *written < cutoff)
            .map(|(key, _)| key)
            .collect();
        let mut deleted = 0;
        for keys in old.chunks(MAX_CHECK_SHARDS) {
            let stale = meta
                .ask(req::CheckShards {
                    server: self.server,
                    keys: keys.to_vec(),
                })
                .await?;
            for key in stale {
                let store = self.store.clone();
                let removed = tokio::task::spawn_blocking(move || store.delete(&key))
                    .await
                    .map_err(|e| FsError::io(format!("delete task: {e}")))??;
                if removed {
                    tracing::debug!(block = %key.block, index = key.index, "deleted an orphan shard");
                    deleted += 1;
                }
            }
        }
        Ok(deleted)
    }
}
