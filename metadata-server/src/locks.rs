//! Byte-range locks (fcntl, and flock as whole-file locks, as NFS does), held in memory for
//! client sessions with a lease. A session that stops renewing (a crashed or cut-off client)
//! loses its locks when the lease runs out, so nobody waits forever on a dead holder. Locks do
//! not survive a restart of the metadata server.

use dfs_common::proto::meta::{LockConflict, LockKind, LockOwner, LockRange};
use dfs_common::{FsError, FsResult, InodeId};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a session's locks outlive its last request.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

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
}

impl LockTable {
    pub fn new(lease: Duration) -> Self {
        LockTable {
            lease,
            state: Mutex::new(State::default()),
        }
    }

    /// Takes, converts or drops a lock; fails with `Locked` on a conflict with another owner.
    pub fn set(
        &self,
        ino: InodeId,
        owner: LockOwner,
        range: LockRange,
        kind: LockKind,
    ) -> FsResult<()> {
        check_range(&range)?;
        let mut state = self.lock_state();
        state.renew(owner.session, self.lease);
        let held = state.files.entry(ino).or_default();
        if kind != LockKind::Unlock && conflict(held, &owner, &range, kind).is_some() {
            return Err(FsError::Locked);
        }
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
        Ok(())
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

    /// Drops the owner's locks on one file, or all of its session's locks.
    pub fn release(&self, ino: Option<InodeId>, owner: LockOwner) {
        let mut state = self.lock_state();
        match ino {
            Some(ino) => {
                if let Some(held) = state.files.get_mut(&ino) {
                    held.retain(|h| !h.same_owner(&owner));
                    if held.is_empty() {
                        state.files.remove(&ino);
                    }
                }
            }
            None => state.drop_session(owner.session),
        }
    }

    pub fn renew(&self, session: u64) {
        self.lock_state().renew(session, self.lease);
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
        self.sessions.insert(session, Instant::now());
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

    fn drop_session(&mut self, session: u64) {
        self.sessions.remove(&session);
        self.files.retain(|_, held| {
            held.retain(|h| h.owner.session != session);
            !held.is_empty()
        });
    }
}

fn check_range(range: &LockRange) -> FsResult<()> {
    if range.start > range.end {
        return Err(FsError::invalid("lock range ends before it starts"));
    }
    Ok(())
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
        t.set(FILE, a, range(0, 99), LockKind::Read).unwrap();
        t.set(FILE, b, range(50, 150), LockKind::Read).unwrap();
        assert_eq!(
            t.set(FILE, b, range(0, 10), LockKind::Write),
            Err(FsError::Locked)
        );
        // Past a's range b may write; other files are independent.
        t.set(FILE, b, range(100, 200), LockKind::Write).unwrap();
        t.set(InodeId(8), b, range(0, 10), LockKind::Write).unwrap();
        let seen = t.test(FILE, a, range(120, 130), LockKind::Read).unwrap();
        assert_eq!(seen.map(|c| (c.range, c.pid)), Some((range(100, 200), 1)));
    }

    #[test]
    fn unlock_splits_and_conversion_replaces() {
        let t = LockTable::new(DEFAULT_LEASE);
        let (a, b) = (owner(1, 1), owner(1, 2));
        t.set(FILE, a, range(0, 99), LockKind::Write).unwrap();
        t.set(FILE, a, range(40, 59), LockKind::Unlock).unwrap();
        assert_eq!(t.count(), 2);
        // The hole is free for another owner of the same session; the rest is not.
        t.set(FILE, b, range(40, 59), LockKind::Write).unwrap();
        assert_eq!(
            t.set(FILE, b, range(39, 40), LockKind::Write),
            Err(FsError::Locked)
        );
        // a converts part of its write lock to a read lock: b may now read there.
        t.set(FILE, a, range(0, 39), LockKind::Read).unwrap();
        t.set(FILE, b, range(0, 39), LockKind::Read).unwrap();
        assert_eq!(
            t.set(FILE, b, range(60, 60), LockKind::Read),
            Err(FsError::Locked)
        );
    }

    #[test]
    fn close_and_session_end_release() {
        let t = LockTable::new(DEFAULT_LEASE);
        let (a1, a2, b) = (owner(1, 1), owner(1, 2), owner(2, 1));
        t.set(FILE, a1, range(0, u64::MAX), LockKind::Write)
            .unwrap();
        t.set(InodeId(8), a2, range(0, 0), LockKind::Write).unwrap();
        t.release(Some(FILE), a1);
        t.set(FILE, b, range(0, 10), LockKind::Write).unwrap();
        assert_eq!(
            t.set(InodeId(8), b, range(0, 0), LockKind::Read),
            Err(FsError::Locked)
        );
        t.release(None, a1);
        t.set(InodeId(8), b, range(0, 0), LockKind::Read).unwrap();
    }

    #[test]
    fn expired_leases_drop_locks() {
        let t = LockTable::new(Duration::from_millis(50));
        let (a, b) = (owner(1, 1), owner(2, 1));
        t.set(FILE, a, range(0, 10), LockKind::Write).unwrap();
        assert!(t.set(FILE, b, range(0, 10), LockKind::Write).is_err());
        // b keeps renewing while a is silent.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            t.renew(b.session);
            if t.set(FILE, b, range(0, 10), LockKind::Write).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "lease never expired");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(t.count(), 1);
    }

    #[test]
    fn inverted_ranges_are_refused() {
        let t = LockTable::new(DEFAULT_LEASE);
        assert!(matches!(
            t.set(FILE, owner(1, 1), range(5, 4), LockKind::Write),
            Err(FsError::Invalid(_))
        ));
    }
}
