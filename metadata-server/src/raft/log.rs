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
//! The newest entries are also kept in memory, where Raft reads them, up to
//! [`MEMORY_BUDGET`] bytes of records: a log of small-file writes (up to 64 KiB of data per
//! command, 100,000 entries between snapshots) would otherwise hold gigabytes. Older entries,
//! read when a follower catches up or when entries are applied again after a restart, come
//! back from their segment; only an entry already written there, as that very entry (same log
//! id), leaves memory. At open, the segments are read back; a torn record at the end of the last
//! segment (a crash mid-append, never acknowledged) is cut off, while damage anywhere else is an
//! error.

use super::{storage_error, Entry, LogId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::RaftLogId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
/// Bytes of records whose entries stay decoded in memory; older ones are read from disk.
pub const MEMORY_BUDGET: usize = 64 << 20;

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
    /// Whether an append may be flushed by its caller: not on a leader with other members,
    /// whose Raft must go on to send the entries while they are being flushed here.
    appends_inline: Arc<AtomicBool>,
}

struct Memory {
    entries: Entries,
    state: DurableState,
    committed: Option<LogId>,
}

/// Every entry since the last purge, by index: its log id, and for the newest ones the entry
/// itself, up to a budget of record bytes.
struct Entries {
    kept: BTreeMap<u64, Kept>,
    /// Where the entries still held in memory start (those before it were shed).
    held_from: u64,
    held_bytes: usize,
    budget: usize,
    /// Bytes of records appended (or read at open) since the log was opened.
    appended: u64,
}

struct Kept {
    id: LogId,
    /// The entry, while it is held in memory.
    entry: Option<Entry>,
    /// Its record's length: what holding it costs, roughly.
    bytes: usize,
}

impl Entries {
    fn new(budget: usize) -> Entries {
        Entries {
            kept: BTreeMap::new(),
            held_from: 0,
            held_bytes: 0,
            budget,
            appended: 0,
        }
    }

    fn insert(&mut self, entry: Entry, bytes: usize) {
        let id = *entry.get_log_id();
        let index = id.index;
        let old = self.kept.insert(
            index,
            Kept {
                id,
                entry: Some(entry),
                bytes,
            },
        );
        self.held_bytes += bytes;
        self.appended += bytes as u64;
        self.forget(old);
        self.held_from = self.held_from.min(index);
    }

    fn forget(&mut self, gone: Option<Kept>) {
        if let Some(Kept {
            entry: Some(_),
            bytes,
            ..
        }) = gone
        {
            self.held_bytes -= bytes;
        }
    }

    /// Removes the entries from `index` on.
    fn truncate(&mut self, index: u64) {
        for (_, gone) in self.kept.split_off(&index) {
            self.forget(Some(gone));
        }
        self.held_from = self.held_from.min(index);
    }

    /// Removes the entries up to `index`.
    fn purge(&mut self, index: u64) {
        let after = self.kept.split_off(&(index + 1));
        for (_, gone) in std::mem::replace(&mut self.kept, after) {
            self.forget(Some(gone));
        }
        self.held_from = self.held_from.max(index + 1);
    }

    fn last_id(&self) -> Option<LogId> {
        self.kept.values().next_back().map(|k| k.id)
    }

    /// Lets go of held entries, oldest first, while they cost more than the budget and
    /// `on_disk` says the segment holds that very entry.
    fn shed(&mut self, on_disk: impl Fn(u64, LogId) -> bool) {
        while self.held_bytes > self.budget {
            let Some((&index, kept)) = self.kept.range_mut(self.held_from..).next() else {
                break;
            };
            if !on_disk(index, kept.id) {
                break;
            }
            if kept.entry.take().is_some() {
                self.held_bytes -= kept.bytes;
            }
            self.held_from = index + 1;
        }
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.kept.values().filter(|k| k.entry.is_some()).count()
    }
}

