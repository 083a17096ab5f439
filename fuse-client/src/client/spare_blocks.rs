//! Block placements fetched before they are needed.
//!
//! A block upload starts with an `AllocateBlock` request: a durable command at the metadata
//! server (one log flush) and a round trip, all before the first shard can be sent. A close
//! that uploads a block waits for it. While uploads follow each other, the client keeps a few
//! placements per volume ready, each fetched in the background when one is taken, so the next
//! upload sends its shards at once.
//!
//! Only a burst of uploads fetches ahead: an upload that follows the last one on its volume by
//! more than [`MAX_AGE`] asks for its own placement and fetches none, so an idle mount leaves
//! no allocation unused. What a burst leaves unused (at most the pool's size) is never
//! committed, and the metadata server collects it after its grace for pending blocks, as it
//! does the block of a writer that died. A spare older than [`MAX_AGE`] is not used: its servers
//! were chosen among those up when it was made, and the fewer that have gone down since, the
//! fewer shards the writer must place again.

use dfs_common::proto::meta::BlockPlacement;
use dfs_common::VolumeId;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Placements kept ready per volume by a mount and by the `dfs` command line: one per upload
/// a few writers have under way.
pub const DEFAULT_SPARE_BLOCKS: usize = 4;

/// How long a spare placement is used, and how close two uploads must follow each other for
/// the second to fetch ahead.
pub const MAX_AGE: Duration = Duration::from_secs(5);

/// The spare placements of one client.
pub struct SpareBlocks {
    /// Placements kept ready per volume at most; 0 fetches none ahead.
    keep: usize,
    volumes: Mutex<HashMap<VolumeId, Spares>>,
    /// Uploads that started with a spare placement.
    used: AtomicU64,
    /// Placements fetched ahead (successfully).
    fetched: AtomicU64,
}

#[derive(Default)]
struct Spares {
    ready: VecDeque<(BlockPlacement, Instant)>,
    /// Fetches under way.
    fetching: usize,
    /// When an upload last took (or asked for) a placement of this volume.
    last_taken: Option<Instant>,
}

/// What an upload gets from [`SpareBlocks::take`].
#[derive(Debug)]
pub struct Taken {
    /// A placement to use, if one was ready.
    pub placement: Option<BlockPlacement>,
    /// Placements to fetch in the background (each reported with [`SpareBlocks::fetched`]).
    pub fetch: usize,
}

impl SpareBlocks {
    pub fn new(keep: usize) -> Self {
        SpareBlocks {
            keep,
            volumes: Mutex::new(HashMap::new()),
            used: AtomicU64::new(0),
            fetched: AtomicU64::new(0),
        }
    }

    /// Takes a ready placement of `volume` for an upload starting at `now`, if one is fresh,
    /// and says how many to fetch ahead for the uploads after it.
    pub fn take(&self, volume: VolumeId, now: Instant) -> Taken {
        if self.keep == 0 {
            return Taken {
                placement: None,
                fetch: 0,
            };
        }
        let mut volumes = self.volumes.lock().expect("spare blocks");
        let spares = volumes.entry(volume).or_default();
        let fresh = |made: Instant| now.saturating_duration_since(made) <= MAX_AGE;
        // Stale ones are dropped (never committed; collected at the server).
        spares.ready.retain(|(_, made)| fresh(*made));
        let placement = spares.ready.pop_front().map(|(p, _)| p);
        let in_burst = spares.last_taken.is_some_and(fresh);
        spares.last_taken = Some(now);
        let fetch = if in_burst {
            self.keep
                .saturating_sub(spares.ready.len() + spares.fetching)
                .min(1)
        } else {
            0
        };
        spares.fetching += fetch;
        if placement.is_some() {
            self.used.fetch_add(1, Ordering::Relaxed);
        }
        Taken { placement, fetch }
    }

