//! Small shards in slot files.
//!
//! A shard in a file of its own costs a new inode and a directory entry: storing it durably
//! writes the data, the inode and the directory, with a cache flush for the file and another
//! for its directory. For a shard of a few KiB that is most of its cost, and six servers on one
//! disk queue behind each other's flushes. Shards whose file bytes (header and data, rounded up
//! to the 4 KiB O_DIRECT alignment) fit in [`MAX_SLOT`] go instead into a slot of a file of
//! fixed-size slots (`slots/slots-<size>k`, sizes 8 KiB to [`MAX_SLOT`] by powers of two).
//! Those files are grown by writing zeros and syncing, so a later shard write overwrites blocks
//! the file already has: one write and one `fdatasync`, which writes the data alone.
//!
//! A slot holds exactly what a shard file holds (see [`crate::store`]): the header names the
//! shard and carries its checksums, so the index of which slot holds which shard lives only in
//! memory and is rebuilt at start by reading every slot's header. A slot without a shard
//! header is free. One whose header is damaged but still names a shard (its magic and key
//! fields are there) is kept under that key as damaged, as a shard file with a damaged header
//! is: scrubbing reports it, repair rebuilds the shard elsewhere and reconciliation deletes
//! it, and only then is the slot reused. Deleting a shard zeroes its slot's first 4 KiB (durably) before the slot can
//! be used again. A crash mid-write leaves a slot whose header or data fail their checksums:
//! the write was never acknowledged, and reads of it are errors, never other bytes.
//!
//! A new shard takes the lowest free slot, so the shards of a file gather at its start. When a
//! delete (or the start-up scan) finds more than two growths' worth of free slots at a file's
//! end, the file is cut to keep one: the space of deleted shards goes back to the file system,
//! while a file that keeps filling and emptying does not shrink and grow at every step. Free
//! slots elsewhere give their space back too, beyond a reserve of one growth's worth kept
//! written: a deleted shard's slot becomes a hole (`FALLOC_FL_PUNCH_HOLE`), which reads as
//! zeros, so as a free slot. New shards take written free slots first; one written into a hole
//! costs a block allocation, its `fdatasync` a journal commit too (about 220 µs against 120 µs
//! for an 8 KiB slot here).

use crate::store::ShardHeader;
use dfs_common::proto::chunk::ShardKey;
use dfs_common::{FsError, FsResult};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

/// The smallest slot.
const MIN_SLOT: u64 = 8 << 10;
/// The largest slot: shards of larger files keep a file each.
pub const MAX_SLOT: u64 = 128 << 10;
/// Bytes a slot file grows by when it has no free slot.
const GROW_BYTES: u64 = 2 << 20;
/// Bytes zeroed at the start of a deleted shard's slot: the whole header of any slotted shard.
const CLEAR_BYTES: usize = 4096;
/// Slot starts the start-up scan asks the kernel for ahead of its reads.
const PREFETCH_SLOTS: u64 = 256;

/// Where a stored shard is, and its header, verified when written or read at start.
#[derive(Clone, Debug)]
pub struct Slotted {
    class: usize,
    slot: u64,
    pub header: Arc<ShardHeader>,
    /// When it was stored (at start: when the store was opened, which only lengthens grace
    /// periods measured from it).
    pub written: SystemTime,
}

impl Slotted {
    /// Whether both are the same slot.
    pub fn same_place(&self, other: &Slotted) -> bool {
        (self.class, self.slot) == (other.class, other.slot)
    }
}

/// One slot size's file.
struct Class {
    size: u64,
    path: PathBuf,
    /// For reads (through the page cache), and for writes where O_DIRECT is refused.
    file: File,
    /// For writes, with O_DIRECT where the file system takes it.
    direct: Option<File>,
    /// Free slots, and how many slots the file has.
    space: Mutex<Space>,
}

#[derive(Default)]
struct Space {
    /// Free slots whose blocks the file keeps (a shard written there overwrites them): taken
    /// first, lowest first.
    free: BTreeSet<u64>,
    /// Free slots given back to the file system (holes): taken when `free` is empty.
    holes: BTreeSet<u64>,
    slots: u64,
}

impl Space {
    fn is_free(&self, slot: u64) -> bool {
        self.free.contains(&slot) || self.holes.contains(&slot)
    }
}

