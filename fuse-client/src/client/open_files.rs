//! The open files of one mount, by descriptor and by inode.
//!
//! Several descriptors of one file share what is kept here:
//! - the size including unflushed writes, so that `stat` sees them;
//! - whether the layouts the descriptors cached are stale (a counter they compare with);
//! - the file's version as of this mount's last open or own commit, so that an open after
//!   this mount's own writes keeps the kernel's pages.
//!
//! Each descriptor has its own lock, and nothing here locks a descriptor of another file
//! than the one named: closing one file never waits for another file's upload.

use super::file::FileHandle;
use super::pending_attrs;
use super::Client;
use dfs_common::model::{SetAttr, TimeSet};
use dfs_common::proto::meta::req::{OpenReport, MAX_OPEN_REPORTED};
use dfs_common::proto::meta::Attr;
use dfs_common::{FsError, FsResult, InodeId, Timestamp};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// One open descriptor: the handle its reads and writes go through, and its file.
pub struct OpenFile {
    fh: u64,
    ino: InodeId,
    handle: tokio::sync::Mutex<FileHandle>,
}

impl OpenFile {
    pub fn fh(&self) -> u64 {
        self.fh
    }

    pub fn ino(&self) -> InodeId {
        self.ino
    }

    /// The handle, for reads that lock it only to plan ([`FileHandle::read_shared`]).
    pub fn handle(&self) -> &tokio::sync::Mutex<FileHandle> {
        &self.handle
    }

    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, FileHandle> {
        self.handle.lock().await
    }
}

/// What the open descriptors of one inode share.
#[derive(Default)]
struct Inode {
    /// Its descriptors open here.
    fhs: HashSet<u64>,
    /// Descriptors with unflushed writes, and the file's size including them.
    dirty: HashMap<u64, u64>,
    /// Raised when the file's extents change; a descriptor that saw another value drops the
    /// layouts it cached.
    layouts: Arc<AtomicU64>,
    /// The file's attributes as the metadata server last gave them to this mount, and when.
    known: Option<(Attr, Instant)>,
    /// Attribute changes waiting for the flush of one descriptor's writes.
    waiting: Option<Waiting>,
}

impl Inode {
    /// The one descriptor holding all of the file's unflushed writes, if there is one.
    fn sole_writer(&self) -> Option<u64> {
        let mut dirty = self.dirty.keys();
        match (dirty.next(), dirty.next()) {
            (Some(&fh), None) => Some(fh),
            _ => None,
        }
    }

    /// Whether a descriptor other than `fh` holds unflushed writes of the file.
    fn written_besides(&self, fh: u64) -> bool {
        self.dirty.keys().any(|&other| other != fh)
    }

    /// Whether attribute changes wait for the flush of descriptor `fh`.
    fn waits_for(&self, fh: u64) -> bool {
        self.waiting.as_ref().is_some_and(|w| w.owner.fh == fh)
    }

    /// Notes `attr`; gives whether it may show a size this mount did not know (it is newer
    /// than what was known, which had another size or was forgotten).
    fn note(&mut self, attr: &Attr) -> bool {
        // Answers of requests that crossed may arrive out of order; ctime tells.
        let resized = match &self.known {
            None => true,
            Some((k, _)) if k.ctime <= attr.ctime => k.size != attr.size,
            Some(_) => return false,
        };
        self.known = Some((attr.clone(), Instant::now()));
        resized
    }
}

/// Attribute changes answered by the mount, carried to the metadata server by the flush of
/// the writes they followed (see [`pending_attrs`]).
struct Waiting {
    /// The descriptor whose writes hold the file's buffered state; its flush carries them.
    owner: Arc<OpenFile>,
    set: SetAttr,
    /// When the last of them was made: the change time the mount shows meanwhile.
    at: Timestamp,
    /// Taken by a flush that is under way: still shown, no longer added to.
    sending: bool,
}

#[derive(Default)]
struct Table {
    files: HashMap<u64, Arc<OpenFile>>,
    inodes: HashMap<InodeId, Inode>,
    /// Files opened or closed (their first open, their last close) since the last report to
    /// the metadata server (see [`OpenFiles::report`]).
    changed: HashSet<InodeId>,
}

