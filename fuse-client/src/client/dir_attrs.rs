//! Attributes of directories as the metadata server last gave them to this client: with this
//! client's changes in them (the kernel drops a directory's cached attributes after every
//! create, unlink or mkdir in it and asks for them again at the next path walk, to check
//! permissions), and in the answers to its questions (`getattr`, listings), so that a listing
//! of a directory holding subdirectories can be answered from memory (see the mount's
//! `DirNames`).
//!
//! An entry is good for as long as the caller says: the attribute timeout, as the kernel's
//! own cache would have kept the first answer, or the lease while the change feed is
//! confirmed. A newer change of this client replaces it; other clients' changes drop it (the
//! change feed), and so do this client's changes that do not return the directory's new
//! attributes. Answers cross: an answer to a question sent before a drop may arrive after it,
//! so each drop is numbered and such an answer is not kept; and one computed before a change
//! of this client may arrive after that change's answer, so an entry is only ever replaced by
//! strictly newer attributes.

use super::drops::Drops;
use dfs_common::proto::meta::Attr;
use dfs_common::InodeId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept at most: past it, everything is dropped.
const MAX_ENTRIES: usize = 16_384;

#[derive(Default)]
pub struct DirAttrs {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    fresh: HashMap<InodeId, (Attr, Instant)>,
    /// Drops since questions were sent (at most [`MAX_ENTRIES`] directories recorded).
    drops: Drops,
}

impl State {
    fn insert(&mut self, attr: Attr) {
        if self.fresh.len() >= MAX_ENTRIES {
            self.fresh.clear();
        }
        self.fresh.insert(attr.ino, (attr, Instant::now()));
    }
}

impl DirAttrs {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The epoch to give [`DirAttrs::note_answer`] for the answer of a question sent now.
    pub fn epoch(&self) -> u64 {
        self.state().drops.epoch()
    }

    /// Keeps `attr`, returned by a change of this client. Replies of concurrent changes may
    /// arrive out of order: an entry is replaced only by strictly newer attributes, and
    /// dropped when the order cannot be told.
    pub fn note(&self, attr: Attr) {
        let mut state = self.state();
        match state.fresh.get(&attr.ino) {
            Some((kept, _)) if kept.ctime >= attr.ctime => {
                state.fresh.remove(&attr.ino);
            }
            _ => state.insert(attr),
        }
    }

    /// Keeps `attr`, a directory's attributes in the answer to a question sent in epoch
    /// `asked`, unless the directory or everything was dropped since (the answer may predate
    /// the change dropped). Kept attributes as new are left, newer ones too (a change of this
    /// client answered meanwhile); the same age with other contents cannot be ordered, and
    /// goes.
    pub fn note_answer(&self, attr: &Attr, asked: u64) {
        let mut state = self.state();
        if state.drops.since(attr.ino, asked) {
            return;
        }
        match state.fresh.get(&attr.ino) {
            Some((kept, _)) if kept.ctime > attr.ctime || kept == attr => {}
            Some((kept, _)) if kept.ctime == attr.ctime => {
                state.fresh.remove(&attr.ino);
            }
            _ => state.insert(attr.clone()),
        }
    }

    /// The directory's attributes if noted within `max_age`.
    pub fn get(&self, ino: InodeId, max_age: Duration) -> Option<Attr> {
        let mut state = self.state();
        let (attr, at) = state.fresh.get(&ino)?;
        if at.elapsed() > max_age {
            state.fresh.remove(&ino);
            return None;
        }
        Some(attr.clone())
    }

    /// Drops what is kept of `ino`: it changed in a way this does not know the outcome of.
    pub fn forget(&self, ino: InodeId) {
        let mut state = self.state();
        if state.drops.forget(ino, MAX_ENTRIES) {
            state.fresh.remove(&ino);
        } else {
            state.fresh.clear();
        }
    }

    /// Drops everything: a change may have touched any directory.
    pub fn clear(&self) {
        let mut state = self.state();
        state.drops.clear();
        state.fresh.clear();
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

    #[test]
    fn an_answer_is_kept_unless_a_drop_or_a_newer_change_came_since_its_question() {
        let kept = DirAttrs::default();
        let long = Duration::from_secs(60);
        let asked = kept.epoch();
        kept.note_answer(&dir(5, 10), asked);
        assert_eq!(kept.get(InodeId(5), long), Some(dir(5, 10)));
        // This client's change answered meanwhile is newer: the late answer leaves it.
        kept.note(dir(5, 12));
        kept.note_answer(&dir(5, 11), asked);
        assert_eq!(kept.get(InodeId(5), long), Some(dir(5, 12)));
        kept.note_answer(&dir(5, 12), asked);
        assert_eq!(kept.get(InodeId(5), long), Some(dir(5, 12)), "the same");
        // Another client's change dropped it after the question: the answer may predate it.
        let asked = kept.epoch();
        kept.forget(InodeId(5));
        kept.note_answer(&dir(5, 13), asked);
        assert_eq!(kept.get(InodeId(5), long), None);
        kept.note_answer(&dir(5, 13), kept.epoch());
        assert_eq!(kept.get(InodeId(5), long), Some(dir(5, 13)), "asked after");
        let asked = kept.epoch();
        kept.clear();
        kept.note_answer(&dir(6, 1), asked);
        assert_eq!(kept.get(InodeId(6), long), None, "everything dropped");
    }
}
