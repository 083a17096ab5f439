//! Byte-range locks (fcntl, and flock as whole-file locks, as NFS does), held for client
//! sessions with a lease. A session that stops renewing (a crashed or cut-off client) loses
//! its locks when the lease runs out, so nobody waits forever on a dead holder.
//!
//! The leader decides in memory, here, and records every change in the metadata log before
//! it answers ([`LockTable::record_changes`], `Op::SetLocks`): the files whose locks changed
//! and the sessions begun or ended. A new leader (or a restarted server) loads them
//! ([`LockTable::load`]) and gives every session a fresh lease, so locks survive a failover
//! and a restart. Renewals and waits are not recorded.
//!
//! Waiters (blocking requests) poll; while one waits, the table keeps whom it waits for. That
//! wait-for graph spans every client, so a wait that would close a cycle (A holds 1 and waits
//! for 2 while B holds 2 and waits for 1, on any mounts) is refused with `Deadlock` (EDEADLK),
//! which a kernel seeing only its own processes could not detect. A waiter that stops polling
//! for [`WAIT_EDGE_TTL`] drops out of the graph.

use crate::command::Outcome;
use crate::store::schema::{decode, encode, LocksRecord};
use crate::store::tables::WriteTables;
use crate::store::DbResult;
use dfs_common::model::HeldLock;
use dfs_common::proto::meta::{LockConflict, LockKind, LockOwner, LockRange};
use dfs_common::{FsError, FsResult, InodeId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a session's locks outlive its last request.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// A waiter that has not asked again for this long no longer counts as waiting (clients poll
/// at least every 500 ms while they wait).
pub const WAIT_EDGE_TTL: Duration = Duration::from_secs(3);

/// Files and the locks held on each, as the metadata log records them.
pub type FileLocks = Vec<(InodeId, Vec<HeldLock>)>;

/// A lock owner across the cluster: (client session, owner within it).
type OwnerKey = (u64, u64);

fn key(owner: &LockOwner) -> OwnerKey {
    (owner.session, owner.owner)
}

/// Whom one waiting owner waits for, and when it last asked.
struct Waiting {
    blockers: Vec<OwnerKey>,
    asked: Instant,
}

/// Locks held on one file, never overlapping for one owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    owner: LockOwner,
    range: LockRange,
    write: bool,
}

impl Held {
    fn same_owner(&self, owner: &LockOwner) -> bool {
        self.owner.session == owner.session && self.owner.owner == owner.owner
    }

    fn recorded(&self) -> HeldLock {
        HeldLock {
            session: self.owner.session,
            owner: self.owner.owner,
            pid: self.owner.pid,
            start: self.range.start,
            end: self.range.end,
            write: self.write,
        }
    }

    fn from_record(h: &HeldLock) -> Held {
        Held {
            owner: LockOwner {
                session: h.session,
                owner: h.owner,
                pid: h.pid,
            },
            range: LockRange {
                start: h.start,
                end: h.end,
            },
            write: h.write,
        }
    }
}

fn overlaps(a: &LockRange, b: &LockRange) -> bool {
    a.start <= b.end && b.start <= a.end
}

pub struct LockTable {
    lease: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    files: HashMap<InodeId, Vec<Held>>,
    /// Last renewal per session holding locks.
    sessions: HashMap<u64, Instant>,
    /// The wait-for graph: each waiting owner and the owners whose locks stand in its way.
    waiting: HashMap<OwnerKey, Waiting>,
    /// Files whose locks changed, and sessions begun (true) or ended, not yet recorded.
    changed_files: BTreeSet<InodeId>,
    changed_sessions: BTreeMap<u64, bool>,
    /// How many batches of changes have been handed over for recording.
    recorded: u64,
}

impl LockTable {
    pub fn new(lease: Duration) -> Self {
        LockTable {
            lease,
            state: Mutex::new(State::default()),
        }
    }

