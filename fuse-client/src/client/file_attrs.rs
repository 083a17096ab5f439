//! Attributes of files (every kind but directories: symlinks, devices, FIFOs and sockets too)
//! as the metadata server last gave them to this client, so that the kernel's `getattr` after
//! this client's own writes, opens and closes is answered without a round trip, and a listing
//! can be (see the mount's `DirNames`). The kernel drops a file's cached attributes after every
//! write through it and asks at the next `stat`; after the close commits the writes, the
//! commit's answer holds the attributes it would get. A directory's attributes change with
//! every name this client adds or removes in it: those are kept apart, from the changes'
//! answers (`DirAttrs`).
//!
//! An entry is good for as long as the caller says: the attribute timeout, as the kernel's
//! own cache would have kept the first answer, or the lease while the change feed is
//! confirmed (other clients' changes are dropped at once, by the feed). Any change this client
//! makes that may touch a file's attributes without returning them drops that file's entry
//! (an attribute or extended attribute change, a link, an unlink or a rename, whose requests
//! or answers name the inodes), or every entry where it cannot tell which (an unlink or rename
//! left unanswered), and so does every change of another client the feed reports. Answers
//! cross: one sent before a drop may arrive after it, so each drop is numbered and an answer
//! is kept only if neither its file nor everything was dropped since its question was sent.

use super::drops::Drops;
use dfs_common::proto::meta::{Attr, FileKind};
use dfs_common::InodeId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept at most: past it, everything is dropped (they are used within moments).
pub const MAX_ENTRIES: usize = 16_384;

#[derive(Default)]
pub struct FileAttrs {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Drops since questions were sent (at most [`MAX_ENTRIES`] files recorded).
    drops: Drops,
    fresh: HashMap<InodeId, Kept>,
}

struct Kept {
    attr: Attr,
    at: Instant,
    /// This client holds an open delegation of the file (see `OpenAttr`): until the change
    /// feed drops the entry, no other client's change to the file has been answered.
    delegated: bool,
}

impl FileAttrs {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The epoch to give [`FileAttrs::note`] for the answer of a question sent now.
    pub fn epoch(&self) -> u64 {
        self.state().drops.epoch()
    }

    /// Keeps `attr`, the answer to a question sent in epoch `asked`, if it is not a directory's
    /// and neither the file nor everything was dropped since; if either was, what is
    /// kept of the file goes too (the answer may be of a commit that changed it). Answers of
    /// concurrent questions may arrive out of order: an entry is replaced only by strictly
    /// newer attributes, and dropped when the order cannot be told.
    pub fn note(&self, attr: &Attr, asked: u64) {
        self.keep(attr, asked, false)
    }

    /// [`FileAttrs::note`] for an open's answer, which may grant an open delegation. An
    /// answer that crossed a drop of the file is not kept, nor its delegation: the change
    /// dropped may be newer than the attributes.
    pub fn note_opened(&self, attr: &Attr, asked: u64, delegated: bool) {
        self.keep(attr, asked, delegated)
    }

    fn keep(&self, attr: &Attr, asked: u64, delegated: bool) {
        if attr.kind == FileKind::Dir {
            return;
        }
        let mut state = self.state();
        if state.drops.since(attr.ino, asked) {
            state.fresh.remove(&attr.ino);
            return;
        }
        if state.fresh.len() >= MAX_ENTRIES {
            state.fresh.clear();
        }
        // A delegation stays with the file until a drop: this client's own changes do not
        // recall it.
        match state.fresh.get_mut(&attr.ino) {
            Some(kept) if kept.attr.ctime > attr.ctime => kept.delegated |= delegated,
            Some(kept) if kept.attr.ctime == attr.ctime && kept.attr != *attr => {
                state.fresh.remove(&attr.ino);
            }
            Some(kept) => {
                kept.attr = attr.clone();
                kept.at = Instant::now();
                kept.delegated |= delegated;
            }
            None => {
                let kept = Kept {
                    attr: attr.clone(),
                    at: Instant::now(),
                    delegated,
                };
                state.fresh.insert(attr.ino, kept);
            }
        }
    }

    /// The file's attributes if noted within `max_age`.
    pub fn get(&self, ino: InodeId, max_age: Duration) -> Option<Attr> {
        let mut state = self.state();
        let kept = state.fresh.get(&ino)?;
        if kept.at.elapsed() > max_age {
            state.fresh.remove(&ino);
            return None;
        }
        Some(kept.attr.clone())
    }

