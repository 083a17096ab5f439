//! The Raft log on disk.
//!
//! Entries are appended to segment files (`log-<first index>`), each record a length, a blake3
//! checksum and the entry's bincode. The last segment's file is kept [`ZEROED_AHEAD`] bytes of
//! zeros ahead of its records, so an append overwrites blocks the file already has and its
//! fdatasync writes the data alone, not the file's size and block map too (ext4 here: about
//! 120 µs against 200 µs per append). A zero header marks the end of a segment's records.
//!
//! One thread does every write, in the order Raft asked for them: it writes all the appends
//! that are waiting, flushes them with a single fdatasync, and only then tells Raft they are
//! durable (group commit). An append that finds that thread with nothing to do is written and
//! flushed by its caller instead: on an idle server the hand-off to the thread and back (two
//! wake-ups of sleeping threads, as long as the fdatasync on a small VM) is most of a lone
//! command's wait. The caller's thread is busy meanwhile; requests arriving then form the
//! next entry, which goes to the writer thread if this flush is still under way. The vote and
//! the last purged entry live in a small `log-state` file, replaced atomically (written,
//! synced, renamed, the directory synced) before `save_vote` returns, as Raft requires.
//!
//! Entries since the last purge are also kept in memory, where Raft reads them. At open, the
//! segments are read back; a torn record at the end of the last segment (a crash mid-append,
//! never acknowledged) is cut off, while damage anywhere else is an error.

use super::{storage_error, Entry, LogId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::RaftLogId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

/// A new segment is started once the current one is this large.
const SEGMENT_BYTES: u64 = 64 << 20;
/// Bound on one record (a command is at most a few hundred KiB).
const MAX_RECORD: usize = 16 << 20;
/// Length (4 bytes) and checksum (16 bytes) before each record.
const HEADER: usize = 20;
/// Zeros written ahead of the last record of the last segment (see the module's doc).
const ZEROED_AHEAD: u64 = 1 << 20;
const STATE_FILE: &str = "log-state";

/// What survives in `log-state`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct DurableState {
    vote: Option<Vote>,
    last_purged: Option<LogId>,
}

/// The log store handed to Raft (and its reader, a clone).
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Mutex<Memory>>,
    writer: mpsc::Sender<Job>,
    /// The files, written by the writer thread, or by an append itself when nothing is
    /// queued (see [`LogStore::append`]).
    disk: Arc<Mutex<Writer>>,
    /// Jobs sent to the writer thread and not yet done.
    queued: Arc<AtomicUsize>,
    /// Appends written and flushed by their caller, not by the writer thread.
    written_here: Arc<AtomicUsize>,
}

struct Memory {
    entries: BTreeMap<u64, Entry>,
    state: DurableState,
    committed: Option<LogId>,
}

enum Job {
    Append(Vec<(u64, Vec<u8>)>, LogFlushed<TypeConfig>),
    Truncate(u64, mpsc::SyncSender<std::io::Result<()>>),
    SaveState(DurableState, mpsc::SyncSender<std::io::Result<()>>),
    /// Deletes the segments that hold nothing after this index (the state naming the purge is
    /// saved first).
    Purge(u64, DurableState),
    /// Answers once every job before it is done.
    Sync(mpsc::SyncSender<()>),
}

