//! Open delegations: which mounts may reopen a file without asking for its attributes.
//!
//! A mount opening a file asks for its attributes (`OpenAttr`, close-to-open). When the server
//! is a group of one and the mount follows the change feed, the answer grants a delegation,
//! recorded here before the attributes are read. A change to the file by another client is
//! answered only once every holder has taken the change from its feed, or its delegation has
//! lapsed (see [`crate::changes::ChangeFeed::wait_taken`]); the holders are forgotten then, and
//! their next open asks again. So a reopen that uses a delegation sees every change whose
//! writer was answered before it: close-to-open holds without the round trip.
//!
//! The record lives in memory. A restarted server does not know what its predecessor granted:
//! if that one granted any (a marker file says so, written durably before the first grant of
//! each process), changes to files wait out one [`DELEGATION_HELD`] after start, by which time
//! every old delegation has lapsed at its mount. Groups of more than one member grant none
//! (a new leader would not know its predecessor's): a group of one that adds a member first
//! stops granting and waits out the ones it gave ([`Delegations::close`]).

use crate::changes::DELEGATION_HELD;
use dfs_common::{FsError, FsResult, InodeId};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Delegations held at most across all mounts; past this, opens ask every time until changes
/// recall some.
const MAX_HELD: usize = 262_144;
const MARKER: &str = "delegations-granted";

pub struct Delegations {
    state: Mutex<State>,
    marker: PathBuf,
    /// Changes to files wait until then: delegations of a previous process may still hold.
    grace_until: Option<Instant>,
}

struct State {
    /// (file, client) for every delegation granted and not yet recalled.
    held: HashSet<(InodeId, u64)>,
    /// The marker is on disk for this process.
    marked: bool,
    /// No more grants (the group grows); granted ones are waited out until then.
    closed_until: Option<Instant>,
}

impl Delegations {
    /// The record of a server whose data lives in `dir`.
    pub fn open(dir: &Path) -> Delegations {
        let marker = dir.join(MARKER);
        let grace_until = marker.exists().then(|| Instant::now() + DELEGATION_HELD);
        Delegations {
            state: Mutex::new(State {
                held: HashSet::new(),
                marked: false,
                closed_until: None,
            }),
            marker,
            grace_until,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("delegations")
    }

    /// Records a delegation of `ino` to `client`, if one can be granted. The caller reads the
    /// attributes it answers with after this, so a change made meanwhile recalls it.
    pub fn grant(&self, ino: InodeId, client: u64) -> FsResult<bool> {
        let mut state = self.state();
        if state.closed_until.is_some() || state.held.len() >= MAX_HELD {
            return Ok(false);
        }
        if !state.marked {
            write_marker(&self.marker)?;
            state.marked = true;
        }
        state.held.insert((ino, client));
        Ok(true)
    }

    /// Takes the delegations of `inos` held by `holders` out of the record: those clients
    /// must take the change before it is answered. Returns each such client with the files
    /// it held.
    pub fn recall(&self, inos: &[InodeId], holders: &[u64]) -> Vec<(u64, Vec<InodeId>)> {
        let mut state = self.state();
        let mut recalled = Vec::new();
        for &client in holders {
            let held: Vec<InodeId> = inos
                .iter()
                .copied()
                .filter(|&ino| state.held.remove(&(ino, client)))
                .collect();
            if !held.is_empty() {
                recalled.push((client, held));
            }
        }
        recalled
    }

    /// Forgets every delegation of `client`, which stopped watching (its mount ends).
    pub fn forget_client(&self, client: u64) {
        self.state().held.retain(|&(_, holder)| holder != client);
    }

    /// How long changes to files must still wait for delegations this server does not know:
    /// a previous process's, or its own once it stopped granting.
    pub fn unknown_for(&self) -> Option<Duration> {
        let closed_until = self.state().closed_until;
        [self.grace_until, closed_until]
            .into_iter()
            .flatten()
            .max()
            .and_then(|until| until.checked_duration_since(Instant::now()))
            .filter(|left| !left.is_zero())
    }

    /// Stops granting. Returns how long until every delegation granted so far has lapsed at
    /// its mount, whose feed is restarted by the caller so that it stops renewing them.
    pub fn close(&self) -> Duration {
        let mut state = self.state();
        let now = Instant::now();
        // Nothing granted by this process: nothing of its own to wait out.
        let until = if state.marked {
            now + DELEGATION_HELD
        } else {
            now
        };
        state.closed_until.get_or_insert(until);
        drop(state);
        self.unknown_for().unwrap_or_default()
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.state().held.len()
    }
}

/// Records on disk, durably, that this server grants delegations.
fn write_marker(path: &Path) -> FsResult<()> {
    let io = |e: std::io::Error| FsError::io(format!("{}: {e}", path.display()));
    let file = std::fs::File::create(path).map_err(io)?;
    file.sync_all().map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recall_takes_the_delegations_of_the_files_changed_from_their_holders() {
        let dir = tempfile::tempdir().unwrap();
        let d = Delegations::open(dir.path());
        assert!(
            d.unknown_for().is_none(),
            "a new server knows every delegation"
        );
        assert!(d.grant(InodeId(5), 1).unwrap());
        assert!(d.grant(InodeId(5), 2).unwrap());
        assert!(d.grant(InodeId(6), 2).unwrap());
        assert!(
            dir.path().join(MARKER).exists(),
            "marked before the first grant"
        );
        assert_eq!(
            d.recall(&[InodeId(5), InodeId(6)], &[2, 3]),
            vec![(2, vec![InodeId(5), InodeId(6)])]
        );
        assert_eq!(d.recall(&[InodeId(5)], &[2]), vec![], "taken once");
        assert_eq!(
            d.recall(&[InodeId(7), InodeId(5)], &[1, 2]),
            vec![(1, vec![InodeId(5)])]
        );
        assert!(d.grant(InodeId(6), 2).unwrap());
        assert_eq!(d.held(), 1);
        d.forget_client(2);
        assert_eq!(d.held(), 0, "a client that left holds nothing");
    }

    #[test]
    fn a_restarted_server_that_granted_waits_out_what_it_granted_before() {
        let dir = tempfile::tempdir().unwrap();
        let first = Delegations::open(dir.path());
        assert!(first.grant(InodeId(5), 1).unwrap());
        drop(first);
        let again = Delegations::open(dir.path());
        let left = again.unknown_for().expect("a grace after a restart");
        assert!(left <= DELEGATION_HELD && left > Duration::ZERO);
    }

    #[test]
    fn a_record_that_granted_nothing_closes_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = Delegations::open(dir.path());
        assert_eq!(d.close(), Duration::ZERO);
        assert!(!d.grant(InodeId(6), 1).unwrap());
        assert!(!dir.path().join(MARKER).exists());
    }

    #[test]
    fn a_closed_record_grants_nothing_and_is_waited_out() {
        let dir = tempfile::tempdir().unwrap();
        let d = Delegations::open(dir.path());
        assert!(d.grant(InodeId(5), 1).unwrap());
        let wait = d.close();
        assert!(wait > Duration::ZERO && wait <= DELEGATION_HELD);
        assert!(!d.grant(InodeId(6), 1).unwrap());
        assert!(d.unknown_for().is_some());
    }
}
