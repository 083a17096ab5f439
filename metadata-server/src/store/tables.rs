//! Typed access to the tables of [`super::schema`], shared by the state machine (writes) and
//! the queries (reads). Helpers are generic over redb's `ReadableTable`, so one lookup serves
//! both a write transaction and a read snapshot.

use super::schema::*;
use super::DbResult;
use dfs_common::proto::meta::{Attr, FileKind};
use dfs_common::{FsError, FsResult, InodeId, Timestamp, VolumeId};
use redb::{ReadTransaction, ReadableTable, Table, WriteTransaction};

pub type InodeTable<'t> = Table<'t, u64, &'static [u8]>;

/// Every table, opened for writing within one transaction.
pub struct WriteTables<'t> {
    pub volumes: Table<'t, &'static str, &'static [u8]>,
    pub inodes: InodeTable<'t>,
    pub dentries: Table<'t, (u64, &'static str), (u64, u8)>,
    pub extents: Table<'t, (u64, u64), (u64, u64, u64)>,
    pub blocks: Table<'t, u64, &'static [u8]>,
    pub inline_data: Table<'t, u64, &'static [u8]>,
    pub inline_bytes: Table<'t, u64, u64>,
    pub xattrs: Table<'t, (u64, &'static str), &'static [u8]>,
    pub servers: Table<'t, u64, &'static [u8]>,
    pub counters: Table<'t, &'static str, u64>,
    pub draining: Table<'t, u64, i64>,
    pub volume_state: Table<'t, u64, &'static [u8]>,
    pub clients: Table<'t, &'static str, &'static [u8]>,
    pub calls: Table<'t, (u64, u64), &'static [u8]>,
    pub server_certs: Table<'t, u64, [u8; 32]>,
    pub locks: Table<'t, u64, &'static [u8]>,
    pub lock_sessions: Table<'t, u64, u8>,
}

impl<'t> WriteTables<'t> {
    pub fn open(tx: &'t WriteTransaction) -> FsResult<Self> {
        Ok(WriteTables {
            volumes: tx.open_table(VOLUMES).db()?,
            inodes: tx.open_table(INODES).db()?,
            dentries: tx.open_table(DENTRIES).db()?,
            extents: tx.open_table(EXTENTS).db()?,
            blocks: tx.open_table(BLOCKS).db()?,
            inline_data: tx.open_table(INLINE_DATA).db()?,
            inline_bytes: tx.open_table(INLINE_BYTES).db()?,
            xattrs: tx.open_table(XATTRS).db()?,
            servers: tx.open_table(SERVERS).db()?,
            counters: tx.open_table(COUNTERS).db()?,
            draining: tx.open_table(DRAINING).db()?,
            volume_state: tx.open_table(VOLUME_STATE).db()?,
            clients: tx.open_table(CLIENTS).db()?,
            calls: tx.open_table(CALLS).db()?,
            server_certs: tx.open_table(SERVER_CERTS).db()?,
            locks: tx.open_table(LOCKS).db()?,
            lock_sessions: tx.open_table(LOCK_SESSIONS).db()?,
        })
    }

    /// The time a command applies at: its own, or the latest applied before it if that is
    /// later. A new leader whose clock is behind the old one's never moves mtimes, call
    /// expiry or grace periods backwards.
    pub fn advance_clock(&mut self, now: Timestamp) -> FsResult<Timestamp> {
        const CLOCK: &str = "clock";
        let Ok(secs) = u64::try_from(now.secs) else {
            return Ok(now);
        };
        let stamped = secs.saturating_mul(1_000_000_000) + u64::from(now.nanos);
        let latest = self.counters.get(CLOCK).db()?.map_or(0, |v| v.value());
        if latest >= stamped {
            return Ok(Timestamp {
                secs: (latest / 1_000_000_000) as i64,
                nanos: (latest % 1_000_000_000) as u32,
            });
        }
        self.counters.insert(CLOCK, stamped).db()?;
        Ok(now)
    }

    /// Takes the next value of a counter; ids start at `first` and are never reused.
    pub fn next_id(&mut self, counter: &str, first: u64) -> FsResult<u64> {
        let id = self
            .counters
            .get(counter)
            .db()?
            .map(|v| v.value())
            .unwrap_or(first);
        self.counters.insert(counter, id + 1).db()?;
        Ok(id)
    }

    pub fn put_inode(&mut self, ino: InodeId, rec: &InodeRecord) -> FsResult<()> {
        self.inodes.insert(ino.0, encode(rec).as_slice()).db()?;
        Ok(())
    }
}

/// Reads an inode; `NotFound` if it does not exist.
pub fn get_inode(
    t: &impl ReadableTable<u64, &'static [u8]>,
    ino: InodeId,
) -> FsResult<InodeRecord> {
    match t.get(ino.0).db()? {
        Some(v) => decode(v.value()),
        None => Err(FsError::NotFound),
    }
}

/// Reads an inode that must be a directory.
pub fn get_dir(t: &impl ReadableTable<u64, &'static [u8]>, ino: InodeId) -> FsResult<InodeRecord> {
    let rec = get_inode(t, ino)?;
    if rec.kind != FileKind::Dir {
        return Err(FsError::NotDir);
    }
    Ok(rec)
}

