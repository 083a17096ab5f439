//! The state machine behind the metadata log: committed commands applied to redb.
//!
//! Each call applies a run of committed entries in one write transaction and records the last
//! one (and the group's membership) in the `raft` table of the same transaction, so redb
//! always knows how far it got. Those commits skip the fsync: the log already holds the
//! entries durably. A checkpoint (a durable commit) follows every [`CHECKPOINT_EVERY`] entries
//! or [`CHECKPOINT_INTERVAL`], precedes every snapshot and ends a clean shutdown; after a crash
//! redb is back at its last checkpoint and Raft applies the entries after it again.
//!
//! A command that fails leaves no trace: redb cannot take a savepoint in a dirty transaction,
//! so the transaction is dropped, the entries before the failed one are applied again in a
//! fresh one, and the failed entry is recorded as applied (with its error as the outcome).
//! Commands are deterministic, so the entries applied again give the same outcomes.
//!
//! A snapshot is the whole store copied, table by table, from one read transaction into a fresh
//! redb file; installing one replaces every table in one durable transaction.

use super::snapshot_file::SnapshotFile;
use super::{
    storage_error, Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::command::Outcome;
use crate::state_machine;
use crate::store::schema::{self, *};
use crate::store::tables::WriteTables;
use crate::store::DbResult;
use dfs_common::{FsError, FsResult};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Entries applied between checkpoints, at most.
pub const CHECKPOINT_EVERY: u64 = 20_000;
/// Time between checkpoints while entries are being applied, at most.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);
/// Entries the log keeps between snapshots.
pub const SNAPSHOT_EVERY: u64 = 100_000;
/// Bytes of log records between snapshots (or half the store's file, if that is more): the
/// bound that matters when entries are large (small files written inline).
pub const SNAPSHOT_EVERY_BYTES: u64 = 1 << 30;

/// Cache of a snapshot's own redb file while it is written or read once, whole: redb's
/// default (1 GiB) held up to that much of a large store's copy in memory for nothing.
const SNAPSHOT_CACHE: usize = 64 << 20;

/// Commands applied on the state machine's own task at most; more go to the blocking pool.
const APPLY_HERE_AT_MOST: u64 = 16;

const APPLIED: &str = "applied";
const MEMBERSHIP: &str = "membership";
const PARTIAL: &str = "partial";

/// The state machine handed to Raft.
pub struct StateMachine {
    db: Arc<Database>,
    /// Where snapshots are built, received and kept.
    dir: PathBuf,
    progress: Arc<Progress>,
}

/// What the state machine counts, shared with whoever wants to see it.
#[derive(Default)]
pub struct Progress {
    /// Commands applied to a transaction, counting those applied again after a failure.
    pub applies: AtomicU64,
    /// Durable commits of redb made as checkpoints.
    pub checkpoints: AtomicU64,
    since_checkpoint: Mutex<(u64, Option<Instant>)>,
}

impl Progress {
    /// Notes `commands` more applied; whether a checkpoint is due.
    fn due(&self, commands: u64) -> bool {
        let mut since = self.since_checkpoint.lock().expect("checkpoint clock");
        let started = *since.1.get_or_insert_with(Instant::now);
        since.0 += commands;
        since.0 >= CHECKPOINT_EVERY || started.elapsed() >= CHECKPOINT_INTERVAL
    }

    /// Whether applying `commands` more would call for a checkpoint.
    fn due_after(&self, commands: u64) -> bool {
        let since = self.since_checkpoint.lock().expect("checkpoint clock");
        since.0 + commands >= CHECKPOINT_EVERY
            || since
                .1
                .is_some_and(|started| started.elapsed() >= CHECKPOINT_INTERVAL)
    }

    fn reset(&self) {
        *self.since_checkpoint.lock().expect("checkpoint clock") = (0, None);
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
    }
}

impl StateMachine {
    pub fn new(db: Arc<Database>, dir: &Path) -> Result<StateMachine, StorageError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| storage_error("creating snapshot directory", e))?;
        Ok(StateMachine {
            db,
            dir: dir.to_path_buf(),
            progress: Arc::new(Progress::default()),
        })
    }

    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }
}

/// Makes everything applied so far durable.
pub fn checkpoint(db: &Database, progress: &Progress) -> FsResult<()> {
    let tx = db.begin_write().db()?;
    tx.commit().db()?;
    progress.reset();
    Ok(())
}

