//! Plain values that both the wire protocol and the metadata store hold: file kinds, limits,
//! extents, shard keys. The store embeds these (and only these) from outside its own schema, so
//! their encoding is frozen: the store's old-bytes tests fail if a change here would alter the
//! bytes of a stored record or a logged command. Requests and replies stay in [`crate::proto`]
//! and are never stored.

use crate::ids::{BlockId, Timestamp, VolumeId};
use serde::{Deserialize, Serialize};

/// A byte-range lock held on a file, as the metadata group records it: the holder (client
/// session, owner within it, pid for F_GETLK), the inclusive range, and whether it excludes
/// readers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldLock {
    pub session: u64,
    pub owner: u64,
    pub pid: u32,
    pub start: u64,
    pub end: u64,
    pub write: bool,
}

/// Which shard: block and index (0..k data, k..k+m parity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardKey {
    pub block: BlockId,
    pub index: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// A time to set: the server's clock, or a given value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeSet {
    Now,
    At(Timestamp),
}

/// Fields of a setattr; `None` leaves a field unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
}

/// What an administrator allows a volume; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeLimits {
    /// Most bytes of regular-file sizes (as `du --apparent-size` counts them).
    pub quota_bytes: Option<u64>,
    /// Most inodes, the root directory not counted.
    pub quota_inodes: Option<u64>,
    /// Every change to the volume fails with EROFS.
    pub read_only: bool,
    /// Blocks are written only with all k+m shards: with fewer chunk servers up, writes fail
    /// instead of going out degraded (with at least k+1 shards, repaired later).
    pub require_full_writes: bool,
}

/// Changes to a volume's limits; `None` leaves a field as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeChange {
    pub quota_bytes: Option<Option<u64>>,
    pub quota_inodes: Option<Option<u64>>,
    pub read_only: Option<bool>,
    pub require_full_writes: Option<bool>,
}

/// A client certificate's right to a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeGrant {
    pub volume: VolumeId,
    /// Read-write; otherwise read-only (EROFS on changes).
    pub write: bool,
}

/// `len` bytes of a file at `file_offset` are bytes `block_offset..` of `block`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub file_offset: u64,
    pub len: u64,
    pub block: BlockId,
    pub block_offset: u64,
}

/// A freshly written block made visible by a commit. `block_len` is the whole block's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewExtent {
    pub extent: Extent,
    pub block_len: u64,
    /// Bit i set: the writer could not store shard i. The commit records those shards as
    /// missing, so the block shows as degraded and is repaired, instead of naming a server
    /// that does not hold the shard.
    pub missing_shards: u32,
}

impl NewExtent {
    /// The extents of a new `block_len`-byte block holding the file ranges `pieces` (file
    /// offset, length) laid end to end in it, as a writer packs several runs into one block.
    pub fn packed(
        block: BlockId,
        block_len: u64,
        missing_shards: u32,
        pieces: impl IntoIterator<Item = (u64, u64)>,
    ) -> Vec<NewExtent> {
        let mut block_offset = 0;
        pieces
            .into_iter()
            .map(|(file_offset, len)| {
                let extent = Extent {
                    file_offset,
                    len,
                    block,
                    block_offset,
                };
                block_offset += len;
                NewExtent {
                    extent,
                    block_len,
                    missing_shards,
                }
            })
            .collect()
    }
}
