//! An open file: writes are buffered and uploaded a block at a time in the background, several
//! blocks in flight; `flush` (also called by `fsync` and `close`) uploads what is left and
//! commits every written block in one metadata transaction. What is left, when it is at most
//! `inline_max` bytes, goes instead into the metadata store with its commit (`WriteInline`): a
//! small file, or a small append to a log, costs one metadata commit. Once the file's inline
//! allowance is spent, the file's inline tail moves into a block with the next flush
//! ([`super::inline_tail`]). Reads see this handle's own writes because they flush first.

use super::dirty::DirtyBuffer;
use super::inline_tail;
use super::layouts::{LayoutPage, LayoutPages};
use super::reader::{self, CacheUse};
use super::writer::upload_block;
use super::Client;
use dfs_common::proto::meta::{req, Attr, Committed, FileKind, MetaRpc, NewExtent, SetAttr};
use dfs_common::proto::MAX_FILE_SIZE;
use dfs_common::{EcPolicy, FsError, FsResult, InodeId, Timestamp, VolumeId};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Commits remembered for [`FileHandle::take_commits`] at most; a chain longer than this is
/// simply broken (the next open then drops the cached pages).
const MAX_KEPT_COMMITS: usize = 1024;

/// Extents committed per metadata transaction at most; longer streams commit in steps.
const MAX_EXTENTS_PER_COMMIT: usize = dfs_common::proto::MAX_COMMIT_EXTENTS;

pub struct FileHandle {
    client: Client,
    ino: InodeId,
    volume: VolumeId,
    /// Growth of the file reserved against the volume's byte quota and not committed yet.
    quota_reserved: u64,
    block_size: usize,
    policy: EcPolicy,
    /// Size including buffered writes.
    size: u64,
    dirty: DirtyBuffer,
    /// Uploads in the order their bytes were cut from the buffer (later ones win).
    uploads: VecDeque<JoinHandle<FsResult<Vec<NewExtent>>>>,
    /// Finished uploads waiting for a commit, in order.
    uploaded: Vec<NewExtent>,
    /// An upload failed: the error is reported by the next flush.
    failed: Option<FsError>,
    /// The committed layout of the ranges of the file this handle has read. Valid until this
    /// handle changes the file; other clients' changes show at the next open (close-to-open).
    /// Shards it names may move (repair, drain, rebalance): a read that fails with it, or has
    /// to reconstruct, drops it so the next read fetches it again.
    layouts: LayoutPages,
    /// The file's layout did not fit one reply: pages are fetched from where reads need them.
    long_layout: bool,
    /// Raised by whoever changes the file's extents through another descriptor of this
    /// client ([`FileHandle::share_layout_epoch`]); `layouts` hold while it reads `layouts_seen`.
    layout_epoch: Arc<AtomicU64>,
    layouts_seen: u64,
    /// Opened with O_APPEND: every write goes to the end of the file as the metadata server
    /// sees it when the write commits, whatever offset it names.
    append: bool,
    /// Bytes written so far in append mode; buffered appends sit at these offsets and are moved
    /// to the file's end by the commit.
    append_pos: u64,
    /// This file's dirty bytes as last added to the client-wide count.
    dirty_counted: usize,
    /// The file's attributes before and after each commit since [`FileHandle::take_commits`].
    commits: Vec<(Attr, Attr)>,
    /// The file's attributes after this handle's last commit.
    last_commit: Option<Attr>,
    /// The mtime this handle's commits give the file, while a flush stamps it with a time set
    /// by the user ([`FileHandle::flush_stamped`]); else each commit's own time.
    stamp: Option<Timestamp>,
    /// The file's size as the metadata server had it at open or at this handle's last change.
    known_size: u64,
    /// The ctime of the attributes `known_size` was taken from: attributes of a later change
    /// made elsewhere (another client's truncate) give the handle their size.
    size_ctime: Timestamp,
    /// The server refused to keep more of the file inline: flushes write blocks, and one at
    /// the file's end takes the inline tail with it, which frees the allowance again.
    inline_spent: bool,
    /// With the allowance spent, the file was found not to end in inline bytes: there is no
    /// tail to move, and flushes write blocks without looking again.
    no_inline_tail: bool,
}

/// A read, planned under its handle and carried out without it.
pub struct ReadPlan {
    client: Client,
    ino: InodeId,
    offset: u64,
    len: u64,
    /// `None`: the range spans more extents than one layout reply holds; read page by page.
    layout: Option<Arc<LayoutPage>>,
    /// The layout came from the handle's cache (and may be stale).
    cached: bool,
    cache_use: CacheUse,
}