/// The last entry applied and the membership, as redb has them.
pub fn applied_state(tx: &ReadTransaction) -> FsResult<(Option<LogId>, StoredMembership)> {
    let table = match tx.open_table(RAFT) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Default::default()),
        Err(e) => return Err(e).db(),
    };
    let applied = match table.get(APPLIED).db()? {
        Some(v) => Some(decode(v.value())?),
        None => None,
    };
    let membership = match table.get(MEMBERSHIP).db()? {
        Some(v) => decode(v.value())?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

/// Where applying stands, recorded in the transaction: every entry up to `applied` is done,
/// and of the entry after it (if `partial` names it) the first commands.
fn record_progress(
    tx: &WriteTransaction,
    applied: Option<&LogId>,
    partial: Option<(&LogId, usize)>,
) -> FsResult<()> {
    let mut table = tx.open_table(RAFT).db()?;
    if let Some(applied) = applied {
        table.insert(APPLIED, encode(applied).as_slice()).db()?;
    }
    match partial {
        Some((entry, done)) => {
            let record = (*entry, done as u64);
            table.insert(PARTIAL, encode(&record).as_slice()).db()?;
        }
        None => {
            table.remove(PARTIAL).db()?;
        }
    }
    Ok(())
}

/// The entry applied in part before a crash, and how many of its commands are done.
fn read_partial(tx: &WriteTransaction) -> FsResult<Option<(LogId, u64)>> {
    let table = tx.open_table(RAFT).db()?;
    let value = table.get(PARTIAL).db()?;
    value.map(|v| decode(v.value())).transpose()
}

/// One thing to apply: a membership change (of entry `e`), or command `c` of entry `e`.
#[derive(Clone, Copy)]
enum Step {
    Membership(usize),
    Command(usize, usize),
}

fn apply_step(
    tx: &WriteTransaction,
    tables: &mut WriteTables,
    entries: &[Entry],
    step: Step,
) -> FsResult<Outcome> {
    match step {
        Step::Membership(e) => {
            let EntryPayload::Membership(membership) = &entries[e].payload else {
                unreachable!("a membership step names a membership entry")
            };
            let stored = StoredMembership::new(Some(entries[e].log_id), membership.clone());
            tx.open_table(RAFT)
                .db()?
                .insert(MEMBERSHIP, encode(&stored).as_slice())
                .db()?;
            Ok(Outcome::Done)
        }
        Step::Command(e, c) => {
            let EntryPayload::Normal(batch) = &entries[e].payload else {
                unreachable!("a command step names a batch entry")
            };
            state_machine::apply_in(tables, &batch.0[c])
        }
    }
}

/// The steps of entry `e`, leaving out the commands applied before a crash.
fn steps_of(entries: &[Entry], e: usize, partial: Option<(LogId, u64)>) -> (usize, Vec<Step>) {
    match &entries[e].payload {
        EntryPayload::Blank => (0, Vec::new()),
        EntryPayload::Membership(_) => (0, vec![Step::Membership(e)]),
        EntryPayload::Normal(batch) => {
            let done = match partial {
                Some((id, done)) if id == entries[e].log_id => (done as usize).min(batch.0.len()),
                _ => 0,
            };
            (
                done,
                (done..batch.0.len()).map(|c| Step::Command(e, c)).collect(),
            )
        }
    }
}

/// The commands the entries carry.
fn commands_in(entries: &[Entry]) -> u64 {
    entries
        .iter()
        .map(|e| match &e.payload {
            EntryPayload::Normal(batch) => batch.0.len() as u64,
            _ => 0,
        })
        .sum()
}

fn begin(db: &Database) -> FsResult<WriteTransaction> {
    let mut tx = db.begin_write().db()?;
    tx.set_durability(Durability::None)
        .map_err(|e| FsError::io(format!("metadata store: {e}")))?;
    Ok(tx)
}

/// Applies committed entries in order: for each entry, one outcome per command of its batch
/// (none for blank and membership entries). An error is a storage failure (a transaction
/// could not be opened or committed), not a command's.
///
/// When a command fails, the transaction (which may hold its partial changes) is dropped, the
/// steps since the last commit are applied again in a fresh one, which records how far the
/// entries got and commits; so each command is applied at most twice, however many fail.
pub fn apply_entries(
    db: &Database,
    entries: &[Entry],
    progress: &Progress,
) -> FsResult<Vec<Vec<FsResult<Outcome>>>> {
    let mut results: Vec<Vec<FsResult<Outcome>>> = entries.iter().map(|_| Vec::new()).collect();
    let Some(last) = entries.last() else {
        return Ok(results);
    };
    let mut tx = begin(db)?;
    let partial = read_partial(&tx)?;
    // The tables of `tx`, open across its commands (closed before it is committed or dropped).
    let mut tables = WriteTables::open(&tx);
    // Steps applied in `tx` since its last commit. A command's outcome is `results[e][c]`:
    // an entry's results hold one per command, in order.
    let mut pending: Vec<Step> = Vec::new();
    let mut commands = 0u64;
    for e in 0..entries.len() {
        let (done, steps) = steps_of(entries, e, partial);
        for _ in 0..done {
            results[e].push(Err(FsError::unavailable("applied before a restart")));
        }
        for step in steps {
            progress.applies.fetch_add(1, Ordering::Relaxed);
            let failure = match apply_step(&tx, &mut tables, entries, step) {
                Ok(outcome) => {
                    if let Step::Command(..) = step {
                        commands += 1;
                        results[e].push(Ok(outcome));
                    }
                    pending.push(step);
                    continue;
                }
                Err(failure) => failure,
            };
            // Dropping the transaction aborts it, with the failed command's partial changes.
            drop(tables);
            drop(tx);
            tx = begin(db)?;
            tables = WriteTables::open(&tx);
            for &again in &pending {
                progress.applies.fetch_add(1, Ordering::Relaxed);
                let outcome = apply_step(&tx, &mut tables, entries, again).map_err(|e| {
                    FsError::io(format!(
                        "a command failed when applied again ({e}): not deterministic"
                    ))
                })?;
                if let Step::Command(pe, pc) = again {
                    if results[pe][pc].as_ref() != Ok(&outcome) {
                        return Err(FsError::io(
                            "a command gave another outcome when applied again: not deterministic",
                        ));
                    }
                }
            }
            pending.clear();
            let Step::Command(_, c) = step else {
                return Err(FsError::io(format!(
                    "membership change {} failed: {failure}",
                    entries[e].log_id
                )));
            };
            commands += 1;
            let before = e.checked_sub(1).map(|p| &entries[p].log_id);
            drop(tables);
            record_progress(&tx, before, Some((&entries[e].log_id, c + 1)))?;
            tx.commit().db()?;
            tx = begin(db)?;
            tables = WriteTables::open(&tx);
            results[e].push(Err(failure));
        }
    }
    drop(tables);
    record_progress(&tx, Some(&last.log_id), None)?;
    tx.commit().db()?;
    if progress.due(commands) {
        checkpoint(db, progress)?;
    }
    Ok(results)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let db = self.db.clone();
        blocking(move || applied_state(&db.begin_read().db()?)).await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<FsResult<Outcome>>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        // A few commands without a checkpoint cost less applied right here than handed to
        // the blocking pool and back; a checkpoint (an fsync) or a long run goes there.
        let commands = commands_in(&entries);
        if commands <= APPLY_HERE_AT_MOST && !self.progress.due_after(commands) {
            return apply_entries(&self.db, &entries, &self.progress)
                .map_err(|e| storage_error("state machine", e));
        }
        let db = self.db.clone();
        let progress = self.progress.clone();
        blocking(move || apply_entries(&db, &entries, &progress)).await
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            dir: self.dir.clone(),
            progress: self.progress.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        let file = SnapshotFile::create(&self.dir.join(RECEIVING))
            .map_err(|e| storage_error("receiving a snapshot", e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        let db = self.db.clone();
        let dir = self.dir.clone();
        let meta = meta.clone();
        let progress = self.progress.clone();
        let (received, size) = snapshot
            .finish()
            .await
            .map_err(|e| storage_error("receiving a snapshot", e))?;
        let upto = meta.last_log_id.map_or(0, |l| l.index);
        blocking(move || install(&db, &dir, &meta, &received, &progress)).await?;
        tracing::info!(
            upto,
            bytes = size,
            "metadata log: installed a snapshot of the store from the leader"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let dir = self.dir.clone();
        blocking(move || current_snapshot(&dir)).await
    }
}

/// Builds snapshots of the store for Raft.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    dir: PathBuf,
    progress: Arc<Progress>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        self.wait_for_room().await?;
        let db = self.db.clone();
        let dir = self.dir.clone();
        let progress = self.progress.clone();
        blocking(move || build(&db, &dir, &progress)).await
    }
}

/// Room a snapshot needs beyond a copy of the store's pages.
const SNAPSHOT_MARGIN: u64 = 16 << 20;
/// How often a snapshot waiting for room looks again, and warns.
const ROOM_RECHECK: Duration = Duration::from_secs(5);
const ROOM_WARN_EVERY: Duration = Duration::from_secs(60);

impl SnapshotBuilder {
    /// Waits until the snapshot directory's disk has room for a copy of the store. A build
    /// that failed for want of it would stop Raft for good (it takes a failed build as fatal),
    /// and the server with it, at every restart while the log is long; waiting only puts the
    /// snapshot off (the log grows meanwhile, and grows no metadata once the disk is within
    /// `--min-free-space`). The build runs in a task of its own: Raft goes on meanwhile.
    async fn wait_for_room(&self) -> Result<(), StorageError> {
        let db = self.db.clone();
        let needed = blocking(move || {
            let tx = db.begin_write().db()?;
            let stats = tx.stats().db()?;
            tx.abort().db()?;
            Ok(stats.allocated_pages() * stats.page_size() as u64 + SNAPSHOT_MARGIN)
        })
        .await?;
        let mut warned: Option<Instant> = None;
        loop {
            let free = crate::space::free_bytes(&self.dir);
            if free >= needed {
                if warned.is_some() {
                    tracing::info!(free, needed, "metadata log: room for the snapshot now");
                }
                return Ok(());
            }
            if warned.is_none_or(|at| at.elapsed() >= ROOM_WARN_EVERY) {
                tracing::warn!(
                    free,
                    needed,
                    "metadata log: snapshot put off until its disk has room for a copy of the store; the log grows meanwhile"
                );
                warned = Some(Instant::now());
            }
            tokio::time::sleep(ROOM_RECHECK).await;
        }
    }
}

/// Runs store work off the async runtime; its failure is a storage error for Raft.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> FsResult<T> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| storage_error("state machine task", e))?
        .map_err(|e| storage_error("state machine", e))
}