struct Index {
    held: HashMap<ShardKey, Slotted>,
    /// Slots whose header is damaged, under the key it seems to name: class and slot.
    damaged: HashMap<ShardKey, (usize, u64)>,
    /// Keys being written or deleted: others wait for them to finish.
    busy: HashSet<ShardKey>,
    /// When the store was opened.
    opened: SystemTime,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            held: HashMap::new(),
            damaged: HashMap::new(),
            busy: HashSet::new(),
            opened: SystemTime::now(),
        }
    }
}

/// What [`SlotStore::delete`] removed.
#[derive(Debug)]
pub enum Deleted {
    None,
    Shard(Slotted),
    /// A slot whose header was found damaged.
    Damaged,
}

/// What [`SlotStore::put`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Put {
    Stored,
    /// A shard was already held under the key (stored meanwhile by a racing put, say); the
    /// caller decides whether it is the same.
    AlreadyHeld,
}

/// The slot files of one store.
pub struct SlotStore {
    classes: Vec<Class>,
    index: Mutex<Index>,
    /// Signalled when a key stops being busy.
    idle: Condvar,
}

impl SlotStore {
    /// Opens (creating if needed) the slot files under `root/slots` and reads every slot's
    /// header to learn which shards they hold.
    pub fn open(root: &Path) -> FsResult<SlotStore> {
        let dir = root.join("slots");
        if !dir.exists() {
            fs::create_dir_all(&dir)?;
            File::open(root)?.sync_all()?;
        }
        let mut classes = Vec::new();
        let mut size = MIN_SLOT;
        while size <= MAX_SLOT {
            classes.push(open_class(&dir, size)?);
            size *= 2;
        }
        let mut index = Index::default();
        for (c, class) in classes.iter().enumerate() {
            let mut space = class.space.lock().expect("slot space");
            prefetch_starts(class, 0, space.slots);
            for slot in 0..space.slots {
                if slot % PREFETCH_SLOTS == 0 {
                    prefetch_starts(class, slot + PREFETCH_SLOTS, space.slots);
                }
                let start = read_slot_start(class, slot);
                match ShardHeader::parse(&mut &start[..], &class.path).ok() {
                    Some(header) if !index.held.contains_key(&header.key) => {
                        let slotted = Slotted {
                            class: c,
                            slot,
                            header: Arc::new(header),
                            written: index.opened,
                        };
                        index.held.insert(slotted.header.key, slotted);
                    }
                    Some(header) => {
                        // Two slots naming one shard: keep the first; the other stays out of
                        // use until a restart finds the first gone.
                        tracing::warn!(block = %header.key.block, index = header.key.index,
                            file = %class.path.display(), slot, "a second slot holds this shard");
                    }
                    None => match crate::store::key_of_damaged_header(&start) {
                        Some(key) if !index.held.contains_key(&key) => {
                            tracing::warn!(block = %key.block, index = key.index,
                                file = %class.path.display(), slot, "a slot's shard header is damaged");
                            index.damaged.insert(key, (c, slot));
                        }
                        Some(_) => {}
                        None if is_hole(class, slot) => {
                            space.holes.insert(slot);
                        }
                        None => {
                            space.free.insert(slot);
                        }
                    },
                }
            }
            // Free slots from before they were given back: at the end, then elsewhere.
            shrink(class, &mut space);
            punch_beyond_reserve(class, &mut space);
        }
        Ok(SlotStore {
            classes,
            index: Mutex::new(index),
            idle: Condvar::new(),
        })
    }

    /// Whether a shard whose file bytes, padded for O_DIRECT, are `padded_len` goes in a slot.
    pub fn fits(padded_len: usize) -> bool {
        padded_len as u64 <= MAX_SLOT
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `key` is not being written or deleted, and marks it busy.
    fn claim(&self, key: &ShardKey) -> std::sync::MutexGuard<'_, Index> {
        let mut index = self.index();
        while index.busy.contains(key) {
            index = self.idle.wait(index).unwrap_or_else(|e| e.into_inner());
        }
        index.busy.insert(*key);
        index
    }

    fn release(&self, key: &ShardKey, stored: Option<Slotted>) {
        let mut index = self.index();
        index.busy.remove(key);
        if let Some(slotted) = stored {
            index.held.insert(*key, slotted);
        }
        drop(index);
        self.idle.notify_all();
    }

    /// The slot holding `key`, if any.
    pub fn lookup(&self, key: &ShardKey) -> Option<Slotted> {
        self.index().held.get(key).cloned()
    }