impl Table {
    /// Forgets the open state of `ino`, whose last descriptor closed.
    fn closed(&mut self, ino: InodeId) {
        self.changed.insert(ino);
        self.inodes.remove(&ino);
    }

    /// The descriptors open here on `ino`.
    fn files_of(&self, ino: InodeId) -> Vec<Arc<OpenFile>> {
        let fhs = self.inodes.get(&ino).map(|i| &i.fhs);
        let files = fhs.into_iter().flatten();
        files.filter_map(|fh| self.files.get(fh).cloned()).collect()
    }

    /// Notes the attributes of `attr.ino` as the metadata server gave them, if it is open.
    /// If they show a size this mount did not know (another client changed it), the file's
    /// descriptors free at once take it: a write through one would otherwise make this
    /// mount show the old size again until its flush, and reads through it find bytes that
    /// are no longer there. A busy one keeps its size until its flush.
    fn note(&mut self, attr: &Attr) {
        let Some(inode) = self.inodes.get_mut(&attr.ino) else {
            return;
        };
        if !inode.note(attr) {
            return;
        }
        for file in self.files_of(attr.ino) {
            let Ok(mut handle) = file.handle.try_lock() else {
                continue;
            };
            if handle.resized_elsewhere(attr) {
                self.set_buffered(&file, handle.size());
            }
        }
    }

    /// A resized descriptor's size with its unflushed writes, if it has any.
    fn set_buffered(&mut self, file: &OpenFile, size: u64) {
        let inode = self.inodes.get_mut(&file.ino);
        if let Some(buffered) = inode.and_then(|i| i.dirty.get_mut(&file.fh)) {
            *buffered = size;
        }
    }
}

/// Sizes of files including unflushed writes, as they stood at one moment.
pub struct BufferedSizes(HashMap<InodeId, u64>);

impl BufferedSizes {
    /// Raises the size in `attr` (fetched after this snapshot was taken) to cover the writes
    /// that were unflushed then.
    pub fn cover(&self, mut attr: Attr) -> Attr {
        if let Some(&size) = self.0.get(&attr.ino) {
            attr.size = attr.size.max(size);
        }
        attr
    }
}

/// What tells one state of a file's data from another: its modification and change times and
/// its size (ctime is the metadata server's clock at each change).
type FileVersion = (Timestamp, Timestamp, u64);

fn version_of(attr: &Attr) -> FileVersion {
    (attr.mtime, attr.ctime, attr.size)
}

/// Versions remembered at most; past this the table starts afresh (costing only cache hits).
const MAX_VERSIONS: usize = 100_000;

pub struct OpenFiles {
    client: Client,
    table: Mutex<Table>,
    versions: Mutex<HashMap<InodeId, FileVersion>>,
    next_fh: AtomicU64,
}

