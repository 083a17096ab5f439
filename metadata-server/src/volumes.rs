//! Volumes in the state machine: create, change limits, delete, and the exact usage that
//! quotas are checked against.
//!
//! Usage lives in the `volume_state` table and is changed by the same transaction as the
//! mutation that causes it, so it is exact after any crash. A change that would take usage
//! past a quota fails with `QuotaExceeded` (EDQUOT) and, like every failed command, leaves no
//! trace. Shrinking is always allowed, even above a quota lowered after the fact.

use crate::command::{Op, Outcome};
use crate::layout::RefDelta;
use crate::state_machine::{purge_inode, MIN_BLOCK_SIZE};
use crate::store::schema::*;
use crate::store::tables::{get_inode, get_volume_state, WriteTables};
use crate::store::DbResult;
use dfs_common::proto::meta::*;
use dfs_common::proto::MAX_BLOCK_SIZE;
use dfs_common::{EcPolicy, FsError, FsResult, InodeId, Timestamp, VolumeId};
use redb::{ReadableTable, WriteTransaction};

/// Volume names appear in mount specs and paths: keep them plain.
pub fn validate_volume_name(name: &str) -> FsResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(FsError::invalid(format!(
            "invalid volume name {name:?}: use 1-64 letters, digits, '-', '_' or '.'"
        )))
    }
}

pub fn volume_info(name: &str, rec: &VolumeRecord, state: &VolumeState) -> VolumeInfo {
    VolumeInfo {
        id: rec.id,
        name: name.to_string(),
        root: rec.root,
        policy: rec.policy,
        block_size: rec.block_size,
        created: rec.created,
        limits: state.limits,
        used_bytes: state.bytes,
        used_inodes: state.inodes,
    }
}

fn get_volume(t: &mut WriteTables, name: &str) -> FsResult<VolumeRecord> {
    match t.volumes.table()?.get(name).db()? {
        Some(v) => decode(v.value()),
        None => Err(FsError::NotFound),
    }
}

fn put_state(t: &mut WriteTables, id: VolumeId, state: &VolumeState) -> FsResult<()> {
    t.volume_state
        .table()?
        .insert(id.0, encode(state).as_slice())
        .db()?;
    Ok(())
}

pub fn create(
    t: &mut WriteTables,
    now: Timestamp,
    name: &str,
    policy: EcPolicy,
    block_size: u64,
    limits: VolumeLimits,
) -> FsResult<Outcome> {
    validate_volume_name(name)?;
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(FsError::invalid(format!(
            "block size {block_size} out of range {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE}"
        )));
    }
    if t.volumes.table()?.get(name).db()?.is_some() {
        return Err(FsError::Exists);
    }
    let id = VolumeId(t.next_id(NEXT_VOLUME, 1)?);
    // Inode 1 is never handed out: mounts show their volume's root as inode 1.
    let root = InodeId(t.next_id(NEXT_INODE, 2)?);
    let rec = VolumeRecord {
        id,
        root,
        policy,
        block_size,
        created: now,
    };
    t.volumes
        .table()?
        .insert(name, encode(&rec).as_slice())
        .db()?;
    t.volume_ids.table()?.insert(id.0, name).db()?;
    let state = VolumeState {
        limits,
        bytes: 0,
        inodes: 0,
    };
    put_state(t, id, &state)?;
    let root_rec = InodeRecord {
        volume: id,
        kind: FileKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        nlink: 2,
        size: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        rdev: 0,
        parent: root,
        target: None,
    };
    t.put_inode(root, &root_rec)?;
    Ok(Outcome::Volume {
        name: name.to_string(),
        record: rec,
        state,
    })
}

pub fn set(t: &mut WriteTables, name: &str, change: &VolumeChange) -> FsResult<Outcome> {
    let rec = get_volume(t, name)?;
    let mut state = get_volume_state(t.volume_state.table()?, rec.id)?;
    if let Some(q) = change.quota_bytes {
        state.limits.quota_bytes = q;
    }
    if let Some(q) = change.quota_inodes {
        state.limits.quota_inodes = q;
    }
    if let Some(ro) = change.read_only {
        state.limits.read_only = ro;
    }
    if let Some(full) = change.require_full_writes {
        state.limits.require_full_writes = full;
    }
    put_state(t, rec.id, &state)?;
    Ok(Outcome::Volume {
        name: name.to_string(),
        record: rec,
        state,
    })
}

