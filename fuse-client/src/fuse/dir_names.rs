//! The contents of directories whose whole contents this mount knows: each name, and the
//! inode and kind it names. A lookup of a name that is not there is answered without a round
//! trip (the kernel looks a name up before every create of it, `open(O_CREAT)`, `mkdir`, ...,
//! and builds probe for files that do not exist), and so is a listing whose entries' attributes
//! this mount holds too (the kernel drops its kept listing of a directory at every change it
//! makes there, and programs such as dbench list a directory right after changing it).
//!
//! Contents are known from a directory this mount made (empty) or listed to its end, and kept
//! up to date by this mount's own changes, which are noted here before the kernel hears of
//! them (the kernel holds the directory's lock until then, so no lookup or listing sees a
//! change half made). They are trusted as the kernel's leases are (see [`super::leases`]):
//! only while the change feed is confirmed (checked by the caller), for at most one lease
//! after the metadata server told them, and until the feed reports a change in the directory.
//! A listing fetched while this mount changed any directory is not kept: the change may have
//! fallen between its pages. A change whose outcome is not known whole (a rename from a
//! directory whose contents are not known: which inode moved?) forgets the directory.

use dfs_common::proto::meta::FileKind;
use dfs_common::proto::MAX_NAME_LEN;
use dfs_common::InodeId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Names known at most, over all directories: about 120 bytes each.
const MAX_NAMES: usize = 262_144;

/// Names a file unlinked while open lives on under; they come and go without passing here.
const HIDDEN_PREFIX: &str = ".dfs-hidden-";

/// What a name in a known directory names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Named {
    pub ino: InodeId,
    pub kind: FileKind,
}

pub struct DirNames {
    lease: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    dirs: HashMap<InodeId, Known>,
    names: usize,
    /// Directories this mount made, by parent and name, and when: a lookup of one (as `mkdir`
    /// of an existing directory does) can be answered with the attributes of its last change.
    /// Kept whether or not the parent's whole contents are known.
    made_here: HashMap<InodeId, HashMap<String, (InodeId, Instant)>>,
    made_count: usize,
    /// Raised by every change noted: a listing is kept only if none came while it was fetched.
    changes: u64,
}

struct Known {
    entries: HashMap<String, Named>,
    /// When the metadata server told the contents.
    since: Instant,
}

impl State {
    fn drop_dir(&mut self, dir: InodeId) {
        if let Some(old) = self.dirs.remove(&dir) {
            self.names -= old.entries.len();
        }
        if let Some(made) = self.made_here.remove(&dir) {
            self.made_count -= made.len();
        }
    }

    /// `name` in `dir` is no longer the directory this mount made there.
    fn unmade(&mut self, dir: InodeId, name: &str) {
        if let Some(made) = self.made_here.get_mut(&dir) {
            if made.remove(name).is_some() {
                self.made_count -= 1;
            }
        }
    }

    fn keep(&mut self, dir: InodeId, entries: HashMap<String, Named>) {
        self.drop_dir(dir);
        if self.names + entries.len() > MAX_NAMES {
            // Full: start afresh (costing only round trips).
            self.dirs.clear();
            self.names = 0;
            if entries.len() > MAX_NAMES {
                return;
            }
        }
        self.names += entries.len();
        let since = Instant::now();
        self.dirs.insert(dir, Known { entries, since });
    }

    /// The known contents of `dir`, if still trusted after `lease`.
    fn known(&mut self, dir: InodeId, lease: Duration) -> Option<&mut Known> {
        if self.dirs.get(&dir)?.since.elapsed() >= lease {
            self.drop_dir(dir);
            return None;
        }
        self.dirs.get_mut(&dir)
    }

    /// Sets `name` in `dir` to `named` (a known directory only).
    fn set(&mut self, dir: InodeId, name: &str, named: Named) {
        self.unmade(dir, name);
        let added = match self.dirs.get_mut(&dir) {
            Some(known) => known.entries.insert(name.to_string(), named).is_none(),
            None => false,
        };
        if added {
            self.names += 1;
            if self.names > MAX_NAMES {
                self.dirs.clear();
                self.names = 0;
            }
        }
    }

