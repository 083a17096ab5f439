//! Sub-blocks of data shards this client read recently, so that small reads near each other
//! (a random reader, a database page beside the last one, the kernel asking again after it
//! dropped a page) cost no round trip to a chunk server.
//!
//! A block's shards never change once written: a write makes a new block and points the
//! file's extents at it. So a unit kept under its block id, shard index and position is
//! right for as long as any layout names that block, and the cache needs no invalidation,
//! only a bound on its size. Whether a read uses the file's current blocks is the layout's
//! business, as it was without the cache.
//!
//! A small read fetches the whole unit of [`CACHE_UNIT`] bytes around it: the chunk server
//! reads and verifies whole sub-blocks anyway (its checksums cover them), and a unit holds
//! whole sub-blocks, so the rest costs only the transfer.
//! Eviction is CLOCK (second chance): a unit read again since it was last passed over
//! is kept for another round.

use bytes::Bytes;
use dfs_common::BlockId;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Bytes of a data shard kept as one: a multiple of the chunk servers' checksummed
/// sub-blocks (16 KiB now, 64 KiB in shards of earlier versions), large enough that a
/// random reader's neighbouring reads find their bytes.
pub const CACHE_UNIT: u64 = 64 * 1024;

/// Reads of a data shard shorter than this go through the cache; longer ones (sequential
/// reads, the kernel's read-ahead) fetch exactly their range and leave the cache alone.
pub const CACHED_READ_MAX: u64 = CACHE_UNIT;

/// Where one unit of one data shard sits.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct UnitKey {
    pub block: BlockId,
    pub index: u8,
    /// Unit number within the shard.
    pub unit: u32,
}

pub struct ShardCache {
    capacity: usize,
    state: Mutex<State>,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Default)]
struct State {
    units: HashMap<UnitKey, Unit>,
    /// The clock's hand goes from the front; every key in `units` is here once.
    order: VecDeque<UnitKey>,
    bytes: usize,
}

struct Unit {
    data: Bytes,
    referenced: bool,
}

impl ShardCache {
    /// A cache of at most `capacity` bytes of shard data; 0 keeps nothing.
    pub fn new(capacity: usize) -> Self {
        ShardCache {
            capacity,
            state: Mutex::new(State::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// The unit at `key`, if kept; counts a hit or a miss.
    pub fn get(&self, key: &UnitKey) -> Option<Bytes> {
        let found = self.peek(key);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// The unit at `key`, if kept, without counting.
    pub fn peek(&self, key: &UnitKey) -> Option<Bytes> {
        let mut state = self.state.lock().expect("shard cache");
        let unit = state.units.get_mut(key)?;
        unit.referenced = true;
        Some(unit.data.clone())
    }

    /// Keeps `data` as the unit at `key`, evicting others to stay within the capacity.
    pub fn insert(&self, key: UnitKey, data: Bytes) {
        if data.len() > self.capacity {
            return;
        }
        let mut state = self.state.lock().expect("shard cache");
        if state.units.contains_key(&key) {
            return;
        }
        while state.bytes + data.len() > self.capacity {
            let Some(victim) = state.order.pop_front() else {
                break;
            };
            let unit = state.units.get_mut(&victim).expect("ordered key is kept");
            if unit.referenced {
                unit.referenced = false;
                state.order.push_back(victim);
            } else {
                let len = unit.data.len();
                state.units.remove(&victim);
                state.bytes -= len;
            }
        }
        state.bytes += data.len();
        state.order.push_back(key);
        state.units.insert(
            key,
            Unit {
                data,
                referenced: false,
            },
        );
    }

    /// Counts `n` hits found with [`ShardCache::peek`].
    pub fn count_hits(&self, n: u64) {
        self.hits.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes kept now.
    pub fn bytes(&self) -> usize {
        self.state.lock().expect("shard cache").bytes
    }

    /// Small reads answered from the cache, and those that had to fetch, since start.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(unit: u32) -> UnitKey {
        UnitKey {
            block: BlockId(7),
            index: 1,
            unit,
        }
    }

    fn bytes(n: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; n])
    }

    #[test]
    fn a_kept_sub_block_is_returned_whole_and_counted() {
        let cache = ShardCache::new(1 << 20);
        assert!(cache.get(&key(0)).is_none());
        cache.insert(key(0), bytes(100, 5));
        assert_eq!(cache.get(&key(0)).unwrap(), bytes(100, 5));
        assert!(cache.get(&key(1)).is_none());
        assert_eq!(cache.hits_and_misses(), (1, 2));
    }

    #[test]
    fn the_size_stays_within_the_capacity_and_a_reread_unit_outlives_others() {
        let cache = ShardCache::new(300);
        for unit in 0..3 {
            cache.insert(key(unit), bytes(100, unit as u8));
        }
        // Unit 0 is read again: the next insert passes it over and evicts unit 1.
        assert!(cache.peek(&key(0)).is_some());
        cache.insert(key(3), bytes(100, 3));
        assert_eq!(cache.bytes(), 300);
        assert!(cache.peek(&key(0)).is_some());
        assert!(cache.peek(&key(1)).is_none());
        assert!(cache.peek(&key(2)).is_some());
        assert!(cache.peek(&key(3)).is_some());
        // A unit larger than the whole cache is not kept, and evicts nothing.
        cache.insert(key(9), bytes(301, 9));
        assert!(cache.peek(&key(9)).is_none());
        assert_eq!(cache.bytes(), 300);
    }

    #[test]
    fn a_cache_of_no_bytes_keeps_nothing() {
        let cache = ShardCache::new(0);
        assert!(!cache.enabled());
        cache.insert(key(0), bytes(1, 1));
        assert!(cache.peek(&key(0)).is_none());
        assert_eq!(cache.bytes(), 0);
    }
}