const CURRENT: &str = "current.redb";
/// A snapshot being received from the leader.
const RECEIVING: &str = "receiving.redb";
const CURRENT_META: &str = "current.meta";

/// Replaces every table of the store in `to` with the table of `from` (empty where `from`
/// does not have it).
fn copy_tables(from: &ReadTransaction, to: &WriteTransaction) -> FsResult<()> {
    struct Copy<'a>(&'a ReadTransaction, &'a WriteTransaction);
    impl EachTable for Copy<'_> {
        fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
            &mut self,
            def: TableDefinition<K, V>,
        ) -> FsResult<()> {
            copy(self.0, self.1, def)
        }
    }
    let mut each = Copy(from, to);
    state_tables(&mut each)?;
    each.table(RAFT)
}

/// Something done to each table of the store in turn.
trait EachTable {
    fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &mut self,
        def: TableDefinition<K, V>,
    ) -> FsResult<()>;
}

/// Every table of the replicated state, in a fixed order: all but the log's own `raft`
/// table. Snapshots copy them and digests hash them, so a new table is added here once.
fn state_tables(each: &mut impl EachTable) -> FsResult<()> {
    each.table(VOLUMES)?;
    each.table(INODES)?;
    each.table(DENTRIES)?;
    each.table(EXTENTS)?;
    each.table(BLOCKS)?;
    each.table(XATTRS)?;
    each.table(SERVERS)?;
    each.table(DRAINING)?;
    each.table(VOLUME_STATE)?;
    each.table(CLIENTS)?;
    each.table(COUNTERS)?;
    each.table(CALLS)?;
    each.table(SERVER_CERTS)?;
    each.table(LOCKS)?;
    each.table(LOCK_SESSIONS)?;
    each.table(INLINE_DATA)?;
    each.table(INLINE_BYTES)?;
    each.table(INLINE_PIECES)?;
    each.table(INLINE_TAILS)?;
    each.table(ORPHANS)
}

