//! Where in the change feed this client last opened each file through a call.
//!
//! An open's attributes show every change the feed holds before the position the metadata
//! server gave with them, and the mount drops the kernel's pages at an open that finds the
//! file changed. So when the feed later reports a change from before that position, dropping
//! the file's kernel state again is redundant; it is also harmful while the kernel reads the
//! file: a file another client shortened learns its new end in the kernel from the short
//! read there, and the kernel ignores that end if the file's attributes were dropped while
//! the read was under way, keeping the zeros past it as if they were the file's bytes.

use dfs_common::InodeId;
use std::collections::HashMap;
use std::sync::Mutex;

/// Files remembered at most; past this the memory starts afresh (costing only redundant drops).
const MAX_FILES: usize = 16_384;

#[derive(Default)]
pub struct OpenedAt {
    files: Mutex<HashMap<InodeId, (u64, u64)>>,
}

impl OpenedAt {
    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<InodeId, (u64, u64)>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes an open of `ino` whose attributes show the changes before `feed_at` (the feed's
    /// id and a position in it). Answers of concurrent opens may arrive in any order: the
    /// furthest position in a feed is kept.
    pub fn note(&self, ino: InodeId, feed_at: (u64, u64)) {
        let mut files = self.files();
        if files.len() >= MAX_FILES && !files.contains_key(&ino) {
            files.clear();
        }
        let kept = files.entry(ino).or_insert(feed_at);
        if kept.0 != feed_at.0 || kept.1 < feed_at.1 {
            *kept = feed_at;
        }
    }

    /// Whether an open of `ino` showed every change of feed `feed` before position `next`.
    pub fn shows_changes_before(&self, ino: InodeId, feed: u64, next: u64) -> bool {
        self.files()
            .get(&ino)
            .is_some_and(|&(f, at)| f == feed && at >= next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_shows_the_changes_of_its_feed_before_its_position() {
        let opened = OpenedAt::default();
        let f = InodeId(7);
        assert!(!opened.shows_changes_before(f, 1, 0), "never opened");
        opened.note(f, (1, 10));
        assert!(opened.shows_changes_before(f, 1, 10));
        assert!(
            !opened.shows_changes_before(f, 1, 11),
            "a change at 10 or later"
        );
        assert!(!opened.shows_changes_before(f, 2, 5), "another feed");
        assert!(
            !opened.shows_changes_before(InodeId(8), 1, 5),
            "another file"
        );
        opened.note(f, (1, 4));
        assert!(
            opened.shows_changes_before(f, 1, 10),
            "a late answer keeps the furthest"
        );
        opened.note(f, (2, 3));
        assert!(
            opened.shows_changes_before(f, 2, 3),
            "a new feed replaces the old"
        );
        assert!(!opened.shows_changes_before(f, 1, 10));
    }
}