    /// Takes, converts or drops a lock; fails with `Locked` on a conflict with another owner,
    /// or, for an owner that will `wait`, with `Deadlock` when waiting would close a cycle.
    pub fn set(
        &self,
        ino: InodeId,
        owner: LockOwner,
        range: LockRange,
        kind: LockKind,
        wait: bool,
        holding: bool,
    ) -> FsResult<()> {
        check_range(&range)?;
        let mut state = self.lock_state();
        state.expire(self.lease);
        if holding && !state.sessions.contains_key(&owner.session) {
            return Err(lost(owner.session));
        }
        state.renew(owner.session, self.lease);
        let me = key(&owner);
        let held = state.files.entry(ino).or_default();
        if kind != LockKind::Unlock {
            let blockers = blockers(held, &owner, &range, kind);
            if !blockers.is_empty() {
                if held.is_empty() {
                    state.files.remove(&ino);
                }
                if !wait {
                    return Err(FsError::Locked);
                }
                if state.would_deadlock(me, &blockers) {
                    state.waiting.remove(&me);
                    return Err(FsError::Deadlock);
                }
                state.waiting.insert(
                    me,
                    Waiting {
                        blockers,
                        asked: Instant::now(),
                    },
                );
                return Err(FsError::Locked);
            }
        }
        state.waiting.remove(&me);
        let held = state.files.entry(ino).or_default();
        // The owner's own locks in the range are replaced: cut them around it.
        let mut kept = Vec::with_capacity(held.len() + 2);
        for h in held.drain(..) {
            if !h.same_owner(&owner) || !overlaps(&h.range, &range) {
                kept.push(h);
                continue;
            }
            if h.range.start < range.start {
                kept.push(Held {
                    range: LockRange {
                        start: h.range.start,
                        end: range.start - 1,
                    },
                    ..h
                });
            }
            if h.range.end > range.end {
                kept.push(Held {
                    range: LockRange {
                        start: range.end + 1,
                        end: h.range.end,
                    },
                    ..h
                });
            }
        }
        if kind != LockKind::Unlock {
            kept.push(Held {
                owner,
                range,
                write: kind == LockKind::Write,
            });
        }
        if kept.is_empty() {
            state.files.remove(&ino);
        } else {
            *held = kept;
        }
        state.changed_files.insert(ino);
        Ok(())
    }

    /// Hands the changes made since the last call to `record` (under the table's lock, so
    /// batches reach the log in the order of the changes) and returns the number of the batch
    /// that holds every change made so far: once batches up to it are in the log, so are the
    /// changes of the caller. If `record` fails, the changes stay for the next call.
    pub fn record_changes(
        &self,
        record: impl FnOnce(FileLocks, Vec<(u64, bool)>) -> FsResult<()>,
    ) -> FsResult<u64> {
        let mut state = self.lock_state();
        if state.changed_files.is_empty() && state.changed_sessions.is_empty() {
            return Ok(state.recorded);
        }
        let files = state
            .changed_files
            .iter()
            .map(|ino| {
                let held = state
                    .files
                    .get(ino)
                    .map_or_else(Vec::new, |held| held.iter().map(Held::recorded).collect());
                (*ino, held)
            })
            .collect();
        let sessions = state
            .changed_sessions
            .iter()
            .map(|(&s, &l)| (s, l))
            .collect();
        record(files, sessions)?;
        state.changed_files.clear();
        state.changed_sessions.clear();
        state.recorded += 1;
        Ok(state.recorded)
    }

    /// Replaces the table with recorded locks and sessions (a new leader's, or a restarted
    /// server's): every session gets a fresh lease, nobody waits.
    pub fn load(&self, files: FileLocks, sessions: Vec<u64>) {
        let mut state = self.lock_state();
        let now = Instant::now();
        state.files = files
            .into_iter()
            .filter(|(_, held)| !held.is_empty())
            .map(|(ino, held)| (ino, held.iter().map(Held::from_record).collect()))
            .collect();
        state.sessions = sessions.into_iter().map(|s| (s, now)).collect();
        state.waiting.clear();
        state.changed_files.clear();
        state.changed_sessions.clear();
    }

