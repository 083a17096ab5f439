//! Byte quotas seen from a client, so that a write past a volume's quota fails with EDQUOT at
//! the `write` call rather than at the later commit.
//!
//! The metadata server is the authority: every commit is checked there. This view only adds
//! early refusal. It knows the volume's usage as of its last fetch (at most
//! [`REFRESH_AFTER`] old) plus what this client committed since, and counts the growth that
//! this client's open files buffered but did not commit yet. Writers on other clients are
//! seen at the next refresh, so with several writers near the limit a write can still pass
//! here and its commit (at flush, fsync or close) fail with EDQUOT instead.

use super::Client;
use dfs_common::{FsError, FsResult, VolumeId};
use std::time::{Duration, Instant};

/// How old the usage figure may be before a growing write fetches it again.
pub const REFRESH_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct QuotaView {
    quota: Option<u64>,
    /// Used bytes when fetched, plus this client's commits since.
    used: u64,
    /// Growth buffered by open files and not committed yet.
    pending: u64,
    fetched: Instant,
}

impl QuotaView {
    /// The usage figure is too old to decide on: it is fetched again first.
    fn is_stale(&self) -> bool {
        self.fetched.elapsed() > REFRESH_AFTER
    }

    /// Counts `growth` as pending, unless it would pass the quota.
    fn count(&mut self, growth: u64) -> FsResult<()> {
        if let Some(quota) = self.quota {
            if self
                .used
                .saturating_add(self.pending)
                .saturating_add(growth)
                > quota
            {
                return Err(FsError::QuotaExceeded(format!(
                    "volume byte quota of {quota} reached"
                )));
            }
        }
        self.pending += growth;
        Ok(())
    }
}

impl Client {
    /// Counts `growth` more bytes in `volume`, or fails with `QuotaExceeded` if that would
    /// pass its byte quota.
    pub(crate) async fn reserve_quota(&self, volume: VolumeId, growth: u64) -> FsResult<()> {
        let stale = {
            let views = self.inner.quotas.lock().expect("quota lock");
            views.get(&volume).is_none_or(QuotaView::is_stale)
        };
        if stale {
            let name = self.volume_by_id(volume).await?.name;
            let info = self.volume(&name).await?;
            let mut views = self.inner.quotas.lock().expect("quota lock");
            let view = views.entry(volume).or_insert(QuotaView {
                quota: None,
                used: 0,
                pending: 0,
                fetched: Instant::now(),
            });
            view.quota = info.limits.quota_bytes;
            view.used = info.used_bytes;
            view.fetched = Instant::now();
        }
        let mut views = self.inner.quotas.lock().expect("quota lock");
        views.get_mut(&volume).expect("fetched above").count(growth)
    }

    /// [`Client::reserve_quota`] without waiting: `true` when `growth` was counted; `false`
    /// (nothing counted) when the usage figure must be fetched again first or the growth
    /// would pass the quota, which the waiting path then reports.
    pub(crate) fn reserve_quota_at_once(&self, volume: VolumeId, growth: u64) -> bool {
        let mut views = self.inner.quotas.lock().expect("quota lock");
        views
            .get_mut(&volume)
            .filter(|view| !view.is_stale())
            .is_some_and(|view| view.count(growth).is_ok())
    }

    /// Gives back `bytes` reserved by [`Client::reserve_quota`]: committed (now part of the
    /// volume's usage) or dropped.
    pub(crate) fn settle_quota(&self, volume: VolumeId, bytes: u64, committed: bool) {
        if bytes == 0 {
            return;
        }
        let mut views = self.inner.quotas.lock().expect("quota lock");
        if let Some(view) = views.get_mut(&volume) {
            view.pending = view.pending.saturating_sub(bytes);
            if committed {
                view.used = view.used.saturating_add(bytes);
            }
        }
    }
}
