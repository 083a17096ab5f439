//! Attributes of directories just after this client changed them, as the metadata server
//! returned them with the change. The kernel drops a directory's cached attributes after every
//! create, unlink or mkdir in it and asks for them again at the next path walk (it checks
//! permissions with them); answering from here saves that round trip on every such operation.
//!
//! An entry is good for the attribute timeout at most, as the kernel's own cache would have
//! kept the first answer from it: the kernel asks again within that time when it dropped
//! part of what it had for its own reasons (a listing marks the directory's atime stale), and
//! gets the same answer. A newer change of this client replaces it; other clients' changes
//! drop it (the change feed), and so do this client's changes that do not return the
//! directory's new attributes.

use dfs_common::proto::meta::Attr;
use dfs_common::InodeId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept at most: past it, everything is dropped (they are taken within moments).
const MAX_ENTRIES: usize = 4096;

#[derive(Default)]
pub struct DirAttrs {
    fresh: Mutex<HashMap<InodeId, (Attr, Instant)>>,
}

impl DirAttrs {
    /// Keeps `attr`, returned by a change of this client. Replies of concurrent changes may
    /// arrive out of order: an entry is replaced only by strictly newer attributes, and
    /// dropped when the order cannot be told.
    pub fn note(&self, attr: Attr) {
        let mut fresh = self.fresh.lock().expect("directory attributes lock");
        if fresh.len() >= MAX_ENTRIES {
            fresh.clear();
        }
        match fresh.get(&attr.ino) {
            Some((kept, _)) if kept.ctime >= attr.ctime => {
                fresh.remove(&attr.ino);
            }
            _ => {
                fresh.insert(attr.ino, (attr, Instant::now()));
            }
        }
    }

    /// The directory's attributes if noted within `max_age`.
    pub fn get(&self, ino: InodeId, max_age: Duration) -> Option<Attr> {
        let mut fresh = self.fresh.lock().expect("directory attributes lock");
        let (attr, at) = fresh.get(&ino)?;
        if at.elapsed() > max_age {
            fresh.remove(&ino);
            return None;
        }
        Some(attr.clone())
    }

    /// Drops what is kept of `ino`: it changed in a way this does not know the outcome of.
    pub fn forget(&self, ino: InodeId) {
        self.fresh
            .lock()
            .expect("directory attributes lock")
            .remove(&ino);
    }

    pub fn clear(&self) {
        self.fresh
            .lock()
            .expect("directory attributes lock")
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfs_common::proto::meta::FileKind;

    fn dir(ino: u64, secs: i64) -> Attr {
        Attr {
            nlink: 2,
            size: 0,
            ..crate::client::pending_attrs::tests::attr(ino, FileKind::Dir, 0o755, secs)
        }
    }

    #[test]
    fn newest_only_kept_until_forgotten_or_old() {
        let kept = DirAttrs::default();
        let long = Duration::from_secs(60);
        kept.note(dir(5, 10));
        kept.note(dir(5, 11));
        assert_eq!(kept.get(InodeId(5), long), Some(dir(5, 11)));
        assert_eq!(kept.get(InodeId(5), long), Some(dir(5, 11)), "asked again");
        // An older reply arriving late: the order is unclear, nothing is kept.
        kept.note(dir(5, 10));
        assert_eq!(kept.get(InodeId(5), long), None);
        kept.note(dir(6, 1));
        kept.forget(InodeId(6));
        assert_eq!(kept.get(InodeId(6), long), None);
        kept.note(dir(7, 1));
        assert_eq!(kept.get(InodeId(7), Duration::ZERO), None, "too old");
        assert_eq!(
            kept.get(InodeId(7), long),
            None,
            "dropped when found too old"
        );
    }
}