impl OpenFiles {
    pub fn new(client: Client) -> Self {
        OpenFiles {
            client,
            table: Mutex::default(),
            versions: Mutex::default(),
            next_fh: AtomicU64::new(1),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().expect("open file table")
    }

    /// Registers an open file; returns its descriptor number.
    pub fn add(&self, mut file: FileHandle) -> u64 {
        let ino = file.ino();
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let mut table = self.table();
        let inode = table.inodes.entry(ino).or_default();
        inode.fhs.insert(fh);
        let first = inode.fhs.len() == 1;
        file.share_layout_epoch(inode.layouts.clone());
        if first {
            table.changed.insert(ino);
        }
        let handle = tokio::sync::Mutex::new(file);
        table
            .files
            .insert(fh, Arc::new(OpenFile { fh, ino, handle }));
        fh
    }

    pub fn get(&self, fh: u64) -> Option<Arc<OpenFile>> {
        self.table().files.get(&fh).cloned()
    }

    /// Whether this mount has `ino` open.
    pub fn holds(&self, ino: InodeId) -> bool {
        self.table().inodes.contains_key(&ino)
    }

    /// Records that `file` has unflushed writes, the file's size including them being `size`.
    pub fn wrote(&self, file: &OpenFile, size: u64) {
        if let Some(inode) = self.table().inodes.get_mut(&file.ino) {
            inode.dirty.insert(file.fh, size);
            // A write after a waiting change of mtime dates the file itself, at its commit.
            if let Some(waiting) = inode.waiting.as_mut().filter(|w| !w.sending) {
                waiting.set.mtime = None;
            }
        }
    }

    /// Notes the attributes of `attr.ino` as the metadata server gave them, if it is open.
    pub fn note_attr(&self, attr: &Attr) {
        self.table().note(attr);
    }

    /// [`OpenFiles::note_attr`], and gives `attr` with the changes waiting here made.
    pub fn noted(&self, attr: Attr) -> Attr {
        let mut table = self.table();
        table.note(&attr);
        let Some(inode) = table.inodes.get(&attr.ino) else {
            return attr;
        };
        match &inode.waiting {
            Some(w) => pending_attrs::apply(&w.set, attr, w.at),
            None => attr,
        }
    }

    /// Forgets the attributes noted of `ino` (of every file with `None`): another client
    /// changed it. Changes waiting here stay, and still go to the metadata server.
    pub fn forget_attr(&self, ino: Option<InodeId>) {
        let mut table = self.table();
        match ino {
            Some(ino) => table
                .inodes
                .get_mut(&ino)
                .into_iter()
                .for_each(|i| i.known = None),
            None => table.inodes.values_mut().for_each(|i| i.known = None),
        }
    }

    /// Keeps the change `set` of `ino` to wait for the flush of its buffered writes, if it
    /// may ([`pending_attrs::may_wait`]): one descriptor holds all of them, and the file's
    /// attributes were given by the metadata server less than `max_age` ago. Gives the
    /// attributes the file now has for this mount; `None` when the change must be made at
    /// the server now.
    pub fn defer_setattr(&self, ino: InodeId, set: &SetAttr, max_age: Duration) -> Option<Attr> {
        let mut table = self.table();
        let table = &mut *table;
        let inode = table.inodes.get_mut(&ino)?;
        let owner = table.files.get(&inode.sole_writer()?)?.clone();
        let (known, at) = inode.known.as_ref()?;
        if at.elapsed() >= max_age {
            return None;
        }
        let shown = match &inode.waiting {
            Some(w) if w.sending || w.owner.fh != owner.fh => return None,
            Some(w) => pending_attrs::apply(&w.set, known.clone(), w.at),
            None => known.clone(),
        };
        if !pending_attrs::may_wait(set, &shown) {
            return None;
        }
        let now = Timestamp::now();
        let waiting = inode.waiting.get_or_insert_with(|| Waiting {
            owner,
            set: SetAttr::default(),
            at: now,
            sending: false,
        });
        pending_attrs::merge(&mut waiting.set, set);
        waiting.at = now;
        Some(pending_attrs::apply(&waiting.set, known.clone(), now))
    }

    /// The attributes of `ino` for this mount while changes to it wait here: what the
    /// metadata server last gave, with those changes made.
    pub fn attr_with_waiting(&self, ino: InodeId, max_age: Duration) -> Option<Attr> {
        let table = self.table();
        let inode = table.inodes.get(&ino)?;
        let (waiting, (known, at)) = (inode.waiting.as_ref()?, inode.known.as_ref()?);
        if at.elapsed() >= max_age {
            return None;
        }
        Some(pending_attrs::apply(
            &waiting.set,
            known.clone(),
            waiting.at,
        ))
    }

    /// Whether attribute changes of `ino` wait for the flush of descriptor `fh`.
    fn waits_for(&self, ino: InodeId, fh: u64) -> bool {
        let table = self.table();
        table.inodes.get(&ino).is_some_and(|i| i.waits_for(fh))
    }

    /// Sends the attribute changes waiting for `ino`, with the writes they follow: a change
    /// about to be made at the metadata server must land after them. Waits for a flush that
    /// is sending them already. A failure is also kept for the descriptor they wait for.
    pub async fn settle(&self, ino: InodeId) -> FsResult<()> {
        let owner = {
            let table = self.table();
            let waiting = table.inodes.get(&ino).and_then(|i| i.waiting.as_ref());
            waiting.map(|w| w.owner.clone())
        };
        match owner {
            Some(file) => self.flush_keeping_error(&file).await,
            None => Ok(()),
        }
    }

    /// The changes waiting for `file`'s flush, marked as being sent.
    fn take_waiting(&self, file: &OpenFile) -> Option<SetAttr> {
        let mut table = self.table();
        let waiting = table.inodes.get_mut(&file.ino)?.waiting.as_mut()?;
        if waiting.owner.fh != file.fh || waiting.sending {
            return None;
        }
        waiting.sending = true;
        Some(waiting.set.clone())
    }

    /// Drops the changes a flush took, sent or failed. Changes made while that flush was
    /// under way were not taken: they stay for the descriptor's next flush or close.
    fn sent_waiting(&self, file: &OpenFile) {
        if let Some(inode) = self.table().inodes.get_mut(&file.ino) {
            if inode.waiting.as_ref().is_some_and(|w| w.sending) {
                inode.waiting = None;
            }
        }
    }

    /// The size of `ino` including unflushed writes of its open descriptors, if it has any.
    pub fn size_with_writes(&self, ino: InodeId) -> Option<u64> {
        let table = self.table();
        table.inodes.get(&ino)?.dirty.values().copied().max()
    }

    /// `attr`, fetched from the metadata server after `buffered` was taken, as this mount
    /// shows it (before [`OpenFiles::noted`]): noted, so that a size changed elsewhere
    /// reaches the descriptors; if the file still has unflushed writes, as it is (the size
    /// they give now is shown over it); if this mount knows a later version (a flush
    /// committed while the question was out), that one; else raised to cover the writes
    /// unflushed when the question was asked.
    pub fn cover(&self, buffered: &BufferedSizes, attr: Attr) -> Attr {
        let mut table = self.table();
        table.note(&attr);
        let Some(inode) = table.inodes.get(&attr.ino) else {
            return buffered.cover(attr);
        };
        if !inode.dirty.is_empty() {
            return attr;
        }
        match &inode.known {
            Some((known, _)) if known.ctime > attr.ctime => known.clone(),
            _ => buffered.cover(attr),
        }
    }

    /// The sizes [`OpenFiles::size_with_writes`] gives, of every file with unflushed writes.
    /// Taken before asking the metadata server for attributes: a flush that commits those
    /// writes while the question is out forgets them, and the answer may predate its commit.
    pub fn buffered_sizes(&self) -> BufferedSizes {
        let table = self.table();
        let sizes = table.inodes.iter().filter_map(|(ino, inode)| {
            let size = inode.dirty.values().copied().max()?;
            Some((*ino, size))
        });
        BufferedSizes(sizes.collect())
    }

    /// What to tell the metadata server of the files open here: with `all`, every one;
    /// else those opened or closed since the last report. At most [`MAX_OPEN_REPORTED`] in
    /// each list (the rest wait for the next report).
    pub fn report(&self, all: bool) -> OpenReport {
        let mut table = self.table();
        if all {
            table.changed.clear();
            let opened = table
                .inodes
                .keys()
                .copied()
                .take(MAX_OPEN_REPORTED)
                .collect();
            return OpenReport {
                all,
                opened,
                released: Vec::new(),
            };
        }
        let mut report = OpenReport::default();
        let changed: Vec<InodeId> = table.changed.iter().copied().collect();
        for ino in changed {
            let list = if table.inodes.contains_key(&ino) {
                &mut report.opened
            } else {
                &mut report.released
            };
            if list.len() < MAX_OPEN_REPORTED {
                list.push(ino);
                table.changed.remove(&ino);
            }
        }
        report
    }

    /// Inodes with open descriptors.
    pub fn open_inodes(&self) -> Vec<InodeId> {
        self.table().inodes.keys().copied().collect()
    }

    /// Makes the open descriptors of `ino` (of every inode, for `None`) fetch the layout again
    /// at their next read: the file's size or extents changed. Waits for nothing.
    pub fn forget_layouts(&self, ino: Option<InodeId>) {
        let table = self.table();
        let stale = |inode: &Inode| {
            inode.layouts.fetch_add(1, Ordering::AcqRel);
        };
        match ino {
            Some(ino) => table.inodes.get(&ino).into_iter().for_each(stale),
            None => table.inodes.values().for_each(stale),
        }
    }

    /// The size of `ino` was set at the metadata server by a call of this mount that named no
    /// descriptor (a truncate by path, or the one the kernel makes for `open(O_TRUNC)`): its
    /// descriptors here take the new size. Otherwise a write through one of them would raise
    /// the size this mount shows back to the old one until its flush.
    pub async fn resized(&self, ino: InodeId, size: u64, ctime: Timestamp) {
        self.resize(ino, size, ctime, None).await;
    }

    /// Gives the descriptors of `ino` but `except` the size `size`, set at the server by a
    /// change of ctime `ctime`.
    async fn resize(&self, ino: InodeId, size: u64, ctime: Timestamp, except: Option<u64>) {
        let files = self.table().files_of(ino);
        for file in files.iter().filter(|f| Some(f.fh) != except) {
            let mut handle = file.lock().await;
            handle.resized(size, ctime);
            self.table().set_buffered(file, handle.size());
        }
        self.forget_layouts(Some(ino));
    }

    fn clean(&self, file: &OpenFile) {
        if let Some(inode) = self.table().inodes.get_mut(&file.ino) {
            inode.dirty.remove(&file.fh);
        }
    }

    /// Makes what `file` wrote durable and visible: to other clients, and to the other
    /// descriptors of this mount through their layouts.
    pub async fn flush(&self, file: &OpenFile) -> FsResult<()> {
        self.flush_carrying(file, None, false).await.map(|_| ())
    }

    /// [`OpenFiles::flush`] whose error is also kept for the descriptor's next flush, fsync or
    /// close to report, before the descriptor is let go (an fsync waiting for it must not find
    /// it clean and report success). For a flush on behalf of someone other than the
    /// descriptor's next user: the write-back, a change of times, and `close(2)`, which may
    /// come from another process sharing the descriptor (a child closing what it inherited,
    /// at its exit or `exec`): the writes that failed are gone, and whoever syncs the
    /// descriptor next must hear of it, as Linux reports a failed write-back to every open
    /// file of it at its next fsync.
    pub async fn flush_keeping_error(&self, file: &OpenFile) -> FsResult<()> {
        self.flush_carrying(file, None, true).await.map(|_| ())
    }

    /// Flushes `file`, carrying the attribute changes waiting for it: a new mtime in the
    /// commits of its writes (else `stamp`, if given), the rest in one change made alongside
    /// them (they touch different fields, so the two commits may land in either order, or in
    /// one log entry). Gives the file's attributes after both, if a commit or change was made.
    /// The waiting changes are sent even when the writes fail: they were answered for. With
    /// `keep_error`, a failure is also kept in the descriptor for its next flush to report.
    async fn flush_carrying(
        &self,
        file: &OpenFile,
        stamp: Option<Timestamp>,
        keep_error: bool,
    ) -> FsResult<Option<Attr>> {
        let mut handle = file.lock().await;
        let mut rest = self.take_waiting(file).unwrap_or_default();
        let mtime = rest.mtime.take();
        let stamp = match mtime {
            Some(TimeSet::At(t)) => Some(t),
            Some(TimeSet::Now) => None,
            None => stamp,
        };
        let change = async {
            if pending_attrs::is_empty(&rest) {
                return Ok(None);
            }
            self.client.setattr(file.ino, rest.clone()).await.map(Some)
        };
        let (result, changed) = tokio::join!(handle.flush_stamped(stamp), change);
        let commits = handle.take_commits();
        let committed = result.as_ref().ok().cloned().flatten();
        let mut after = match (&committed, &changed) {
            (Some(data), Ok(Some(attr))) => Some(pending_attrs::apply(
                &rest,
                data.clone(),
                data.ctime.max(attr.ctime),
            )),
            (Some(data), _) => Some(data.clone()),
            (None, Ok(changed)) => changed.clone(),
            (None, Err(_)) => None,
        };
        let mut changed = changed.map(|_| ());
        if mtime.is_some() && committed.is_none() {
            // No commit carried the new mtime.
            let set = SetAttr {
                mtime,
                ..SetAttr::default()
            };
            match self.client.setattr(file.ino, set).await {
                Ok(attr) => after = Some(attr),
                Err(e) => changed = changed.and(Err(e)),
            }
        }
        self.sent_waiting(file);
        if keep_error {
            if let Some(e) = result.as_ref().err().or(changed.as_ref().err()) {
                handle.keep_error(e.clone());
            }
        }
        // The attributes after the flush are noted before the descriptor shows clean: an
        // answer of the metadata server from before the commit, arriving once it is clean,
        // is then found older than what this mount knows (see [`OpenFiles::cover`]).
        if let Some(attr) = &after {
            self.note_attr(attr);
        }
        // Under the handle's lock: a write that follows the flush records its size anew.
        self.clean(file);
        drop(handle);
        if !commits.is_empty() {
            self.note_commits(file.ino, commits);
            self.forget_layouts(Some(file.ino));
        }
        result?;
        changed.map(|()| after)
    }

    /// fsync through descriptor `file`: what every descriptor of the file in this mount
    /// wrote, and the attribute changes answered for it, reach the metadata server, where each
    /// commit is durable before it is answered. (The kernel sends the fsync with the one
    /// descriptor it came through; the writes of the others are the file's data all the
    /// same.) A failure of another descriptor's flush is also kept for that descriptor.
    pub async fn sync(&self, file: &OpenFile) -> FsResult<()> {
        let mut result = self.flush(file).await;
        for other in self.with_writes(file.ino, Some(file.fh)) {
            if let Err(e) = self.flush_keeping_error(&other).await {
                result = result.and(Err(e));
            }
        }
        // Changes answered for the file and carried by another descriptor's next flush.
        result.and(self.settle(file.ino).await)
    }

    /// [`OpenFiles::sync`] with nothing to send, done at once; `false` (and nothing done)
    /// when any descriptor of the file has something to flush, attribute changes wait, or
    /// `file` is busy: that fsync goes the long way.
    pub fn sync_if_clean(&self, file: &OpenFile) -> bool {
        {
            let table = self.table();
            let inode = table.inodes.get(&file.ino);
            let pending = inode.is_some_and(|i| i.waiting.is_some() || i.written_besides(file.fh));
            if pending {
                return false;
            }
        }
        self.flush_if_clean(file)
    }

    /// [`OpenFiles::flush`] of a descriptor with nothing to flush, done at once; `false` (and
    /// nothing done) when it has something to flush or is busy (a write, a read being
    /// planned, a write-back): that flush must wait, on the runtime.
    pub fn flush_if_clean(&self, file: &OpenFile) -> bool {
        let Ok(handle) = file.handle.try_lock() else {
            return false;
        };
        if !handle.is_clean() || self.waits_for(file.ino, file.fh) {
            return false;
        }
        self.clean(file);
        true
    }

    /// A read through descriptor `fh` answered at once from bytes at hand
    /// ([`FileHandle::read_at_hand`]); `None` (and nothing done) when it must wait, on the
    /// runtime: the descriptor is busy, another descriptor of the file has writes to flush
    /// first, or some bytes must be fetched.
    pub fn read_if_at_hand(&self, fh: u64, offset: u64, len: u64) -> Option<Vec<u8>> {
        let file = {
            let table = self.table();
            let file = table.files.get(&fh)?.clone();
            let inode = table.inodes.get(&file.ino);
            if inode.is_some_and(|i| i.written_besides(fh)) {
                return None;
            }
            file
        };
        let handle = file.handle.try_lock().ok()?;
        handle.read_at_hand(offset, len)
    }

    /// A write through descriptor `fh` that only buffers, done at once
    /// ([`FileHandle::write_at_once`]); `None` (and nothing done) when the descriptor is busy
    /// or the write has something to wait for: it goes the long way, on the runtime.
    pub fn write_if_buffered(&self, fh: u64, offset: u64, data: &[u8]) -> Option<usize> {
        let file = self.table().files.get(&fh)?.clone();
        let mut handle = file.handle.try_lock().ok()?;
        let written = handle.write_at_once(offset, data)?;
        self.wrote(&file, handle.size());
        Some(written)
    }

    /// [`OpenFiles::close`] of a descriptor with nothing to flush, done at once. `false` (and
    /// nothing done) when the close must wait, on the runtime.
    pub fn close_if_clean(&self, fh: u64) -> bool {
        let mut table = self.table();
        let Some(file) = table.files.get(&fh).cloned() else {
            return false;
        };
        let Ok(handle) = file.handle.try_lock() else {
            return false;
        };
        let waits = table.inodes.get(&file.ino).is_some_and(|i| i.waits_for(fh));
        if !handle.is_clean() || waits {
            return false;
        }
        if let Some(inode) = table.inodes.get_mut(&file.ino) {
            inode.dirty.remove(&fh);
            inode.fhs.remove(&fh);
            if inode.fhs.is_empty() {
                table.closed(file.ino);
            }
        }
        table.files.remove(&fh);
        true
    }

    /// The descriptors of `ino` with unflushed writes, except `except`.
    fn with_writes(&self, ino: InodeId, except: Option<u64>) -> Vec<Arc<OpenFile>> {
        let table = self.table();
        let dirty = table.inodes.get(&ino).map(|i| i.dirty.keys());
        dirty
            .into_iter()
            .flatten()
            .filter(|fh| Some(**fh) != except)
            .filter_map(|fh| table.files.get(fh).cloned())
            .collect()
    }

    /// Flushes the descriptors of `ino` with unflushed writes, except `except`: what one
    /// descriptor wrote reaches the cluster before another one reads or truncates the file.
    /// A failure is reported to the caller and kept for the descriptor whose writes failed,
    /// for its own next flush, fsync or close: its writer must hear of it too.
    pub async fn flush_others(&self, ino: InodeId, except: Option<u64>) -> FsResult<()> {
        let mut first_error = None;
        for file in self.with_writes(ino, except) {
            if let Err(e) = self.flush_keeping_error(&file).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Flushes every descriptor of `ino` with unflushed writes before a change of the file's
    /// times: a flush after it would stamp the file with the flush's time, losing the one
    /// set (`tar` and `cp -p` set each file's mtime before closing it). A descriptor whose
    /// flush fails also keeps the error for its own flush or close, as a failed write-back
    /// does: the process that wrote learns of it even when another set the times.
    pub async fn flush_before_times(&self, ino: InodeId) -> FsResult<()> {
        self.flush_others(ino, None).await
    }

    /// Sets the mtime of `ino` to `mtime` with the commit of its unflushed writes, when one
    /// descriptor holds them all: the change of time costs no commit of its own. Gives the
    /// file's attributes after that commit; `None` when it did not happen this way (no or
    /// several descriptors with writes, or nothing committed), and the caller changes the
    /// time itself. A failed flush is reported as [`OpenFiles::flush_before_times`] does.
    pub async fn flush_stamped(&self, ino: InodeId, mtime: Timestamp) -> FsResult<Option<Attr>> {
        let file = {
            let table = self.table();
            let writer = table.inodes.get(&ino).and_then(Inode::sole_writer);
            writer.and_then(|fh| table.files.get(&fh).cloned())
        };
        let Some(file) = file else {
            return Ok(None);
        };
        let after = self.flush_carrying(&file, Some(mtime), true).await?;
        Ok(after.filter(|after| after.mtime == mtime))
    }

    /// Truncates the file through `file`, after its own and the other descriptors' writes.
    pub async fn truncate(&self, file: &OpenFile, size: u64) -> FsResult<()> {
        self.flush_others(file.ino, Some(file.fh)).await?;
        let mut handle = file.lock().await;
        let result = handle.truncate(size).await;
        self.clean(file);
        let new_size = (handle.size(), handle.size_ctime());
        drop(handle);
        self.after_resize(file, &result, new_size).await;
        result
    }

    /// `fallocate` without flags through `file`: the size grows to at least `end`.
    pub async fn allocate(&self, file: &OpenFile, end: u64) -> FsResult<()> {
        self.flush_others(file.ino, Some(file.fh)).await?;
        let mut handle = file.lock().await;
        let result = handle.allocate(end).await;
        self.clean(file);
        let new_size = (handle.size(), handle.size_ctime());
        drop(handle);
        self.after_resize(file, &result, new_size).await;
        result
    }

    /// After a size change through `file` (to `size`, by a change of ctime `ctime`): the
    /// file's other descriptors take the new size.
    async fn after_resize(
        &self,
        file: &OpenFile,
        result: &FsResult<()>,
        (size, ctime): (u64, Timestamp),
    ) {
        match result {
            Ok(()) => self.resize(file.ino, size, ctime, Some(file.fh)).await,
            Err(_) => self.forget_layouts(Some(file.ino)),
        }
    }

    /// Closes descriptor `fh`: flushes it. Errors of earlier writes surface here, as with NFS.
    pub async fn close(&self, fh: u64) -> FsResult<InodeId> {
        let file = self
            .table()
            .files
            .remove(&fh)
            .ok_or_else(|| FsError::invalid("unknown file handle"))?;
        let result = self.flush(&file).await;
        let mut table = self.table();
        let last = table.inodes.get_mut(&file.ino).is_none_or(|inode| {
            inode.fhs.remove(&fh);
            inode.fhs.is_empty()
        });
        if last {
            table.closed(file.ino);
        }
        result.map(|()| file.ino)
    }

    /// Unlinks a name. A file open here (or on any mount) that loses its last name stays
    /// readable and writable until its last close: the metadata server keeps it as an orphan
    /// while the mounts report it open (see [`OpenFiles::report`]). Sent as `UnlinkOrHide`
    /// naming no open file, whose answer names the inode: only its attributes are dropped.
    pub async fn unlink(&self, parent: InodeId, name: &str) -> FsResult<()> {
        self.client.unlink_or_hide(parent, name, Vec::new()).await?;
        Ok(())
    }

    /// Writes back open files with unflushed writes, every `interval`, until `files` is gone:
    /// a descriptor found dirty in two rounds in a row is flushed, so no write waits longer
    /// than about two intervals for its commit (and blocks uploaded early never wait so long
    /// that garbage collection takes them). An error is kept for the descriptor's next flush,
    /// fsync or close to report.
    pub async fn write_back(files: Weak<OpenFiles>, interval: Duration) {
        let mut seen: Vec<u64> = Vec::new();
        loop {
            tokio::time::sleep(interval).await;
            let Some(files) = files.upgrade() else { return };
            let dirty: Vec<Arc<OpenFile>> = {
                let table = files.table();
                let fhs = table.inodes.values().flat_map(|i| i.dirty.keys());
                fhs.filter_map(|fh| table.files.get(fh).cloned()).collect()
            };
            for file in dirty.iter().filter(|f| seen.contains(&f.fh)) {
                if let Err(e) = files.flush_keeping_error(file).await {
                    tracing::warn!(ino = %file.ino, "writing back: {e}");
                }
                // After the descriptor was let go: an fsync may take it here.
                let _ = files.client.faults().hit("client.written_back").await;
            }
            seen = dirty.iter().map(|f| f.fh).collect();
        }
    }

    /// Close-to-open: `attr` was just fetched by an open. Returns whether the file is as this
    /// mount last knew it (opened it, or committed to it), so that its cached pages hold.
    pub fn opened(&self, attr: &Attr) -> bool {
        self.remember_version(attr) == Some(version_of(attr))
    }

    /// Whether `attr` is the version of the file this mount knows, so its cached pages hold
    /// ([`OpenFiles::opened`] without recording it).
    pub fn is_current(&self, attr: &Attr) -> bool {
        let versions = self.versions.lock().expect("version lock");
        versions.get(&attr.ino) == Some(&version_of(attr))
    }

    /// Records the version of a file this mount knows to be current (it just created it).
    pub fn remember_version(&self, attr: &Attr) -> Option<FileVersion> {
        let mut versions = self.versions.lock().expect("version lock");
        if versions.len() >= MAX_VERSIONS {
            versions.clear();
        }
        versions.insert(attr.ino, version_of(attr))
    }

    /// Another client changed `ino` (every inode, for `None`): its next open drops its pages.
    pub fn forget_version(&self, ino: Option<InodeId>) {
        let mut versions = self.versions.lock().expect("version lock");
        match ino {
            Some(ino) => drop(versions.remove(&ino)),
            None => versions.clear(),
        }
    }

    /// Follows this mount's own commits to a file: when each started from the version this
    /// mount knew, no other client changed the file meanwhile, so the version after it is
    /// recorded and the next open keeps the kernel's pages (which hold this mount's writes).
    /// When one did not, the version is forgotten and the next open drops them.
    fn note_commits(&self, ino: InodeId, commits: Vec<(Attr, Attr)>) {
        let mut versions = self.versions.lock().expect("version lock");
        for (before, after) in commits {
            if versions.get(&ino) == Some(&version_of(&before)) {
                versions.insert(ino, version_of(&after));
            } else {
                versions.remove(&ino);
            }
        }
    }
}