/// A digest of the replicated state at the entry it has applied: members that applied the
/// same entries have the same digest. Covers every table but the log's own bookkeeping.
pub fn digest(db: &Database) -> FsResult<(u64, [u8; 32])> {
    struct Hash<'a>(&'a ReadTransaction, blake3::Hasher);
    impl EachTable for Hash<'_> {
        fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
            &mut self,
            def: TableDefinition<K, V>,
        ) -> FsResult<()> {
            hash_table(self.0, def, &mut self.1)
        }
    }
    let tx = db.begin_read().db()?;
    let applied = applied_state(&tx)?.0.map_or(0, |l| l.index);
    let mut each = Hash(&tx, blake3::Hasher::new());
    state_tables(&mut each)?;
    Ok((applied, *each.1.finalize().as_bytes()))
}

fn hash_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &ReadTransaction,
    def: TableDefinition<K, V>,
    h: &mut blake3::Hasher,
) -> FsResult<()> {
    use redb::TableHandle;
    h.update(def.name().as_bytes());
    let table = match tx.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e).db(),
    };
    for item in table.iter().db()? {
        let (k, v) = item.db()?;
        for bytes in [
            K::as_bytes(&k.value()).as_ref(),
            V::as_bytes(&v.value()).as_ref(),
        ] {
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
    }
    Ok(())
}