    /// The first lock of another owner that conflicts with the one described.
    pub fn test(
        &self,
        ino: InodeId,
        owner: LockOwner,
        range: LockRange,
        kind: LockKind,
    ) -> FsResult<Option<LockConflict>> {
        check_range(&range)?;
        let mut state = self.lock_state();
        state.expire(self.lease);
        Ok(state
            .files
            .get(&ino)
            .and_then(|held| conflict(held, &owner, &range, kind)))
    }

    /// The owner stopped waiting (interrupted, or its file closed).
    pub fn cancel_wait(&self, owner: LockOwner) {
        self.lock_state().waiting.remove(&key(&owner));
    }

    /// Drops the owner's locks on one file, or all of its session's locks.
    pub fn release(&self, ino: Option<InodeId>, owner: LockOwner) {
        let mut state = self.lock_state();
        state.waiting.remove(&key(&owner));
        match ino {
            Some(ino) => {
                if let Some(held) = state.files.get_mut(&ino) {
                    let before = held.len();
                    held.retain(|h| !h.same_owner(&owner));
                    let changed = held.len() != before;
                    if held.is_empty() {
                        state.files.remove(&ino);
                    }
                    if changed {
                        state.changed_files.insert(ino);
                    }
                }
            }
            None => state.drop_session(owner.session),
        }
    }

    /// Extends the lease of a session that holds locks; `LocksLost` if the session is unknown
    /// (expired, or the server restarted since it took them).
    pub fn renew(&self, session: u64) -> FsResult<()> {
        let mut state = self.lock_state();
        state.expire(self.lease);
        if !state.sessions.contains_key(&session) {
            return Err(lost(session));
        }
        state.renew(session, self.lease);
        Ok(())
    }

    /// Locks currently held, for status displays and tests.
    pub fn count(&self) -> usize {
        let mut state = self.lock_state();
        state.expire(self.lease);
        state.files.values().map(Vec::len).sum()
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("lock table lock")
    }
}

impl State {
    fn renew(&mut self, session: u64, lease: Duration) {
        self.expire(lease);
        if self.sessions.insert(session, Instant::now()).is_none() {
            self.changed_sessions.insert(session, true);
        }
    }

    /// Drops every session whose lease ran out, with its locks.
    fn expire(&mut self, lease: Duration) {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, at)| now.duration_since(**at) > lease)
            .map(|(s, _)| *s)
            .collect();
        for session in expired {
            tracing::info!(session, "lock lease expired; its locks are dropped");
            self.drop_session(session);
        }
    }

    /// Whether `me` waiting for `blockers` closes a cycle: some blocker waits, directly or
    /// through other waiters, for `me`. Waiters that stopped asking are forgotten first.
    fn would_deadlock(&mut self, me: OwnerKey, blockers: &[OwnerKey]) -> bool {
        let now = Instant::now();
        self.waiting
            .retain(|_, w| now.duration_since(w.asked) <= WAIT_EDGE_TTL);
        let mut seen = std::collections::HashSet::new();
        let mut frontier: Vec<OwnerKey> = blockers.to_vec();
        while let Some(owner) = frontier.pop() {
            if owner == me {
                return true;
            }
            if !seen.insert(owner) {
                continue;
            }
            if let Some(w) = self.waiting.get(&owner) {
                frontier.extend(w.blockers.iter().copied());
            }
        }
        false
    }

    fn drop_session(&mut self, session: u64) {
        if self.sessions.remove(&session).is_some() {
            self.changed_sessions.insert(session, false);
        }
        self.waiting.retain(|(s, _), _| *s != session);
        let changed = &mut self.changed_files;
        self.files.retain(|ino, held| {
            let before = held.len();
            held.retain(|h| h.owner.session != session);
            if held.len() != before {
                changed.insert(*ino);
            }
            !held.is_empty()
        });
    }
}

