//! Numbered drops of kept attributes. An answer to a question sent before a drop of its inode
//! (or of everything) may predate the change dropped, so it must not be kept: each question
//! is stamped with the count of drops when it is sent, and an answer is checked against the
//! drops since.

use dfs_common::InodeId;
use std::collections::HashMap;

#[derive(Default)]
pub(crate) struct Drops {
    /// Counts drops; a question is stamped with the count when it is sent.
    epoch: u64,
    /// The drop of everything last.
    cleared: u64,
    /// The last drop of each inode since the last drop of everything.
    forgotten: HashMap<InodeId, u64>,
}

impl Drops {
    /// The stamp for a question sent now.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether `ino`, or everything, was dropped after a question stamped `asked`.
    pub(crate) fn since(&self, ino: InodeId, asked: u64) -> bool {
        self.cleared > asked || self.forgotten.get(&ino).is_some_and(|&at| at > asked)
    }

    /// Records a drop of `ino`; past `max` inodes recorded, a drop of everything instead
    /// (returns `false`: the caller drops everything it keeps).
    pub(crate) fn forget(&mut self, ino: InodeId, max: usize) -> bool {
        if self.forgotten.len() >= max {
            self.clear();
            return false;
        }
        self.epoch += 1;
        self.forgotten.insert(ino, self.epoch);
        true
    }

    /// Records a drop of everything.
    pub(crate) fn clear(&mut self) {
        self.epoch += 1;
        self.cleared = self.epoch;
        self.forgotten.clear();
    }
}