impl LogStore {
    /// Opens (or creates) the log in `dir` and starts its writer thread, which stops when every
    /// clone of the store is dropped.
    pub fn open(dir: &Path) -> Result<LogStore, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| storage_error("creating its directory", e))?;
        let state = read_state(dir)?;
        let found = read_segments(dir, state.last_purged.map(|l| l.index))?;
        let entries = found.entries;
        let disk = Arc::new(Mutex::new(Writer {
            dir: dir.to_path_buf(),
            segments: found.segments,
            file: None,
            positions: found.positions,
        }));
        let queued = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        let (thread_disk, thread_queued) = (disk.clone(), queued.clone());
        std::thread::Builder::new()
            .name("meta-log".into())
            .spawn(move || run(&thread_disk, &thread_queued, rx))
            .map_err(|e| storage_error("starting its writer", e))?;
        Ok(LogStore {
            shared: Arc::new(Mutex::new(Memory {
                entries,
                state,
                committed: None,
            })),
            writer: tx,
            disk,
            queued,
            written_here: Arc::default(),
        })
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.shared.lock().expect("log memory")
    }

    fn send(&self, job: Job) -> Result<(), StorageError> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.writer.send(job).map_err(|_| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            storage_error("writing", "the writer thread stopped")
        })
    }

    /// Waits until every write asked for so far is done.
    pub fn sync(&self) -> Result<(), StorageError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Job::Sync(tx))?;
        rx.recv()
            .map_err(|_| storage_error("writing", "the writer thread stopped"))
    }

    /// How many appends were written and flushed by their caller (the log was idle), not by
    /// the writer thread.
    pub fn appends_written_here(&self) -> usize {
        self.written_here.load(Ordering::Relaxed)
    }

    /// The index of the last entry, if any.
    pub fn last_index(&self) -> Option<u64> {
        let memory = self.memory();
        memory
            .entries
            .keys()
            .next_back()
            .copied()
            .or(memory.state.last_purged.map(|l| l.index))
    }

    async fn save_state(&self, state: DurableState) -> Result<(), StorageError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Job::SaveState(state, tx))?;
        wait(rx).await
    }
}

/// Waits for the writer's answer without blocking the async runtime.
async fn wait(rx: mpsc::Receiver<std::io::Result<()>>) -> Result<(), StorageError> {
    tokio::task::spawn_blocking(move || rx.recv())
        .await
        .map_err(|e| storage_error("waiting for the writer", e))?
        .map_err(|_| storage_error("writing", "the writer thread stopped"))?
        .map_err(|e| storage_error("writing", e))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self
            .memory()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let memory = self.memory();
        let last_purged = memory.state.last_purged;
        let last = memory
            .entries
            .values()
            .next_back()
            .map(|e| *e.get_log_id())
            .or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let state = {
            let mut memory = self.memory();
            memory.state.vote = Some(*vote);
            memory.state.clone()
        };
        self.save_state(state).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.memory().state.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Kept in memory only: after a restart the group commits its log again.
        self.memory().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.memory().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut records = Vec::new();
        {
            let mut memory = self.memory();
            for entry in entries {
                let index = entry.get_log_id().index;
                records.push((index, encode_record(&entry)?));
                memory.entries.insert(index, entry);
            }
        }
        // Nothing queued for the writer thread: written and flushed here, saving two thread
        // wake-ups (to the writer and back) on an idle server. Order is kept: every earlier
        // job is done, and the disk is held until this one is.
        match self.disk.try_lock() {
            Ok(mut disk) if self.queued.load(Ordering::Acquire) == 0 => {
                let mut failed = disk.append(&records).err().map(|e| e.to_string());
                disk.finish_appends(&mut vec![callback], &mut failed);
                self.written_here.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            _ => self.send(Job::Append(records, callback)),
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.memory().entries.split_off(&log_id.index);
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Job::Truncate(log_id.index, tx))?;
        wait(rx).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let state = {
            let mut memory = self.memory();
            let kept = memory.entries.split_off(&(log_id.index + 1));
            memory.entries = kept;
            memory.state.last_purged = Some(log_id);
            memory.state.clone()
        };
        self.send(Job::Purge(log_id.index, state))
    }
}

fn encode_record(entry: &Entry) -> Result<Vec<u8>, StorageError> {
    let body = bincode::serde::encode_to_vec(entry, bincode::config::standard())
        .map_err(|e| storage_error("encoding an entry", e))?;
    let mut record = Vec::with_capacity(HEADER + body.len());
    record.extend_from_slice(&(body.len() as u32).to_le_bytes());
    record.extend_from_slice(&dfs_common::checksum::hash(&body)[..16]);
    record.extend_from_slice(&body);
    Ok(record)
}

