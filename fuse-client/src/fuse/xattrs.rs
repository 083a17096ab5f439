//! Extended attributes a file was recently found not to have.
//!
//! Before every write the kernel asks a FUSE file system for `security.capability` (so that
//! a write can drop file capabilities), and `ls -l` asks for ACLs on every entry. Nearly every
//! file has none, and each question cost a metadata round trip: a 4 KiB write took four times
//! as long as its own work. An absence is trusted for as long as the kernel trusts its cached
//! attributes (the staleness it already accepts for the setuid bits a write clears), and this
//! mount's own changes to a file's attributes forget it at once.

use dfs_common::InodeId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Absences remembered at most; past this the table starts afresh (costing only lookups).
const MAX_ENTRIES: usize = 65_536;

pub struct AbsentXattrs {
    ttl: Duration,
    seen: Mutex<HashMap<(InodeId, String), Instant>>,
}

impl AbsentXattrs {
    /// Absences are trusted for `ttl` (zero: never).
    pub fn new(ttl: Duration) -> Self {
        AbsentXattrs {
            ttl,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ino` was found without `name` less than the TTL ago.
    pub fn is_absent(&self, ino: InodeId, name: &str) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(&(ino, name.to_string()))
            .is_some_and(|at| at.elapsed() < self.ttl)
    }

    /// Records that `ino` has no attribute `name`, as the metadata server just said.
    pub fn note_absent(&self, ino: InodeId, name: &str) {
        if self.ttl.is_zero() {
            return;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_ENTRIES {
            seen.clear();
        }
        seen.insert((ino, name.to_string()), Instant::now());
    }

    /// Forgets what is known of `ino`: this mount is changing its attributes.
    pub fn forget(&self, ino: InodeId) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|(i, _), _| *i != ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absences_expire_and_are_forgotten() {
        let cache = AbsentXattrs::new(Duration::from_secs(60));
        let (a, b) = (InodeId(1), InodeId(2));
        assert!(!cache.is_absent(a, "security.capability"));
        cache.note_absent(a, "security.capability");
        cache.note_absent(b, "security.capability");
        assert!(cache.is_absent(a, "security.capability"));
        assert!(!cache.is_absent(a, "user.x"), "only the name asked");
        cache.forget(a);
        assert!(!cache.is_absent(a, "security.capability"));
        assert!(
            cache.is_absent(b, "security.capability"),
            "other inodes stay"
        );

        let never = AbsentXattrs::new(Duration::ZERO);
        never.note_absent(a, "user.x");
        assert!(!never.is_absent(a, "user.x"));
    }
}
