//! Typed access to the tables of [`super::schema`], shared by the state machine (writes) and
//! the queries (reads). Helpers are generic over redb's `ReadableTable`, so one lookup serves
//! both a write transaction and a read snapshot.

use super::schema::*;
use super::DbResult;
use dfs_common::proto::meta::{Attr, FileKind};
use dfs_common::{FsError, FsResult, InodeId, Timestamp, VolumeId};
use redb::{
    Key, ReadOnlyTable, ReadTransaction, ReadableTable, Table, TableDefinition, Value,
    WriteTransaction,
};
use std::cell::OnceCell;

/// A table of a write transaction, opened at its first use: a command touches a few of the
/// tables, and opening one costs about as much as a lookup in it.
pub struct WriteTable<'t, K: Key + 'static, V: Value + 'static> {
    tx: &'t WriteTransaction,
    definition: TableDefinition<'static, K, V>,
    table: Option<Table<'t, K, V>>,
}

impl<'t, K: Key + 'static, V: Value + 'static> WriteTable<'t, K, V> {
    fn new(tx: &'t WriteTransaction, definition: TableDefinition<'static, K, V>) -> Self {
        WriteTable {
            tx,
            definition,
            table: None,
        }
    }

    /// The table, opened now if this is its first use in the transaction.
    pub fn table(&mut self) -> FsResult<&mut Table<'t, K, V>> {
        let table = match self.table.take() {
            Some(table) => table,
            None => self.tx.open_table(self.definition).db()?,
        };
        Ok(self.table.insert(table))
    }
}

/// Every table of one write transaction, each opened at its first use.
pub struct WriteTables<'t> {
    pub volumes: WriteTable<'t, &'static str, &'static [u8]>,
    pub inodes: WriteTable<'t, u64, &'static [u8]>,
    pub dentries: WriteTable<'t, (u64, &'static str), (u64, u8)>,
    pub extents: WriteTable<'t, (u64, u64), (u64, u64, u64)>,
    pub blocks: WriteTable<'t, u64, &'static [u8]>,
    pub inline_data: WriteTable<'t, u64, &'static [u8]>,
    pub inline_pieces: WriteTable<'t, (u64, u32), &'static [u8]>,
    pub inline_tails: WriteTable<'t, u64, &'static [u8]>,
    pub inline_bytes: WriteTable<'t, u64, u64>,
    pub xattrs: WriteTable<'t, (u64, &'static str), &'static [u8]>,
    pub servers: WriteTable<'t, u64, &'static [u8]>,
    pub counters: WriteTable<'t, &'static str, u64>,
    pub draining: WriteTable<'t, u64, i64>,
    pub volume_state: WriteTable<'t, u64, &'static [u8]>,
    pub clients: WriteTable<'t, &'static str, &'static [u8]>,
    pub calls: WriteTable<'t, (u64, u64), &'static [u8]>,
    pub server_certs: WriteTable<'t, u64, [u8; 32]>,
    pub locks: WriteTable<'t, u64, &'static [u8]>,
    pub lock_sessions: WriteTable<'t, u64, u8>,
    pub orphans: WriteTable<'t, u64, u64>,
    pub volume_ids: WriteTable<'t, u64, &'static str>,
    /// Set while a `KeepOrphans` command applies: a regular file losing its last name is kept
    /// as an orphan rather than freed.
    pub keep_orphans: bool,
    /// The orphans the command applying now made.
    pub orphaned: Vec<InodeId>,
}

