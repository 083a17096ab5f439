//! Shard files on local disk.
//!
//! # File format (version 1, all integers little-endian)
//! ```text
//! 0   magic "DFSSHARD"          8
//! 8   version (1), 3 reserved    4
//! 12  volume id                  8
//! 20  block id                   8
//! 28  shard index, k, m, 0       4
//! 32  block length               8
//! 40  shard length               8
//! 48  sub-block size             4   (16 KiB; shards of earlier versions: 64 KiB)
//! 52  one blake3 hash per sub-block (32 bytes each)
//! ..  blake3 of everything above (32)
//! ..  shard data
//! ```
//! The header names the volume, block and shard index, so placement could be rebuilt from the
//! disks alone. Each sub-block is verified when read; bytes that fail are never returned.
//!
//! # Durability
//! A shard is written to `tmp/`, fsynced, linked into `shards/XX/`, and that directory is
//! fsynced before the write is acknowledged. A crash before the link leaves only a temp file,
//! removed at the next start; after it, the shard is complete. Small shards go into slots of
//! preallocated files instead, with the same bytes and one `fdatasync` (see [`crate::slots`]).

use crate::slots::{Deleted, Put, SlotStore, Slotted};
use bytes::Bytes;
use dfs_common::checksum::{self, Hash, LEGACY_SUB_BLOCK, SUB_BLOCK};
use dfs_common::proto::chunk::{ShardKey, ShardOwner};
use dfs_common::proto::MAX_BLOCK_SIZE;
use dfs_common::{BlockId, EcPolicy, FsError, FsResult, VolumeId};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const MAGIC: &[u8; 8] = b"DFSSHARD";
const VERSION: u8 = 1;
const FIXED_HEADER: usize = 52;

/// The parsed header of a shard file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    pub key: ShardKey,
    pub owner: ShardOwner,
    pub shard_len: u64,
    /// Bytes each hash covers: [`SUB_BLOCK`] for shards written now.
    pub sub_block: usize,
    pub hashes: Vec<Hash>,
}

impl ShardHeader {
    /// The header of a shard holding `data`, with one hash per `sub_block` bytes.
    fn of(key: ShardKey, owner: ShardOwner, data: &[u8], sub_block: usize) -> Self {
        ShardHeader {
            key,
            owner,
            shard_len: data.len() as u64,
            sub_block,
            hashes: checksum::sub_block_hashes(data, sub_block),
        }
    }

    pub(crate) fn data_offset(&self) -> u64 {
        (FIXED_HEADER + 32 * self.hashes.len() + 32) as u64
    }

    /// Bytes the shard takes on disk, header and data.
    pub(crate) fn file_len(&self) -> u64 {
        self.data_offset() + self.shard_len
    }

    fn encode(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(FIXED_HEADER + 32 * (self.hashes.len() + 1));
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&[VERSION, 0, 0, 0]);
        h.extend_from_slice(&self.owner.volume.0.to_le_bytes());
        h.extend_from_slice(&self.key.block.0.to_le_bytes());
        let policy = self.owner.policy;
        h.extend_from_slice(&[self.key.index, policy.k() as u8, policy.m() as u8, 0]);
        h.extend_from_slice(&self.owner.block_len.to_le_bytes());
        h.extend_from_slice(&self.shard_len.to_le_bytes());
        h.extend_from_slice(&(self.sub_block as u32).to_le_bytes());
        for hash in &self.hashes {
            h.extend_from_slice(hash);
        }
        let whole = checksum::hash(&h);
        h.extend_from_slice(&whole);
        h
    }

    /// Reads and verifies a header; every field is checked before it is trusted.
    pub(crate) fn parse(file: &mut impl Read, path: &Path) -> FsResult<Self> {
        let corrupt = |what: &str| FsError::Corrupt(format!("{}: {what}", path.display()));
        // A file too short is damage; any other read error (EIO, ENOMEM...) says nothing
        // about the shard's bytes and stays an I/O error.
        let short = |e: std::io::Error, what: &str| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => corrupt(what),
            _ => FsError::from(e),
        };
        let mut fixed = [0u8; FIXED_HEADER];
        file.read_exact(&mut fixed)
            .map_err(|e| short(e, "truncated header"))?;
        if &fixed[..8] != MAGIC {
            return Err(corrupt("bad magic"));
        }
        if fixed[8] != VERSION {
            return Err(corrupt(&format!("unknown format version {}", fixed[8])));
        }
        let u64_at = |o: usize| u64::from_le_bytes(fixed[o..o + 8].try_into().expect("8 bytes"));
        let sub_block = u32::from_le_bytes(fixed[48..52].try_into().expect("4 bytes")) as usize;
        if sub_block != SUB_BLOCK && sub_block != LEGACY_SUB_BLOCK {
            return Err(corrupt(&format!("unsupported sub-block size {sub_block}")));
        }
        let shard_len = u64_at(40);
        if shard_len > MAX_BLOCK_SIZE {
            return Err(corrupt("shard length out of range"));
        }
        let policy = EcPolicy::new(fixed[29], fixed[30]).map_err(|_| corrupt("bad policy"))?;
        let count = checksum::sub_block_count(shard_len, sub_block) as usize;
        let mut table = vec![0u8; 32 * count + 32];
        file.read_exact(&mut table)
            .map_err(|e| short(e, "truncated checksum table"))?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&fixed);
        hasher.update(&table[..32 * count]);
        if hasher.finalize().as_bytes() != &table[32 * count..] {
            return Err(corrupt("header checksum mismatch"));
        }
        let hashes = table[..32 * count]
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect();
        Ok(ShardHeader {
            key: ShardKey {
                block: BlockId(u64_at(20)),
                index: fixed[28],
            },
            owner: ShardOwner {
                volume: VolumeId(u64_at(12)),
                policy,
                block_len: u64_at(32),
            },
            shard_len,
            sub_block,
            hashes,
        })
    }
}

/// Alignment O_DIRECT asks of file offsets, lengths and buffers (the largest logical block
/// size of common disks).
const DIRECT_ALIGN: usize = 4096;

/// The whole sub-blocks around a read: they are what the checksums cover.
struct Span {
    /// Index of the first sub-block.
    first: usize,
    /// Where they start in the shard's data, and their length.
    start: u64,
    len: usize,
    /// Where the read starts within them, and its length.
    from: usize,
    take: usize,
}

impl Span {
    /// The span of a read of `len` bytes at `offset`; `None` for an empty read.
    fn of(header: &ShardHeader, offset: u64, len: u64) -> FsResult<Option<Span>> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= header.shard_len)
            .ok_or_else(|| {
                FsError::invalid(format!(
                    "range {offset}+{len} beyond shard of {} bytes",
                    header.shard_len
                ))
            })?;
        if len == 0 {
            return Ok(None);
        }
        let sub = header.sub_block as u64;
        let first = offset / sub;
        let last = (end - 1) / sub;
        let start = first * sub;
        let stop = ((last + 1) * sub).min(header.shard_len);
        Ok(Some(Span {
            first: first as usize,
            start,
            len: (stop - start) as usize,
            from: (offset - start) as usize,
            take: len as usize,
        }))
    }

    /// Checks `bytes`, read for this span, against the header's checksums and returns the
    /// bytes asked for; `path` names the file in errors.
    fn verified(
        &self,
        key: &ShardKey,
        header: &ShardHeader,
        path: impl Fn() -> PathBuf,
        bytes: Vec<u8>,
    ) -> FsResult<(ShardOwner, Bytes)> {
        if bytes.len() != self.len {
            return Err(FsError::Corrupt(format!(
                "{}: shard file is truncated",
                path().display()
            )));
        }
        for (i, chunk) in bytes.chunks(header.sub_block).enumerate() {
            let index = self.first + i;
            if checksum::hash(chunk) != header.hashes[index] {
                return Err(FsError::Corrupt(format!(
                    "shard {}/{}: checksum mismatch in sub-block {index} ({})",
                    key.block,
                    key.index,
                    path().display()
                )));
            }
        }
        Ok((
            header.owner,
            Bytes::from(bytes).slice(self.from..self.from + self.take),
        ))
    }
}

