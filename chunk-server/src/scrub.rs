//! Scrubbing: every shard's checksums re-verified in the background, at a bounded rate, one
//! pass per interval or on demand. Only proven damage (a checksum mismatch, a truncated or
//! garbled file) condemns a shard: it is reported to the metadata server, which stops placing
//! reads on it and has repair rebuild it elsewhere. The condemned file stays until then:
//! reconciliation deletes it once the metadata server places that shard on another server.
//! Any other error (EIO, EMFILE, ENOMEM) is counted and logged, and the shard is left alone.

use crate::store::ShardStore;
use dfs_common::fault::Faults;
use dfs_common::net::meta::MetaLink;
use dfs_common::proto::chunk::{ScrubProgress, ShardKey};
use dfs_common::proto::meta::req;
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
    faults: Faults,
}

/// What the rate limit charges for a shard whose length could not be read, so a pass over a
/// failing disk does not spin.
const ERROR_CHARGE: u64 = 1 << 20;

impl Scrubber {
    pub fn new(
        store: Arc<ShardStore>,
        server: ServerId,
        rate: u64,
        interval: Duration,
        faults: Faults,
    ) -> Self {
        Scrubber {
            store,
            server,
            rate: rate.max(1),
            interval,
            progress: Mutex::new(ScrubProgress::default()),
            start_now: Notify::new(),
            faults,
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
    pub async fn run(self: Arc<Self>, meta: MetaLink, shutdown: CancellationToken) {
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

    async fn pass(&self, meta: &MetaLink, shutdown: &CancellationToken) -> Result<(), FsError> {
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
                errors: p.errors,
                total: shards.len() as u64,
                ..ScrubProgress::default()
            };
        }
        tracing::info!(shards = shards.len(), "scrub pass started");
        let started = Instant::now();
        let mut bytes = 0u64;
        // What the rate limit counts: bytes read, plus a charge for every shard that failed.
        let mut charged = 0u64;
        for (key, _) in shards {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let checked = match self.faults.hit("scrub.verify").await {
                Err(e) => Err(e),
                Ok(()) => {
                    let store = self.store.clone();
                    tokio::task::spawn_blocking(move || {
                        let len = store.read_header(&key)?.shard_len;
                        store.verify(&key).map(|_| len)
                    })
                    .await
                    .map_err(|e| FsError::io(format!("verify task: {e}")))?
                }
            };
            match checked {
                Ok(len) => {
                    bytes += len;
                    charged += len;
                }
                // Deleted since the listing (garbage collection, reconciliation).
                Err(FsError::NotFound) => continue,
                Err(e @ FsError::Corrupt(_)) => {
                    tracing::error!(block = %key.block, index = key.index, "scrub found a bad shard: {e}");
                    self.progress.lock().expect("scrub lock").corrupt += 1;
                    self.report_bad(meta, key).await;
                    charged += ERROR_CHARGE;
                }
                Err(e) => {
                    tracing::warn!(block = %key.block, index = key.index, "scrub could not read a shard (left alone): {e}");
                    self.progress.lock().expect("scrub lock").errors += 1;
                    charged += ERROR_CHARGE;
                }
            }
            {
                let mut p = self.progress.lock().expect("scrub lock");
                p.checked += 1;
                p.bytes = bytes;
            }
            // Keep to the rate: wait until the bytes so far fit the time so far.
            let due = Duration::from_secs_f64(charged as f64 / self.rate as f64);
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

    /// Tells the metadata server the shard is bad, so readers and placement stop counting on
    /// it and repair rebuilds it elsewhere. The file stays until the metadata server places
    /// the shard on another server (reconciliation then deletes it): until a repaired copy
    /// exists, even a damaged copy may hold the only good bytes of some sub-blocks. If the
    /// report fails, the next pass reports again.
    async fn report_bad(&self, meta: &MetaLink, key: ShardKey) {
        let report = req::ReportBadShard {
            server: self.server,
            key,
        };
        if let Err(e) = meta.ask(report).await {
            tracing::warn!("reporting a bad shard: {e}");
        }
    }
}
