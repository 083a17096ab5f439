//! Extended attributes a file was recently found not to have.
//!
//! Before every write the kernel asks a FUSE file system for `security.capability` (so that
//! a write can drop file capabilities), and `ls -l` asks for ACLs on every entry. Nearly every
//! file has none, and each question cost a metadata round trip: a 4 KiB write took four times
//! as long as its own work. An absence is trusted for as long as the kernel trusts its cached
//! attributes (the staleness it already accepts for the setuid bits a write clears), and this
//! mount's own changes to a file's attributes forget it at once.
//!
//! Attributes from the metadata server say whether an inode has any extended attribute at all
//! (`has_xattrs`); an inode said to have none needs no question for any name.

use dfs_common::InodeId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Absences remembered at most; past this the table starts afresh (costing only lookups).
const MAX_ENTRIES: usize = 65_536;

pub struct AbsentXattrs {
    ttl: Duration,
    seen: Mutex<HashMap<(InodeId, String), Instant>>,
    /// Inodes last seen without any extended attribute, and when.
    bare: Mutex<HashMap<InodeId, Instant>>,
}

impl AbsentXattrs {
    /// Absences are trusted for `ttl` (zero: never).
    pub fn new(ttl: Duration) -> Self {
        AbsentXattrs {
            ttl,
            seen: Mutex::new(HashMap::new()),
            bare: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ino` was found without `name`, or without any, less than the TTL ago.
    pub fn is_absent(&self, ino: InodeId, name: &str) -> bool {
        if self.is_bare(ino) {
            return true;
        }
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

    /// Whether `ino` was seen without any extended attribute less than the TTL ago.
    pub fn is_bare(&self, ino: InodeId) -> bool {
        let bare = self.bare.lock().unwrap_or_else(|e| e.into_inner());
        bare.get(&ino).is_some_and(|at| at.elapsed() < self.ttl)
    }

    /// Notes what fresh attributes from the metadata server say: whether `ino` has any
    /// extended attribute (`true` when the server did not look).
    pub fn note_attributes(&self, ino: InodeId, has_xattrs: bool) {
        let mut bare = self.bare.lock().unwrap_or_else(|e| e.into_inner());
        if has_xattrs || self.ttl.is_zero() {
            bare.remove(&ino);
            return;
        }
        if bare.len() >= MAX_ENTRIES {
            bare.clear();
        }
        bare.insert(ino, Instant::now());
    }

    /// Forgets everything (changes by other clients were missed).
    pub fn clear(&self) {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.bare.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Forgets what is known of `ino`: this mount is changing its attributes, or another
    /// client did.
    pub fn forget(&self, ino: InodeId) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|(i, _), _| *i != ino);
        drop(seen);
        self.bare
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ino);
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

        // An inode seen with no attribute at all has none of any name, until it is seen with
        // some or this mount changes it.
        cache.note_attributes(a, false);
        assert!(cache.is_absent(a, "user.anything") && cache.is_bare(a));
        cache.note_attributes(a, true);
        assert!(!cache.is_absent(a, "user.anything"));
        cache.note_attributes(a, false);
        cache.forget(a);
        assert!(!cache.is_bare(a));

        let never = AbsentXattrs::new(Duration::ZERO);
        never.note_attributes(a, false);
        assert!(!never.is_bare(a));
        never.note_absent(a, "user.x");
        assert!(!never.is_absent(a, "user.x"));
    }
}