/// Applies a recorded batch of lock changes to the store (`Op::SetLocks`).
pub fn record(
    t: &mut WriteTables,
    files: &[(InodeId, Vec<HeldLock>)],
    sessions: &[(u64, bool)],
) -> FsResult<Outcome> {
    for (ino, held) in files {
        if held.is_empty() {
            t.locks.table()?.remove(ino.0).db()?;
        } else {
            let record = encode(&LocksRecord { held: held.clone() });
            t.locks.table()?.insert(ino.0, record.as_slice()).db()?;
        }
    }
    for &(session, live) in sessions {
        if live {
            t.lock_sessions.table()?.insert(session, 1).db()?;
        } else {
            t.lock_sessions.table()?.remove(session).db()?;
        }
    }
    Ok(Outcome::Done)
}

/// The recorded locks and sessions, for [`LockTable::load`].
pub fn recorded(t: &crate::store::tables::ReadTables) -> FsResult<(FileLocks, Vec<u64>)> {
    use redb::ReadableTable;
    let mut files = Vec::new();
    for item in t.locks.table()?.iter().db()? {
        let (ino, record) = item.db()?;
        let record: LocksRecord = decode(record.value())?;
        files.push((InodeId(ino.value()), record.held));
    }
    let mut sessions = Vec::new();
    for item in t.lock_sessions.table()?.iter().db()? {
        sessions.push(item.db()?.0.value());
    }
    Ok((files, sessions))
}

fn lost(session: u64) -> FsError {
    FsError::LocksLost(format!(
        "lock session {session:016x} expired or the metadata server restarted; its locks may be held by others now"
    ))
}

fn check_range(range: &LockRange) -> FsResult<()> {
    if range.start > range.end {
        return Err(FsError::invalid("lock range ends before it starts"));
    }
    Ok(())
}