fn decode_entry(body: &[u8]) -> Option<Entry> {
    let config = bincode::config::standard().with_limit::<MAX_RECORD>();
    match bincode::serde::decode_from_slice(body, config) {
        Ok((entry, used)) if used == body.len() => Some(entry),
        _ => None,
    }
}

fn read_state(dir: &Path) -> Result<DurableState, StorageError> {
    match std::fs::read(dir.join(STATE_FILE)) {
        Ok(bytes) => {
            crate::store::schema::decode(&bytes).map_err(|e| storage_error("reading its state", e))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DurableState::default()),
        Err(e) => Err(storage_error("reading its state", e)),
    }
}

/// A segment file: its first index, the length of its records (where the next one goes), and
/// the file's size (its records, then zeros).
struct Segment {
    first: u64,
    path: PathBuf,
    len: u64,
    size: u64,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("log-{first:020}"))
}

/// Where each entry on disk starts: index -> (its segment's first index, offset).
type Positions = BTreeMap<u64, (u64, u64)>;

/// What the segments hold.
struct OnDisk {
    segments: Vec<Segment>,
    /// The entries after the last purge.
    entries: BTreeMap<u64, Entry>,
    positions: Positions,
}

/// Reads every segment back. Cuts a torn record off the end of the last segment.
fn read_segments(dir: &Path, purged: Option<u64>) -> Result<OnDisk, StorageError> {
    let mut firsts = Vec::new();
    for item in std::fs::read_dir(dir).map_err(|e| storage_error("listing segments", e))? {
        let name = item
            .map_err(|e| storage_error("listing segments", e))?
            .file_name();
        if let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_prefix("log-"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    let mut segments = Vec::new();
    let mut entries = BTreeMap::new();
    let mut positions = Positions::new();
    let count = firsts.len();
    for (i, first) in firsts.into_iter().enumerate() {
        let path = segment_path(dir, first);
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| storage_error("reading a segment", e))?;
        let mut at = 0usize;
        let mut expected = first;
        while at < bytes.len() {
            let record = parse_record(&bytes[at..]);
            let Some((entry, len)) = record else {
                if bytes[at..].iter().all(|&b| b == 0) {
                    // The zeros kept ahead of the records (or a record whose bytes never
                    // reached the disk, with nothing after it).
                    break;
                }
                if i + 1 == count {
                    tracing::warn!(
                        segment = %path.display(),
                        at,
                        "metadata log: cutting off a torn record (a crash during an append)"
                    );
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| storage_error("repairing a segment", e))?;
                    file.set_len(at as u64)
                        .and_then(|()| file.sync_all())
                        .map_err(|e| storage_error("repairing a segment", e))?;
                    bytes.truncate(at);
                    break;
                }
                return Err(storage_error(
                    "reading a segment",
                    format!("{} is damaged at byte {at}", path.display()),
                ));
            };
            let index = entry.get_log_id().index;
            if index != expected {
                return Err(storage_error(
                    "reading a segment",
                    format!(
                        "{} holds entry {index} where {expected} belongs",
                        path.display()
                    ),
                ));
            }
            if purged.is_none_or(|p| index > p) {
                entries.insert(index, entry);
                positions.insert(index, (first, at as u64));
            }
            expected += 1;
            at += len;
        }
        segments.push(Segment {
            first,
            path,
            len: at as u64,
            size: bytes.len() as u64,
        });
    }
    Ok(OnDisk {
        segments,
        entries,
        positions,
    })
}

/// One record at the start of `bytes` and its length, or `None` if it is torn or damaged.
fn parse_record(bytes: &[u8]) -> Option<(Entry, usize)> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    if len > MAX_RECORD {
        return None;
    }
    let body = bytes.get(HEADER..HEADER + len)?;
    if dfs_common::checksum::hash(body)[..16] != bytes[4..HEADER] {
        return None;
    }
    Some((decode_entry(body)?, HEADER + len))
}