enum Job {
    Append(Vec<(LogId, Vec<u8>)>, LogFlushed<TypeConfig>),
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
        LogStore::open_with_budget(dir, MEMORY_BUDGET)
    }

    /// As [`LogStore::open`], holding at most `budget` bytes of records in memory.
    pub fn open_with_budget(dir: &Path, budget: usize) -> Result<LogStore, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| storage_error("creating its directory", e))?;
        let state = read_state(dir)?;
        let found = read_segments(dir, state.last_purged.map(|l| l.index), budget)?;
        let shared = Arc::new(Mutex::new(Memory {
            entries: found.entries,
            state,
            committed: None,
        }));
        let disk = Arc::new(Mutex::new(Writer {
            dir: dir.to_path_buf(),
            segments: found.segments,
            file: None,
            positions: found.positions,
            memory: shared.clone(),
        }));
        let queued = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        let (thread_disk, thread_queued) = (disk.clone(), queued.clone());
        std::thread::Builder::new()
            .name("meta-log".into())
            .spawn(move || run(&thread_disk, &thread_queued, rx))
            .map_err(|e| storage_error("starting its writer", e))?;
        Ok(LogStore {
            shared,
            writer: tx,
            disk,
            queued,
            written_here: Arc::default(),
            appends_inline: Arc::new(AtomicBool::new(true)),
        })
    }

    /// Lets appends be flushed by their caller when the log is idle (`true`, the default), or
    /// sends every append to the writer thread. A leader with other members must not flush in
    /// Raft's own task: the entries go to the followers only once `append` returns, so their
    /// flush would wait for this one instead of running beside it.
    pub fn set_appends_inline(&self, inline: bool) {
        self.appends_inline.store(inline, Ordering::Relaxed);
    }

    /// Whether appends may be flushed by their caller (see [`Self::set_appends_inline`]).
    pub fn appends_inline(&self) -> bool {
        self.appends_inline.load(Ordering::Relaxed)
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

    /// Bytes of records appended since the log was opened, counting those it held then.
    pub fn appended_bytes(&self) -> u64 {
        self.memory().entries.appended
    }

    /// The index of the last entry, if any.
    pub fn last_index(&self) -> Option<u64> {
        let memory = self.memory();
        memory
            .entries
            .last_id()
            .or(memory.state.last_purged)
            .map(|l| l.index)
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
        // Held entries are cloned; the others are named, to be read from their segment.
        let found: Vec<Result<Entry, LogId>> = self
            .memory()
            .entries
            .kept
            .range(range)
            .map(|(_, k)| k.entry.clone().ok_or(k.id))
            .collect();
        if found.iter().all(|f| f.is_ok()) {
            return Ok(found.into_iter().flatten().collect());
        }
        let disk = self.disk.lock().expect("log writer");
        let mut files = HashMap::new();
        let mut entries = Vec::with_capacity(found.len());
        for f in found {
            match f {
                Ok(entry) => entries.push(entry),
                Err(id) => entries.extend(
                    disk.read(id, &mut files)
                        .map_err(|e| storage_error("reading an entry back", e))?,
                ),
            }
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let memory = self.memory();
        let last_purged = memory.state.last_purged;
        let last = memory.entries.last_id().or(last_purged);
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
                let id = *entry.get_log_id();
                let record = encode_record(&entry)?;
                memory.entries.insert(entry, record.len());
                records.push((id, record));
            }
        }
        // Nothing queued for the writer thread: written and flushed here, saving two thread
        // wake-ups (to the writer and back) on an idle server. Order is kept: every earlier
        // job is done, and the disk is held until this one is.
        match self.disk.try_lock() {
            Ok(mut disk)
                if self.queued.load(Ordering::Acquire) == 0
                    && self.appends_inline.load(Ordering::Relaxed) =>
            {
                let mut failed = disk.append(&records).err().map(|e| e.to_string());
                disk.finish_appends(&mut vec![callback], &mut failed);
                self.written_here.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            _ => self.send(Job::Append(records, callback)),
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.memory().entries.truncate(log_id.index);
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Job::Truncate(log_id.index, tx))?;
        wait(rx).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let state = {
            let mut memory = self.memory();
            memory.entries.purge(log_id.index);
            memory.state.last_purged = Some(log_id);
            memory.state.clone()
        };
        self.send(Job::Purge(log_id.index, state))
    }
}