/// A shard file's bytes in one buffer aligned for O_DIRECT: room for the header, then the
/// data, padded to [`DIRECT_ALIGN`]. A received shard is read straight into [`Self::data_mut`];
/// the header, which depends on the data, is filled in before the write.
pub struct ShardBuffer {
    buf: Vec<u8>,
    /// Where the aligned part of `buf` starts.
    start: usize,
    header_len: usize,
    data_len: usize,
    /// Header and data rounded up to [`DIRECT_ALIGN`].
    padded_len: usize,
}

impl ShardBuffer {
    /// A buffer for a shard of `data_len` bytes hashed per `sub_block`, made in `buf`, whose
    /// bytes are reused where it is long enough (the data and header are written over; the
    /// padding is zeroed).
    fn in_vec(data_len: usize, sub_block: usize, mut buf: Vec<u8>) -> Self {
        let sub_blocks = checksum::sub_block_count(data_len as u64, sub_block) as usize;
        let header_len = FIXED_HEADER + 32 * sub_blocks + 32;
        let padded_len = (header_len + data_len).next_multiple_of(DIRECT_ALIGN);
        let needed = padded_len + DIRECT_ALIGN;
        if buf.len() >= needed {
            buf.truncate(needed);
        } else {
            buf.resize(needed, 0);
        }
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        buf[start + header_len + data_len..start + padded_len].fill(0);
        ShardBuffer {
            buf,
            start,
            header_len,
            data_len,
            padded_len,
        }
    }

    pub fn data(&self) -> &[u8] {
        let at = self.start + self.header_len;
        &self.buf[at..at + self.data_len]
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        let at = self.start + self.header_len;
        &mut self.buf[at..at + self.data_len]
    }

    fn set_header(&mut self, header: &[u8]) {
        assert_eq!(
            header.len(),
            self.header_len,
            "header length follows the data length"
        );
        self.buf[self.start..self.start + self.header_len].copy_from_slice(header);
    }

    /// The file's bytes.
    fn file_bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.header_len + self.data_len]
    }

    /// The file's bytes padded to the O_DIRECT alignment.
    fn padded(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.padded_len]
    }
}

/// Creates `path` holding `shard`, on disk (fsynced) when it returns.
///
/// The bytes go to the disk with O_DIRECT where the file system supports it: a shard is read
/// back rarely and through the client's own cache, so copying it into this host's page cache
/// costs CPU and memory, and a page cache grown full of shards slows every later write (see
/// docs/BENCHMARKS.md). The file is written padded to the alignment O_DIRECT needs, then cut
/// to its length. Where O_DIRECT is refused (tmpfs, some FUSE file systems) it is an ordinary
/// buffered write.
fn write_durably(path: &Path, shard: &ShardBuffer) -> FsResult<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let refused =
        |e: &std::io::Error| e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error());
    let direct = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path);
    let file = match direct {
        Ok(mut file) => match file.write_all(shard.padded()) {
            Ok(()) => {
                file.set_len(shard.file_bytes().len() as u64)?;
                file
            }
            Err(e) if refused(&e) => {
                drop(file);
                fs::remove_file(path)?;
                return write_buffered(path, shard);
            }
            Err(e) => return Err(e.into()),
        },
        Err(e) if refused(&e) => return write_buffered(path, shard),
        Err(e) => return Err(e.into()),
    };
    file.sync_all()?;
    Ok(())
}