/// The writer thread's state: the segments, and where each entry starts (for truncation).
struct Writer {
    dir: PathBuf,
    segments: Vec<Segment>,
    /// The open file of the last segment.
    file: Option<File>,
    positions: Positions,
}

/// The writer thread: does the jobs sent to it, in order.
fn run(disk: &Mutex<Writer>, queued: &AtomicUsize, jobs: mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        // Everything already queued goes into this round, with one flush for all appends.
        let mut round = vec![first];
        round.extend(jobs.try_iter());
        let done = round.len();
        disk.lock().expect("log writer").run_round(round);
        queued.fetch_sub(done, Ordering::AcqRel);
    }
}

impl Writer {
    fn run_round(&mut self, round: Vec<Job>) {
        let mut flushed: Vec<LogFlushed<TypeConfig>> = Vec::new();
        let mut failed: Option<String> = None;
        for job in round {
            match job {
                Job::Append(records, callback) => {
                    if failed.is_none() {
                        if let Err(e) = self.append(&records) {
                            failed = Some(e.to_string());
                        }
                    }
                    flushed.push(callback);
                }
                other => {
                    // Appends before another job are flushed before it runs.
                    self.finish_appends(&mut flushed, &mut failed);
                    self.run_other(other);
                }
            }
        }
        self.finish_appends(&mut flushed, &mut failed);
    }

    /// Flushes the appends written so far and answers their callbacks.
    fn finish_appends(
        &mut self,
        flushed: &mut Vec<LogFlushed<TypeConfig>>,
        failed: &mut Option<String>,
    ) {
        if flushed.is_empty() {
            return;
        }
        if failed.is_none() {
            if let Some(file) = &self.file {
                if let Err(e) = file.sync_data() {
                    *failed = Some(e.to_string());
                }
            }
        }
        for callback in flushed.drain(..) {
            let result = match failed {
                None => Ok(()),
                Some(e) => Err(std::io::Error::other(e.clone())),
            };
            callback.log_io_completed(result);
        }
        if let Some(e) = failed.take() {
            tracing::error!("metadata log: an append failed: {e}");
        }
    }

    fn run_other(&mut self, job: Job) {
        match job {
            Job::Append(..) => unreachable!("appends are handled by run"),
            Job::Truncate(index, done) => {
                let _ = done.send(self.truncate(index));
            }
            Job::SaveState(state, done) => {
                let _ = done.send(self.save_state(&state));
            }
            Job::Purge(index, state) => {
                if let Err(e) = self.save_state(&state).and_then(|()| self.purge(index)) {
                    tracing::error!("metadata log: purging up to {index} failed: {e}");
                }
            }
            Job::Sync(done) => {
                let _ = done.send(());
            }
        }
    }

    fn append(&mut self, records: &[(u64, Vec<u8>)]) -> std::io::Result<()> {
        for (index, record) in records {
            let roll = self.segments.last().is_none_or(|s| s.len >= SEGMENT_BYTES);
            if roll {
                self.start_segment(*index)?;
            }
            let segment = self.segments.last_mut().expect("a segment was started");
            let file = match &mut self.file {
                Some(f) => f,
                None => self
                    .file
                    .insert(OpenOptions::new().write(true).open(&segment.path)?),
            };
            let end = segment.len + record.len() as u64;
            if end > segment.size {
                // The fdatasync after this one writes the new size too: once per
                // ZEROED_AHEAD bytes of records, not once per append.
                let size = end + ZEROED_AHEAD;
                let zeros = vec![0u8; (size - segment.size) as usize];
                file.write_all_at(&zeros, segment.size)?;
                segment.size = size;
            }
            file.write_all_at(record, segment.len)?;
            self.positions.insert(*index, (segment.first, segment.len));
            segment.len += record.len() as u64;
        }
        Ok(())
    }

