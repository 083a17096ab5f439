//! The chunk-server protocol. A request frame may be followed by raw shard bytes (`Put`), and a
//! reply frame may be followed by raw shard bytes (`Data`), on the same QUIC stream.

use crate::capability::ShardCapability;
use crate::ec::EcPolicy;
use crate::ids::{ServerId, VolumeId};
use serde::{Deserialize, Serialize};

pub use crate::model::ShardKey;

/// What a shard belongs to. Stored in the shard file's header, so placement could be rebuilt
/// from the disks alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardOwner {
    pub volume: VolumeId,
    pub policy: EcPolicy,
    /// Bytes of file data in the whole block (before padding and encoding).
    pub block_len: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkRequest {
    /// Store a shard; exactly `len` raw bytes follow the frame. Replaces nothing: storing a key
    /// that exists with different content is refused. `cap` is the metadata server's
    /// permission for exactly this shard, volume and server.
    Put {
        key: ShardKey,
        owner: ShardOwner,
        len: u64,
        cap: ShardCapability,
    },
    /// Read `len` bytes at `offset` of a shard, verified against its checksums.
    Get {
        key: ShardKey,
        offset: u64,
        len: u64,
    },
    /// Delete a shard (idempotent).
    Delete { key: ShardKey },
    /// Re-read a whole shard and check every checksum (`dfs fsck --deep`); answered with
    /// `Verified`, or an error if it is missing or corrupt.
    Verify { key: ShardKey },
    /// Identity and usage of the server.
    Info,
    /// Rebuild shard `key` from other shards of its block (any k of `sources`) and store it
    /// here. Sent by the metadata server's repair.
    Rebuild {
        key: ShardKey,
        owner: ShardOwner,
        sources: Vec<ShardSource>,
    },
    /// Start a scrub pass now (re-verify every shard), unless one is running.
    ScrubStart,
    /// Progress of the current or last scrub pass.
    ScrubStatus,
}

impl ChunkRequest {
    /// The request's kind, for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            ChunkRequest::Put { .. } => "Put",
            ChunkRequest::Get { .. } => "Get",
            ChunkRequest::Delete { .. } => "Delete",
            ChunkRequest::Verify { .. } => "Verify",
            ChunkRequest::Info => "Info",
            ChunkRequest::Rebuild { .. } => "Rebuild",
            ChunkRequest::ScrubStart => "ScrubStart",
            ChunkRequest::ScrubStatus => "ScrubStatus",
        }
    }
}

/// Where another shard of the same block can be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSource {
    pub index: u8,
    pub addr: String,
}

/// What a chunk server's scrubber has done.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubProgress {
    pub running: bool,
    /// Completed passes since the server started.
    pub passes: u64,
    /// Shards checked and bytes read in the current (or last) pass.
    pub checked: u64,
    pub bytes: u64,
    /// Shards in the store when the pass started.
    pub total: u64,
    /// Corrupt shards found since the server started (each reported; deleted once the
    /// metadata server places a repaired copy elsewhere).
    pub corrupt: u64,
    /// Shards that could not be read since the server started (an I/O error, not proven
    /// damage): left alone, tried again next pass.
    pub errors: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkReply {
    Stored,
    /// Exactly `len` raw bytes follow the frame.
    Data {
        len: u64,
    },
    Deleted {
        existed: bool,
    },
    Verified,
    Info(ChunkServerInfo),
    Scrub(ScrubProgress),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkServerInfo {
    pub id: ServerId,
    pub capacity: u64,
    pub used: u64,
    pub shards: u64,
}
