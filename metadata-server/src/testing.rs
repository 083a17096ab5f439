//! Helpers for unit tests that apply commands to a store directly, without a server.

use crate::command::{Command, Op, Outcome};
use crate::state_machine;
use dfs_common::model::FileKind;
use dfs_common::{FsResult, InodeId, Timestamp};
use redb::Database;

/// Applies `op` in a transaction of its own, committed if the command succeeds.
pub fn run(db: &Database, op: Op) -> FsResult<Outcome> {
    let tx = db.begin_write().unwrap();
    let command = Command::internal(Timestamp { secs: 1, nanos: 0 }, op);
    let outcome = state_machine::apply(&tx, &command);
    if outcome.is_ok() {
        tx.commit().unwrap();
    }
    outcome
}

/// A `MakeNode` of a node of `kind` named `name` in `parent`, owned by root, mode 644.
pub fn make_node(parent: InodeId, name: &str, kind: FileKind) -> Op {
    Op::MakeNode {
        parent,
        name: name.into(),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        target: None,
    }
}

/// A fresh store holding one volume `v` (2+1, blocks of 1 MiB): its directory (to keep), the
/// store, the volume's root.
pub fn store_with_volume() -> (tempfile::TempDir, std::sync::Arc<Database>, InodeId) {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::store::open(&dir.path().join("meta.redb")).unwrap();
    let create = Op::CreateVolume {
        name: "v".into(),
        policy: "2+1".parse().unwrap(),
        block_size: 1 << 20,
        limits: dfs_common::model::VolumeLimits::default(),
    };
    let Ok(Outcome::Volume { record, .. }) = run(&db, create) else {
        panic!("volume not created")
    };
    (dir, db, record.root)
}