/// Every other owner holding a lock that conflicts with the one described.
fn blockers(held: &[Held], owner: &LockOwner, range: &LockRange, kind: LockKind) -> Vec<OwnerKey> {
    let write = kind == LockKind::Write;
    let mut out: Vec<OwnerKey> = held
        .iter()
        .filter(|h| !h.same_owner(owner) && overlaps(&h.range, range) && (write || h.write))
        .map(|h| key(&h.owner))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// A lock of another owner overlapping `range` where either side writes.
fn conflict(
    held: &[Held],
    owner: &LockOwner,
    range: &LockRange,
    kind: LockKind,
) -> Option<LockConflict> {
    let write = kind == LockKind::Write;
    held.iter()
        .find(|h| !h.same_owner(owner) && overlaps(&h.range, range) && (write || h.write))
        .map(|h| LockConflict {
            range: h.range,
            kind: if h.write {
                LockKind::Write
            } else {
                LockKind::Read
            },
            pid: h.owner.pid,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: InodeId = InodeId(7);

    fn owner(session: u64, owner: u64) -> LockOwner {
        LockOwner {
            session,
            owner,
            pid: owner as u32,
        }
    }

    fn range(start: u64, end: u64) -> LockRange {
        LockRange { start, end }
    }

    #[test]
    fn readers_share_and_writers_exclude() {
        let t = LockTable::new(DEFAULT_LEASE);
        let (a, b) = (owner(1, 1), owner(2, 1));
        t.set(FILE, a, range(0, 99), LockKind::Read, false, false)
            .unwrap();
        t.set(FILE, b, range(50, 150), LockKind::Read, false, false)
            .unwrap();
        assert_eq!(
            t.set(FILE, b, range(0, 10), LockKind::Write, false, false),
            Err(FsError::Locked)
        );
        // Past a's range b may write; other files are independent.
        t.set(FILE, b, range(100, 200), LockKind::Write, false, false)
            .unwrap();
        t.set(InodeId(8), b, range(0, 10), LockKind::Write, false, false)
            .unwrap();
        let seen = t.test(FILE, a, range(120, 130), LockKind::Read).unwrap();
        assert_eq!(seen.map(|c| (c.range, c.pid)), Some((range(100, 200), 1)));
    }

    #[test]
    fn unlock_splits_and_conversion_replaces() {
        let t = LockTable::new(DEFAULT_LEASE);
        let (a, b) = (owner(1, 1), owner(1, 2));
        t.set(FILE, a, range(0, 99), LockKind::Write, false, false)
            .unwrap();
        t.set(FILE, a, range(40, 59), LockKind::Unlock, false, false)
            .unwrap();
        assert_eq!(t.count(), 2);
        // The hole is free for another owner of the same session; the rest is not.
        t.set(FILE, b, range(40, 59), LockKind::Write, false, false)
            .unwrap();
        assert_eq!(
            t.set(FILE, b, range(39, 40), LockKind::Write, false, false),
            Err(FsError::Locked)
        );
        // a converts part of its write lock to a read lock: b may now read there.
        t.set(FILE, a, range(0, 39), LockKind::Read, false, false)
            .unwrap();
        t.set(FILE, b, range(0, 39), LockKind::Read, false, false)
            .unwrap();
        assert_eq!(
            t.set(FILE, b, range(60, 60), LockKind::Read, false, false),
            Err(FsError::Locked)
        );
    }

    #[test]
    fn close_and_session_end_release() {
        let t = LockTable::new(DEFAULT_LEASE);
        let (a1, a2, b) = (owner(1, 1), owner(1, 2), owner(2, 1));
        t.set(FILE, a1, range(0, u64::MAX), LockKind::Write, false, false)
            .unwrap();
        t.set(InodeId(8), a2, range(0, 0), LockKind::Write, false, false)
            .unwrap();
        t.release(Some(FILE), a1);
        t.set(FILE, b, range(0, 10), LockKind::Write, false, false)
            .unwrap();
        assert_eq!(
            t.set(InodeId(8), b, range(0, 0), LockKind::Read, false, false),
            Err(FsError::Locked)
        );
        t.release(None, a1);
        t.set(InodeId(8), b, range(0, 0), LockKind::Read, false, false)
            .unwrap();
    }

    #[test]
    fn expired_leases_drop_locks() {
        let t = LockTable::new(Duration::from_millis(50));
        let (a, b) = (owner(1, 1), owner(2, 1));
        t.set(FILE, a, range(0, 10), LockKind::Write, false, false)
            .unwrap();
        assert!(t
            .set(FILE, b, range(0, 10), LockKind::Write, false, false)
            .is_err());
        // b keeps renewing while a is silent.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            t.renew(b.session).unwrap();
            if t.set(FILE, b, range(0, 10), LockKind::Write, false, false)
                .is_ok()
            {
                break;
            }
            assert!(Instant::now() < deadline, "lease never expired");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(t.count(), 1);
    }

    /// What a leader records is what the next one loads: the same locks conflict, the same
    /// sessions are known, released locks stay released.
    #[test]
    fn recorded_changes_load_into_a_new_table() {
        let old = LockTable::new(DEFAULT_LEASE);
        let (a, b, c) = (owner(1, 1), owner(2, 1), owner(3, 1));
        old.set(FILE, a, range(0, 9), LockKind::Write, false, false)
            .unwrap();
        old.set(InodeId(8), c, range(0, 0), LockKind::Read, false, false)
            .unwrap();
        // In the log: the files and sessions recorded so far, batch after batch.
        let mut files: BTreeMap<InodeId, Vec<HeldLock>> = BTreeMap::new();
        let mut sessions: BTreeSet<u64> = BTreeSet::new();
        let mut log = |f: Vec<(InodeId, Vec<HeldLock>)>, s: Vec<(u64, bool)>| {
            for (ino, held) in f {
                files.insert(ino, held);
            }
            for (session, live) in s {
                if live {
                    sessions.insert(session);
                } else {
                    sessions.remove(&session);
                }
            }
            Ok(())
        };
        assert_eq!(old.record_changes(&mut log).unwrap(), 1);
        old.release(Some(InodeId(8)), c);
        assert_eq!(old.record_changes(&mut log).unwrap(), 2);
        // Nothing changed: the batch holding every change is still the last one.
        assert_eq!(old.record_changes(&mut log).unwrap(), 2);

        let new = LockTable::new(DEFAULT_LEASE);
        new.load(files.into_iter().collect(), sessions.into_iter().collect());
        assert_eq!(
            new.set(FILE, b, range(5, 5), LockKind::Read, false, false),
            Err(FsError::Locked)
        );
        new.set(InodeId(8), b, range(0, 0), LockKind::Write, false, false)
            .unwrap();
        // a's session is known: it still holds its lock, and may take more.
        new.renew(a.session).unwrap();
        new.set(FILE, a, range(20, 29), LockKind::Write, false, true)
            .unwrap();
    }

    #[test]
    fn inverted_ranges_are_refused() {
        let t = LockTable::new(DEFAULT_LEASE);
        assert!(matches!(
            t.set(
                FILE,
                owner(1, 1),
                range(5, 4),
                LockKind::Write,
                false,
                false
            ),
            Err(FsError::Invalid(_))
        ));
    }

    #[test]
    fn a_wait_that_closes_a_cycle_is_a_deadlock() {
        let t = LockTable::new(DEFAULT_LEASE);
        // Three owners on two clients: a holds 0, b holds 1, c holds 2.
        let (a, b, c) = (owner(1, 1), owner(2, 1), owner(2, 2));
        for (o, at) in [(a, 0), (b, 1), (c, 2)] {
            t.set(FILE, o, range(at, at), LockKind::Write, true, false)
                .unwrap();
        }
        // a waits for b, b for c: a chain, no cycle.
        let wait = |o, at| t.set(FILE, o, range(at, at), LockKind::Write, true, false);
        assert_eq!(wait(a, 1), Err(FsError::Locked));
        assert_eq!(wait(b, 2), Err(FsError::Locked));
        // c waiting for a would close a -> b -> c -> a.
        assert_eq!(wait(c, 0), Err(FsError::Deadlock));
        // A non-blocking attempt is only ever Locked.
        assert_eq!(
            t.set(FILE, c, range(0, 0), LockKind::Write, false, false),
            Err(FsError::Locked)
        );
        // Once a stops waiting, the same wait is no deadlock.
        t.cancel_wait(a);
        assert_eq!(wait(c, 0), Err(FsError::Locked));
        // A released lock unblocks its waiter, which leaves the graph.
        t.set(FILE, b, range(1, 1), LockKind::Unlock, false, false)
            .unwrap();
        t.cancel_wait(b);
        t.set(FILE, a, range(1, 1), LockKind::Write, true, false)
            .unwrap();
    }

    #[test]
    fn a_session_that_lost_its_locks_is_told_so() {
        let t = LockTable::new(Duration::from_millis(50));
        let (a, b) = (owner(1, 1), owner(2, 1));
        t.set(FILE, a, range(0, 9), LockKind::Write, false, false)
            .unwrap();
        t.renew(1).unwrap();
        std::thread::sleep(Duration::from_millis(120));
        // a's lease ran out: b takes the lock, and a hears of its loss at its next call.
        t.set(FILE, b, range(0, 9), LockKind::Write, false, false)
            .unwrap();
        assert!(matches!(t.renew(1), Err(FsError::LocksLost(_))));
        assert!(matches!(
            t.set(FILE, a, range(20, 29), LockKind::Write, false, true),
            Err(FsError::LocksLost(_))
        ));
        // A client that knows it holds nothing starts afresh.
        t.set(FILE, a, range(20, 29), LockKind::Write, false, false)
            .unwrap();
    }
}