    /// Takes `name` out of `dir`: what it named, if `dir` is known and held it.
    fn take(&mut self, dir: InodeId, name: &str) -> Option<Named> {
        self.unmade(dir, name);
        let taken = self.dirs.get_mut(&dir)?.entries.remove(name)?;
        self.names -= 1;
        Some(taken)
    }
}

impl DirNames {
    pub fn new(lease: Duration) -> Self {
        DirNames {
            lease,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("directory names lock")
    }

    /// A mark to hand to [`DirNames::listed`] for a listing fetched from now on.
    pub fn mark(&self) -> u64 {
        self.state().changes
    }

    /// `dir` holds exactly `entries`, as listed from the metadata server since `mark`.
    pub fn listed<'a>(
        &self,
        dir: InodeId,
        entries: impl Iterator<Item = (&'a str, Named)>,
        mark: u64,
    ) {
        let mut state = self.state();
        if state.changes == mark {
            let entries = entries.map(|(name, named)| (name.to_string(), named));
            state.keep(dir, entries.collect());
        }
    }

    /// This mount just made `dir`: it is empty.
    pub fn made(&self, dir: InodeId) {
        self.state().keep(dir, HashMap::new());
    }

    /// Whether `name` is known not to be in `dir` (false: not known either way). A name too
    /// long to exist is not: the metadata server answers it with its own error.
    pub fn absent(&self, dir: InodeId, name: &str) -> bool {
        if name.starts_with(HIDDEN_PREFIX) || dfs_common::name::raw_len(name) > MAX_NAME_LEN {
            return false;
        }
        let lease = self.lease;
        self.state()
            .known(dir, lease)
            .is_some_and(|known| !known.entries.contains_key(name))
    }

    /// The whole contents of `dir` in name order, if known and at most `max` names.
    pub fn contents(&self, dir: InodeId, max: usize) -> Option<Vec<(String, Named)>> {
        let lease = self.lease;
        let mut state = self.state();
        let known = state.known(dir, lease)?;
        if known.entries.len() > max {
            return None;
        }
        let mut entries: Vec<(String, Named)> = known
            .entries
            .iter()
            .map(|(name, named)| (name.clone(), *named))
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Some(entries)
    }

    /// The directory this mount made as `name` in `dir`, if that is still known to be there:
    /// within one lease of making it, with no change reported in `dir` since.
    pub fn made_here(&self, dir: InodeId, name: &str) -> Option<InodeId> {
        let mut state = self.state();
        let (ino, at) = *state.made_here.get(&dir)?.get(name)?;
        if at.elapsed() >= self.lease {
            state.unmade(dir, name);
            return None;
        }
        Some(ino)
    }

    /// This mount made directory `made` as `name` in `dir` (after [`DirNames::added`]).
    pub fn made_in(&self, dir: InodeId, name: &str, made: InodeId) {
        let mut state = self.state();
        if state.made_count >= MAX_NAMES {
            state.made_here.clear();
            state.made_count = 0;
        }
        let entry = (made, Instant::now());
        if state
            .made_here
            .entry(dir)
            .or_default()
            .insert(name.to_string(), entry)
            .is_none()
        {
            state.made_count += 1;
        }
    }

    /// This mount added `name` to `dir`, naming `named`.
    pub fn added(&self, dir: InodeId, name: &str, named: Named) {
        let mut state = self.state();
        state.changes += 1;
        state.set(dir, name, named);
    }

    /// This mount removed `name` from `dir`.
    pub fn removed(&self, dir: InodeId, name: &str) {
        let mut state = self.state();
        state.changes += 1;
        state.take(dir, name);
    }

    /// This mount renamed `name` in `dir` to `new_name` in `new_dir`, replacing whatever was
    /// there. What moved is known only from a known `dir`: else `new_dir` is forgotten too.
    pub fn renamed(&self, dir: InodeId, name: &str, new_dir: InodeId, new_name: &str) {
        let mut state = self.state();
        state.changes += 1;
        match state.take(dir, name) {
            Some(moved) => state.set(new_dir, new_name, moved),
            None => {
                state.drop_dir(dir);
                state.drop_dir(new_dir);
            }
        }
    }

    /// This mount swapped `name` in `dir` and `new_name` in `new_dir` (`RENAME_EXCHANGE`):
    /// both names stay, each naming what the other did. A directory that learns nothing it
    /// can trust is forgotten.
    pub fn exchanged(&self, dir: InodeId, name: &str, new_dir: InodeId, new_name: &str) {
        let mut state = self.state();
        state.changes += 1;
        let first = state.take(dir, name);
        let second = state.take(new_dir, new_name);
        match (first, second) {
            (Some(first), Some(second)) => {
                state.set(dir, name, second);
                state.set(new_dir, new_name, first);
            }
            _ => {
                state.drop_dir(dir);
                state.drop_dir(new_dir);
            }
        }
    }

    /// The contents of `dir` are not known any more (changed elsewhere, or a change here
    /// failed in a way that says they were not what was known).
    pub fn forget(&self, dir: InodeId) {
        let mut state = self.state();
        state.changes += 1;
        state.drop_dir(dir);
    }

    /// Changes were missed: nothing is known.
    pub fn clear(&self) {
        let mut state = self.state();
        state.changes += 1;
        state.dirs.clear();
        state.names = 0;
        state.made_here.clear();
        state.made_count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(30);
    const DIR: InodeId = InodeId(7);

    fn file(ino: u64) -> Named {
        Named {
            ino: InodeId(ino),
            kind: FileKind::File,
        }
    }

    /// `names` as a listing of files numbered from 100.
    fn listing<'a>(names: &'a [&'a str]) -> impl Iterator<Item = (&'a str, Named)> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, file(100 + i as u64)))
    }

    #[test]
    fn a_made_directory_is_known_empty_and_follows_this_mounts_changes() {
        let names = DirNames::new(LEASE);
        assert!(!names.absent(DIR, "a"), "unknown directory");
        names.made(DIR);
        assert!(names.absent(DIR, "a"));
        names.added(DIR, "a", file(1));
        assert!(!names.absent(DIR, "a"));
        assert!(names.absent(DIR, "b"));
        names.removed(DIR, "a");
        assert!(names.absent(DIR, "a"));
        // Hidden names come and go behind its back: never known absent.
        assert!(!names.absent(DIR, ".dfs-hidden-5-00000001"));
        // Nor is a name too long to exist (the server says so with ENAMETOOLONG).
        assert!(names.absent(DIR, &"x".repeat(MAX_NAME_LEN)));
        assert!(!names.absent(DIR, &"x".repeat(MAX_NAME_LEN + 1)));
        names.forget(DIR);
        assert!(!names.absent(DIR, "a"));
        names.made(DIR);
        names.clear();
        assert!(!names.absent(DIR, "a"));
    }

    #[test]
    fn a_directory_made_here_is_known_by_name_until_its_name_changes() {
        let names = DirNames::new(LEASE);
        let sub = InodeId(9);
        assert_eq!(names.made_here(DIR, "sub"), None);
        // Known whether or not the parent's whole contents are.
        names.made_in(DIR, "sub", sub);
        assert_eq!(names.made_here(DIR, "sub"), Some(sub));
        names.removed(DIR, "sub");
        assert_eq!(names.made_here(DIR, "sub"), None, "removed");
        names.made_in(DIR, "sub", sub);
        names.added(DIR, "sub", file(1));
        assert_eq!(names.made_here(DIR, "sub"), None, "renamed over");
        names.made_in(DIR, "sub", sub);
        names.forget(DIR);
        assert_eq!(names.made_here(DIR, "sub"), None, "changed elsewhere");
        names.made_in(DIR, "sub", sub);
        names.listed(DIR, listing(&["sub"]), names.mark());
        assert_eq!(names.made_here(DIR, "sub"), None, "listed afresh");
        names.made_in(DIR, "sub", sub);
        names.clear();
        assert_eq!(names.made_here(DIR, "sub"), None, "changes missed");
        let short = DirNames::new(Duration::ZERO);
        short.made_in(DIR, "sub", sub);
        assert_eq!(short.made_here(DIR, "sub"), None, "past the lease");
    }

    #[test]
    fn a_listing_is_kept_only_if_no_change_came_while_it_was_fetched() {
        let names = DirNames::new(LEASE);
        let mark = names.mark();
        names.listed(DIR, listing(&["a", "b"]), mark);
        assert!(!names.absent(DIR, "a") && names.absent(DIR, "c"));
        let mark = names.mark();
        names.added(InodeId(8), "x", file(1));
        names.listed(InodeId(9), listing(&["a"]), mark);
        assert!(!names.absent(InodeId(9), "c"), "fetched across a change");
    }

    #[test]
    fn contents_are_trusted_for_one_lease_after_the_server_told_them() {
        let names = DirNames::new(LEASE);
        names.made(DIR);
        names.state().dirs.get_mut(&DIR).unwrap().since = Instant::now() - LEASE;
        assert!(!names.absent(DIR, "a"));
        assert_eq!(names.state().names, 0);
        assert_eq!(names.contents(DIR, usize::MAX), None);
        assert!(names.state().dirs.is_empty());
    }

    #[test]
    fn the_count_of_names_stays_bounded() {
        let names = DirNames::new(LEASE);
        let many: Vec<String> = (0..MAX_NAMES).map(|i| format!("n{i}")).collect();
        let entries = many.iter().map(|n| (n.as_str(), file(1)));
        names.listed(DIR, entries, names.mark());
        assert!(names.absent(DIR, "other"));
        names.made(InodeId(8));
        names.added(InodeId(8), "one more", file(1));
        assert!(names.state().names <= MAX_NAMES);
        assert!(!names.absent(DIR, "other"), "started afresh");
    }

    fn contents(names: &DirNames, dir: InodeId) -> Vec<(String, u64)> {
        let contents = names.contents(dir, usize::MAX).expect("known");
        contents.into_iter().map(|(n, e)| (n, e.ino.0)).collect()
    }

    fn pairs(list: &[(&str, u64)]) -> Vec<(String, u64)> {
        list.iter().map(|(n, i)| (n.to_string(), *i)).collect()
    }

    #[test]
    fn contents_follow_this_mounts_changes_in_name_order() {
        let names = DirNames::new(LEASE);
        assert_eq!(names.contents(DIR, usize::MAX), None, "unknown directory");
        names.listed(DIR, listing(&["b", "a"]), names.mark());
        assert_eq!(names.contents(DIR, 1), None, "more names than asked for");
        assert_eq!(contents(&names, DIR), pairs(&[("a", 101), ("b", 100)]));
        names.added(DIR, "c", file(5));
        names.removed(DIR, "b");
        assert_eq!(contents(&names, DIR), pairs(&[("a", 101), ("c", 5)]));
        // A rename within the directory, over an existing name.
        names.renamed(DIR, "a", DIR, "c");
        assert_eq!(contents(&names, DIR), pairs(&[("c", 101)]));
        // To another known directory, and an exchange back.
        let other = InodeId(8);
        names.made(other);
        names.renamed(DIR, "c", other, "d");
        assert!(names.contents(DIR, usize::MAX).expect("known").is_empty());
        assert_eq!(contents(&names, other), pairs(&[("d", 101)]));
        names.added(DIR, "e", file(6));
        names.exchanged(DIR, "e", other, "d");
        assert_eq!(contents(&names, DIR), pairs(&[("e", 101)]));
        assert_eq!(contents(&names, other), pairs(&[("d", 6)]));
        assert_eq!(names.state().names, 2);
    }

    #[test]
    fn a_change_whose_outcome_is_not_known_whole_forgets_the_directories() {
        let names = DirNames::new(LEASE);
        let unknown = InodeId(8);
        // From a directory whose contents are not known: what moved is not known.
        names.made(DIR);
        names.renamed(unknown, "x", DIR, "y");
        assert_eq!(names.contents(DIR, usize::MAX), None);
        // An exchange with an unknown directory leaves a name naming an unknown inode.
        names.listed(DIR, listing(&["a"]), names.mark());
        names.exchanged(DIR, "a", unknown, "b");
        assert_eq!(names.contents(DIR, usize::MAX), None);
        // A rename of a name the known contents did not hold: they were wrong.
        names.listed(DIR, listing(&["a"]), names.mark());
        names.made(unknown);
        names.renamed(DIR, "missing", unknown, "z");
        assert_eq!(names.contents(DIR, usize::MAX), None);
        assert_eq!(names.contents(unknown, usize::MAX), None);
        assert_eq!(names.state().names, 0);
    }
}