    /// The slot of a shard whose header was found damaged at start, for messages; `None` when
    /// `key` is not one.
    pub fn damaged(&self, key: &ShardKey) -> Option<PathBuf> {
        let index = self.index();
        let &(class, slot) = index.damaged.get(key)?;
        Some(PathBuf::from(format!(
            "{} slot {slot}",
            self.classes[class].path.display()
        )))
    }

    /// Every shard held, damaged ones too, with when it was stored (damaged ones: when the
    /// store was opened).
    pub fn list(&self) -> Vec<(ShardKey, SystemTime)> {
        let index = self.index();
        let opened = index.opened;
        let good = index.held.values().map(|s| (s.header.key, s.written));
        good.chain(index.damaged.keys().map(|k| (*k, opened)))
            .collect()
    }

    /// Shards held and their bytes as shard files would count them.
    pub fn usage(&self) -> (u64, u64) {
        let index = self.index();
        let bytes = index.held.values().map(|s| s.header.file_len()).sum();
        (index.held.len() as u64, bytes)
    }

    /// Stores `padded` (a shard's header and data, padded to 4 KiB; at most [`MAX_SLOT`]
    /// bytes) durably in a free slot, unless a shard is already held under its key.
    pub fn put(&self, header: Arc<ShardHeader>, padded: &[u8]) -> FsResult<Put> {
        let key = header.key;
        let index = self.claim(&key);
        if index.held.contains_key(&key) || index.damaged.contains_key(&key) {
            drop(index);
            self.release(&key, None);
            return Ok(Put::AlreadyHeld);
        }
        drop(index);
        let stored = self.write(header, padded);
        match stored {
            Ok(slotted) => {
                self.release(&key, Some(slotted));
                Ok(Put::Stored)
            }
            Err(e) => {
                self.release(&key, None);
                Err(e)
            }
        }
    }

    fn write(&self, header: Arc<ShardHeader>, padded: &[u8]) -> FsResult<Slotted> {
        let len = padded.len() as u64;
        let c = self
            .classes
            .iter()
            .position(|class| class.size >= len)
            .ok_or_else(|| FsError::invalid(format!("{len} bytes do not fit in a slot")))?;
        let class = &self.classes[c];
        let slot = take_slot(class)?;
        let written = write_slot(class, slot, padded).and_then(|()| sync(class));
        if let Err(e) = written {
            // The slot may hold part of this shard: its header or data fail their checksums,
            // so it reads as free at the next start; meanwhile it is reused like any other.
            class.space.lock().expect("slot space").free.insert(slot);
            return Err(e);
        }
        Ok(Slotted {
            class: c,
            slot,
            header,
            written: SystemTime::now(),
        })
    }

    /// Deletes the shard held under `key`, damaged or not.
    pub fn delete(&self, key: &ShardKey) -> FsResult<Deleted> {
        let mut index = self.claim(key);
        let (class, slot, found) = if let Some(slotted) = index.held.remove(key) {
            (slotted.class, slotted.slot, Deleted::Shard(slotted))
        } else if let Some((class, slot)) = index.damaged.remove(key) {
            (class, slot, Deleted::Damaged)
        } else {
            drop(index);
            self.release(key, None);
            return Ok(Deleted::None);
        };
        drop(index);
        let file = &self.classes[class];
        match free_slot(file, slot) {
            Ok(hole) => {
                let mut space = file.space.lock().expect("slot space");
                if hole {
                    space.holes.insert(slot);
                } else {
                    space.free.insert(slot);
                }
                shrink(file, &mut space);
                drop(space);
                self.release(key, None);
                Ok(found)
            }
            Err(e) => {
                // Still on disk: it stays held, and the delete can be tried again.
                match found {
                    Deleted::Shard(slotted) => self.release(key, Some(slotted)),
                    _ => {
                        self.index().damaged.insert(*key, (class, slot));
                        self.release(key, None);
                    }
                }
                Err(e)
            }
        }
    }