impl<'t> WriteTables<'t> {
    /// The tables of `tx`; none is opened until it is used.
    pub fn open(tx: &'t WriteTransaction) -> Self {
        WriteTables {
            volumes: WriteTable::new(tx, VOLUMES),
            inodes: WriteTable::new(tx, INODES),
            dentries: WriteTable::new(tx, DENTRIES),
            extents: WriteTable::new(tx, EXTENTS),
            blocks: WriteTable::new(tx, BLOCKS),
            inline_data: WriteTable::new(tx, INLINE_DATA),
            inline_pieces: WriteTable::new(tx, INLINE_PIECES),
            inline_tails: WriteTable::new(tx, INLINE_TAILS),
            inline_bytes: WriteTable::new(tx, INLINE_BYTES),
            xattrs: WriteTable::new(tx, XATTRS),
            servers: WriteTable::new(tx, SERVERS),
            counters: WriteTable::new(tx, COUNTERS),
            draining: WriteTable::new(tx, DRAINING),
            volume_state: WriteTable::new(tx, VOLUME_STATE),
            clients: WriteTable::new(tx, CLIENTS),
            calls: WriteTable::new(tx, CALLS),
            server_certs: WriteTable::new(tx, SERVER_CERTS),
            locks: WriteTable::new(tx, LOCKS),
            lock_sessions: WriteTable::new(tx, LOCK_SESSIONS),
            orphans: WriteTable::new(tx, ORPHANS),
            volume_ids: WriteTable::new(tx, VOLUME_IDS),
            keep_orphans: false,
            orphaned: Vec::new(),
        }
    }

    /// Creates every table a new store lacks (a read finds no table never written).
    pub fn create_all(tx: &'t WriteTransaction) -> FsResult<()> {
        let mut t = WriteTables::open(tx);
        t.volumes.table()?;
        t.inodes.table()?;
        t.dentries.table()?;
        t.extents.table()?;
        t.blocks.table()?;
        t.inline_data.table()?;
        t.inline_pieces.table()?;
        t.inline_tails.table()?;
        t.inline_bytes.table()?;
        t.xattrs.table()?;
        t.servers.table()?;
        t.counters.table()?;
        t.draining.table()?;
        t.volume_state.table()?;
        t.clients.table()?;
        t.calls.table()?;
        t.server_certs.table()?;
        t.locks.table()?;
        t.lock_sessions.table()?;
        t.orphans.table()?;
        t.volume_ids.table()?;
        Ok(())
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
        let latest = self
            .counters
            .table()?
            .get(CLOCK)
            .db()?
            .map_or(0, |v| v.value());
        if latest >= stamped {
            return Ok(Timestamp {
                secs: (latest / 1_000_000_000) as i64,
                nanos: (latest % 1_000_000_000) as u32,
            });
        }
        self.counters.table()?.insert(CLOCK, stamped).db()?;
        Ok(now)
    }

    /// Takes the next value of a counter; ids start at `first` and are never reused.
    pub fn next_id(&mut self, counter: &str, first: u64) -> FsResult<u64> {
        let id = self
            .counters
            .table()?
            .get(counter)
            .db()?
            .map(|v| v.value())
            .unwrap_or(first);
        self.counters.table()?.insert(counter, id + 1).db()?;
        Ok(id)
    }