fn copy<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &ReadTransaction,
    to: &WriteTransaction,
    def: TableDefinition<K, V>,
) -> FsResult<()> {
    to.delete_table(def).db()?;
    // Made even when `from` lacks it (a snapshot of an older store), so every table exists.
    let mut target = to.open_table(def).db()?;
    let source = match from.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e).db(),
    };
    for item in source.iter().db()? {
        let (k, v) = item.db()?;
        target.insert(k.value(), v.value()).db()?;
    }
    Ok(())
}

fn build(db: &Database, dir: &Path, progress: &Progress) -> FsResult<Snapshot<TypeConfig>> {
    let tx = db.begin_read().db()?;
    // What the snapshot covers must be durable in redb before Raft purges the log behind it:
    // a checkpoint made after the read transaction began covers everything it sees.
    checkpoint(db, progress)?;
    let (applied, membership) = applied_state(&tx)?;
    let building = dir.join("building.redb");
    let _ = std::fs::remove_file(&building);
    {
        let copy_db = Database::builder()
            .set_cache_size(SNAPSHOT_CACHE)
            .create(&building)
            .db()?;
        let to = copy_db.begin_write().db()?;
        copy_tables(&tx, &to)?;
        to.commit().db()?;
    }
    let meta = SnapshotMeta {
        last_log_id: applied,
        last_membership: membership,
        snapshot_id: format!(
            "{}-{}",
            applied.map_or(0, |l| l.index),
            dfs_common::Timestamp::now().secs
        ),
    };
    keep(dir, &building, &meta)?;
    Ok(Snapshot {
        meta,
        snapshot: Box::new(SnapshotFile::open(&dir.join(CURRENT))?),
    })
}

