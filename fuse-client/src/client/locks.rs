//! File locks, held at the metadata server so that they exclude across clients. Each client
//! is one lock session; while it holds locks it renews the session's lease in the background,
//! so the locks of a client that dies or is cut off expire instead of blocking others forever.

use super::Client;
use dfs_common::proto::meta::{req, LockConflict, LockKind, LockOwner, LockRange};
use dfs_common::{FsError, FsResult, InodeId};
use std::collections::HashSet;
use std::sync::{Mutex, Weak};
use std::time::Duration;

/// How often a client holding locks renews its lease (the server's lease is at least 15 s).
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// This client's lock session: its id, the (file, owner) pairs that may hold locks, and the
/// files whose locks were lost.
pub(crate) struct LockSession {
    pub(crate) id: u64,
    held: Mutex<HashSet<(InodeId, u64)>>,
    /// Files on which this client held locks when it learned that its session was gone (a
    /// lease that ran out during a partition, a metadata-server restart): another client may
    /// hold those locks now, so I/O on them fails with EIO until the locking descriptors are
    /// closed, as NFSv4 clients do.
    lost: Mutex<HashSet<InodeId>>,
}

impl LockSession {
    pub(crate) fn new() -> Self {
        LockSession {
            id: rand::random(),
            held: Mutex::new(HashSet::new()),
            lost: Mutex::new(HashSet::new()),
        }
    }

    fn holds_any(&self) -> bool {
        !self.held.lock().expect("lock set").is_empty()
    }

    /// The session is gone at the server: every lock this client held is lost.
    fn all_lost(&self) {
        let held = std::mem::take(&mut *self.held.lock().expect("lock set"));
        if held.is_empty() {
            return;
        }
        tracing::error!(
            files = held.len(),
            "file locks lost (lease expired or the metadata server restarted): I/O on those files fails until they are closed"
        );
        self.lost
            .lock()
            .expect("lost set")
            .extend(held.into_iter().map(|(ino, _)| ino));
    }
}

impl Client {
    fn lock_owner(&self, owner: u64, pid: u32) -> LockOwner {
        LockOwner {
            session: self.inner.locks.id,
            owner,
            pid,
        }
    }

    /// Takes, converts or drops a lock without waiting; `FsError::Locked` on a conflict. An
    /// owner that will `wait` (and so asks again until it gets the lock) is entered in the
    /// metadata server's wait-for graph, and gets `FsError::Deadlock` where waiting would
    /// close a cycle; it calls [`Client::cancel_lock_wait`] when it gives up.
    pub async fn set_lock(
        &self,
        ino: InodeId,
        owner: u64,
        pid: u32,
        range: LockRange,
        kind: LockKind,
        wait: bool,
    ) -> FsResult<()> {
        self.check_locks(ino)?;
        let holding = {
            let mut held = self.inner.locks.held.lock().expect("lock set");
            let holding = !held.is_empty();
            if kind != LockKind::Unlock {
                // Recorded first, so that a close racing with this call releases it.
                held.insert((ino, owner));
            }
            holding
        };
        let request = req::SetLock {
            ino,
            owner: self.lock_owner(owner, pid),
            range,
            kind,
            wait,
            holding,
        };
        let reply = self.call(request).await;
        if let Err(FsError::LocksLost(_)) = &reply {
            self.inner.locks.all_lost();
        }
        reply
    }

    /// Fails with `LocksLost` (EIO) while `ino`'s locks are lost; see [`LockSession`].
    pub fn check_locks(&self, ino: InodeId) -> FsResult<()> {
        if self
            .inner
            .locks
            .lost
            .lock()
            .expect("lost set")
            .contains(&ino)
        {
            return Err(FsError::LocksLost(format!(
                "the locks held on inode {ino} were lost; close and reopen the file"
            )));
        }
        Ok(())
    }

    /// Leaves the wait-for graph after waiting for a lock ended without it.
    pub async fn cancel_lock_wait(&self, owner: u64) -> FsResult<()> {
        let request = req::CancelLockWait {
            owner: self.lock_owner(owner, 0),
        };
        self.call(request).await
    }

    /// The lock of another owner that would conflict with this one, if any.
    pub async fn test_lock(
        &self,
        ino: InodeId,
        owner: u64,
        pid: u32,
        range: LockRange,
        kind: LockKind,
    ) -> FsResult<Option<LockConflict>> {
        let request = req::TestLock {
            ino,
            owner: self.lock_owner(owner, pid),
            range,
            kind,
        };
        self.call(request).await
    }

    /// What [`Client::release_locks`] does when `owner` holds no lock on `ino`, done here
    /// with no request; `false` (and nothing done) when it holds one.
    pub fn release_no_locks(&self, ino: InodeId, owner: u64) -> bool {
        if self
            .inner
            .locks
            .held
            .lock()
            .expect("lock set")
            .contains(&(ino, owner))
        {
            return false;
        }
        self.inner.locks.lost.lock().expect("lost set").remove(&ino);
        true
    }

    /// Drops every lock `owner` holds on `ino` (at close). Costs nothing when it holds none.
    /// A close also ends the EIO state of a file whose locks were lost.
    pub async fn release_locks(&self, ino: InodeId, owner: u64) -> FsResult<()> {
        self.inner.locks.lost.lock().expect("lost set").remove(&ino);
        let held = self
            .inner
            .locks
            .held
            .lock()
            .expect("lock set")
            .remove(&(ino, owner));
        if !held {
            return Ok(());
        }
        let request = req::ReleaseLocks {
            ino: Some(ino),
            owner: self.lock_owner(owner, 0),
        };
        self.call(request).await
    }
}

/// Renews the lease of `client`'s lock session while it holds locks; ends with the client.
pub(crate) async fn renew_leases(client: Weak<super::Inner>) {
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let Some(inner) = client.upgrade() else {
            return;
        };
        if !inner.locks.holds_any() {
            continue;
        }
        let client = Client { inner };
        let request = req::RenewSession {
            session: client.inner.locks.id,
        };
        match client.call(request).await {
            Ok(_) => {}
            Err(FsError::LocksLost(_)) => client.inner.locks.all_lost(),
            Err(e) => tracing::warn!("renewing the lock lease: {e}"),
        }
    }
}