impl ReadPlan {
    /// Reads the bytes; says also whether some had to be rebuilt from other shards (a server
    /// down, failing or slow), after which a cached layout is better fetched again.
    pub async fn run(&self) -> FsResult<(Vec<u8>, bool)> {
        let fallbacks = self.client.fallback_reads();
        let data = match &self.layout {
            Some(layout) => {
                let (offset, len) = (self.offset, self.len);
                reader::read_with_layout(&self.client, layout, offset, len, self.cache_use).await?
            }
            None => {
                reader::read(
                    &self.client,
                    self.ino,
                    self.offset,
                    self.len,
                    self.cache_use,
                )
                .await?
            }
        };
        Ok((data, self.client.fallback_reads() != fallbacks))
    }

    /// Whether the handle must hear how this read went (see [`FileHandle::settle_read`]): it
    /// failed with, or had to rebuild data around, a cached layout.
    fn concerns_handle(&self, outcome: &FsResult<(Vec<u8>, bool)>) -> bool {
        match outcome {
            Ok((_, rebuilt)) => *rebuilt,
            Err(_) => self.cached,
        }
    }
}

impl Client {
    /// Opens an existing regular file.
    pub async fn open(&self, ino: InodeId) -> FsResult<FileHandle> {
        let attr = self.getattr(ino).await?;
        self.handle_for(attr).await
    }

    /// Creates a regular file (failing if the name exists) and opens it.
    pub async fn create(
        &self,
        parent: InodeId,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<FileHandle> {
        let attr = self
            .make_node(parent, name, FileKind::File, mode, uid, gid, 0)
            .await?;
        self.handle_for(attr).await
    }

    pub async fn handle_for(&self, attr: Attr) -> FsResult<FileHandle> {
        let volume = self.volume_by_id(attr.volume).await?;
        self.handle_in(attr, &volume)
    }

    /// [`Client::handle_for`] without waiting: `None` when the file's volume is not known
    /// here yet.
    pub fn handle_now(&self, attr: Attr) -> Option<FsResult<FileHandle>> {
        let volume = self.known_volume(attr.volume)?;
        Some(self.handle_in(attr, &volume))
    }

    fn handle_in(
        &self,
        attr: Attr,
        volume: &dfs_common::proto::meta::VolumeInfo,
    ) -> FsResult<FileHandle> {
        match attr.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(FsError::IsDir),
            _ => return Err(FsError::invalid("not a regular file")),
        }
        Ok(FileHandle {
            client: self.clone(),
            ino: attr.ino,
            volume: attr.volume,
            quota_reserved: 0,
            block_size: volume.block_size as usize,
            policy: volume.policy,
            size: attr.size,
            dirty: DirtyBuffer::with_run_capacity(encoded_len(volume.policy, volume.block_size)),
            uploads: VecDeque::new(),
            uploaded: Vec::new(),
            failed: None,
            layouts: LayoutPages::default(),
            long_layout: false,
            layout_epoch: Arc::default(),
            layouts_seen: 0,
            append: false,
            append_pos: 0,
            dirty_counted: 0,
            commits: Vec::new(),
            last_commit: None,
            stamp: None,
            known_size: attr.size,
            size_ctime: attr.ctime,
            inline_spent: false,
            no_inline_tail: false,
        })
    }
}

/// Bytes of one block of `block_size` and its parity under `policy`: what encoding a block in
/// place needs room for.
fn encoded_len(policy: EcPolicy, block_size: u64) -> usize {
    policy.shard_len(block_size) as usize * policy.total()
}

impl FileHandle {
    pub fn ino(&self) -> InodeId {
        self.ino
    }

    /// The file size as this handle sees it, including buffered writes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Makes every later write an append (O_APPEND).
    pub fn set_append(&mut self) {
        self.append = true;
    }

    /// Where a write of `len` bytes that names `offset` goes in the buffer.
    fn place_write(&mut self, offset: u64, len: usize) -> u64 {
        if !self.append {
            return offset;
        }
        let at = self.append_pos;
        self.append_pos += len as u64;
        self.size += len as u64;
        at
    }

    /// Reserves the growth a write of `len` bytes at `offset` causes against the volume's
    /// byte quota.
    async fn reserve_growth(&mut self, offset: u64, len: usize) -> FsResult<()> {
        let growth = self.growth(offset, len)?;
        if growth > 0 {
            self.client.reserve_quota(self.volume, growth).await?;
            self.quota_reserved += growth;
        }
        Ok(())
    }