    /// Reads `buf.len()` bytes at `offset` within the slot of `slotted`.
    pub fn read(&self, slotted: &Slotted, offset: u64, buf: &mut [u8]) -> FsResult<()> {
        let class = &self.classes[slotted.class];
        class
            .file
            .read_exact_at(buf, slotted.slot * class.size + offset)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => FsError::Corrupt(format!(
                    "{}: slot {} is cut short",
                    class.path.display(),
                    slotted.slot
                )),
                _ => e.into(),
            })
    }

    /// Reads like [`SlotStore::read`] only what the page cache holds (`RWF_NOWAIT`); `None`
    /// when some is not there.
    pub fn read_cached(&self, slotted: &Slotted, offset: u64, len: usize) -> Option<Vec<u8>> {
        let class = &self.classes[slotted.class];
        crate::cached_read::read_cached(&class.file, slotted.slot * class.size + offset, len)
    }

    /// Reads the slot's header from disk again (for verification), checking it names `key`.
    pub fn read_header(&self, slotted: &Slotted) -> FsResult<ShardHeader> {
        let class = &self.classes[slotted.class];
        let mut bytes = vec![0u8; CLEAR_BYTES.min(class.size as usize)];
        self.read(slotted, 0, &mut bytes)?;
        let header = ShardHeader::parse(&mut &bytes[..], &self.describe(slotted))?;
        if header.key != slotted.header.key {
            return Err(FsError::Corrupt(format!(
                "{}: header names another shard",
                self.describe(slotted).display()
            )));
        }
        Ok(header)
    }

    /// The file holding the slot of `slotted` (named in checksum errors).
    pub fn file_of(&self, slotted: &Slotted) -> &Path {
        &self.classes[slotted.class].path
    }

    /// The slot's file and number, for messages.
    pub fn describe(&self, slotted: &Slotted) -> PathBuf {
        let class = &self.classes[slotted.class];
        PathBuf::from(format!("{} slot {}", class.path.display(), slotted.slot))
    }

    /// Where a slot's bytes are on disk: its file and offset (for tests that damage them).
    pub fn location(&self, slotted: &Slotted) -> (PathBuf, u64) {
        let class = &self.classes[slotted.class];
        (class.path.clone(), slotted.slot * class.size)
    }
}

fn open_class(dir: &Path, size: u64) -> FsResult<Class> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(format!("slots-{}k", size >> 10));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    let len = file.metadata()?.len();
    // A file cut short in the middle of a slot (a crash while it grew) loses the partial slot.
    let slots = len / size;
    let direct = OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(&path)
        .ok();
    Ok(Class {
        size,
        path,
        file,
        direct,
        space: Mutex::new(Space {
            slots,
            ..Space::default()
        }),
    })
}

/// Asks the kernel to read the starts of [`PREFETCH_SLOTS`] slots from `from` (up to `end`)
/// in the background, so that the scan's reads find them in memory: many reads in flight at
/// once rather than one at a time. A cold scan of 60,000 slots of 8 KiB took 2.5 s reading
/// one at a time, 0.4 s so.
fn prefetch_starts(class: &Class, from: u64, end: u64) {
    let len = std::num::NonZeroU64::new(CLEAR_BYTES as u64);
    for slot in from..(from + PREFETCH_SLOTS).min(end) {
        // Only advice: a refusal leaves the reads to do the work.
        let _ = rustix::fs::fadvise(
            &class.file,
            slot * class.size,
            len,
            rustix::fs::Advice::WillNeed,
        );
    }
}

/// The first bytes of a slot, where a shard's header would be (empty when unreadable: a
/// free slot).
fn read_slot_start(class: &Class, slot: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; CLEAR_BYTES.min(class.size as usize)];
    match class.file.read_exact_at(&mut bytes, slot * class.size) {
        Ok(()) => bytes,
        Err(_) => Vec::new(),
    }
}

/// Frees the slot of a deleted shard, durably: cleared while fewer than a growth's worth of
/// written free slots are kept, punched out beyond that (cleared where punching is refused).
/// Gives whether the slot is now a hole.
fn free_slot(class: &Class, slot: u64) -> FsResult<bool> {
    let reserve_full = class.space.lock().expect("slot space").free.len() as u64 >= growth(class);
    if !reserve_full {
        return clear_slot(class, slot).map(|()| false);
    }
    punch(class, slot, 1).map(|()| true).or_else(|e| {
        tracing::debug!(file = %class.path.display(), slot, "punching a hole failed: {e}");
        clear_slot(class, slot).map(|()| false)
    })
}

/// Zeroes the start of `slot` (the whole header of any slotted shard) and syncs it. Written
/// through the page cache: a later O_DIRECT write to the slot writes back and drops those
/// pages first.
fn clear_slot(class: &Class, slot: u64) -> FsResult<()> {
    class
        .file
        .write_all_at(&[0u8; CLEAR_BYTES], slot * class.size)?;
    sync(class)
}