    /// Reports a fetch [`SpareBlocks::take`] asked for: its placement made at `made`, or
    /// `None` when it failed.
    pub fn fetched(&self, volume: VolumeId, placement: Option<BlockPlacement>, made: Instant) {
        let mut volumes = self.volumes.lock().expect("spare blocks");
        let spares = volumes.entry(volume).or_default();
        spares.fetching = spares.fetching.saturating_sub(1);
        if let Some(placement) = placement.filter(|p| p.volume == volume) {
            self.fetched.fetch_add(1, Ordering::Relaxed);
            if spares.ready.len() < self.keep {
                spares.ready.push_back((placement, made));
            }
        }
    }

    /// Uploads that started with a spare placement, and placements fetched ahead, so far.
    pub fn used_and_fetched(&self) -> (u64, u64) {
        (
            self.used.load(Ordering::Relaxed),
            self.fetched.load(Ordering::Relaxed),
        )
    }

    /// Placements of `volume` ready now.
    pub fn ready(&self, volume: VolumeId) -> usize {
        let volumes = self.volumes.lock().expect("spare blocks");
        volumes.get(&volume).map_or(0, |s| s.ready.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfs_common::{BlockId, EcPolicy};

    fn placement(block: u64, volume: u64) -> BlockPlacement {
        BlockPlacement {
            block: BlockId(block),
            volume: VolumeId(volume),
            policy: EcPolicy::new(4, 2).unwrap(),
            shards: Vec::new(),
            min_shards: 5,
        }
    }

    #[test]
    fn only_a_burst_fetches_ahead_and_spares_are_used_once_while_fresh() {
        let spares = SpareBlocks::new(2);
        let v = VolumeId(1);
        let t0 = Instant::now();
        // A lone upload fetches nothing ahead.
        let first = spares.take(v, t0);
        assert!(first.placement.is_none());
        assert_eq!(first.fetch, 0);
        // The next one, soon after, starts a burst: one fetch ahead.
        let second = spares.take(v, t0 + Duration::from_millis(10));
        assert_eq!((second.placement.is_none(), second.fetch), (true, 1));
        // While that fetch is under way, another upload asks for one more (the pool holds 2).
        let third = spares.take(v, t0 + Duration::from_millis(20));
        assert_eq!((third.placement.is_none(), third.fetch), (true, 1));
        let fourth = spares.take(v, t0 + Duration::from_millis(30));
        assert_eq!(fourth.fetch, 0, "two fetches under way fill the pool");
        spares.fetched(v, Some(placement(7, 1)), t0 + Duration::from_millis(40));
        spares.fetched(v, None, t0 + Duration::from_millis(40));
        assert_eq!(spares.ready(v), 1);
        // The ready one is used once, and its use asks for a replacement.
        let fifth = spares.take(v, t0 + Duration::from_millis(50));
        assert_eq!(fifth.placement.map(|p| p.block), Some(BlockId(7)));
        assert_eq!(fifth.fetch, 1);
        assert_eq!(spares.ready(v), 0);
        assert_eq!(spares.used_and_fetched(), (1, 1));
        // Another volume's placements are not this one's.
        spares.fetched(v, Some(placement(8, 2)), t0 + Duration::from_millis(60));
        assert_eq!(spares.ready(v), 0);
        assert_eq!(spares.ready(VolumeId(2)), 0);
    }

    #[test]
    fn stale_spares_are_dropped_and_an_idle_volume_fetches_nothing() {
        let spares = SpareBlocks::new(2);
        let v = VolumeId(1);
        let t0 = Instant::now();
        spares.take(v, t0);
        assert_eq!(spares.take(v, t0 + Duration::from_millis(1)).fetch, 1);
        spares.fetched(v, Some(placement(3, 1)), t0 + Duration::from_millis(2));
        let late = spares.take(v, t0 + MAX_AGE + Duration::from_secs(1));
        assert!(late.placement.is_none(), "a stale placement was used");
        assert_eq!(late.fetch, 0, "an upload after a pause fetched ahead");
        assert_eq!(spares.ready(v), 0);
    }

    #[test]
    fn a_pool_of_none_never_fetches() {
        let spares = SpareBlocks::new(0);
        let t0 = Instant::now();
        for i in 0..3 {
            let taken = spares.take(VolumeId(1), t0 + Duration::from_millis(i));
            assert!(taken.placement.is_none());
            assert_eq!(taken.fetch, 0);
        }
    }
}