    fn start_segment(&mut self, first: u64) -> std::io::Result<()> {
        if let Some(file) = &self.file {
            file.sync_data()?;
        }
        let path = segment_path(&self.dir, first);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        sync_dir(&self.dir)?;
        self.file = Some(file);
        self.segments.push(Segment {
            first,
            path,
            len: 0,
            size: 0,
        });
        Ok(())
    }

    /// Removes the entries from `index` on.
    fn truncate(&mut self, index: u64) -> std::io::Result<()> {
        let Some(&(first, offset)) = self.positions.get(&index) else {
            return Ok(());
        };
        self.positions.split_off(&index);
        self.file = None;
        while let Some(last) = self.segments.last() {
            if last.first > first {
                std::fs::remove_file(&last.path)?;
                self.segments.pop();
                continue;
            }
            break;
        }
        let segment = self.segments.last_mut().expect("the segment holding index");
        let file = OpenOptions::new().write(true).open(&segment.path)?;
        file.set_len(offset)?;
        file.sync_all()?;
        segment.len = offset;
        segment.size = offset;
        sync_dir(&self.dir)
    }

    /// Deletes the segments whose entries all lie at or before `index`.
    fn purge(&mut self, index: u64) -> std::io::Result<()> {
        self.positions = self.positions.split_off(&(index + 1));
        while self.segments.len() > 1 && self.segments[1].first <= index + 1 {
            let segment = self.segments.remove(0);
            std::fs::remove_file(&segment.path)?;
        }
        sync_dir(&self.dir)
    }