/// A record: the entry encoded after room for its header, which is then filled in (the
/// body is not copied again).
fn encode_record(entry: &Entry) -> Result<Vec<u8>, StorageError> {
    let mut record = vec![0u8; HEADER];
    bincode::serde::encode_into_std_write(entry, &mut record, bincode::config::standard())
        .map_err(|e| storage_error("encoding an entry", e))?;
    let body_len =
        u32::try_from(record.len() - HEADER).map_err(|e| storage_error("encoding an entry", e))?;
    let hash = dfs_common::checksum::hash(&record[HEADER..]);
    record[..4].copy_from_slice(&body_len.to_le_bytes());
    record[4..HEADER].copy_from_slice(&hash[..16]);
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

/// Where an entry on disk starts, and which entry it is.
#[derive(Clone, Copy)]
struct Position {
    /// Its segment's first index.
    segment: u64,
    offset: u64,
    id: LogId,
}

/// Where each entry on disk starts, by index.
type Positions = BTreeMap<u64, Position>;

/// What the segments hold.
struct OnDisk {
    segments: Vec<Segment>,
    /// The entries after the last purge, the newest held within the budget.
    entries: Entries,
    positions: Positions,
}

/// Reads every segment back. Cuts a torn record off the end of the last segment.
fn read_segments(dir: &Path, purged: Option<u64>, budget: usize) -> Result<OnDisk, StorageError> {
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
    let mut entries = Entries::new(budget);
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
                let id = *entry.get_log_id();
                positions.insert(
                    index,
                    Position {
                        segment: first,
                        offset: at as u64,
                        id,
                    },
                );
                entries.insert(entry, len);
                // Everything read here is on disk.
                entries.shed(|_, _| true);
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

/// The writer thread's state: the segments, and where each entry starts (for truncation and
/// reads of entries no longer held in memory).
struct Writer {
    dir: PathBuf,
    segments: Vec<Segment>,
    /// The open file of the last segment.
    file: Option<File>,
    positions: Positions,
    /// The entries held in memory, shed once flushed (locked after the writer, never before).
    memory: Arc<Mutex<Memory>>,
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
        if failed.is_none() {
            // Before Raft hears of it, so that memory is within its budget when it does.
            self.shed();
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

    /// Lets memory go of the oldest entries past its budget that this log holds on disk.
    fn shed(&self) {
        let positions = &self.positions;
        let mut memory = self.memory.lock().expect("log memory");
        memory
            .entries
            .shed(|index, id| positions.get(&index).is_some_and(|p| p.id == id));
    }

    /// Reads entry `id` back from its segment (`files` keeps the segments opened so far);
    /// `None` if the log no longer holds it (purged or truncated since it was asked for, as
    /// an entry held in memory would have gone too).
    fn read(&self, id: LogId, files: &mut HashMap<u64, File>) -> std::io::Result<Option<Entry>> {
        let Some(at) = self.positions.get(&id.index).filter(|p| p.id == id) else {
            return Ok(None);
        };
        let file = match files.entry(at.segment) {
            std::collections::hash_map::Entry::Occupied(f) => f.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let segment = self
                    .segments
                    .iter()
                    .find(|s| s.first == at.segment)
                    .ok_or_else(|| {
                        std::io::Error::other(format!("entry {id}: its segment is gone"))
                    })?;
                v.insert(File::open(&segment.path)?)
            }
        };
        let mut header = [0u8; HEADER];
        file.read_exact_at(&mut header, at.offset)?;
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_RECORD {
            return Err(std::io::Error::other(format!("entry {id}: damaged length")));
        }
        let mut record = vec![0u8; HEADER + len];
        file.read_exact_at(&mut record, at.offset)?;
        match parse_record(&record) {
            Some((entry, _)) if *entry.get_log_id() == id => Ok(Some(entry)),
            _ => Err(std::io::Error::other(format!("entry {id} is damaged"))),
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

    fn append(&mut self, records: &[(LogId, Vec<u8>)]) -> std::io::Result<()> {
        for &(id, ref record) in records {
            let index = id.index;
            let roll = self.segments.last().is_none_or(|s| s.len >= SEGMENT_BYTES);
            if roll {
                self.start_segment(index)?;
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
            self.positions.insert(
                index,
                Position {
                    segment: segment.first,
                    offset: segment.len,
                    id,
                },
            );
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
        let Some(&Position {
            segment: first,
            offset,
            ..
        }) = self.positions.get(&index)
        else {
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

    /// Builds stores whose log holds at most this many bytes of records in memory.
    struct Builder(usize);

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().map_err(|e| storage_error("test", e))?;
            let db = crate::store::open(&dir.path().join("meta.redb"))
                .map_err(|e| storage_error("test", e))?;
            let log = LogStore::open_with_budget(&dir.path().join("raft"), self.0)?;
            let state = StateMachine::new(db, &dir.path().join("raft/snapshots"))?;
            Ok((dir, log, state))
        }
    }

    /// openraft's own conformance suite for log and state-machine storage.
    #[test]
    fn passes_openraft_storage_suite() {
        Suite::test_all(Builder(MEMORY_BUDGET)).unwrap();
    }

    /// The same with nothing held in memory once flushed: every read of an older entry goes
    /// to its segment.
    #[test]
    fn passes_openraft_storage_suite_reading_every_entry_from_disk() {
        Suite::test_all(Builder(0)).unwrap();
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

    async fn ids(log: &mut LogStore, range: std::ops::Range<u64>) -> Vec<(u64, u64)> {
        log.try_get_log_entries(range)
            .await
            .unwrap()
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect()
    }

    fn held(log: &LogStore) -> usize {
        log.memory().entries.held()
    }

    /// Memory holds only the newest entries within its budget, and only once they are on
    /// disk; the others are read back from their segment, as the very entries appended
    /// (after a truncation, the new ones), before and after reopening.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    // The test holds the writer's lock across awaits on purpose: it stands for a busy writer.
    #[allow(clippy::await_holding_lock)]
    async fn entries_past_the_memory_budget_are_read_back_from_their_segment() {
        let dir = tempfile::tempdir().unwrap();
        let record = encode_record(&blank(1, 1)).unwrap().len();
        // Room for three records.
        let budget = 3 * record + record / 2;
        let mut log = LogStore::open_with_budget(dir.path(), budget).unwrap();
        append(&mut log, (1..=20).map(|i| blank(1, i)).collect()).await;
        assert_eq!(held(&log), 3);
        let all: Vec<_> = (1..=20).map(|i| (1, i)).collect();
        assert_eq!(ids(&mut log, 1..21).await, all);

        // Entries not yet on disk stay in memory, whatever the budget.
        let guard = log.disk.clone();
        let guard = guard.lock().unwrap();
        let mut busy = log.clone();
        let queued = tokio::spawn(async move {
            append(&mut busy, (21..=26).map(|i| blank(1, i)).collect()).await;
        });
        while log.queued.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(held(&log), 9, "unwritten entries were let go");
        drop(guard);
        queued.await.unwrap();
        assert_eq!(held(&log), 3);

        // A truncation over entries read from disk: the new ones are read, not the old.
        log.truncate(blank(1, 10).log_id).await.unwrap();
        append(&mut log, (10..=14).map(|i| blank(2, i)).collect()).await;
        let mut expected: Vec<_> = (1..10).map(|i| (1, i)).collect();
        expected.extend((10..=14).map(|i| (2, i)));
        assert_eq!(ids(&mut log, 1..100).await, expected);
        log.purge(blank(1, 4).log_id).await.unwrap();
        log.sync().unwrap();
        assert_eq!(ids(&mut log, 0..100).await, expected[4..]);
        // Asked for by id, as a read that raced a purge or a truncation would: gone is not
        // found, not an error, and never another entry.
        {
            let disk = log.disk.lock().unwrap();
            let mut files = HashMap::new();
            assert!(disk.read(blank(1, 2).log_id, &mut files).unwrap().is_none());
            assert!(disk
                .read(blank(1, 12).log_id, &mut files)
                .unwrap()
                .is_none());
            let twelve = disk.read(blank(2, 12).log_id, &mut files).unwrap();
            assert_eq!(twelve.map(|e| e.log_id), Some(blank(2, 12).log_id));
        }
        drop(log);

        // Reopened with nothing held: every entry from its segment.
        let mut log = LogStore::open_with_budget(dir.path(), 0).unwrap();
        assert_eq!(held(&log), 0);
        assert_eq!(ids(&mut log, 0..100).await, expected[4..]);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(blank(2, 14).log_id));
        drop(log);
        let log = LogStore::open_with_budget(dir.path(), budget).unwrap();
        assert_eq!(held(&log), 3);
    }

    /// Only entries the segment holds as the very same entry leave memory, oldest first, and
    /// only while memory is over its budget.
    #[test]
    fn only_entries_on_disk_are_let_go_oldest_first() {
        let mut entries = Entries::new(2 * 10);
        for i in 1..=6 {
            entries.insert(blank(1, i), 10);
        }
        // 3 and on are not written yet.
        entries.shed(|index, _| index <= 2);
        assert_eq!(entries.held(), 4);
        // 3 is on disk, but as another entry (an older term, truncated since).
        entries.shed(|index, id| index <= 2 || id.leader_id.term == 0);
        assert_eq!(entries.held(), 4);
        entries.shed(|_, _| true);
        assert_eq!(entries.held(), 2);
        assert!(entries.kept[&5].entry.is_some() && entries.kept[&6].entry.is_some());
        // A truncation and new entries: held again until written.
        entries.truncate(5);
        entries.insert(blank(2, 5), 10);
        entries.insert(blank(2, 6), 10);
        entries.insert(blank(2, 7), 10);
        entries.shed(|index, _| index < 5);
        assert_eq!(entries.held(), 3);
        entries.purge(5);
        assert_eq!(entries.held(), 2);
        assert_eq!(entries.held_bytes, 20);
        assert_eq!(entries.last_id(), Some(blank(2, 7).log_id));
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
    /// writer thread and back); while the writer thread is busy, or appends are not to be
    /// flushed inline, appends queue behind its work. Either way entries land in order and
    /// survive reopening.
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
        // A leader of other members hands even an idle log's appends to the writer thread.
        log.set_appends_inline(false);
        append(&mut log, vec![blank(1, 8)]).await;
        assert_eq!(
            log.appends_written_here(),
            3,
            "flushed by the caller while appends go to the writer thread"
        );
        drop(log);

        let mut log = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&mut log).await, (1..=8).collect::<Vec<_>>());
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
