//! Scrubbing: every shard's checksums re-verified in the background, at a bounded rate, one
//! pass per interval or on demand. A corrupt shard is removed and reported to the metadata
//! server, whose repair rebuilds it elsewhere.

use crate::store::ShardStore;
use dfs_common::net::Peer;
use dfs_common::proto::chunk::{ScrubProgress, ShardKey};
use dfs_common::proto::meta::{MetaReply, MetaRequest};
use dfs_common::{FsError, ServerId};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub struct Scrubber {
    store: Arc<ShardStore>,
    server: ServerId,
    /// Bytes per second read at most.
    rate: u64,
    interval: Duration,
    progress: Mutex<ScrubProgress>,
    start_now: Notify,
}

impl Scrubber {
    pub fn new(store: Arc<ShardStore>, server: ServerId, rate: u64, interval: Duration) -> Self {
        Scrubber {
            store,
            server,
            rate: rate.max(1),
            interval,
            progress: Mutex::new(ScrubProgress::default()),
            start_now: Notify::new(),
        }
    }

    pub fn progress(&self) -> ScrubProgress {
        self.progress.lock().expect("scrub lock").clone()
    }

    /// Starts a pass now; returns false if one is running.
    pub fn start(&self) -> bool {
        if self.progress().running {
            return false;
        }
        self.start_now.notify_one();
        true
    }

    /// Runs passes (each `interval`, or when started) until `shutdown`.
    pub async fn run(self: Arc<Self>, meta: Peer, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
                _ = self.start_now.notified() => {}
            }
            if let Err(e) = self.pass(&meta, &shutdown).await {
                tracing::warn!("scrub pass failed: {e}");
            }
            let mut p = self.progress.lock().expect("scrub lock");
            p.running = false;
            p.passes += 1;
        }
    }

    async fn pass(&self, meta: &Peer, shutdown: &CancellationToken) -> Result<(), FsError> {
        let store = self.store.clone();
        let shards = tokio::task::spawn_blocking(move || store.list())
            .await
            .map_err(|e| FsError::io(format!("listing task: {e}")))??;
        {
            let mut p = self.progress.lock().expect("scrub lock");
            *p = ScrubProgress {
                running: true,
                passes: p.passes,
                corrupt: p.corrupt,
                total: shards.len() as u64,
                ..ScrubProgress::default()
            };
        }
        tracing::info!(shards = shards.len(), "scrub pass started");
        let started = Instant::now();
        let mut bytes = 0u64;
        for (key, _) in shards {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let store = self.store.clone();
            let checked = tokio::task::spawn_blocking(move || {
                let len = store.read_header(&key)?.shard_len;
                store.verify(&key).map(|_| len)
            })
            .await
            .map_err(|e| FsError::io(format!("verify task: {e}")))?;
            match checked {
                Ok(len) => bytes += len,
                // Deleted since the listing (garbage collection, reconciliation).
                Err(FsError::NotFound) => continue,
                Err(e) => {
                    tracing::error!(block = %key.block, index = key.index, "scrub found a bad shard: {e}");
                    self.progress.lock().expect("scrub lock").corrupt += 1;
                    self.remove_bad(meta, key).await;
                }
            }
            {
                let mut p = self.progress.lock().expect("scrub lock");
                p.checked += 1;
                p.bytes = bytes;
            }
            // Keep to the rate: wait until the bytes so far fit the time so far.
            let due = Duration::from_secs_f64(bytes as f64 / self.rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        tracing::info!(
            bytes,
            secs = started.elapsed().as_secs_f64(),
            "scrub pass done"
        );
        Ok(())
    }

    /// Tells the metadata server the shard is gone, then removes it; if the report fails the
    /// shard stays (still detected as corrupt by readers) and the next pass tries again.
    async fn remove_bad(&self, meta: &Peer, key: ShardKey) {
        let report = MetaRequest::ReportBadShard {
            server: self.server,
            key,
        };
        match meta.call::<_, MetaReply>(&report, None, 4096).await {
            Ok(_) => {
                let store = self.store.clone();
                let _ = tokio::task::spawn_blocking(move || store.delete(&key)).await;
            }
            Err(e) => tracing::warn!("reporting a bad shard: {e}"),
        }
    }
}