/// Takes a free slot, growing the file by [`GROW_BYTES`] of zeros (synced, with its new
/// length) when there is none.
fn take_slot(class: &Class) -> FsResult<u64> {
    let mut space = class.space.lock().expect("slot space");
    if let Some(slot) = space.free.pop_first().or_else(|| space.holes.pop_first()) {
        return Ok(slot);
    }
    let first = space.slots;
    let added = growth(class);
    let zeros = vec![0u8; (added * class.size) as usize];
    class.file.write_all_at(&zeros, first * class.size)?;
    class.file.sync_all()?;
    space.slots += added;
    space.free.extend(first + 1..first + added);
    Ok(first)
}

/// Slots a file grows by.
fn growth(class: &Class) -> u64 {
    (GROW_BYTES / class.size).max(1)
}

/// Cuts the file's free slots at its end, keeping one growth's worth, once more than two
/// growths' worth are free there. The slots cut are free (their headers cleared and synced),
/// so a crash before or after the cut leaves the same shards; a read of a shard deleted
/// meanwhile finds its slot gone, which means the shard is gone.
fn shrink(class: &Class, space: &mut Space) {
    let keep = growth(class);
    let free_at_end = (0..space.slots)
        .rev()
        .take_while(|&slot| space.is_free(slot))
        .count() as u64;
    if free_at_end <= 2 * keep {
        return;
    }
    let slots = space.slots - (free_at_end - keep);
    let cut = class
        .file
        .set_len(slots * class.size)
        .and_then(|()| class.file.sync_all());
    if let Err(e) = cut {
        // The file may or may not be cut; either way those slots are free, and a growth
        // writes them again.
        tracing::warn!(file = %class.path.display(), "cutting free slots off failed: {e}");
    }
    space.free.split_off(&slots);
    space.holes.split_off(&slots);
    space.slots = slots;
}

/// Gives the blocks of the free slots beyond the reserve (the lowest growth's worth stays
/// written) back to the file system, and syncs the file once.
fn punch_beyond_reserve(class: &Class, space: &mut Space) {
    let beyond: Vec<u64> = space
        .free
        .iter()
        .skip(growth(class) as usize)
        .copied()
        .collect();
    let mut punched = Vec::new();
    for run in beyond.chunk_by(|a, b| a + 1 == *b) {
        if let Err(e) = punch_unsynced(class, run[0], run.len() as u64) {
            tracing::debug!(file = %class.path.display(), "punching holes failed: {e}");
            return;
        }
        punched.extend_from_slice(run);
    }
    if punched.is_empty() {
        return;
    }
    if let Err(e) = class.file.sync_all() {
        // Holes or zeros, those slots read as free either way.
        tracing::warn!(file = %class.path.display(), "syncing punched holes failed: {e}");
    }
    for slot in punched {
        space.free.remove(&slot);
        space.holes.insert(slot);
    }
}

/// Gives the blocks of `count` free slots from `first` back to the file system, and syncs
/// that: a hole reads as zeros, as a cleared slot does.
fn punch(class: &Class, first: u64, count: u64) -> FsResult<()> {
    punch_unsynced(class, first, count)?;
    class.file.sync_all()?;
    Ok(())
}

fn punch_unsynced(class: &Class, first: u64, count: u64) -> FsResult<()> {
    use rustix::fs::FallocateFlags;
    let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    rustix::fs::fallocate(&class.file, mode, first * class.size, count * class.size)
        .map_err(std::io::Error::from)?;
    Ok(())
}

/// Whether `slot` has no blocks on disk (a hole punched when its shard was deleted).
fn is_hole(class: &Class, slot: u64) -> bool {
    let start = slot * class.size;
    match rustix::fs::seek(&class.file, rustix::fs::SeekFrom::Data(start)) {
        Ok(data) => data >= start + class.size,
        Err(e) => e == rustix::io::Errno::NXIO,
    }
}

/// Writes `bytes` at the start of `slot`: O_DIRECT where taken, else through the page cache.
fn write_slot(class: &Class, slot: u64, bytes: &[u8]) -> FsResult<()> {
    let at = slot * class.size;
    if let Some(direct) = &class.direct {
        match direct.write_all_at(bytes, at) {
            Ok(()) => {
                return Ok(());
            }
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {}
            Err(e) => return Err(e.into()),
        }
    }
    class.file.write_all_at(bytes, at)?;
    Ok(())
}

/// Flushes the class file's data: its length and blocks are already on disk.
fn sync(class: &Class) -> FsResult<()> {
    class.file.sync_data()?;
    Ok(())
}