    /// How much a write of `len` bytes at `offset` grows the file (an append, by all of it).
    fn growth(&self, offset: u64, len: usize) -> FsResult<u64> {
        if self.append {
            Ok(len as u64)
        } else {
            Ok(Self::end_of(offset, len)?.saturating_sub(self.size))
        }
    }

    /// After a commit: what is committed leaves the reservation; growth still buffered stays.
    fn settle_reserved(&mut self, committed_size: u64) {
        let buffered = if self.append {
            self.dirty.bytes() as u64
        } else {
            self.size.saturating_sub(committed_size)
        };
        let done = self.quota_reserved.saturating_sub(buffered);
        self.client.settle_quota(self.volume, done, true);
        self.quota_reserved -= done;
    }

    /// Buffers `data` at `offset`; full blocks start uploading at once.
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> FsResult<usize> {
        self.client.check_locks(self.ino)?;
        self.reserve_growth(offset, data.len()).await?;
        let offset = self.place_write(offset, data.len());
        let end = Self::end_of(offset, data.len())?;
        self.dirty.write(offset, data);
        self.written(offset, end).await?;
        Ok(data.len())
    }

    /// Like [`FileHandle::write`], taking ownership of the buffer: a block-sized buffer that
    /// touches nothing buffered goes to the encoder without being copied. Give it capacity for
    /// the parity ([`FileHandle::write_buffer`]) and it is not even reallocated.
    pub async fn write_owned(&mut self, offset: u64, data: Vec<u8>) -> FsResult<usize> {
        let len = data.len();
        self.client.check_locks(self.ino)?;
        self.reserve_growth(offset, len).await?;
        let offset = self.place_write(offset, len);
        let end = Self::end_of(offset, len)?;
        self.dirty.write_owned(offset, data);
        self.written(offset, end).await?;
        Ok(len)
    }

    /// A write that only buffers, done without waiting: `None` (and nothing done) when it
    /// has anything to wait for or to start (a usage figure to fetch for the quota, a block
    /// it completes, the dirty limits, lost locks): that write goes the long way
    /// ([`FileHandle::write_owned`]), which also reports a quota it would pass.
    pub fn write_at_once(&mut self, offset: u64, data: &[u8]) -> Option<usize> {
        let len = data.len();
        let at = if self.append { self.append_pos } else { offset };
        let end = Self::end_of(at, len).ok()?;
        let waits = len == 0
            || self.client.check_locks(self.ino).is_err()
            || self.dirty.run_len_after(at, len) >= self.block_size as u64
            || self.over_dirty_limits(len);
        if waits {
            return None;
        }
        let growth = self.growth(offset, len).ok()?;
        if growth > 0 {
            if !self.client.reserve_quota_at_once(self.volume, growth) {
                return None;
            }
            self.quota_reserved += growth;
        }
        let at = self.place_write(offset, len);
        self.dirty.write(at, data);
        if !self.append {
            self.size = self.size.max(end);
        }
        self.count_dirty();
        Some(len)
    }

    /// An empty buffer with room for one block and its parity, for [`FileHandle::write_owned`].
    pub fn write_buffer(&self) -> Vec<u8> {
        Vec::with_capacity(encoded_len(self.policy, self.block_size as u64))
    }