    fn save_state(&self, state: &DurableState) -> std::io::Result<()> {
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let mut file = File::create(&tmp)?;
        file.write_all(&crate::store::schema::encode(state))?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(STATE_FILE))?;
        sync_dir(&self.dir)
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The segment holding `index`, for tests that damage the log.
#[cfg(test)]
pub(crate) fn segment_of(dir: &Path, index: u64) -> Option<PathBuf> {
    let mut best = None;
    for item in std::fs::read_dir(dir).ok()? {
        let name = item.ok()?.file_name();
        let first: u64 = name.to_str()?.strip_prefix("log-")?.parse().ok()?;
        if first <= index && best.is_none_or(|b| first > b) {
            best = Some(first);
        }
    }
    best.map(|first| segment_path(dir, first))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::state::StateMachine;
    use openraft::storage::RaftLogStorageExt;
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{CommittedLeaderId, EntryPayload};

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().map_err(|e| storage_error("test", e))?;
            let db = crate::store::open(&dir.path().join("meta.redb"))
                .map_err(|e| storage_error("test", e))?;
            let log = LogStore::open(&dir.path().join("raft"))?;
            let state = StateMachine::new(db, &dir.path().join("raft/snapshots"))?;
            Ok((dir, log, state))
        }
    }

    /// openraft's own conformance suite for log and state-machine storage.
    #[test]
    fn passes_openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }

    fn blank(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    /// Appends entries and waits until they are flushed.
    async fn append(log: &mut LogStore, entries: Vec<Entry>) {
        log.blocking_append(entries).await.unwrap();
    }

    async fn indexes(log: &mut LogStore) -> Vec<u64> {
        log.try_get_log_entries(0..)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    /// On an idle log an append is written and flushed by its caller (no hand-off to the
    /// writer thread and back); while the writer thread is busy, appends queue behind its
    /// work. Either way entries land in order and survive reopening.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    // The test holds the writer's lock across awaits on purpose: it stands for a busy writer.
    #[allow(clippy::await_holding_lock)]
    async fn idle_appends_are_written_by_their_caller_and_busy_ones_queue_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::open(dir.path()).unwrap();
        append(&mut log, vec![blank(1, 1), blank(1, 2)]).await;
        append(&mut log, vec![blank(1, 3)]).await;
        assert_eq!(log.appends_written_here(), 2);

        // The writer thread busy (the test holds the disk): appends go to its queue.
        let held = log.disk.clone();
        let guard = held.lock().unwrap();
        let mut busy = log.clone();
        let queued = tokio::spawn(async move {
            append(&mut busy, vec![blank(1, 4), blank(1, 5), blank(1, 6)]).await;
        });
        while log.queued.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(
            !queued.is_finished(),
            "an append was flushed while the disk was held"
        );
        drop(guard);
        queued.await.unwrap();
        assert_eq!(
            log.appends_written_here(),
            2,
            "a busy log's append was written here"
        );
        // Idle again once the writer thread has counted its job done.
        while log.queued.load(Ordering::Acquire) != 0 {
            tokio::task::yield_now().await;
        }
        append(&mut log, vec![blank(1, 7)]).await;
        assert_eq!(log.appends_written_here(), 3);
        drop(log);

        let mut log = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&mut log).await, (1..=7).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn entries_vote_and_purge_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::open(dir.path()).unwrap();
        append(&mut log, (1..=10).map(|i| blank(1, i)).collect()).await;
        let vote = Vote::new_committed(2, 1);
        log.save_vote(&vote).await.unwrap();
        log.truncate(blank(1, 8).log_id).await.unwrap();
        append(&mut log, vec![blank(2, 8), blank(2, 9)]).await;
        log.purge(blank(1, 3).log_id).await.unwrap();
        log.sync().unwrap();
        drop(log);

        let mut log = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&mut log).await, (4..=9).collect::<Vec<_>>());
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(blank(1, 3).log_id));
        assert_eq!(state.last_log_id, Some(blank(2, 9).log_id));
        // The entries past the truncation are the new ones.
        let eight = log.try_get_log_entries(8..9).await.unwrap();
        assert_eq!(eight[0].log_id, blank(2, 8).log_id);
    }

    /// A crash in the middle of an append leaves a partial record at the end of the log: it
    /// was never acknowledged, and is cut off. Damage before the end is an error, not a
    /// silent loss.
    #[tokio::test]
    async fn a_torn_tail_is_cut_and_other_damage_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::open(dir.path()).unwrap();
        append(&mut log, (1..=5).map(|i| blank(1, i)).collect()).await;
        log.sync().unwrap();
        drop(log);
        let segment = segment_of(dir.path(), 5).unwrap();
        let records: usize = (1..=5)
            .map(|i| encode_record(&blank(1, i)).unwrap().len())
            .sum();
        let whole = std::fs::read(&segment).unwrap();
        assert!(
            whole.len() as u64 >= ZEROED_AHEAD && whole[records..].iter().all(|&b| b == 0),
            "the records are followed by zeros"
        );
        // Reopened as it is: the zeros stay, and nothing is lost.
        let mut log = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&mut log).await, vec![1, 2, 3, 4, 5]);
        drop(log);
        assert_eq!(std::fs::read(&segment).unwrap(), whole);
        // Part of a sixth record over the zeros, as a crash mid-append leaves it.
        let mut torn = whole.clone();
        let partial = &encode_record(&blank(1, 6)).unwrap()[..10];
        torn[records..records + 10].copy_from_slice(partial);
        std::fs::write(&segment, &torn).unwrap();

        let mut log = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&mut log).await, vec![1, 2, 3, 4, 5]);
        assert_eq!(
            std::fs::read(&segment).unwrap(),
            whole[..records],
            "the torn record is cut off"
        );
        // Appends go on after the cut.
        append(&mut log, vec![blank(1, 6)]).await;
        log.sync().unwrap();
        drop(log);
        let mut log = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&mut log).await, vec![1, 2, 3, 4, 5, 6]);
        drop(log);

        // A later segment starting past a damaged earlier one: the damage is not at the end.
        let mut damaged = std::fs::read(&segment).unwrap();
        damaged[HEADER + 2] ^= 0xff;
        std::fs::write(&segment, &damaged).unwrap();
        std::fs::write(
            segment_path(dir.path(), 7),
            encode_record(&blank(1, 7)).unwrap(),
        )
        .unwrap();
        assert!(LogStore::open(dir.path()).is_err());
    }
}