/// Deletes a volume. Its blocks lose their references and go to the garbage collector.
pub fn delete(t: &mut WriteTables, name: &str, force: bool) -> FsResult<Outcome> {
    let rec = get_volume(t, name)?;
    let state = get_volume_state(t.volume_state.table()?, rec.id)?;
    if state.inodes > 0 && !force {
        return Err(FsError::NotEmpty);
    }
    // One pass over the inode table finds the volume's inodes; then each is purged along with
    // the entries of the directories among them.
    let mut inodes = Vec::new();
    for item in t.inodes.table()?.iter().db()? {
        let (ino, value) = item.db()?;
        let inode: InodeRecord = decode(value.value())?;
        if inode.volume == rec.id {
            inodes.push((InodeId(ino.value()), inode.kind));
        }
    }
    let mut refs = RefDelta::default();
    for (ino, kind) in inodes {
        if kind == FileKind::Dir {
            let names: Vec<String> = t
                .dentries
                .table()?
                .range((ino.0, "")..(ino.0 + 1, ""))
                .db()?
                .map(|item| item.db().map(|(k, _)| k.value().1.to_string()))
                .collect::<FsResult<_>>()?;
            for entry in names {
                t.dentries.table()?.remove((ino.0, entry.as_str())).db()?;
            }
        }
        purge_inode(t, ino, &mut refs)?;
    }
    refs.apply(t)?;
    t.volumes.table()?.remove(name).db()?;
    t.volume_ids.table()?.remove(rec.id.0).db()?;
    t.volume_state.table()?.remove(rec.id.0).db()?;
    Ok(Outcome::Done)
}

/// Adds `bytes` and `inodes` (either may be negative) to a volume's usage, refusing growth
/// past a quota.
pub fn charge(t: &mut WriteTables, volume: VolumeId, bytes: i64, inodes: i64) -> FsResult<()> {
    if bytes == 0 && inodes == 0 {
        return Ok(());
    }
    let mut state = get_volume_state(t.volume_state.table()?, volume)?;
    let new_bytes = state.bytes.saturating_add_signed(bytes);
    let new_inodes = state.inodes.saturating_add_signed(inodes);
    if bytes > 0 {
        if let Some(quota) = state.limits.quota_bytes.filter(|&q| new_bytes > q) {
            return Err(FsError::QuotaExceeded(format!(
                "volume byte quota of {quota} reached ({} used)",
                state.bytes
            )));
        }
    }
    if inodes > 0 {
        if let Some(quota) = state.limits.quota_inodes.filter(|&q| new_inodes > q) {
            return Err(FsError::QuotaExceeded(format!(
                "volume inode quota of {quota} reached"
            )));
        }
    }
    state.bytes = new_bytes;
    state.inodes = new_inodes;
    put_state(t, volume, &state)
}

