//! File locks, held at the metadata server so that they exclude across clients. Each client
//! is one lock session; while it holds locks it renews the session's lease in the background,
//! so the locks of a client that dies or is cut off expire instead of blocking others forever.

use super::meta::expect_done;
use super::{expect_reply, Client};
use dfs_common::proto::meta::{
    LockConflict, LockKind, LockOwner, LockRange, MetaReply, MetaRequest,
};
use dfs_common::{FsResult, InodeId};
use std::collections::HashSet;
use std::sync::{Mutex, Weak};
use std::time::Duration;

/// How often a client holding locks renews its lease (the server's lease is at least 15 s).
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// This client's lock session: its id and the (file, owner) pairs that may hold locks.
pub(crate) struct LockSession {
    pub(crate) id: u64,
    held: Mutex<HashSet<(InodeId, u64)>>,
}

impl LockSession {
    pub(crate) fn new() -> Self {
        LockSession {
            id: rand::random(),
            held: Mutex::new(HashSet::new()),
        }
    }

    fn holds_any(&self) -> bool {
        !self.held.lock().expect("lock set").is_empty()
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
        if kind != LockKind::Unlock {
            // Recorded first, so that a close racing with this call releases it.
            self.inner
                .locks
                .held
                .lock()
                .expect("lock set")
                .insert((ino, owner));
        }
        let request = MetaRequest::SetLock {
            ino,
            owner: self.lock_owner(owner, pid),
            range,
            kind,
            wait,
        };
        expect_done(self.call(&request).await?)
    }

    /// Leaves the wait-for graph after waiting for a lock ended without it.
    pub async fn cancel_lock_wait(&self, owner: u64) -> FsResult<()> {
        let request = MetaRequest::CancelLockWait {
            owner: self.lock_owner(owner, 0),
        };
        expect_done(self.call(&request).await?)
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
        let request = MetaRequest::TestLock {
            ino,
            owner: self.lock_owner(owner, pid),
            range,
            kind,
        };
        expect_reply!(self.call(&request).await?, MetaReply::Lock)
    }

    /// Drops every lock `owner` holds on `ino` (at close). Costs nothing when it holds none.
    pub async fn release_locks(&self, ino: InodeId, owner: u64) -> FsResult<()> {
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
        let request = MetaRequest::ReleaseLocks {
            ino: Some(ino),
            owner: self.lock_owner(owner, 0),
        };
        expect_done(self.call(&request).await?)
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
        let request = MetaRequest::RenewSession {
            session: client.inner.locks.id,
        };
        if let Err(e) = client.call(&request).await {
            tracing::warn!("renewing the lock lease: {e}");
        }
    }
}