/// Makes a snapshot file the current one, with its meta beside it.
fn keep(dir: &Path, file: &Path, meta: &SnapshotMeta) -> FsResult<()> {
    std::fs::rename(file, dir.join(CURRENT))?;
    let tmp = dir.join(format!("{CURRENT_META}.tmp"));
    std::fs::write(&tmp, schema::encode(meta))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(CURRENT_META))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn current_snapshot(dir: &Path) -> FsResult<Option<Snapshot<TypeConfig>>> {
    let meta = match std::fs::read(dir.join(CURRENT_META)) {
        Ok(bytes) => decode::<SnapshotMeta>(&bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(Some(Snapshot {
        meta,
        snapshot: Box::new(SnapshotFile::open(&dir.join(CURRENT))?),
    }))
}

/// Replaces the whole store with a snapshot's, after checking that it is a store and covers
/// what its meta says.
fn install(
    db: &Database,
    dir: &Path,
    meta: &SnapshotMeta,
    received: &Path,
    progress: &Progress,
) -> FsResult<()> {
    {
        let snapshot = Database::builder()
            .set_cache_size(SNAPSHOT_CACHE)
            .open(received)
            .map_err(|e| FsError::Corrupt(format!("received snapshot: {e}")))?;
        let from = snapshot.begin_read().db()?;
        let (applied, _) = applied_state(&from)?;
        if applied != meta.last_log_id {
            return Err(FsError::Corrupt(format!(
                "received snapshot holds entries up to {applied:?}, its meta says {:?}",
                meta.last_log_id
            )));
        }
        let to = db.begin_write().db()?;
        copy_tables(&from, &to)?;
        crate::volumes::index_ids(&to)?;
        {
            let mut raft = to.open_table(RAFT).db()?;
            raft.insert(MEMBERSHIP, encode(&meta.last_membership).as_slice())
                .db()?;
            if let Some(applied) = &meta.last_log_id {
                raft.insert(APPLIED, encode(applied).as_slice()).db()?;
            }
        }
        to.commit().db()?;
        progress.reset();
    }
    keep(dir, received, meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Batch, Command, Op};
    use dfs_common::model::{FileKind, VolumeLimits};
    use dfs_common::{InodeId, Timestamp};
    use openraft::CommittedLeaderId;

    fn entry(index: u64, ops: Vec<Op>) -> Entry {
        let now = Timestamp { secs: 1, nanos: 0 };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Batch(
                ops.into_iter()
                    .map(|op| Command::internal(now, op))
                    .collect(),
            )),
        }
    }

    fn make(parent: InodeId, name: &str) -> Op {
        Op::MakeNode {
            parent,
            name: name.into(),
            kind: FileKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            target: None,
        }
    }

    /// A measurement, not a check (docs/BENCHMARKS.md): microseconds per `MakeNode` applied
    /// in entries of 1, 4 and 8 commands.
    /// `cargo test --release -p dfs-meta --lib apply_speed_by_batch_size -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn apply_speed_by_batch_size() {
        for per in [1usize, 4, 8] {
            let dir = tempfile::tempdir().unwrap();
            let (db, root) = store_with_volume(dir.path());
            let progress = Progress::default();
            let entries = 4000 / per;
            let start = Instant::now();
            for i in 0..entries {
                let ops = (0..per).map(|j| make(root, &format!("f{i}-{j}"))).collect();
                apply_entries(&db, &[entry(2 + i as u64, ops)], &progress).unwrap();
            }
            let each = start.elapsed().as_secs_f64() * 1e6 / (entries * per) as f64;
            println!("{per} commands an entry: {each:.1} µs a command");
        }
    }

    /// A store with one volume, made by entry 1; its root directory.
    fn store_with_volume(dir: &Path) -> (Arc<Database>, InodeId) {
        let db = crate::store::open(&dir.join("meta.redb")).unwrap();
        let create = Op::CreateVolume {
            name: "v".into(),
            policy: "2+1".parse().unwrap(),
            block_size: 1 << 20,
            limits: VolumeLimits::default(),
        };
        let out = apply_entries(&db, &[entry(1, vec![create])], &Progress::default()).unwrap();
        let Ok(Outcome::Volume { record, .. }) = &out[0][0] else {
            panic!("{out:?}")
        };
        let root = record.root;
        (db, root)
    }

    fn names(db: &Database) -> Vec<String> {
        let tx = db.begin_read().unwrap();
        let table = tx.open_table(DENTRIES).unwrap();
        table
            .iter()
            .unwrap()
            .map(|item| item.unwrap().0.value().1.to_string())
            .collect()
    }

    /// Failed commands in a batch leave no trace and cost about one apply each; the others
    /// take effect, and the entry is recorded as applied.
    #[test]
    fn failures_inside_a_batch_leave_no_trace() {
        let dir = tempfile::tempdir().unwrap();
        let (db, root) = store_with_volume(dir.path());
        let progress = Progress::default();
        let batch = vec![
            make(root, "a"),
            make(root, "a"),
            make(root, "b"),
            make(root, "b"),
        ];
        let out =
            apply_entries(&db, &[entry(2, batch.clone()), entry(3, batch)], &progress).unwrap();
        let ok: Vec<Vec<bool>> = out
            .iter()
            .map(|e| e.iter().map(Result::is_ok).collect())
            .collect();
        assert_eq!(
            ok,
            vec![
                vec![true, false, true, false],
                vec![false, false, false, false]
            ]
        );
        assert_eq!(names(&db), vec!["a", "b"]);
        let (applied, _) = applied_state(&db.begin_read().unwrap()).unwrap();
        assert_eq!(applied.unwrap().index, 3);
        assert!(progress.applies.load(Ordering::Relaxed) <= 2 * 8);
    }

    /// An entry applied in part before a crash (its failed command's commit recorded how far
    /// it got) is finished without applying its first commands twice.
    #[test]
    fn a_partly_applied_entry_is_finished_not_repeated() {
        let dir = tempfile::tempdir().unwrap();
        let (db, root) = store_with_volume(dir.path());
        // Entry 2's first command took effect and was recorded, as the commit after a failure
        // leaves it; then the server died.
        let second = entry(2, vec![make(root, "x"), make(root, "y")]);
        let tx = begin(&db).unwrap();
        let mut tables = WriteTables::open(&tx);
        apply_step(
            &tx,
            &mut tables,
            std::slice::from_ref(&second),
            Step::Command(0, 0),
        )
        .unwrap();
        drop(tables);
        record_progress(&tx, None, Some((&second.log_id, 1))).unwrap();
        tx.commit().unwrap();

        let progress = Progress::default();
        let out = apply_entries(&db, &[second], &progress).unwrap();
        assert!(
            matches!(out[0][0], Err(FsError::Unavailable(_))),
            "not applied again: {out:?}"
        );
        assert_eq!(progress.applies.load(Ordering::Relaxed), 1);
        assert!(out[0][1].is_ok());
        assert_eq!(names(&db), vec!["x", "y"]);
        let tx = db.begin_write().unwrap();
        assert_eq!(read_partial(&tx).unwrap(), None);
    }
    /// Time never goes back: a command stamped before one applied earlier (a new leader whose
    /// clock is behind the old one's) applies at the later time.
    #[test]
    fn time_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let (db, root) = store_with_volume(dir.path());
        let at = |secs, index, name: &str| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Batch(vec![Command::internal(
                Timestamp { secs, nanos: 0 },
                make(root, name),
            )])),
        };
        let out = apply_entries(
            &db,
            &[at(100, 2, "late"), at(50, 3, "early"), at(200, 4, "later")],
            &Progress::default(),
        )
        .unwrap();
        let mtimes: Vec<i64> = out
            .iter()
            .map(|o| match &o[0] {
                Ok(Outcome::Node { record, .. }) => record.mtime.secs,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(mtimes, vec![100, 100, 200]);
    }

    /// A random log of namespace operations over a few names, `entries` entries of 1 to 8
    /// commands each, from index 2 (entry 1 made the volume), applied one entry at a time to
    /// `db` as it is made, so that commands name inodes that exist (or existed). Returns the
    /// log and how many commands took effect.
    fn random_log(
        rng: &mut impl rand::Rng,
        db: &Database,
        root: InodeId,
        entries: u64,
    ) -> (Vec<Entry>, usize) {
        let names = ["a", "b", "c", "d", "e", "f"];
        let mut secs = 1;
        let mut inodes = vec![root];
        let mut succeeded = 0;
        let progress = Progress::default();
        let log = (2..2 + entries)
            .map(|index| {
                let commands = (0..rng.random_range(1..=8))
                    .map(|_| {
                        let known = inodes.clone();
                        let ino = |rng: &mut dyn rand::RngCore| {
                            known[rand::Rng::random_range(rng, 0..known.len())]
                        };
                        let name = |rng: &mut dyn rand::RngCore| {
                            names[rand::Rng::random_range(rng, 0..names.len())].to_string()
                        };
                        let op = match rng.random_range(0..7) {
                            0 | 1 => Op::MakeNode {
                                parent: ino(rng),
                                name: name(rng),
                                kind: if rng.random_bool(0.4) {
                                    FileKind::Dir
                                } else {
                                    FileKind::File
                                },
                                mode: 0o755,
                                uid: 0,
                                gid: 0,
                                rdev: 0,
                                target: None,
                            },
                            2 => Op::Unlink {
                                parent: ino(rng),
                                name: name(rng),
                            },
                            3 => Op::Rmdir {
                                parent: ino(rng),
                                name: name(rng),
                            },
                            4 => Op::Rename {
                                parent: ino(rng),
                                name: name(rng),
                                new_parent: ino(rng),
                                new_name: name(rng),
                                flags: 0,
                            },
                            5 => Op::Link {
                                ino: ino(rng),
                                new_parent: ino(rng),
                                new_name: name(rng),
                            },
                            _ => Op::SetXattr {
                                ino: ino(rng),
                                name: format!("user.{}", name(rng)),
                                value: vec![rng.random(); rng.random_range(0..64)],
                                flags: 0,
                            },
                        };
                        secs += rng.random_range(0..3);
                        Command::internal(Timestamp { secs, nanos: 0 }, op)
                    })
                    .collect();
                let entry = Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                    payload: EntryPayload::Normal(Batch(commands)),
                };
                let out = apply_entries(db, std::slice::from_ref(&entry), &progress).unwrap();
                for outcome in out[0].iter().flatten() {
                    succeeded += 1;
                    if let Outcome::Node { ino, .. } = outcome {
                        inodes.push(*ino);
                    }
                }
                entry
            })
            .collect();
        (log, succeeded)
    }

    /// Applies `log` in chunks of 1 to `most` entries.
    fn apply_in_chunks(db: &Database, log: &[Entry], most: usize, rng: &mut impl rand::Rng) {
        let progress = Progress::default();
        let mut at = 0;
        while at < log.len() {
            let n = rng.random_range(1..=most).min(log.len() - at);
            apply_entries(db, &log[at..at + n], &progress).unwrap();
            at += n;
        }
    }

    /// A new store holding what `from` holds, through a snapshot.
    fn restored(from: &Database, dir: &Path) -> Arc<Database> {
        let progress = Progress::default();
        std::fs::create_dir_all(dir.join("from")).unwrap();
        let snapshot = build(from, &dir.join("from"), &progress).unwrap();
        let snapshot_meta = snapshot.meta.clone();
        let db = crate::store::open(&dir.join("meta.redb")).unwrap();
        std::fs::create_dir_all(dir.join("to")).unwrap();
        // As a follower receives it: a copy of the leader's file.
        let received = dir.join("to").join(RECEIVING);
        std::fs::copy(dir.join("from").join(CURRENT), &received).unwrap();
        drop(snapshot);
        install(&db, &dir.join("to"), &snapshot_meta, &received, &progress).unwrap();
        db
    }

    /// Members apply the same log in different chunks, and some go through snapshots taken at
    /// random points: all end with the same digest, that of a member that applied one entry
    /// at a time. The seed is printed, so a failure can be replayed.
    #[test]
    fn members_that_apply_one_log_differently_end_equal() {
        use rand::{Rng, SeedableRng};
        let seed: u64 = std::env::var("DFS_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        println!("seed {seed} (DFS_TEST_SEED replays it)");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let member = |name: &str| store_with_volume(&dir.path().join(name));
        let (one_by_one, root) = member("one-by-one");
        let (log, succeeded) = random_log(&mut rng, &one_by_one, root, 300);
        println!("{succeeded} commands took effect");
        assert!(succeeded > 50, "only {succeeded} commands took effect");
        let expected = digest(&one_by_one).unwrap();
        assert_eq!(expected.0, 301);

        // In chunks of up to 20 entries.
        let (chunked, _) = member("chunked");
        apply_in_chunks(&chunked, &log, 20, &mut rng);
        assert_eq!(digest(&chunked).unwrap(), expected);

        // Through a snapshot at each of three random points.
        let (mut current, _) = member("snapshots");
        let mut cuts: Vec<usize> = (0..3).map(|_| rng.random_range(0..log.len())).collect();
        cuts.sort();
        let mut at = 0;
        for (i, cut) in cuts.into_iter().chain([log.len()]).enumerate() {
            apply_in_chunks(&current, &log[at..cut], 7, &mut rng);
            at = cut;
            if at < log.len() {
                current = restored(&current, &dir.path().join(format!("restored{i}")));
            }
        }
        assert_eq!(digest(&current).unwrap(), expected);

        // A member far behind: it takes a snapshot of another at a random point, then the rest.
        let cut = rng.random_range(1..log.len());
        let (ahead, _) = member("ahead");
        apply_in_chunks(&ahead, &log[..cut], 5, &mut rng);
        let behind = restored(&ahead, &dir.path().join("behind"));
        apply_in_chunks(&behind, &log[cut..], 11, &mut rng);
        assert_eq!(digest(&behind).unwrap(), expected);
    }
}