    /// The file's attributes if this client holds an open delegation of it (the caller checks
    /// that the change feed still answers: a delegation holds only while it does).
    pub fn delegated(&self, ino: InodeId) -> Option<Attr> {
        let state = self.state();
        state
            .fresh
            .get(&ino)
            .filter(|kept| kept.delegated)
            .map(|kept| kept.attr.clone())
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

    /// Drops everything: a change may have touched any file.
    pub fn clear(&self) {
        let mut state = self.state();
        state.drops.clear();
        state.fresh.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(ino: u64, secs: i64, size: u64) -> Attr {
        Attr {
            size,
            ..crate::client::pending_attrs::tests::attr(ino, FileKind::File, 0o644, secs)
        }
    }

    #[test]
    fn a_delegation_stays_with_the_file_until_a_drop_and_never_crosses_one() {
        let kept = FileAttrs::default();
        let asked = kept.epoch();
        kept.note_opened(&file(5, 10, 1), asked, true);
        assert_eq!(kept.delegated(InodeId(5)), Some(file(5, 10, 1)));
        // This client's own change keeps it, with the new attributes.
        kept.note(&file(5, 11, 2), kept.epoch());
        assert_eq!(kept.delegated(InodeId(5)), Some(file(5, 11, 2)));
        kept.forget(InodeId(5));
        assert_eq!(
            kept.delegated(InodeId(5)),
            None,
            "another client's change drops it"
        );
        // An open's answer to a question sent before a drop of its file is not kept.
        let asked = kept.epoch();
        kept.forget(InodeId(6));
        kept.note_opened(&file(6, 10, 1), asked, true);
        assert_eq!(kept.delegated(InodeId(6)), None);
        // Nor after everything was dropped.
        let asked = kept.epoch();
        kept.clear();
        kept.note_opened(&file(7, 10, 1), asked, true);
        assert_eq!(kept.delegated(InodeId(7)), None);
        kept.note_opened(&file(7, 10, 1), kept.epoch(), false);
        assert_eq!(kept.delegated(InodeId(7)), None, "answered without one");
    }

    #[test]
    fn newest_answer_kept_until_a_drop_or_the_timeout() {
        let kept = FileAttrs::default();
        let long = Duration::from_secs(60);
        let asked = kept.epoch();
        kept.note(&file(5, 10, 1), asked);
        kept.note(&file(5, 11, 2), asked);
        assert_eq!(kept.get(InodeId(5), long), Some(file(5, 11, 2)));
        // An older answer arriving late changes nothing.
        kept.note(&file(5, 10, 1), asked);
        assert_eq!(kept.get(InodeId(5), long), Some(file(5, 11, 2)));
        // Two different answers with the same change time: which is newer is unclear.
        kept.note(&file(5, 11, 3), asked);
        assert_eq!(kept.get(InodeId(5), long), None);
        kept.note(&file(7, 1, 1), kept.epoch());
        assert_eq!(kept.get(InodeId(7), Duration::ZERO), None, "too old");
    }

    #[test]
    fn an_answer_to_a_question_sent_before_a_drop_is_not_kept() {
        let kept = FileAttrs::default();
        let long = Duration::from_secs(60);
        let asked = kept.epoch();
        // An unlink elsewhere in the mount answered meanwhile: the link count may be stale.
        kept.clear();
        kept.note(&file(5, 10, 1), asked);
        assert_eq!(kept.get(InodeId(5), long), None);
        let asked = kept.epoch();
        kept.note(&file(5, 10, 1), asked);
        kept.note(&file(6, 10, 1), asked);
        kept.forget(InodeId(5));
        assert_eq!(kept.get(InodeId(5), long), None);
        assert_eq!(kept.get(InodeId(6), long), Some(file(6, 10, 1)));
        // A commit of file 6 sent before that drop of another file: kept. One of file 5:
        // not kept.
        kept.note(&file(6, 12, 2), asked);
        assert_eq!(kept.get(InodeId(6), long), Some(file(6, 12, 2)));
        kept.note(&file(5, 12, 2), asked);
        assert_eq!(kept.get(InodeId(5), long), None, "asked before its drop");
        kept.note(&file(5, 12, 2), kept.epoch());
        assert_eq!(kept.get(InodeId(5), long), Some(file(5, 12, 2)));
        kept.clear();
        assert_eq!(kept.get(InodeId(6), long), None);
        assert_eq!(kept.get(InodeId(5), long), None);
    }

    #[test]
    fn past_the_bound_a_drop_of_one_file_drops_every_answer_under_way() {
        let kept = FileAttrs::default();
        for ino in 0..MAX_ENTRIES as u64 {
            kept.forget(InodeId(1_000_000 + ino));
        }
        let asked = kept.epoch();
        kept.forget(InodeId(1));
        kept.note(&file(2, 10, 1), asked);
        assert_eq!(kept.get(InodeId(2), Duration::from_secs(60)), None);
        kept.note(&file(2, 10, 1), kept.epoch());
        assert_eq!(
            kept.get(InodeId(2), Duration::from_secs(60)),
            Some(file(2, 10, 1))
        );
    }

    #[test]
    fn every_kind_but_directories_is_kept() {
        let kept = FileAttrs::default();
        let attr = crate::client::pending_attrs::tests::attr;
        kept.note(&attr(3, FileKind::Dir, 0o755, 1), kept.epoch());
        assert_eq!(kept.get(InodeId(3), Duration::from_secs(60)), None);
        let link = attr(4, FileKind::Symlink, 0o777, 1);
        kept.note(&link, kept.epoch());
        assert_eq!(kept.get(InodeId(4), Duration::from_secs(60)), Some(link));
    }
}