    pub fn put_inode(&mut self, ino: InodeId, rec: &InodeRecord) -> FsResult<()> {
        self.inodes
            .table()?
            .insert(ino.0, encode(rec).as_slice())
            .db()?;
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

/// The volume with id `id`, and its name.
pub fn get_volume_by_id(
    volumes: &impl ReadableTable<&'static str, &'static [u8]>,
    ids: &impl ReadableTable<u64, &'static str>,
    id: VolumeId,
) -> FsResult<(String, VolumeRecord)> {
    if let Some(name) = ids.get(id.0).db()? {
        let name = name.value();
        if let Some(value) = volumes.get(name).db()? {
            let rec: VolumeRecord = decode(value.value())?;
            if rec.id == id {
                return Ok((name.to_string(), rec));
            }
        }
    }
    // The index is derived (made at open and after a snapshot is installed): should it miss
    // the volume or name another one, every volume is looked at, so no answer rests on it.
    for item in volumes.iter().db()? {
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
    attr.has_xattrs = has_xattrs(xattrs, ino)?;
    Ok(attr)
}

/// Whether `ino` has any extended attribute.
pub fn has_xattrs(
    xattrs: &impl ReadableTable<(u64, &'static str), &'static [u8]>,
    ino: InodeId,
) -> FsResult<bool> {
    Ok(xattrs
        .range((ino.0, "")..(ino.0 + 1, ""))
        .db()?
        .next()
        .is_some())
}

/// A table of a read snapshot, opened at its first use.
pub struct ReadTable<'a, K: Key + 'static, V: Value + 'static> {
    tx: &'a ReadTransaction,
    definition: TableDefinition<'static, K, V>,
    table: OnceCell<ReadOnlyTable<K, V>>,
}

impl<'a, K: Key + 'static, V: Value + 'static> ReadTable<'a, K, V> {
    fn new(tx: &'a ReadTransaction, definition: TableDefinition<'static, K, V>) -> Self {
        ReadTable {
            tx,
            definition,
            table: OnceCell::new(),
        }
    }

    /// The table, opened now if this is its first use in the snapshot.
    pub fn table(&self) -> FsResult<&ReadOnlyTable<K, V>> {
        if let Some(table) = self.table.get() {
            return Ok(table);
        }
        let table = self.tx.open_table(self.definition).db()?;
        Ok(self.table.get_or_init(|| table))
    }
}

/// The tables of one read snapshot, each opened at its first use: a query reads a few.
pub struct ReadTables<'a> {
    pub volumes: ReadTable<'a, &'static str, &'static [u8]>,
    pub inodes: ReadTable<'a, u64, &'static [u8]>,
    pub dentries: ReadTable<'a, (u64, &'static str), (u64, u8)>,
    pub extents: ReadTable<'a, (u64, u64), (u64, u64, u64)>,
    pub blocks: ReadTable<'a, u64, &'static [u8]>,
    pub inline_data: ReadTable<'a, u64, &'static [u8]>,
    pub inline_pieces: ReadTable<'a, (u64, u32), &'static [u8]>,
    pub inline_tails: ReadTable<'a, u64, &'static [u8]>,
    pub inline_bytes: ReadTable<'a, u64, u64>,
    pub xattrs: ReadTable<'a, (u64, &'static str), &'static [u8]>,
    pub servers: ReadTable<'a, u64, &'static [u8]>,
    pub draining: ReadTable<'a, u64, i64>,
    pub volume_state: ReadTable<'a, u64, &'static [u8]>,
    pub clients: ReadTable<'a, &'static str, &'static [u8]>,
    pub server_certs: ReadTable<'a, u64, [u8; 32]>,
    pub locks: ReadTable<'a, u64, &'static [u8]>,
    pub lock_sessions: ReadTable<'a, u64, u8>,
    pub orphans: ReadTable<'a, u64, u64>,
    pub volume_ids: ReadTable<'a, u64, &'static str>,
}

impl<'a> ReadTables<'a> {
    /// The tables of snapshot `tx`; none is opened until it is used.
    pub fn open(tx: &'a ReadTransaction) -> Self {
        ReadTables {
            volumes: ReadTable::new(tx, VOLUMES),
            inodes: ReadTable::new(tx, INODES),
            dentries: ReadTable::new(tx, DENTRIES),
            extents: ReadTable::new(tx, EXTENTS),
            blocks: ReadTable::new(tx, BLOCKS),
            inline_data: ReadTable::new(tx, INLINE_DATA),
            inline_pieces: ReadTable::new(tx, INLINE_PIECES),
            inline_tails: ReadTable::new(tx, INLINE_TAILS),
            inline_bytes: ReadTable::new(tx, INLINE_BYTES),
            xattrs: ReadTable::new(tx, XATTRS),
            servers: ReadTable::new(tx, SERVERS),
            draining: ReadTable::new(tx, DRAINING),
            volume_state: ReadTable::new(tx, VOLUME_STATE),
            clients: ReadTable::new(tx, CLIENTS),
            server_certs: ReadTable::new(tx, SERVER_CERTS),
            locks: ReadTable::new(tx, LOCKS),
            lock_sessions: ReadTable::new(tx, LOCK_SESSIONS),
            orphans: ReadTable::new(tx, ORPHANS),
            volume_ids: ReadTable::new(tx, VOLUME_IDS),
        }
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