    /// The block size of the file's volume: the best size for sequential writes.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    fn end_of(offset: u64, len: usize) -> FsResult<u64> {
        offset
            .checked_add(len as u64)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(FsError::FileTooLarge)
    }

    async fn written(&mut self, offset: u64, end: u64) -> FsResult<()> {
        if !self.append {
            self.size = self.size.max(end);
        }
        self.count_dirty();
        for (at, block) in self.dirty.take_full_blocks_at(offset, self.block_size) {
            self.start_upload(vec![(at, block.len() as u64)], block)
                .await?;
        }
        if self.over_dirty_limits(0) {
            self.upload_dirty().await?;
        }
        Ok(())
    }

    /// Whether this file's buffered bytes, or all files', would be past their limits with
    /// `more` bytes besides.
    fn over_dirty_limits(&self, more: usize) -> bool {
        let options = &self.client.inner.options;
        let total = self.client.inner.dirty_total.load(Ordering::Relaxed);
        self.dirty.bytes() + more > options.max_dirty_bytes
            || total + more > options.max_dirty_total
    }

    /// Brings this file's share of the client-wide dirty count up to date.
    fn count_dirty(&mut self) {
        let now = self.dirty.bytes();
        let total = &self.client.inner.dirty_total;
        if now > self.dirty_counted {
            total.fetch_add(now - self.dirty_counted, Ordering::Relaxed);
        } else {
            total.fetch_sub(self.dirty_counted - now, Ordering::Relaxed);
        }
        self.dirty_counted = now;
    }

    /// Starts writing one block holding `pieces` (file offset, length), laid end to end in
    /// `data`.
    async fn start_upload(&mut self, pieces: Vec<(u64, u64)>, data: Vec<u8>) -> FsResult<()> {
        self.count_dirty();
        while self.uploads.len() >= self.client.inner.options.write_blocks_in_flight {
            self.finish_oldest_upload().await;
        }
        // Room in the client-wide upload budget, held until the block is stored.
        let units = (data.len() / 1024 + 1) as u32;
        let budget = self.client.inner.upload_budget.clone();
        let permit = match budget.clone().try_acquire_many_owned(units) {
            Ok(permit) => permit,
            Err(_) => {
                // Finish this file's own uploads first: waiting on others while holding
                // permits could leave every writer waiting.
                while !self.uploads.is_empty() {
                    self.finish_oldest_upload().await;
                }
                let most = (self.client.inner.options.max_upload_bytes / 1024).max(1) as u32;
                budget
                    .acquire_many_owned(units.min(most))
                    .await
                    .map_err(|_| FsError::unavailable("client shutting down"))?
            }
        };
        let (client, ino, volume) = (self.client.clone(), self.ino, self.volume);
        let task = tokio::spawn(async move {
            let _permit = permit;
            upload_block(client, ino, volume, pieces, data).await
        });
        self.uploads.push_back(task);
        if self.uploaded.len() >= MAX_EXTENTS_PER_COMMIT {
            self.commit().await?;
        }
        self.failed.clone().map_or(Ok(()), Err)
    }

    async fn finish_oldest_upload(&mut self) {
        if let Some(task) = self.uploads.pop_front() {
            match task.await {
                Ok(Ok(extents)) => self.uploaded.extend(extents),
                Ok(Err(e)) => self.failed = Some(e),
                Err(e) => self.failed = Some(FsError::io(format!("upload task: {e}"))),
            }
        }
    }

    /// Uploads everything buffered. Runs shorter than a block are packed together, so that
    /// scattered small writes cost one block write per block size of data, not one each.
    async fn upload_dirty(&mut self) -> FsResult<()> {
        let mut pieces = Vec::new();
        let mut packed: Vec<u8> = Vec::new();
        for (at, run) in self.dirty.take_all(self.block_size) {
            if run.len() >= self.block_size {
                self.start_upload(vec![(at, run.len() as u64)], run).await?;
                continue;
            }
            if packed.len() + run.len() > self.block_size {
                self.start_upload(std::mem::take(&mut pieces), std::mem::take(&mut packed))
                    .await?;
            }
            pieces.push((at, run.len() as u64));
            if packed.is_empty() {
                packed = run;
            } else {
                packed.extend_from_slice(&run);
            }
        }
        if !pieces.is_empty() {
            self.start_upload(pieces, packed).await?;
        }
        self.count_dirty();
        Ok(())
    }

    /// Commits finished uploads, up to [`MAX_EXTENTS_PER_COMMIT`] extents per transaction.
    async fn commit(&mut self) -> FsResult<()> {
        while !self.uploaded.is_empty() {
            let rest = if self.uploaded.len() > MAX_EXTENTS_PER_COMMIT {
                self.uploaded.split_off(MAX_EXTENTS_PER_COMMIT)
            } else {
                Vec::new()
            };
            let batch = std::mem::replace(&mut self.uploaded, rest);
            if let Err(e) = self.commit_batch(batch).await {
                // What did not commit is dropped: its range keeps its old bytes.
                self.uploaded.clear();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Commits one batch of finished uploads in one transaction.
    async fn commit_batch(&mut self, mut extents: Vec<NewExtent>) -> FsResult<()> {
        self.forget_layout();
        if self.append {
            // Appends are cut from the buffer in order, so a batch is one contiguous run: it
            // lands at the file's end as a whole.
            let start = extents.iter().map(|e| e.extent.file_offset).min();
            for e in &mut extents {
                e.extent.file_offset -= start.unwrap_or(0);
            }
        }
        self.client
            .inner
            .options
            .faults
            .hit("client.before_commit")
            .await?;
        let request = req::CommitWrite {
            ino: self.ino,
            extents,
            mtime: self.commit_mtime(),
            append: self.append,
        };
        let committed = self.send_commit(request).await?;
        self.committed(committed);
        Ok(())
    }

    /// The mtime a commit of this handle's writes gives the file.
    fn commit_mtime(&self) -> Timestamp {
        self.stamp.unwrap_or_else(Timestamp::now)
    }

    /// Sends a commit of this handle's writes; the file's attributes it answers with are kept
    /// for the kernel's next `getattr` (see [`FileAttrs`](super::file_attrs::FileAttrs)).
    async fn send_commit<Q: MetaRpc<Reply = Committed>>(&self, request: Q) -> FsResult<Committed> {
        let asked = self.client.file_attrs().epoch();
        let committed = self.client.call(request).await?;
        self.client.file_attrs().note(&committed.after, asked);
        Ok(committed)
    }

    /// Takes note of a commit of this handle's writes.
    fn committed(&mut self, Committed { before, after }: Committed) {
        self.last_commit = Some(after.clone());
        self.size = self.size.max(after.size);
        self.known_size = after.size;
        self.size_ctime = self.size_ctime.max(after.ctime);
        self.settle_reserved(after.size);
        if self.commits.len() < MAX_KEPT_COMMITS {
            self.commits.push((before, after));
        }
    }

    /// Whether what is buffered may be kept in the metadata store: it is at most `inline_max`
    /// bytes, the file's inline allowance was not found spent, and nothing is on its way to
    /// blocks (the inline commit must land after them: later writes win).
    fn fits_inline(&self) -> bool {
        let max = self.client.inner.options.inline_max;
        max > 0
            && !self.inline_spent
            && !self.dirty.is_empty()
            && self.dirty.bytes() as u64 <= max
            && self.uploads.is_empty()
            && self.uploaded.is_empty()
    }

    /// Commits everything buffered as one block kept in the metadata store: one metadata
    /// commit, no shard writes. The server refuses (`TooBig`) when the file's inline allowance
    /// is spent; the bytes then stay buffered, for blocks.
    async fn write_inline(&mut self) -> FsResult<()> {
        let runs = self.dirty.take_all(self.block_size);
        // Appends count from the file's end as the server finds it.
        let base = if self.append { runs[0].0 } else { 0 };
        let request = req::WriteInline {
            ino: self.ino,
            pieces: runs
                .iter()
                .map(|(at, r)| (at - base, r.len() as u64))
                .collect(),
            data: runs
                .iter()
                .map(|(_, r)| r.as_slice())
                .collect::<Vec<_>>()
                .concat(),
            mtime: self.commit_mtime(),
            append: self.append,
        };
        self.forget_layout();
        match self.send_commit(request).await {
            Ok(committed) => {
                self.committed(committed);
                self.count_dirty();
                Ok(())
            }
            Err(FsError::TooBig(_)) => {
                self.inline_spent = true;
                for (at, run) in runs {
                    self.dirty.write_owned(at, run);
                }
                Ok(())
            }
            Err(e) => {
                // As with a failed block write: the range keeps its old bytes.
                self.count_dirty();
                Err(e)
            }
        }
    }

    /// Writes what is buffered together with the file's inline tail as one erasure-coded
    /// block, committed only if the file is still as read (see [`inline_tail`]): the tail's
    /// inline bytes are freed. Done when what is buffered is one run at the file's end and
    /// nothing else is on its way; otherwise, or when the file changed meanwhile, the bytes
    /// stay buffered for the usual block write.
    async fn move_inline_tail(&mut self) -> FsResult<()> {
        if !self.uploads.is_empty() || !self.uploaded.is_empty() {
            return Ok(());
        }
        let mut runs = self.dirty.take_all(self.block_size);
        let size = self.known_size;
        let room = (self.block_size as u64).saturating_sub(dfs_common::proto::MAX_INLINE_PER_FILE);
        let fits = match runs.as_slice() {
            [(at, run)] => (self.append || *at == size) && run.len() as u64 <= room,
            _ => false,
        };
        if !fits {
            for (at, run) in runs {
                self.dirty.write_owned(at, run);
            }
            return Ok(());
        }
        let (at, run) = runs.pop().expect("one run");
        let Some(tail) = self.inline_tail(size).await else {
            self.dirty.write_owned(at, run);
            return Ok(());
        };
        // Between reading the tail and committing its move (another client may change it).
        if let Err(e) = self.client.faults().hit("client.inline_tail_read").await {
            self.dirty.write_owned(at, run);
            return Err(e);
        }
        let mut data = tail.bytes;
        data.extend_from_slice(&run);
        let pieces = vec![(tail.from, data.len() as u64)];
        let extents =
            match upload_block(self.client.clone(), self.ino, self.volume, pieces, data).await {
                Ok(extents) => extents,
                Err(e) => {
                    // Nothing committed: the bytes go the usual way, which reports the failure.
                    tracing::debug!(ino = %self.ino, "moving the inline tail failed: {e}");
                    self.dirty.write_owned(at, run);
                    return Ok(());
                }
            };
        self.forget_layout();
        let request = req::CommitIfUnchanged {
            ino: self.ino,
            extents,
            mtime: self.commit_mtime(),
            size,
            from: tail.from,
            expect: tail.extents,
        };
        match self.send_commit(request).await {
            Ok(committed) => {
                self.committed(committed);
                self.inline_spent = false;
                self.count_dirty();
                Ok(())
            }
            Err(FsError::Changed(why)) => {
                // Another client changed the file; the block is garbage, never referred to.
                tracing::debug!(ino = %self.ino, "inline tail not moved: {why}");
                self.dirty.write_owned(at, run);
                Ok(())
            }
            Err(e) => {
                // As with a failed block commit: the range keeps its old bytes.
                self.count_dirty();
                Err(e)
            }
        }
    }

    /// The inline tail of the file as it is at `size` bytes, read from a fresh layout of its
    /// last [`MAX_INLINE_PER_FILE`](dfs_common::proto::MAX_INLINE_PER_FILE) bytes. A file of
    /// that size found not to end in inline bytes is remembered (`no_inline_tail`).
    async fn inline_tail(&mut self, size: u64) -> Option<inline_tail::InlineTail> {
        let start = size.saturating_sub(dfs_common::proto::MAX_INLINE_PER_FILE);
        match self.client.layout(self.ino, start, size - start).await {
            Ok(layout) if layout.size == size => {
                let tail = inline_tail::find(&layout);
                self.no_inline_tail = tail.is_none();
                tail
            }
            // Another client changed the file's size: try again at the next flush.
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(ino = %self.ino, "no layout to move the inline tail: {e}");
                None
            }
        }
    }

    /// Makes every write so far durable and visible to other clients.
    pub async fn flush(&mut self) -> FsResult<()> {
        if self.fits_inline() {
            if let Err(e) = self.write_inline().await {
                self.failed.get_or_insert(e);
            }
        }
        if self.inline_spent && !self.no_inline_tail && !self.dirty.is_empty() {
            if let Err(e) = self.move_inline_tail().await {
                self.failed.get_or_insert(e);
            }
        }
        self.upload_dirty().await?;
        while !self.uploads.is_empty() {
            self.finish_oldest_upload().await;
        }
        // Commit what did upload even if some block failed: each extent stands on its own, and
        // a failed range simply keeps its old bytes. The failure is still reported.
        let result = self.commit().await;
        // Whatever is still reserved did not commit.
        self.client
            .settle_quota(self.volume, std::mem::take(&mut self.quota_reserved), false);
        match self.failed.take() {
            Some(e) => Err(e),
            None => result,
        }
    }

    /// Flushes, every commit giving the file the mtime `mtime` (if given) rather than its own time: a
    /// change of mtime after writes (`tar`, `cp -p`) lands with them, in the same commit.
    /// Gives the file's attributes after the last commit, if the flush committed anything.
    pub async fn flush_stamped(&mut self, mtime: Option<Timestamp>) -> FsResult<Option<Attr>> {
        self.last_commit = None;
        self.stamp = mtime;
        let result = self.flush().await;
        self.stamp = None;
        result.map(|()| self.last_commit.take())
    }

    /// Whether a flush would have nothing to do: nothing buffered, uploading or waiting for a
    /// commit, and no error of an earlier write to report.
    pub fn is_clean(&self) -> bool {
        self.dirty.is_empty()
            && self.uploads.is_empty()
            && self.uploaded.is_empty()
            && self.failed.is_none()
            && self.quota_reserved == 0
            && self.commits.is_empty()
    }

    /// The file's attributes just before and just after each of this handle's commits since
    /// the last call, in order. A cache holder chains them: if each `before` is what it last
    /// knew, only this handle changed the file.
    pub fn take_commits(&mut self) -> Vec<(Attr, Attr)> {
        std::mem::take(&mut self.commits)
    }

    /// Holds an error of a background flush for the next `flush` to report.
    pub fn keep_error(&mut self, e: FsError) {
        self.failed.get_or_insert(e);
    }

    /// [`FileHandle::flush`] before something else (a read, a truncate): its failure is
    /// reported there and kept for the next fsync or close, which must not find the lost
    /// writes' descriptor clean and report success.
    async fn flush_keeping_error(&mut self) -> FsResult<()> {
        let result = self.flush().await;
        if let Err(e) = &result {
            self.keep_error(e.clone());
        }
        result
    }

    pub async fn fsync(&mut self) -> FsResult<()> {
        self.flush().await
    }

    /// Flushes and closes; errors of earlier writes surface here, as with NFS.
    pub async fn close(mut self) -> FsResult<()> {
        self.flush().await
    }

    /// Reads up to `len` bytes at `offset`, seeing this handle's own writes.
    pub async fn read(&mut self, offset: u64, len: u64) -> FsResult<Vec<u8>> {
        let plan = self.plan_read(offset, len, CacheUse::Fill).await?;
        let outcome = plan.run().await;
        if self.settle_read(&plan, &outcome) {
            let fresh = self.plan_read(offset, len, CacheUse::Fill).await?;
            return Ok(fresh.run().await?.0);
        }
        outcome.map(|(data, _)| data)
    }

    /// Reads through a handle that concurrent readers share: the handle is locked only to plan
    /// the read (and, after a failure with a cached layout, to plan it again), never across
    /// the network. `cache_use` as for [`FileHandle::plan_read`].
    pub async fn read_shared(
        file: &tokio::sync::Mutex<FileHandle>,
        offset: u64,
        len: u64,
        cache_use: CacheUse,
    ) -> FsResult<Vec<u8>> {
        let plan = file.lock().await.plan_read(offset, len, cache_use).await?;
        let outcome = plan.run().await;
        if plan.concerns_handle(&outcome) {
            let mut file = file.lock().await;
            if file.settle_read(&plan, &outcome) {
                let fresh = file.plan_read(offset, len, cache_use).await?;
                drop(file);
                return Ok(fresh.run().await?.0);
            }
        }
        outcome.map(|(data, _)| data)
    }

    /// Writes of this handle a read must see that are not committed yet: buffered, uploading
    /// or uploaded.
    fn has_unflushed_writes(&self) -> bool {
        !self.dirty.is_empty() || !self.uploads.is_empty() || !self.uploaded.is_empty()
    }

    /// A read answered without waiting: nothing of this handle's to flush, the layout of the
    /// range cached, and every byte at hand (inline in the layout, or in the shard cache).
    /// `None` when the read must go the long way ([`FileHandle::read_shared`]).
    pub fn read_at_hand(&self, offset: u64, len: u64) -> Option<Vec<u8>> {
        if self.client.check_locks(self.ino).is_err()
            || self.has_unflushed_writes()
            || self.layout_epoch.load(Ordering::Acquire) != self.layouts_seen
        {
            return None;
        }
        let page = self.layouts.covering(offset, offset.saturating_add(len))?;
        reader::read_cached(&self.client, &page, offset, len)
    }

    /// What a read of `len` bytes at `offset` needs from this handle: its own writes flushed
    /// and a layout of the range. The read itself ([`ReadPlan::run`]) then needs no access to
    /// the handle, so reads of one open file (the kernel's read-ahead beside the
    /// application's read, threads sharing a descriptor) go to the network side by side.
    /// `cache_use` says whether what small reads fetch is kept for later ones.
    pub async fn plan_read(
        &mut self,
        offset: u64,
        len: u64,
        cache_use: CacheUse,
    ) -> FsResult<ReadPlan> {
        self.client.check_locks(self.ino)?;
        if self.has_unflushed_writes() {
            self.flush_keeping_error().await?;
        }
        // Another descriptor changed the file's extents since the layouts were cached.
        let epoch = self.layout_epoch.load(Ordering::Acquire);
        if epoch != self.layouts_seen {
            self.forget_layout();
            self.layouts_seen = epoch;
        }
        let end = offset.saturating_add(len);
        let plan = |layout: Option<Arc<LayoutPage>>, cached| ReadPlan {
            client: self.client.clone(),
            ino: self.ino,
            offset,
            len,
            layout,
            cached,
            cache_use,
        };
        if let Some(page) = self.layouts.covering(offset, end) {
            return Ok(plan(Some(page), true));
        }
        // The whole file's layout when it fits one reply (up to MAX_LAYOUT_EXTENTS extents), so
        // random reads hit the cache too; else the page from this read on; else (a read
        // spanning more extents than one reply holds) page through it.
        let mut page = None;
        if !self.long_layout {
            let whole = self.fetch_layout(0).await?;
            self.long_layout = !whole.covers(0, u64::MAX);
            page = Some(whole).filter(|p| p.covers(offset, end));
        }
        let page = match page {
            Some(page) => page,
            None => self.fetch_layout(offset).await?,
        };
        if !page.covers(offset, end) {
            return Ok(plan(None, false));
        }
        let page = Arc::new(page);
        self.layouts.insert(page.clone());
        Ok(plan(Some(page), false))
    }

    /// After a read with `plan`: a cached layout the read failed with, or had to rebuild data
    /// around, is dropped, since repair, drain or rebalance may have moved shards since it was
    /// fetched (and deleted the old copies). Returns whether the read failed with a cached
    /// layout and is worth planning again with a fresh one.
    fn settle_read(&mut self, plan: &ReadPlan, outcome: &FsResult<(Vec<u8>, bool)>) -> bool {
        if !plan.concerns_handle(outcome) {
            return false;
        }
        let same = plan
            .layout
            .as_ref()
            .is_some_and(|used| self.layouts.contains(used));
        if same {
            match outcome {
                Ok(_) => {
                    tracing::info!(ino = %self.ino, "read rebuilt data around a cached layout; fetching it again")
                }
                Err(e) => {
                    tracing::info!(ino = %self.ino, "read with a cached layout failed ({e}); fetching it again")
                }
            }
            self.forget_layout();
        }
        outcome.is_err()
    }

    /// The layout from `start` to the end of the file, complete up to its `complete_to`.
    async fn fetch_layout(&self, start: u64) -> FsResult<LayoutPage> {
        let layout = self
            .client
            .layout(self.ino, start, u64::MAX - start)
            .await?;
        Ok(LayoutPage::new(start, layout))
    }

    /// Shares the counter that descriptors of this client which change the file raise, so
    /// that this handle drops its cached layouts then, without being locked for it.
    pub(crate) fn share_layout_epoch(&mut self, epoch: Arc<AtomicU64>) {
        self.layouts_seen = epoch.load(Ordering::Acquire);
        self.layout_epoch = epoch;
    }

    /// Drops the cached layout: this handle or another descriptor of this client changed the
    /// file, or shards may have moved.
    pub fn forget_layout(&mut self) {
        self.layouts.clear();
        self.long_layout = false;
    }

    /// The file's size was set at the metadata server by another call of this client (a
    /// truncate by path), the change having ctime `ctime`. Bytes still buffered here (written
    /// meanwhile) stay, and extend it again as they would a local file.
    pub fn resized(&mut self, size: u64, ctime: Timestamp) {
        self.forget_layout();
        self.size = size.max(self.dirty.end());
        self.known_size = size;
        self.size_ctime = self.size_ctime.max(ctime);
        self.inline_spent = false;
        self.no_inline_tail = false;
    }

    /// The ctime of the change that gave the size this handle knows of the file.
    pub fn size_ctime(&self) -> Timestamp {
        self.size_ctime
    }

    /// `attr` is the file as the metadata server has it: if it is of a later change than the
    /// size this handle knows and gives another size (another client truncated or extended
    /// the file), the handle takes it, as [`FileHandle::resized`]. Not while blocks upload or
    /// wait for their commit (whose ends this handle does not track): their commit sets the
    /// size again. Gives whether the size was taken.
    pub fn resized_elsewhere(&mut self, attr: &Attr) -> bool {
        if attr.ctime <= self.size_ctime || !self.uploads.is_empty() || !self.uploaded.is_empty() {
            return false;
        }
        if attr.size == self.known_size {
            self.size_ctime = attr.ctime;
            return false;
        }
        self.resized(attr.size, attr.ctime);
        true
    }

    /// Sets the size: drops bytes beyond it, or extends with zeros.
    pub async fn truncate(&mut self, size: u64) -> FsResult<()> {
        self.flush_keeping_error().await?;
        self.forget_layout();
        let set = SetAttr {
            size: Some(size),
            ..SetAttr::default()
        };
        let attr = self.client.setattr(self.ino, set).await?;
        self.size = attr.size;
        self.known_size = attr.size;
        self.size_ctime = self.size_ctime.max(attr.ctime);
        self.inline_spent = false;
        self.no_inline_tail = false;
        Ok(())
    }

    /// `fallocate` without flags: the size grows to at least `end`, and times change as with
    /// any write, even when the size does not.
    pub async fn allocate(&mut self, end: u64) -> FsResult<()> {
        let size = self.size.max(end);
        self.truncate(size).await
    }
}

impl Drop for FileHandle {
    fn drop(&mut self) {
        self.client
            .inner
            .dirty_total
            .fetch_sub(self.dirty_counted, Ordering::Relaxed);
        self.client
            .settle_quota(self.volume, std::mem::take(&mut self.quota_reserved), false);
        for task in &self.uploads {
            task.abort();
        }
    }
}
