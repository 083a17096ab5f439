//! The names in directories whose whole contents this mount knows, so that a lookup of a name
//! that is not there is answered without a round trip. The kernel looks a name up before
//! every create of it (`open(O_CREAT)`, `mkdir`, ...), and builds probe for files that do not
//! exist: both cost a metadata request each otherwise.
//!
//! Contents are known from a directory this mount made (empty) or listed to its end, and kept
//! up to date by this mount's own changes, which are noted here before the kernel hears of
//! them (the kernel holds the directory's lock until then, so no lookup sees a change half
//! made). They are trusted as the kernel's leases are (see [`super::leases`]): only while the
//! change feed is confirmed (checked by the caller), for at most one lease after the metadata
//! server told them, and until the feed reports a change in the directory. A listing fetched
//! while this mount changed any directory is not kept: the change may have fallen between its
//! pages.

use dfs_common::proto::MAX_NAME_LEN;
use dfs_common::InodeId;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Names known at most, over all directories: about 100 bytes each.
const MAX_NAMES: usize = 262_144;

/// Names a file unlinked while open lives on under; they come and go without passing here.
const HIDDEN_PREFIX: &str = ".dfs-hidden-";

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
    names: HashSet<String>,
    /// When the metadata server told the contents.
    since: Instant,
}

impl State {
    fn drop_dir(&mut self, dir: InodeId) {
        if let Some(old) = self.dirs.remove(&dir) {
            self.names -= old.names.len();
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

    fn keep(&mut self, dir: InodeId, names: HashSet<String>) {
        self.drop_dir(dir);
        if self.names + names.len() > MAX_NAMES {
            // Full: start afresh (costing only round trips).
            self.dirs.clear();
            self.names = 0;
            if names.len() > MAX_NAMES {
                return;
            }
        }
        self.names += names.len();
        let since = Instant::now();
        self.dirs.insert(dir, Known { names, since });
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

    /// `dir` holds exactly `names`, as listed from the metadata server since `mark`.
    pub fn listed<'a>(&self, dir: InodeId, names: impl Iterator<Item = &'a str>, mark: u64) {
        let mut state = self.state();
        if state.changes == mark {
            state.keep(dir, names.map(str::to_string).collect());
        }
    }

    /// This mount just made `dir`: it is empty.
    pub fn made(&self, dir: InodeId) {
        self.state().keep(dir, HashSet::new());
    }

    /// Whether `name` is known not to be in `dir` (false: not known either way). A name too
    /// long to exist is not: the metadata server answers it with its own error.
    pub fn absent(&self, dir: InodeId, name: &str) -> bool {
        if name.starts_with(HIDDEN_PREFIX) || name.len() > MAX_NAME_LEN {
            return false;
        }
        let mut state = self.state();
        let Some(known) = state.dirs.get(&dir) else {
            return false;
        };
        if known.since.elapsed() >= self.lease {
            state.drop_dir(dir);
            return false;
        }
        !known.names.contains(name)
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

    /// This mount added `name` to `dir` (replacing whatever a rename found there).
    pub fn added(&self, dir: InodeId, name: &str) {
        let mut state = self.state();
        state.changes += 1;
        state.unmade(dir, name);
        let added = match state.dirs.get_mut(&dir) {
            Some(known) => known.names.insert(name.to_string()),
            None => false,
        };
        if added {
            state.names += 1;
            if state.names > MAX_NAMES {
                state.dirs.clear();
                state.names = 0;
            }
        }
    }

    /// This mount removed `name` from `dir`.
    pub fn removed(&self, dir: InodeId, name: &str) {
        let mut state = self.state();
        state.changes += 1;
        state.unmade(dir, name);
        if state
            .dirs
            .get_mut(&dir)
            .is_some_and(|known| known.names.remove(name))
        {
            state.names -= 1;
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

    #[test]
    fn a_made_directory_is_known_empty_and_follows_this_mounts_changes() {
        let names = DirNames::new(LEASE);
        assert!(!names.absent(DIR, "a"), "unknown directory");
        names.made(DIR);
        assert!(names.absent(DIR, "a"));
        names.added(DIR, "a");
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
        names.added(DIR, "sub");
        assert_eq!(names.made_here(DIR, "sub"), None, "renamed over");
        names.made_in(DIR, "sub", sub);
        names.forget(DIR);
        assert_eq!(names.made_here(DIR, "sub"), None, "changed elsewhere");
        names.made_in(DIR, "sub", sub);
        names.listed(DIR, ["sub"].into_iter(), names.mark());
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
        names.listed(DIR, ["a", "b"].into_iter(), mark);
        assert!(!names.absent(DIR, "a") && names.absent(DIR, "c"));
        let mark = names.mark();
        names.added(InodeId(8), "x");
        names.listed(InodeId(9), ["a"].into_iter(), mark);
        assert!(!names.absent(InodeId(9), "c"), "fetched across a change");
    }

    #[test]
    fn contents_are_trusted_for_one_lease_after_the_server_told_them() {
        let names = DirNames::new(LEASE);
        names.made(DIR);
        names.state().dirs.get_mut(&DIR).unwrap().since = Instant::now() - LEASE;
        assert!(!names.absent(DIR, "a"));
        assert_eq!(names.state().names, 0);
        assert!(names.state().dirs.is_empty());
    }

    #[test]
    fn the_count_of_names_stays_bounded() {
        let names = DirNames::new(LEASE);
        let many: Vec<String> = (0..MAX_NAMES).map(|i| format!("n{i}")).collect();
        names.listed(DIR, many.iter().map(String::as_str), names.mark());
        assert!(names.absent(DIR, "other"));
        names.made(InodeId(8));
        names.added(InodeId(8), "one more");
        assert!(names.state().names <= MAX_NAMES);
        assert!(!names.absent(DIR, "other"), "started afresh");
    }
}