fn write_buffered(path: &Path, shard: &ShardBuffer) -> FsResult<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(shard.file_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// Checks that a shard about to be stored is consistent with its owner's policy.
pub fn validate_put(key: &ShardKey, owner: &ShardOwner, len: u64) -> FsResult<()> {
    if owner.block_len > MAX_BLOCK_SIZE {
        return Err(FsError::TooBig(format!(
            "block of {} bytes exceeds the {MAX_BLOCK_SIZE}-byte limit",
            owner.block_len
        )));
    }
    if key.index as usize >= owner.policy.total() {
        return Err(FsError::invalid(format!(
            "shard index {} out of range for policy {}",
            key.index, owner.policy
        )));
    }
    let expected = owner.policy.shard_len(owner.block_len);
    if len != expected {
        return Err(FsError::invalid(format!(
            "shard of {len} bytes, but a {}-byte block under {} has {expected}-byte shards",
            owner.block_len, owner.policy
        )));
    }
    Ok(())
}

/// Bytes a shard of `shard_len` bytes written now takes on disk: its header (fixed part, one
/// hash per sub-block, the header's own hash) and the data.
pub fn file_len(shard_len: u64) -> u64 {
    (FIXED_HEADER as u64)
        + 32 * (checksum::sub_block_count(shard_len, SUB_BLOCK) as u64 + 1)
        + shard_len
}

/// The key a shard file name (`{block:016x}-{index:02}`) stands for.
fn parse_shard_name(name: &str) -> Option<ShardKey> {
    let (block, index) = name.split_once('-')?;
    if block.len() != 16 || index.len() != 2 {
        return None;
    }
    Some(ShardKey {
        block: dfs_common::BlockId(u64::from_str_radix(block, 16).ok()?),
        index: index.parse().ok()?,
    })
}

/// A map of at most `max` entries that starts afresh when full: a cache whose entries are
/// cheap to make again.
struct Kept<V> {
    max: usize,
    map: Mutex<HashMap<ShardKey, V>>,
}

impl<V: Clone> Kept<V> {
    fn new(max: usize) -> Self {
        Kept {
            max,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ShardKey, V>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, key: &ShardKey) -> Option<V> {
        self.lock().get(key).cloned()
    }

    fn insert(&self, key: ShardKey, value: V) {
        let mut map = self.lock();
        if map.len() >= self.max {
            map.clear();
        }
        map.insert(key, value);
    }

    fn remove(&self, key: &ShardKey) {
        self.lock().remove(key);
    }
}

/// All shards of one chunk server.
pub struct ShardStore {
    root: PathBuf,
    used_bytes: AtomicU64,
    shard_count: AtomicU64,
    /// Verified headers of shards read or written lately: a read of a few KiB then costs one
    /// disk read, not two. Shard files never change once stored; a delete forgets its entry.
    headers: Kept<Arc<ShardHeader>>,
    /// Shard files kept open for reads from the page cache ([`ShardStore::get_cached`]), which
    /// then skip an open and a path walk (a fifth of such a read's work). Only positional reads
    /// use them: the handles are shared. A delete forgets its entry.
    open_files: Kept<Arc<File>>,
    /// Buffers of stored shards, for the next ones to be received into: a fresh allocation of
    /// a shard's size costs a zero-fill and a page fault per page, every shard.
    spare_buffers: Mutex<Vec<Vec<u8>>>,
    /// Slot files holding small shards (see [`crate::slots`]), when there are any.
    slots: Option<SlotStore>,
    /// Whether new small shards go into slots.
    put_in_slots: bool,
    /// Bytes per checksum of new shards: [`SUB_BLOCK`] (tests write older shards).
    sub_block: usize,
}

/// Bytes of spare shard buffers a store keeps at most.
const SPARE_BUFFER_BYTES: usize = 32 << 20;

/// Headers kept at most (about 2 KiB each for a 1 MiB shard); past this the cache starts
/// afresh.
const MAX_CACHED_HEADERS: usize = 16_384;

/// Shard files kept open at most; past this the cache starts afresh. Well under the usual
/// limit of 1,024 open files.
const MAX_OPEN_SHARDS: usize = 256;

impl ShardStore {
    /// Opens (creating if needed) a store under `root` that keeps small shards in slot files,
    /// removes leftover temp files and counts what it holds.
    pub fn open(root: &Path) -> FsResult<Self> {
        Self::open_with(root, true)
    }

    /// [`ShardStore::open`], keeping small shards in slot files only when `slots` is set
    /// (shards already in slots are read either way).
    pub fn open_with(root: &Path, use_slots: bool) -> FsResult<Self> {
        let shards = root.join("shards");
        let tmp = root.join("tmp");
        fs::create_dir_all(&shards)?;
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        let (mut used, mut count) = (0u64, 0u64);
        for dir in fs::read_dir(&shards)? {
            let dir = dir?;
            if !dir.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(dir.path())? {
                let meta = f?.metadata()?;
                used += meta.len();
                count += 1;
            }
        }
        let slots = if use_slots || root.join("slots").exists() {
            let slots = SlotStore::open(root)?;
            let (slotted, bytes) = slots.usage();
            count += slotted;
            used += bytes;
            Some(slots)
        } else {
            None
        };
        Ok(ShardStore {
            root: root.to_path_buf(),
            used_bytes: AtomicU64::new(used),
            shard_count: AtomicU64::new(count),
            headers: Kept::new(MAX_CACHED_HEADERS),
            open_files: Kept::new(MAX_OPEN_SHARDS),
            spare_buffers: Mutex::new(Vec::new()),
            slots,
            put_in_slots: use_slots,
            sub_block: SUB_BLOCK,
        })
    }

    /// A buffer to receive a shard of `data_len` bytes into, for [`ShardStore::put_buffer`].
    pub fn buffer(&self, data_len: usize) -> ShardBuffer {
        let spare = self.spare_buffers.lock().expect("spare buffers").pop();
        ShardBuffer::in_vec(data_len, self.sub_block, spare.unwrap_or_default())
    }

    /// Keeps the buffer of a stored shard for the next one, while spares stay under
    /// [`SPARE_BUFFER_BYTES`].
    fn recycle(&self, shard: ShardBuffer) {
        let mut spare = self.spare_buffers.lock().expect("spare buffers");
        let kept: usize = spare.iter().map(Vec::capacity).sum();
        if kept + shard.buf.capacity() <= SPARE_BUFFER_BYTES {
            spare.push(shard.buf);
        }
    }

    /// The shard file of `key`, opened now or kept from an earlier read; for positional reads
    /// only.
    fn open_file(&self, key: &ShardKey) -> FsResult<Arc<File>> {
        if let Some(file) = self.open_files.get(key) {
            return Ok(file);
        }
        let file = Arc::new(open_shard(&self.shard_path(key))?);
        self.open_files.insert(*key, file.clone());
        Ok(file)
    }

    /// Drops what is kept in memory of a deleted shard.
    fn forget(&self, key: &ShardKey) {
        self.headers.remove(key);
        self.open_files.remove(key);
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    pub fn shard_count(&self) -> u64 {
        self.shard_count.load(Ordering::Relaxed)
    }

    /// Where a shard's file lives: 256 subdirectories keep directories small.
    pub fn shard_path(&self, key: &ShardKey) -> PathBuf {
        self.root
            .join("shards")
            .join(format!("{:02x}", key.block.0 & 0xff))
            .join(format!("{:016x}-{:02}", key.block.0, key.index))
    }

    /// Every shard held, with the time its file was last written (for grace periods). Files
    /// whose names are not shard names are skipped.
    pub fn list(&self) -> FsResult<Vec<(ShardKey, std::time::SystemTime)>> {
        let mut out = Vec::new();
        for dir in fs::read_dir(self.root.join("shards"))? {
            let dir = dir?;
            if !dir.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(dir.path())? {
                let f = f?;
                let Some(key) = f.file_name().to_str().and_then(parse_shard_name) else {
                    continue;
                };
                // A file deleted since the listing began is simply not listed.
                if let Ok(modified) = f.metadata().and_then(|m| m.modified()) {
                    out.push((key, modified));
                }
            }
        }
        if let Some(slots) = &self.slots {
            out.extend(slots.list());
        }
        Ok(out)
    }

    /// Stores a shard durably. Storing the same shard again is a no-op; storing different
    /// content under an existing key is refused.
    pub fn put(&self, key: ShardKey, owner: ShardOwner, data: &[u8]) -> FsResult<()> {
        let mut shard = self.buffer(data.len());
        shard.data_mut().copy_from_slice(data);
        self.put_buffer(key, owner, shard)
    }

    /// [`ShardStore::put`] of a shard received straight into a [`ShardBuffer`]: its bytes are
    /// not copied again on their way to the disk.
    pub fn put_buffer(
        &self,
        key: ShardKey,
        owner: ShardOwner,
        mut shard: ShardBuffer,
    ) -> FsResult<()> {
        let result = self.store_buffer(key, owner, &mut shard);
        self.recycle(shard);
        result
    }

    fn store_buffer(
        &self,
        key: ShardKey,
        owner: ShardOwner,
        shard: &mut ShardBuffer,
    ) -> FsResult<()> {
        let data = shard.data();
        validate_put(&key, &owner, data.len() as u64)?;
        let header = ShardHeader::of(key, owner, data, self.sub_block);
        let data_len = data.len();
        if self.holds(&key) && self.holds_same(&key, &header, data)? {
            return Ok(());
        }
        let encoded = header.encode();
        shard.set_header(&encoded);
        if let Some(slots) = self.slots.as_ref().filter(|_| self.put_in_slots) {
            if SlotStore::fits(shard.padded().len()) {
                return self.store_in_slot(slots, Arc::new(header), shard);
            }
        }
        let path = self.shard_path(&key);
        let tmp_path = self.root.join("tmp").join(format!(
            "{:016x}-{:02}.{}",
            key.block.0,
            key.index,
            rand::random::<u64>()
        ));
        let guard = TempFile(&tmp_path);
        write_durably(&tmp_path, shard)?;
        let dir = path.parent().expect("shard path has a parent");
        if !dir.exists() {
            fs::create_dir_all(dir)?;
            // The new subdirectory's entry is durable only once `shards/` is synced.
            File::open(self.root.join("shards"))?.sync_all()?;
        }
        // Publish without replacing: a link fails if the name exists, so two puts of one key
        // racing cannot swap an acknowledged shard for another.
        match fs::hard_link(&tmp_path, &path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return if self.holds_same(&key, &header, shard.data())? {
                    Ok(())
                } else {
                    Err(FsError::Exists)
                };
            }
            Err(e) => return Err(e.into()),
        }
        drop(guard);
        File::open(dir)?.sync_all()?;
        self.headers.insert(key, Arc::new(header));
        self.used_bytes
            .fetch_add((encoded.len() + data_len) as u64, Ordering::Relaxed);
        self.shard_count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Stores a small shard in a slot (see [`crate::slots`]).
    fn store_in_slot(
        &self,
        slots: &SlotStore,
        header: Arc<ShardHeader>,
        shard: &ShardBuffer,
    ) -> FsResult<()> {
        let key = header.key;
        // A second round follows a damaged copy removed by `holds_same`.
        for _ in 0..2 {
            match slots.put(header.clone(), shard.padded())? {
                Put::Stored => {
                    self.used_bytes
                        .fetch_add(header.file_len(), Ordering::Relaxed);
                    self.shard_count.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Put::AlreadyHeld => {
                    if self.holds_same(&key, &header, shard.data())? {
                        return Ok(());
                    }
                }
            }
        }
        Err(FsError::Exists)
    }

    /// Whether a shard is stored under `key` (in a slot, damaged or not, or a file of its own).
    fn holds(&self, key: &ShardKey) -> bool {
        self.slot_of(key).is_some()
            || self.damaged_slot(key).is_some()
            || self.shard_path(key).exists()
    }

    /// A slot holding `key` whose header was found damaged: reads of it are errors.
    fn damaged_slot(&self, key: &ShardKey) -> Option<FsError> {
        let place = self.slots.as_ref()?.damaged(key)?;
        Some(FsError::Corrupt(format!(
            "{}: damaged shard header",
            place.display()
        )))
    }

    fn slot_of(&self, key: &ShardKey) -> Option<(&SlotStore, Slotted)> {
        let slots = self.slots.as_ref()?;
        slots.lookup(key).map(|slotted| (slots, slotted))
    }

    /// Whether the shard stored under `key` is exactly `header`'s and intact: a put of the
    /// same shard again is then done. A damaged copy (kept until repair placed the shard
    /// elsewhere) is removed, so the put can store the good one. A different shard under the
    /// same key is `Exists`.
    fn holds_same(&self, key: &ShardKey, header: &ShardHeader, data: &[u8]) -> FsResult<bool> {
        let verified = self
            .read_header(key)
            .and_then(|existing| self.verify(key).map(|()| existing));
        match verified {
            Ok(existing) if existing == *header => Ok(true),
            // A copy written by an earlier version hashes other sub-blocks of the same bytes.
            Ok(existing)
                if existing.sub_block != header.sub_block
                    && existing
                        == ShardHeader::of(header.key, header.owner, data, existing.sub_block) =>
            {
                Ok(true)
            }
            Ok(_) => Err(FsError::Exists),
            Err(FsError::NotFound) => Ok(false),
            Err(FsError::Corrupt(why)) => {
                tracing::warn!(block = %key.block, index = key.index, "replacing a damaged copy: {why}");
                self.delete(key)?;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The header of the shard stored under `key`, read from the disk.
    pub fn read_header(&self, key: &ShardKey) -> FsResult<ShardHeader> {
        if let Some((slots, slotted)) = self.slot_of(key) {
            return slots.read_header(&slotted);
        }
        if let Some(damaged) = self.damaged_slot(key) {
            return Err(damaged);
        }
        let path = self.shard_path(key);
        read_header_of(key, &mut open_shard(&path)?, &path)
    }

    /// Reads `len` bytes at `offset` of a shard, verifying every sub-block it touches.
    pub fn get(&self, key: &ShardKey, offset: u64, len: u64) -> FsResult<Bytes> {
        Ok(self.get_with_owner(key, offset, len)?.1)
    }

    /// [`ShardStore::get`], also returning whose shard it is (for the access check), from one
    /// open and one header read.
    pub fn get_with_owner(
        &self,
        key: &ShardKey,
        offset: u64,
        len: u64,
    ) -> FsResult<(ShardOwner, Bytes)> {
        if let Some((slots, slotted)) = self.slot_of(key) {
            return get_slotted(slots, key, &slotted, offset, len);
        }
        if let Some(damaged) = self.damaged_slot(key) {
            return Err(damaged);
        }
        let path = self.shard_path(key);
        let mut file = open_shard(&path)?;
        let header = match self.headers.get(key) {
            Some(header) => header,
            None => {
                let header = Arc::new(read_header_of(key, &mut file, &path)?);
                self.headers.insert(*key, header.clone());
                header
            }
        };
        let Some(span) = Span::of(&header, offset, len)? else {
            return Ok((header.owner, Bytes::new()));
        };
        // read_to_end fills spare capacity directly: no zero-fill of a buffer about to be
        // overwritten.
        let mut bytes = Vec::with_capacity(span.len);
        file.seek(SeekFrom::Start(header.data_offset() + span.start))?;
        file.take(span.len as u64).read_to_end(&mut bytes)?;
        span.verified(key, &header, || path.clone(), bytes)
    }

    /// [`ShardStore::get_with_owner`] without waiting for the disk: `None` unless the shard's
    /// header is cached and its bytes are in the page cache (read with `RWF_NOWAIT`), in which
    /// case it costs microseconds and may run on a network thread. A read of hot data then
    /// skips the hand-off to a disk thread and back (two thread wake-ups).
    pub fn get_cached(
        &self,
        key: &ShardKey,
        offset: u64,
        len: u64,
    ) -> Option<FsResult<(ShardOwner, Bytes)>> {
        if let Some((slots, slotted)) = self.slot_of(key) {
            let header = &slotted.header;
            let span = match Span::of(header, offset, len) {
                Ok(Some(span)) => span,
                Ok(None) => return Some(Ok((header.owner, Bytes::new()))),
                Err(e) => return Some(Err(e)),
            };
            let bytes = slots.read_cached(&slotted, header.data_offset() + span.start, span.len)?;
            return Some(verified_slot(slots, key, &slotted, &span, bytes));
        }
        let header = self.headers.get(key)?;
        let span = match Span::of(&header, offset, len) {
            Ok(Some(span)) => span,
            Ok(None) => return Some(Ok((header.owner, Bytes::new()))),
            Err(e) => return Some(Err(e)),
        };
        let file = self.open_file(key).ok()?;
        // Not all cached (EAGAIN), short, or refused: the disk thread does it properly.
        let bytes =
            crate::cached_read::read_cached(&file, header.data_offset() + span.start, span.len)?;
        Some(span.verified(key, &header, || self.shard_path(key), bytes))
    }

    /// Verifies every sub-block of a shard (used by checks and scrubbing).
    pub fn verify(&self, key: &ShardKey) -> FsResult<()> {
        let header = self.read_header(key)?;
        self.get(key, 0, header.shard_len).map(|_| ())
    }

    pub fn delete(&self, key: &ShardKey) -> FsResult<bool> {
        if let Some(slots) = &self.slots {
            match slots.delete(key)? {
                Deleted::Shard(slotted) => {
                    self.forget(key);
                    self.used_bytes
                        .fetch_sub(slotted.header.file_len(), Ordering::Relaxed);
                    self.shard_count.fetch_sub(1, Ordering::Relaxed);
                    return Ok(true);
                }
                Deleted::Damaged => return Ok(true),
                Deleted::None => {}
            }
        }
        let path = self.shard_path(key);
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        fs::remove_file(&path)?;
        self.forget(key);
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.used_bytes.fetch_sub(len, Ordering::Relaxed);
        self.shard_count.fetch_sub(1, Ordering::Relaxed);
        Ok(true)
    }
}

/// The key a shard header seems to name when it fails its checks: `None` unless `fixed` (its
/// first 29 bytes at least) starts with the magic. Only for keeping a damaged copy listed
/// under its key; nothing read from it is trusted otherwise.
pub(crate) fn key_of_damaged_header(fixed: &[u8]) -> Option<ShardKey> {
    if fixed.len() < 29 || &fixed[..8] != MAGIC {
        return None;
    }
    Some(ShardKey {
        block: BlockId(u64::from_le_bytes(fixed[20..28].try_into().ok()?)),
        index: fixed[28],
    })
}

/// Reads `len` bytes at `offset` of the slotted shard `key`, verifying every sub-block it
/// touches against the header kept in memory.
fn get_slotted(
    slots: &SlotStore,
    key: &ShardKey,
    slotted: &Slotted,
    offset: u64,
    len: u64,
) -> FsResult<(ShardOwner, Bytes)> {
    let header = &slotted.header;
    let Some(span) = Span::of(header, offset, len)? else {
        return Ok((header.owner, Bytes::new()));
    };
    let mut bytes = vec![0u8; span.len];
    if let Err(e) = slots.read(slotted, header.data_offset() + span.start, &mut bytes) {
        return Err(gone_or(slots, key, slotted, e));
    }
    verified_slot(slots, key, slotted, &span, bytes)
}

/// `error` (from reading `slotted`), or `NotFound` when the shard is no longer in that slot:
/// a slot read as damaged or cut short because the shard was deleted meanwhile (and its slot
/// reused, or cut off the end of its file) means the shard is gone, not damaged.
fn gone_or(slots: &SlotStore, key: &ShardKey, slotted: &Slotted, error: FsError) -> FsError {
    match error {
        FsError::Corrupt(_) if slots.lookup(key).is_none_or(|now| !now.same_place(slotted)) => {
            FsError::NotFound
        }
        other => other,
    }
}

/// Checks bytes read from a slot (see [`gone_or`] for a shard deleted while they were read).
fn verified_slot(
    slots: &SlotStore,
    key: &ShardKey,
    slotted: &Slotted,
    span: &Span,
    bytes: Vec<u8>,
) -> FsResult<(ShardOwner, Bytes)> {
    span.verified(
        key,
        &slotted.header,
        || slots.file_of(slotted).to_path_buf(),
        bytes,
    )
    .map_err(|e| gone_or(slots, key, slotted, e))
}

/// Reads and checks the header of the shard file `file` at `path`, which must name `key`.
fn read_header_of(key: &ShardKey, file: &mut File, path: &Path) -> FsResult<ShardHeader> {
    let header = ShardHeader::parse(file, path)?;
    if header.key != *key {
        return Err(FsError::Corrupt(format!(
            "{}: header names another shard",
            path.display()
        )));
    }
    Ok(header)
}

fn open_shard(path: &Path) -> FsResult<File> {
    Ok(OpenOptions::new().read(true).open(path)?)
}

/// Removes the temp file when the write ends: after a failure, or once it is linked into place.
struct TempFile<'a>(&'a Path);

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(block_len: u64) -> ShardOwner {
        ShardOwner {
            volume: VolumeId(7),
            policy: EcPolicy::new(4, 2).unwrap(),
            block_len,
        }
    }

    fn key(block: u64, index: u8) -> ShardKey {
        ShardKey {
            block: BlockId(block),
            index,
        }
    }

    /// Flips `bits` of data byte `at` of the shard file of `k` (which holds `data_len` bytes),
    /// in place, as damage on the disk would.
    fn damage_data(store: &ShardStore, k: &ShardKey, data_len: usize, at: usize, bits: u8) {
        let path = store.shard_path(k);
        let mut bytes = fs::read(&path).unwrap();
        let header_len = bytes.len() - data_len;
        bytes[header_len + at] ^= bits;
        fs::write(&path, &bytes).unwrap();
    }

    /// Shards of every length round-trip exactly whether the file system takes O_DIRECT (the
    /// test's temporary directory on ext4) or refuses it (tmpfs, /dev/shm where present).
    #[test]
    fn shards_of_any_length_round_trip_with_and_without_o_direct() {
        let mut roots = vec![tempfile::tempdir().unwrap()];
        if Path::new("/dev/shm").is_dir() {
            roots.push(tempfile::tempdir_in("/dev/shm").unwrap());
        }
        for root in &roots {
            let store = ShardStore::open(root.path()).unwrap();
            for (block, len) in [(1, 1usize), (2, 4095), (3, 4096), (4, 65_537), (5, 1 << 20)] {
                let data: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
                let k = key(block, 0);
                store.put(k, owner(len as u64 * 4), &data).unwrap();
                let (_, _, on_disk) = stored_bytes(&store, &k);
                assert_eq!(on_disk.len() as u64, file_len(len as u64), "length {len}");
                assert_eq!(store.slot_of(&k).is_some(), len < 100_000, "length {len}");
                assert_eq!(store.get(&k, 0, len as u64).unwrap(), data, "length {len}");
                store.verify(&k).unwrap();
            }
        }
    }

    /// The bytes a shard takes on disk, from its file or its slot, with where they start.
    fn stored_bytes(store: &ShardStore, k: &ShardKey) -> (PathBuf, u64, Vec<u8>) {
        use std::os::unix::fs::FileExt;
        if let Some((slots, slotted)) = store.slot_of(k) {
            let (path, at) = slots.location(&slotted);
            let mut bytes = vec![0u8; file_len(slotted.header.shard_len) as usize];
            File::open(&path)
                .unwrap()
                .read_exact_at(&mut bytes, at)
                .unwrap();
            return (path, at, bytes);
        }
        let path = store.shard_path(k);
        let bytes = fs::read(&path).unwrap();
        (path, 0, bytes)
    }

    /// Flips bits of byte `i` of the stored shard `k` on disk.
    fn damage(store: &ShardStore, k: &ShardKey, i: usize, bits: u8) {
        use std::os::unix::fs::FileExt;
        let (path, at, bytes) = stored_bytes(store, k);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[bytes[i] ^ bits], at + i as u64)
            .unwrap();
    }

    /// Small shards go into slots: they survive a reopen, a deleted one's slot is reused, and
    /// a store told not to use slots still reads the shards already in them.
    #[test]
    fn small_shards_live_in_slots_across_reopens_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShardStore::open(dir.path()).unwrap();
        let shards: Vec<(ShardKey, Vec<u8>)> = (0..40u64)
            .map(|i| {
                let len = 1 + (i as usize * 3_001) % 120_000;
                (key(100 + i, (i % 6) as u8), vec![i as u8 ^ 0x5a; len])
            })
            .collect();
        for (k, data) in &shards {
            store.put(*k, owner(data.len() as u64 * 4), data).unwrap();
            assert!(store.slot_of(k).is_some());
        }
        assert!(
            !store.root().join("shards/64").exists(),
            "a small shard took a file"
        );
        let reopened = ShardStore::open(dir.path()).unwrap();
        assert_eq!(reopened.shard_count(), 40);
        assert_eq!(reopened.used_bytes(), store.used_bytes());
        let mut listed: Vec<ShardKey> = reopened
            .list()
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        listed.sort_by_key(|k| k.block);
        assert_eq!(listed, shards.iter().map(|(k, _)| *k).collect::<Vec<_>>());
        for (k, data) in &shards {
            assert_eq!(reopened.get(k, 0, data.len() as u64).unwrap(), *data);
            reopened.verify(k).unwrap();
        }
        // A deleted shard's slot holds the next shard of its size.
        let (gone, data) = &shards[3];
        let (_, slotted) = reopened.slot_of(gone).unwrap();
        let place = reopened.slots.as_ref().unwrap().location(&slotted);
        assert!(reopened.delete(gone).unwrap());
        assert_eq!(reopened.get(gone, 0, 1), Err(FsError::NotFound));
        let next = key(999, 0);
        reopened
            .put(next, owner(data.len() as u64 * 4), &vec![7u8; data.len()])
            .unwrap();
        let (slots, slotted) = reopened.slot_of(&next).unwrap();
        assert_eq!(
            slots.location(&slotted),
            place,
            "the freed slot was not reused"
        );
        // Without slots for new shards, small ones take files; those in slots still read.
        let without = ShardStore::open_with(dir.path(), false).unwrap();
        assert_eq!(without.shard_count(), 40);
        assert!(!without.list().unwrap().iter().any(|(k, _)| k == gone));
        assert_eq!(without.get(&next, 0, 3).unwrap(), vec![7u8; 3]);
        without.put(key(5000, 1), owner(400), &[1u8; 100]).unwrap();
        assert!(without.slot_of(&key(5000, 1)).is_none());
        assert!(without.shard_path(&key(5000, 1)).exists());
    }

    /// Damage to a slotted shard is found like damage to a shard file: in its data by every
    /// read, in its header by verification at once and, after a restart, by every read, with
    /// the shard still listed (so scrubbing reports it) until it is deleted; then its key
    /// can be stored again. A slot of random bytes is free.
    #[test]
    fn damaged_slots_are_errors_and_stay_listed_until_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShardStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let k = key(77, 2);
        store.put(k, owner(80_000), &data).unwrap();
        let header_len = file_len(data.len() as u64) as usize - data.len();
        damage(&store, &k, header_len + 10_001, 0x08);
        assert!(matches!(store.get(&k, 10_000, 5), Err(FsError::Corrupt(_))));
        assert!(matches!(store.verify(&k), Err(FsError::Corrupt(_))));
        damage(&store, &k, header_len + 10_001, 0x08);
        assert_eq!(store.get(&k, 10_000, 5).unwrap(), &data[10_000..10_005]);
        // The header: a byte of the checksum table.
        damage(&store, &k, 60, 0x01);
        assert!(matches!(store.verify(&k), Err(FsError::Corrupt(_))));
        let cold = ShardStore::open(dir.path()).unwrap();
        assert!(cold.list().unwrap().iter().any(|(key, _)| *key == k));
        assert!(matches!(cold.get(&k, 0, 1), Err(FsError::Corrupt(_))));
        assert!(matches!(cold.read_header(&k), Err(FsError::Corrupt(_))));
        // A put of the same shard replaces the damaged copy.
        cold.put(k, owner(80_000), &data).unwrap();
        assert_eq!(cold.get(&k, 0, 20_000).unwrap(), data);
        assert!(cold.delete(&k).unwrap());
        assert!(cold.list().unwrap().is_empty());
        // Random bytes in a slot file are free slots, never shards.
        let (path, _, _) = {
            cold.put(k, owner(80_000), &data).unwrap();
            stored_bytes(&cold, &k)
        };
        cold.delete(&k).unwrap();
        let mut junk = vec![0u8; fs::metadata(&path).unwrap().len() as usize];
        rand::Rng::fill(&mut rand::rng(), &mut junk[..]);
        fs::write(&path, &junk).unwrap();
        let reopened = ShardStore::open(dir.path()).unwrap();
        assert_eq!(reopened.shard_count(), 0);
        assert!(reopened.list().unwrap().is_empty());
    }

    /// A read that found a shard's slot, then read it after the shard was deleted and the slot
    /// given to another shard, reports the shard gone, not damaged, and never returns the other
    /// shard's bytes.
    #[test]
    fn a_read_racing_a_delete_and_reuse_of_its_slot_finds_the_shard_gone() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShardStore::open(dir.path()).unwrap();
        let (a, b) = (key(1, 0), key(2, 0));
        store.put(a, owner(40_000), &[0xaa; 10_000]).unwrap();
        let (slots, seen) = store.slot_of(&a).unwrap();
        assert!(store.delete(&a).unwrap());
        store.put(b, owner(40_000), &[0xbb; 10_000]).unwrap();
        let (_, reused) = store.slot_of(&b).unwrap();
        assert_eq!(slots.location(&reused), slots.location(&seen));
        assert_eq!(get_slotted(slots, &a, &seen, 0, 10), Err(FsError::NotFound));
        // The same read while the shard is still there is its bytes.
        let (_, held) = store.slot_of(&b).unwrap();
        assert_eq!(
            get_slotted(slots, &b, &held, 0, 3).unwrap().1,
            &[0xbb; 3][..]
        );
    }

    /// A slot file gives the space of deleted shards at its end back: new shards take the
    /// lowest free slots, and once more than two growths' worth of slots at the end are free
    /// the file is cut to keep one. The shards left read back, after a reopen too, and a read
    /// of a shard whose slot was cut off finds it gone.
    #[test]
    fn slot_files_shrink_when_the_shards_at_their_end_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShardStore::open(dir.path()).unwrap();
        let file = dir.path().join("slots/slots-8k");
        let slots_in = |path: &Path| fs::metadata(path).unwrap().len() / 8192;
        // 1,000-byte shards take 8 KiB slots; the file grows by 256 slots (2 MiB) at a time.
        let data = |i: u64| vec![(i % 251) as u8; 1_000];
        for i in 0..1_000u64 {
            store.put(key(i, 0), owner(4_000), &data(i)).unwrap();
        }
        assert_eq!(slots_in(&file), 1_024);
        let slots = store.slots.as_ref().unwrap();
        let (_, last) = store.slot_of(&key(999, 0)).unwrap();
        assert_eq!(
            slots.location(&last).1,
            999 * 8192,
            "slots taken lowest first"
        );
        // Freeing 700 slots at the end (724 counting the never used) cuts the file to the
        // highest shard kept, plus 256 free slots.
        for i in 300..1_000u64 {
            assert!(store.delete(&key(i, 0)).unwrap());
        }
        assert_eq!(slots_in(&file), 300 + 256);
        assert_eq!(
            get_slotted(slots, &key(999, 0), &last, 0, 10),
            Err(FsError::NotFound),
            "a slot cut off reads as a shard gone"
        );
        // Deletes in the middle leave the file as it is; the next shards fill the lowest free
        // slots, then the file grows again.
        for i in 0..100u64 {
            assert!(store.delete(&key(i, 0)).unwrap());
        }
        assert_eq!(slots_in(&file), 556);
        for i in 1_000..1_400u64 {
            store.put(key(i, 0), owner(4_000), &data(i)).unwrap();
        }
        let (_, first) = store.slot_of(&key(1_000, 0)).unwrap();
        assert_eq!(slots.location(&first).1, 0);
        assert_eq!(slots_in(&file), 556 + 256);
        // A file with many free slots at its end (as earlier versions left them) is cut when
        // the store opens.
        drop(store);
        File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len((812 + 1_000) * 8192)
            .unwrap();
        let reopened = ShardStore::open(dir.path()).unwrap();
        assert_eq!(slots_in(&file), 600 + 256);
        assert_eq!(reopened.shard_count(), 600);
        for i in (100..300u64).chain(1_000..1_400) {
            assert_eq!(
                reopened.get(&key(i, 0), 0, 1_000).unwrap(),
                data(i),
                "shard {i}"
            );
        }
    }

    /// Deleted shards in the middle of a slot file give their blocks back (holes), beyond a
    /// reserve of one growth's worth of written free slots; so do free slots left written by
    /// earlier versions, when the store opens. New shards take the written free slots first,
    /// then the holes, then the file grows; every shard kept reads back throughout.
    #[test]
    fn slot_files_give_back_the_blocks_of_shards_deleted_in_their_middle() {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let dir = tempfile::tempdir().unwrap();
        let store = ShardStore::open(dir.path()).unwrap();
        let file = dir.path().join("slots/slots-8k");
        let allocated = |path: &Path| fs::metadata(path).unwrap().blocks() * 512;
        let data = |i: u64| vec![(i % 251) as u8; 1_000];
        let reads_back = |store: &ShardStore, keys: &mut dyn Iterator<Item = u64>| {
            for i in keys {
                assert_eq!(
                    store.get(&key(i, 0), 0, 1_000).unwrap(),
                    data(i),
                    "shard {i}"
                );
            }
        };
        // Shard i in slot i; slots 1,000 to 1,023 free (written zeros of the last growth).
        for i in 0..1_000u64 {
            store.put(key(i, 0), owner(4_000), &data(i)).unwrap();
        }
        let full = allocated(&file);
        // 450 deletes in the middle: the first 232 fill the reserve of 256 written free
        // slots, the other 218 become holes.
        for i in (0..900u64).step_by(2) {
            assert!(store.delete(&key(i, 0)).unwrap());
        }
        // Up to 64 KiB of it may go to the file's extent tree, which holes lengthen.
        let about = |slots: u64| (slots * 8192 - (64 << 10))..=slots * 8192;
        let freed = full - allocated(&file);
        assert!(
            about(218).contains(&freed),
            "{freed} bytes given back for 218 holes"
        );
        reads_back(&store, &mut (1..900).step_by(2).chain(900..1_000));

        // Free slots left written by an earlier version (its deletes zeroed a slot's header):
        // 100 more, so the 100 highest written free slots beyond the reserve become holes.
        drop(store);
        let f = File::options().write(true).open(&file).unwrap();
        for i in (1..200u64).step_by(2) {
            f.write_all_at(&[0u8; 4096], i * 8192).unwrap();
        }
        f.sync_all().unwrap();
        let before = allocated(&file);
        let reopened = ShardStore::open(dir.path()).unwrap();
        let freed = before - allocated(&file);
        assert!(
            about(100).contains(&freed),
            "{freed} bytes given back at open for 100 free slots beyond the reserve"
        );
        assert_eq!(reopened.shard_count(), 450);
        reads_back(&reopened, &mut (201..900).step_by(2).chain(900..1_000));

        // 600 new shards: 256 written free slots, 318 holes, then 26 of a new growth.
        for i in 2_000..2_600u64 {
            reopened.put(key(i, 0), owner(4_000), &data(i)).unwrap();
        }
        let slots = reopened.slots.as_ref().unwrap();
        let (_, first) = reopened.slot_of(&key(2_000, 0)).unwrap();
        assert_eq!(slots.location(&first).1, 0, "written free slots first");
        let (_, last_written) = reopened.slot_of(&key(2_255, 0)).unwrap();
        assert_eq!(slots.location(&last_written).1, 310 * 8192);
        let (_, first_hole) = reopened.slot_of(&key(2_256, 0)).unwrap();
        assert_eq!(
            slots.location(&first_hole).1,
            312 * 8192,
            "then the lowest hole"
        );
        assert_eq!(fs::metadata(&file).unwrap().len(), 1_280 * 8192);
        reads_back(&reopened, &mut (201..900).step_by(2).chain(900..1_000));
        reads_back(&reopened, &mut (2_000..2_600));
    }

    /// Not a check but a measurement (docs/BENCHMARKS.md): how long a store holding
    /// `DFS_SLOT_SCAN_SHARDS` small shards (60,000) in `DFS_SLOT_SCAN_DIR` (kept; filled on
    /// the first run) takes to open, its slot files' starts read by the scan. Drop the page
    /// cache between runs to time a cold start.
    #[test]
    #[ignore]
    fn slot_scan_speed() {
        let dir = std::env::var("DFS_SLOT_SCAN_DIR").expect("DFS_SLOT_SCAN_DIR");
        let shards = std::env::var("DFS_SLOT_SCAN_SHARDS").map_or(60_000, |v| v.parse().unwrap());
        let root = Path::new(&dir);
        let started = std::time::Instant::now();
        let store = ShardStore::open(root).unwrap();
        let took = started.elapsed();
        let found = store.shard_count() as u64;
        for i in found..shards {
            store
                .put(key(i, 0), owner(4_000), &[(i % 251) as u8; 1_000])
                .unwrap();
        }
        eprintln!("opened a store of {found} slotted shards in {took:?}");
        assert_eq!(store.shard_count() as u64, shards);
    }

    /// Buffers are reused from shard to shard, larger for smaller: each file holds exactly its
    /// own header and bytes.
    #[test]
    fn reused_buffers_store_exactly_their_own_shard() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShardStore::open(dir.path()).unwrap();
        for (block, len, fill) in [
            (1, 1usize << 20, 0xAAu8),
            (2, 4095, 1),
            (3, 65_537, 2),
            (4, 1, 3),
        ] {
            let data = vec![fill; len];
            let k = key(block, 0);
            store.put(k, owner(len as u64 * 4), &data).unwrap();
            let (_, _, on_disk) = stored_bytes(&store, &k);
            assert_eq!(on_disk.len() as u64, file_len(len as u64), "length {len}");
            assert!(on_disk[on_disk.len() - len..] == data[..], "length {len}");
            assert_eq!(store.get(&k, 0, len as u64).unwrap(), data);
            store.verify(&k).unwrap();
        }
        assert_eq!(
            store.spare_buffers.lock().unwrap().len(),
            1,
            "one buffer, reused"
        );
    }

    /// The non-blocking read serves only what it can check: a shard whose header is cached and
    /// whose bytes are in the page cache; what it returns is verified like any read.
    #[test]
    fn cached_reads_return_verified_bytes_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShardStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 249) as u8).collect();
        let k = key(4, 2);
        assert!(store.get_cached(&k, 0, 10).is_none(), "nothing stored");
        store.put(k, owner(800_000), &data).unwrap();
        // A buffered read brings the bytes into the page cache (the put may have bypassed it).
        assert_eq!(store.get(&k, 70_000, 5_000).unwrap(), &data[70_000..75_000]);
        // Some file systems (tmpfs) refuse RWF_NOWAIT: there every read takes the disk thread.
        let file = File::open(store.shard_path(&k)).unwrap();
        let probe = rustix::io::preadv2(
            &file,
            &mut [std::io::IoSliceMut::new(&mut [0u8; 1])],
            0,
            rustix::io::ReadWriteFlags::NOWAIT,
        );
        if probe == Err(rustix::io::Errno::OPNOTSUPP) {
            assert!(store.get_cached(&k, 70_000, 5_000).is_none());
            return;
        }
        let (owner_seen, got) = store
            .get_cached(&k, 70_000, 5_000)
            .expect("header cached and bytes in the page cache")
            .unwrap();
        assert_eq!(owner_seen, owner(800_000));
        assert_eq!(got, &data[70_000..75_000]);
        assert!(matches!(
            store.get_cached(&k, 199_999, 2),
            Some(Err(FsError::Invalid(_)))
        ));
        // Damage written through the page cache is caught by the cached read too.
        damage_data(&store, &k, data.len(), 70_001, 4);
        assert!(matches!(
            store.get_cached(&k, 70_000, 10),
            Some(Err(FsError::Corrupt(_)))
        ));
        assert!(matches!(
            store.get(&k, 70_000, 10),
            Err(FsError::Corrupt(_))
        ));
        // A deleted shard is not served from the header cache.
        store.delete(&k).unwrap();
        assert!(store.get_cached(&k, 0, 10).is_none());
        // Another shard stored under the key is read from its own file, not from a handle
        // kept open for the deleted one.
        let other: Vec<u8> = data.iter().map(|b| b ^ 0x5a).collect();
        store.put(k, owner(800_000), &other).unwrap();
        assert_eq!(
            store.get(&k, 70_000, 5_000).unwrap(),
            &other[70_000..75_000]
        );
        let (_, got) = store
            .get_cached(&k, 70_000, 5_000)
            .expect("header cached and bytes in the page cache")
            .unwrap();
        assert_eq!(got, &other[70_000..75_000]);
    }

    #[test]
    fn put_get_ranges_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShardStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        store.put(key(1, 0), owner(800_000), &data).unwrap();
        let on_disk = fs::metadata(store.shard_path(&key(1, 0))).unwrap().len();
        assert_eq!(on_disk, file_len(200_000));
        assert_eq!(store.get(&key(1, 0), 0, 200_000).unwrap(), data);
        assert_eq!(
            store.get(&key(1, 0), 65_530, 20).unwrap(),
            &data[65_530..65_550]
        );
        assert_eq!(store.get(&key(1, 0), 199_999, 1).unwrap(), &data[199_999..]);
        assert!(store.get(&key(1, 0), 199_999, 2).is_err());
        assert_eq!(store.get(&key(2, 0), 0, 1), Err(FsError::NotFound));
        // Idempotent re-put; conflicting content refused.
        store.put(key(1, 0), owner(800_000), &data).unwrap();
        let mut other = data.clone();
        other[5] ^= 1;
        assert_eq!(
            store.put(key(1, 0), owner(800_000), &other),
            Err(FsError::Exists)
        );
        // Inconsistent length refused.
        assert!(store.put(key(3, 0), owner(10), &data).is_err());
        assert!(store.put(key(3, 9), owner(800_000), &data).is_err());
        let reopened = ShardStore::open(dir.path()).unwrap();
        assert_eq!(reopened.shard_count(), 1);
        let listed: Vec<ShardKey> = reopened
            .list()
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(listed, vec![key(1, 0)]);
        assert_eq!(reopened.get(&key(1, 0), 0, 10).unwrap(), &data[..10]);
        assert!(reopened.delete(&key(1, 0)).unwrap());
        assert!(!reopened.delete(&key(1, 0)).unwrap());
        assert_eq!(reopened.shard_count(), 0);
    }

    /// Shards written with the 64 KiB sub-blocks of earlier versions stay readable after an
    /// upgrade, in shard files and in slots: reads verify them per 64 KiB sub-block, a put of
    /// the same bytes again is accepted and other bytes under the key are refused.
    #[test]
    fn shards_with_the_earlier_sub_block_are_read_and_matched() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = |len: usize, seed: u32| -> Vec<u8> {
            (0..len as u32).map(|i| (i * 7 + seed) as u8).collect()
        };
        // One small enough for a slot, one for a shard file.
        let small = bytes(40_000, 1);
        let large = bytes(3 * LEGACY_SUB_BLOCK + 100, 2);
        let shards = [(key(1, 0), &small), (key(2, 0), &large)];
        {
            let mut old = ShardStore::open(dir.path()).unwrap();
            old.sub_block = LEGACY_SUB_BLOCK;
            for (k, data) in shards {
                old.put(k, owner(4 * data.len() as u64), data).unwrap();
            }
        }
        let store = ShardStore::open(dir.path()).unwrap();
        for (k, data) in shards {
            let owner = owner(4 * data.len() as u64);
            assert_eq!(store.read_header(&k).unwrap().sub_block, LEGACY_SUB_BLOCK);
            assert_eq!(store.get(&k, 0, data.len() as u64).unwrap(), data[..]);
            assert_eq!(store.get(&k, 30_000, 5_000).unwrap(), data[30_000..35_000]);
            store.verify(&k).unwrap();
            store.put(k, owner, data).unwrap();
            let mut other = data.clone();
            other[20_000] ^= 1;
            assert!(matches!(store.put(k, owner, &other), Err(FsError::Exists)));
            assert_eq!(store.get(&k, 0, data.len() as u64).unwrap(), data[..]);
        }
        store
            .put(key(3, 0), owner(4 * large.len() as u64), &large)
            .unwrap();
        assert_eq!(store.read_header(&key(3, 0)).unwrap().sub_block, SUB_BLOCK);

        // Damage in an old shard file fails reads anywhere in its 64 KiB sub-block.
        damage_data(&store, &key(2, 0), large.len(), LEGACY_SUB_BLOCK + 5, 0x10);
        assert!(matches!(
            store.get(&key(2, 0), LEGACY_SUB_BLOCK as u64 + 60_000, 10),
            Err(FsError::Corrupt(_))
        ));
        assert_eq!(store.get(&key(2, 0), 0, 100).unwrap(), large[..100]);
    }

    #[test]
    fn flipped_bit_is_detected_only_in_its_sub_block() {
        let dir = tempfile::tempdir().unwrap();
        // A shard file (three sub-blocks would fit a slot).
        let store = ShardStore::open_with(dir.path(), false).unwrap();
        let data = vec![9u8; 3 * SUB_BLOCK];
        store
            .put(key(5, 1), owner(12 * SUB_BLOCK as u64), &data)
            .unwrap();
        let path = store.shard_path(&key(5, 1));
        let mut bytes = fs::read(&path).unwrap();
        let header_len = bytes.len() - data.len();
        bytes[header_len + SUB_BLOCK + 17] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            store.get(&key(5, 1), SUB_BLOCK as u64, 10),
            Err(FsError::Corrupt(_))
        ));
        assert!(matches!(store.verify(&key(5, 1)), Err(FsError::Corrupt(_))));
        assert_eq!(store.get(&key(5, 1), 0, 100).unwrap(), vec![9u8; 100]);
        assert_eq!(
            store.get(&key(5, 1), 2 * SUB_BLOCK as u64, 100).unwrap(),
            vec![9u8; 100]
        );
        // A damaged header is detected too: by verification (scrub) at once, and by reads of a
        // store that has not cached the good header (reads of one that has go on returning
        // data verified against it).
        bytes[header_len + SUB_BLOCK + 17] ^= 0x10;
        bytes[20] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(store.verify(&key(5, 1)), Err(FsError::Corrupt(_))));
        assert_eq!(store.get(&key(5, 1), 0, 100).unwrap(), vec![9u8; 100]);
        let cold = ShardStore::open(dir.path()).unwrap();
        assert!(matches!(
            cold.get(&key(5, 1), 0, 1),
            Err(FsError::Corrupt(_))
        ));
    }

    #[test]
    fn damaged_shard_files_are_errors_never_panics() {
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let store = ShardStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..150_000u32).map(|i| (i % 253) as u8).collect();
        let k = key(9, 1);
        store.put(k, owner(600_000), &data).unwrap();
        let path = store.shard_path(&k);
        let good = fs::read(&path).unwrap();
        let header_len = good.len() - data.len();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
        for round in 0..2000 {
            let mut bytes = good.clone();
            match round % 4 {
                // A flipped bit in the header or its checksum table.
                0 | 1 => {
                    let i = rng.random_range(0..header_len);
                    bytes[i] ^= 1 << rng.random_range(0..8);
                }
                // Cut short anywhere.
                2 => bytes.truncate(rng.random_range(0..bytes.len())),
                // Random bytes of any length.
                _ => {
                    bytes = vec![0u8; rng.random_range(0..4096)];
                    rng.fill(&mut bytes[..]);
                }
            }
            fs::write(&path, &bytes).unwrap();
            // Whatever reads back is the data that was written, or an error: through the
            // store that cached the good header, and through one that has to read this one.
            let cold = ShardStore::open(dir.path()).unwrap();
            let header = cold.read_header(&k);
            if let Ok(back) = cold.get(&k, 0, data.len() as u64) {
                assert_eq!(back, data, "round {round} returned wrong bytes");
                assert!(header.is_ok());
            }
            if let Ok(back) = store.get(&k, 0, data.len() as u64) {
                assert_eq!(back, data, "round {round} returned wrong bytes");
            }
        }
    }

    /// Two puts of one key with different contents, racing: one wins, the other is told the
    /// key is taken, and what is stored is exactly the winner's shard, every time.
    #[test]
    fn racing_puts_of_one_key_never_replace_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(ShardStore::open(dir.path()).unwrap());
        for round in 0..40u64 {
            let k = key(1000 + round, 0);
            // Odd rounds race for a slot, even ones for a file.
            let len = if round % 2 == 1 { 10_000 } else { 100_000 };
            let contents: Vec<Vec<u8>> = (0..2u8).map(|b| vec![b; len]).collect();
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
            let handles: Vec<_> = contents
                .iter()
                .cloned()
                .map(|data| {
                    let (store, barrier) = (store.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        store.put(k, owner(data.len() as u64 * 4), &data)
                    })
                })
                .collect();
            let results: Vec<FsResult<()>> =
                handles.into_iter().map(|h| h.join().unwrap()).collect();
            let winners: Vec<usize> = (0..2).filter(|&i| results[i].is_ok()).collect();
            assert_eq!(winners.len(), 1, "round {round}: {results:?}");
            let loser = 1 - winners[0];
            assert_eq!(results[loser], Err(FsError::Exists), "round {round}");
            let stored = store.get(&k, 0, len as u64).unwrap();
            assert_eq!(stored, contents[winners[0]], "round {round}");
        }
    }
}