/// The child named `name` in `parent`, if any.
pub fn lookup(
    t: &impl ReadableTable<(u64, &'static str), (u64, u8)>,
    parent: InodeId,
    name: &str,
) -> FsResult<Option<(InodeId, FileKind)>> {
    match t.get((parent.0, name)).db()? {
        Some(v) => {
            let (ino, kind) = v.value();
            Ok(Some((InodeId(ino), kind_from_code(kind)?)))
        }
        None => Ok(None),
    }
}

/// Whether a directory has any entry.
pub fn dir_is_empty(
    t: &impl ReadableTable<(u64, &'static str), (u64, u8)>,
    dir: InodeId,
) -> FsResult<bool> {
    let mut range = t.range((dir.0, "")..(dir.0 + 1, "")).db()?;
    Ok(range.next().is_none())
}

pub fn get_volume_by_id(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    id: VolumeId,
) -> FsResult<(String, VolumeRecord)> {
    for item in t.iter().db()? {
        let (name, value) = item.db()?;
        let rec: VolumeRecord = decode(value.value())?;
        if rec.id == id {
            return Ok((name.value().to_string(), rec));
        }
    }
    Err(FsError::Corrupt(format!(
        "volume {id} is referenced but missing"
    )))
}

/// The attributes of an inode, not knowing whether it has extended attributes (see
/// [`attr_of`]).
pub fn to_attr(ino: InodeId, rec: &InodeRecord) -> Attr {
    Attr {
        ino,
        volume: rec.volume,
        kind: rec.kind,
        mode: rec.mode,
        uid: rec.uid,
        gid: rec.gid,
        nlink: rec.nlink,
        size: rec.size,
        atime: rec.atime,
        mtime: rec.mtime,
        ctime: rec.ctime,
        crtime: rec.crtime,
        rdev: rec.rdev,
        has_xattrs: true,
    }
}

/// The attributes of an inode, with whether it has extended attributes (one more seek).
pub fn attr_of(
    xattrs: &impl ReadableTable<(u64, &'static str), &'static [u8]>,
    ino: InodeId,
    rec: &InodeRecord,
) -> FsResult<Attr> {
    let mut attr = to_attr(ino, rec);
    attr.has_xattrs = xattrs
        .range((ino.0, "")..(ino.0 + 1, ""))
        .db()?
        .next()
        .is_some();
    Ok(attr)
}

/// Read-only handles on the tables the queries use.
pub struct ReadTables {
    pub volumes: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    pub inodes: redb::ReadOnlyTable<u64, &'static [u8]>,
    pub dentries: redb::ReadOnlyTable<(u64, &'static str), (u64, u8)>,
    pub extents: redb::ReadOnlyTable<(u64, u64), (u64, u64, u64)>,
    pub blocks: redb::ReadOnlyTable<u64, &'static [u8]>,
    pub inline_data: redb::ReadOnlyTable<u64, &'static [u8]>,
    pub inline_bytes: redb::ReadOnlyTable<u64, u64>,
    pub xattrs: redb::ReadOnlyTable<(u64, &'static str), &'static [u8]>,
    pub servers: redb::ReadOnlyTable<u64, &'static [u8]>,
    pub draining: redb::ReadOnlyTable<u64, i64>,
    pub volume_state: redb::ReadOnlyTable<u64, &'static [u8]>,
    pub clients: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    pub server_certs: redb::ReadOnlyTable<u64, [u8; 32]>,
    pub locks: redb::ReadOnlyTable<u64, &'static [u8]>,
    pub lock_sessions: redb::ReadOnlyTable<u64, u8>,
}

impl ReadTables {
    pub fn open(tx: &ReadTransaction) -> FsResult<Self> {
        Ok(ReadTables {
            volumes: tx.open_table(VOLUMES).db()?,
            inodes: tx.open_table(INODES).db()?,
            dentries: tx.open_table(DENTRIES).db()?,
            extents: tx.open_table(EXTENTS).db()?,
            blocks: tx.open_table(BLOCKS).db()?,
            inline_data: tx.open_table(INLINE_DATA).db()?,
            inline_bytes: tx.open_table(INLINE_BYTES).db()?,
            xattrs: tx.open_table(XATTRS).db()?,
            servers: tx.open_table(SERVERS).db()?,
            draining: tx.open_table(DRAINING).db()?,
            volume_state: tx.open_table(VOLUME_STATE).db()?,
            clients: tx.open_table(CLIENTS).db()?,
            server_certs: tx.open_table(SERVER_CERTS).db()?,
            locks: tx.open_table(LOCKS).db()?,
            lock_sessions: tx.open_table(LOCK_SESSIONS).db()?,
        })
    }
}

/// A volume's limits and usage; a volume without a record has none and uses nothing.
pub fn get_volume_state(
    t: &impl ReadableTable<u64, &'static [u8]>,
    id: VolumeId,
) -> FsResult<VolumeState> {
    match t.get(id.0).db()? {
        Some(v) => decode(v.value()),
        None => Ok(VolumeState::default()),
    }
}