/// The size change of a regular file, as usage counts it.
pub fn size_delta(old: u64, new: u64) -> i64 {
    (new as i128 - old as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// The volume a namespace or data mutation changes, if it names an inode that exists.
/// Volume-wide, membership and maintenance operations are not refused by a read-only flag
/// (repair must go on; an administrator must be able to clear the flag).
fn volume_of(t: &mut WriteTables, op: &Op) -> FsResult<Option<VolumeId>> {
    let ino = match op {
        Op::MakeNode { parent, .. }
        | Op::Unlink { parent, .. }
        | Op::UnlinkOrHide { parent, .. }
        | Op::Rmdir { parent, .. }
        | Op::Rename { parent, .. } => *parent,
        Op::Link { ino, .. }
        | Op::SetAttr { ino, .. }
        | Op::SetXattr { ino, .. }
        | Op::RemoveXattr { ino, .. }
        | Op::AllocateBlock { ino, .. }
        | Op::CommitWrite { ino, .. }
        | Op::WriteInline { ino, .. }
        | Op::KeepInline { ino, .. }
        | Op::CommitIfUnchanged { ino, .. } => *ino,
        Op::CreateVolume { .. }
        | Op::SetVolume { .. }
        | Op::DeleteVolume { .. }
        | Op::AddClient { .. }
        | Op::RevokeClient { .. }
        | Op::RegisterServer { .. }
        | Op::BindServer { .. }
        | Op::ReplaceShard { .. }
        | Op::ReportBadShard { .. }
        | Op::MoveShard { .. }
        | Op::DropBlocks { .. }
        | Op::DrainServer { .. }
        | Op::RemoveServer { .. }
        | Op::ExpireCalls
        | Op::SetLocks { .. }
        | Op::ReapOrphans { .. } => return Ok(None),
        Op::KeepOrphans(op) => return volume_of(t, op),
    };
    match get_inode(t.inodes.table()?, ino) {
        Ok(rec) => Ok(Some(rec.volume)),
        Err(FsError::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Refuses any change to a read-only volume with EROFS.
pub fn check_writable(t: &mut WriteTables, op: &Op) -> FsResult<()> {
    if let Some(volume) = volume_of(t, op)? {
        if get_volume_state(t.volume_state.table()?, volume)?
            .limits
            .read_only
        {
            return Err(FsError::ReadOnly);
        }
    }
    Ok(())
}

/// Makes the index of volumes by id ([`VOLUME_IDS`](crate::store::schema::VOLUME_IDS)) say
/// exactly what `volumes` holds: at open, for a store from before the index, and after a
/// snapshot is installed (snapshots do not carry it). Writes only when it differs.
pub fn index_ids(tx: &WriteTransaction) -> FsResult<()> {
    let mut t = WriteTables::open(tx);
    let mut want = Vec::new();
    for item in t.volumes.table()?.iter().db()? {
        let (name, value) = item.db()?;
        let rec: VolumeRecord = decode(value.value())?;
        want.push((rec.id.0, name.value().to_string()));
    }
    want.sort();
    let mut have = Vec::new();
    for item in t.volume_ids.table()?.iter().db()? {
        let (id, name) = item.db()?;
        have.push((id.value(), name.value().to_string()));
    }
    if have == want {
        return Ok(());
    }
    let ids = t.volume_ids.table()?;
    ids.retain(|_, _| false).db()?;
    for (id, name) in &want {
        ids.insert(*id, name.as_str()).db()?;
    }
    Ok(())
}

/// Gives every volume without a `volume_state` record (made before the table existed) one,
/// with its usage counted from the inode table.
pub fn backfill(tx: &WriteTransaction) -> FsResult<()> {
    let mut t = WriteTables::open(tx);
    let mut missing = Vec::new();
    for item in t.volumes.table()?.iter().db()? {
        let (_, value) = item.db()?;
        let rec: VolumeRecord = decode(value.value())?;
        if t.volume_state.table()?.get(rec.id.0).db()?.is_none() {
            missing.push(rec.id);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let mut states: Vec<VolumeState> = vec![VolumeState::default(); missing.len()];
    for item in t.inodes.table()?.iter().db()? {
        let (_, value) = item.db()?;
        let inode: InodeRecord = decode(value.value())?;
        if let Some(i) = missing.iter().position(|&v| v == inode.volume) {
            states[i].inodes += 1;
            if inode.kind == FileKind::File {
                states[i].bytes += inode.size;
            }
        }
    }
    for (id, mut state) in missing.into_iter().zip(states) {
        // The root directory is not counted.
        state.inodes = state.inodes.saturating_sub(1);
        tracing::info!(volume = %id, bytes = state.bytes, inodes = state.inodes, "volume usage counted");
        put_state(&mut t, id, &state)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store;
    use crate::testing::{make_node, run};
    use redb::ReadableDatabase;

    fn state(db: &redb::Database, id: VolumeId) -> VolumeState {
        let tx = db.begin_read().unwrap();
        get_volume_state(&tx.open_table(VOLUME_STATE).unwrap(), id).unwrap()
    }

    /// Volumes are found by id through the index, which creates and deletes keep, a reopen
    /// makes again when it is missing, and without which lookups still succeed.
    #[test]
    fn volumes_are_found_by_id_through_an_index_kept_and_made_at_open() {
        use crate::store::tables::get_volume_by_id;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let db = store::open(&path).unwrap();
        let create = |name: &str| {
            let op = Op::CreateVolume {
                name: name.into(),
                policy: "2+1".parse().unwrap(),
                block_size: 1 << 20,
                limits: VolumeLimits::default(),
            };
            let Ok(Outcome::Volume { record, .. }) = run(&db, op) else {
                panic!("{name} not made")
            };
            record.id
        };
        let ids: Vec<VolumeId> = ["a", "b", "c"].into_iter().map(create).collect();
        let delete = Op::DeleteVolume {
            name: "b".into(),
            force: false,
        };
        run(&db, delete).unwrap();
        let index = |db: &redb::Database| -> Vec<(u64, String)> {
            let tx = db.begin_read().unwrap();
            let table = tx.open_table(VOLUME_IDS).unwrap();
            let rows = table.iter().unwrap();
            rows.map(|r| {
                let (id, name) = r.unwrap();
                (id.value(), name.value().to_string())
            })
            .collect()
        };
        let found = |db: &redb::Database, id: VolumeId| {
            let tx = db.begin_read().unwrap();
            let volumes = tx.open_table(VOLUMES).unwrap();
            let ids = tx.open_table(VOLUME_IDS).unwrap();
            get_volume_by_id(&volumes, &ids, id).map(|(name, rec)| (name, rec.id))
        };
        let kept = vec![(ids[0].0, "a".to_string()), (ids[2].0, "c".to_string())];
        assert_eq!(index(&db), kept);
        assert_eq!(found(&db, ids[2]), Ok(("c".into(), ids[2])));
        assert!(matches!(found(&db, ids[1]), Err(FsError::Corrupt(_))));

        // A store without the index: lookups go through every volume, and a reopen makes it.
        let tx = db.begin_write().unwrap();
        tx.open_table(VOLUME_IDS)
            .unwrap()
            .retain(|_, _| false)
            .unwrap();
        tx.commit().unwrap();
        assert_eq!(index(&db), Vec::new());
        assert_eq!(found(&db, ids[0]), Ok(("a".into(), ids[0])));
        drop(db);
        let db = store::open(&path).unwrap();
        assert_eq!(index(&db), kept);
    }

    #[test]
    fn usage_is_exact_and_backfilled_for_old_volumes() {
        let dir = tempfile::tempdir().unwrap();
        let db = store::open(&dir.path().join("meta.redb")).unwrap();
        let limits = VolumeLimits {
            quota_inodes: Some(3),
            ..Default::default()
        };
        let Ok(Outcome::Volume { record: v, .. }) = run(
            &db,
            Op::CreateVolume {
                name: "v".into(),
                policy: "2+1".parse().unwrap(),
                block_size: 1 << 20,
                limits,
            },
        ) else {
            panic!("volume not created")
        };
        let make = |name: &str, kind| make_node(v.root, name, kind);
        let Ok(Outcome::Node { ino: file, .. }) = run(&db, make("f", FileKind::File)) else {
            panic!("file not created")
        };
        run(&db, make("d", FileKind::Dir)).unwrap();
        let set_size = |size| Op::SetAttr {
            ino: file,
            set: SetAttr {
                size: Some(size),
                ..Default::default()
            },
        };
        run(&db, set_size(5000)).unwrap();
        assert_eq!(state(&db, v.id).bytes, 5000);
        assert_eq!(state(&db, v.id).inodes, 2);
        run(&db, make("g", FileKind::File)).unwrap();
        assert!(matches!(
            run(&db, make("h", FileKind::File)),
            Err(FsError::QuotaExceeded(_))
        ));
        // A failed command changes nothing.
        assert_eq!(state(&db, v.id).inodes, 3);
        run(&db, set_size(1000)).unwrap();
        run(
            &db,
            Op::Unlink {
                parent: v.root,
                name: "g".into(),
            },
        )
        .unwrap();
        let expected = VolumeState {
            limits,
            bytes: 1000,
            inodes: 2,
        };
        assert_eq!(state(&db, v.id), expected);

        // A database from before the usage table: the record is rebuilt on open.
        let tx = db.begin_write().unwrap();
        tx.open_table(VOLUME_STATE).unwrap().remove(v.id.0).unwrap();
        tx.commit().unwrap();
        assert_eq!(state(&db, v.id), VolumeState::default());
        drop(db);
        let db = store::open(&dir.path().join("meta.redb")).unwrap();
        let rebuilt = VolumeState {
            limits: VolumeLimits::default(),
            ..expected
        };
        assert_eq!(state(&db, v.id), rebuilt);
    }
}
