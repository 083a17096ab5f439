//! Open delegations: which mounts may reopen a file without asking for its attributes.
//!
//! A mount opening a file asks for its attributes (`OpenAttr`, close-to-open). When the mount
//! follows the change feed, the answer grants a delegation, recorded here before the
//! attributes are read. A change to the file by another client is answered only once every
//! holder has taken the change from its feed, or its delegation has lapsed (see
//! [`crate::changes::ChangeFeed::wait_taken`]); the holders are forgotten then, and their next
//! open asks again. So a reopen that uses a delegation sees every change whose writer was
//! answered before it: close-to-open holds without the round trip.
//!
//! The record lives in the leader's memory, and is made anew each time a member takes over
//! as leader: grants wait until then. A leader does not know what another process granted,
//! so changes to files wait out one [`DELEGATION_HELD`] after it takes over, by which time
//! every older delegation has lapsed at its mount:
//! - in a group, after every take-over once the store holds a volume (mounts need one). A
//!   mount renews its delegations only with answers to calls sent before they arrived at a
//!   member that had just confirmed it led (each call passes a read barrier), so the old
//!   leader renewed none after the new one was elected;
//! - a lone server that restarted waits only if it had granted any before: a marker file says
//!   so, written durably before the first grant of each process.

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
}

struct State {
    /// (file, client) for every delegation granted and not yet recalled.
    held: HashSet<(InodeId, u64)>,
    /// The marker is on disk for this process.
    marked: bool,
    /// The leader term this record was made for (at the take-over): grants are made in it only.
    term: Option<u64>,
    /// Changes to files wait until then: delegations this record does not know of may hold.
    unknown_until: Option<Instant>,
}

impl Delegations {
    /// The record of a server whose data lives in `dir`.
    pub fn open(dir: &Path) -> Delegations {
        let marker = dir.join(MARKER);
        let unknown_until = marker.exists().then(|| Instant::now() + DELEGATION_HELD);
        Delegations {
            state: Mutex::new(State {
                held: HashSet::new(),
                marked: false,
                term: None,
                unknown_until,
            }),
            marker,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("delegations")
    }

    /// Starts the record afresh for leader term `term` (a take-over tried again in the same
    /// term keeps what it granted since). With `others_may_have_granted` (an earlier leader,
    /// or this member in an earlier term), changes to files wait out the delegations granted
    /// before.
    pub fn take_over(&self, term: u64, others_may_have_granted: bool) {
        let mut state = self.state();
        if state.term != Some(term) {
            state.held.clear();
            state.term = Some(term);
        }
        if others_may_have_granted {
            let until = Instant::now() + DELEGATION_HELD;
            state.unknown_until = Some(state.unknown_until.map_or(until, |u| u.max(until)));
        }
    }

    /// Records a delegation of `ino` to `client` in leader term `term`, if one can be granted.
    /// The caller reads the attributes it answers with after this, so a change made meanwhile
    /// recalls it.
    pub fn grant(&self, ino: InodeId, client: u64, term: u64) -> FsResult<bool> {
        let mut state = self.state();
        if state.term != Some(term) || state.held.len() >= MAX_HELD {
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

    /// How long a change to files answered in leader term `term` must still wait for
    /// delegations this record does not know of. In a group (`in_group`), a term not taken
    /// over yet waits a whole [`DELEGATION_HELD`]: its take-over has yet to say whether an
    /// earlier leader may have granted some.
    pub fn unknown_for(&self, term: u64, in_group: bool) -> Option<Duration> {
        let state = self.state();
        if in_group && state.term != Some(term) {
            return Some(DELEGATION_HELD);
        }
        state
            .unknown_until
            .and_then(|until| until.checked_duration_since(Instant::now()))
            .filter(|left| !left.is_zero())
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
            d.unknown_for(1, false).is_none(),
            "a new server knows every delegation"
        );
        d.take_over(1, false);
        assert!(d.grant(InodeId(5), 1, 1).unwrap());
        assert!(d.grant(InodeId(5), 2, 1).unwrap());
        assert!(d.grant(InodeId(6), 2, 1).unwrap());
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
        assert!(d.grant(InodeId(6), 2, 1).unwrap());
        assert_eq!(d.held(), 1);
        d.forget_client(2);
        assert_eq!(d.held(), 0, "a client that left holds nothing");
    }

    #[test]
    fn a_restarted_server_that_granted_waits_out_what_it_granted_before() {
        let dir = tempfile::tempdir().unwrap();
        let first = Delegations::open(dir.path());
        first.take_over(1, false);
        assert!(first.grant(InodeId(5), 1, 1).unwrap());
        drop(first);
        let again = Delegations::open(dir.path());
        again.take_over(2, false);
        let left = again
            .unknown_for(2, false)
            .expect("a grace after a restart");
        assert!(left <= DELEGATION_HELD && left > Duration::ZERO);
    }

    #[test]
    fn grants_wait_for_the_take_over_of_their_term() {
        let dir = tempfile::tempdir().unwrap();
        let d = Delegations::open(dir.path());
        assert!(!d.grant(InodeId(5), 1, 1).unwrap(), "not taken over yet");
        assert!(!dir.path().join(MARKER).exists());
        d.take_over(1, false);
        assert!(d.grant(InodeId(5), 1, 1).unwrap());
        d.take_over(1, false);
        assert_eq!(d.held(), 1, "a take-over tried again keeps its grants");
        assert!(!d.grant(InodeId(6), 1, 2).unwrap(), "a later term");
        d.take_over(3, false);
        assert_eq!(d.held(), 0, "a take-over starts afresh");
    }

    #[test]
    fn a_leader_of_a_group_waits_out_its_predecessors_grants() {
        let dir = tempfile::tempdir().unwrap();
        let d = Delegations::open(dir.path());
        assert_eq!(
            d.unknown_for(4, true),
            Some(DELEGATION_HELD),
            "a term not taken over yet waits it all"
        );
        d.take_over(4, true);
        let left = d.unknown_for(4, true).expect("a grace after a take-over");
        assert!(left <= DELEGATION_HELD && left > Duration::ZERO);
        d.take_over(5, false);
        assert!(
            d.unknown_for(5, true).is_some(),
            "a later take-over does not shorten the wait"
        );
    }
}
