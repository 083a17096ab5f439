//! The metadata-server protocol: namespace, volumes, membership and file layouts.

use crate::capability::{CapabilityKey, ShardCapability};
use crate::ec::EcPolicy;
use crate::ids::{BlockId, InodeId, ServerId, Timestamp, VolumeId};
use serde::{Deserialize, Serialize};

pub mod req;
pub use req::{MetaRequest, MetaRpc};

pub use crate::model::{
    Extent, FileKind, NewExtent, SetAttr, TimeSet, VolumeChange, VolumeGrant, VolumeLimits,
};

/// Attributes of an inode, as `stat` shows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub ino: InodeId,
    pub volume: VolumeId,
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub crtime: Timestamp,
    pub rdev: u32,
    /// The inode may have extended attributes. `false` is a promise that it had none when the
    /// reply was made, so a client can answer `getxattr` (asked by the kernel before writes
    /// and by `ls -l` for every entry) without a round trip.
    pub has_xattrs: bool,
}

/// `rename` flags, with Linux's values.
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

/// `setxattr` flags, with Linux's values.
pub const XATTR_CREATE: u32 = 1;
pub const XATTR_REPLACE: u32 = 2;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub id: VolumeId,
    pub name: String,
    pub root: InodeId,
    pub policy: EcPolicy,
    pub block_size: u64,
    pub created: Timestamp,
    pub limits: VolumeLimits,
    /// Sum of the sizes of the volume's regular files, kept exactly by every mutation.
    pub used_bytes: u64,
    /// Inodes in the volume, not counting its root directory.
    pub used_inodes: u64,
}

/// A registered client certificate, as `dfs client list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub name: String,
    /// blake3 of the certificate's DER bytes, in hex.
    pub fingerprint: String,
    /// (volume name, read-write) for each volume that still exists.
    pub volumes: Vec<(String, bool)>,
    pub created: Timestamp,
    pub revoked: bool,
}

/// Where a volume check resumes: after this inode, or within it from this file offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckCursor {
    pub ino: InodeId,
    pub offset: u64,
}

/// Something wrong that a volume check found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckProblem {
    pub ino: InodeId,
    pub block: Option<BlockId>,
    /// Readable but short of full redundancy (repair will fix it), as opposed to damage.
    pub degraded: bool,
    pub what: String,
}

/// One page of a volume check: what was checked, what is wrong, and the blocks met (with
/// where their shards are, for a deep check of their checksums).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckPage {
    pub inodes: u64,
    pub files: u64,
    pub extents: u64,
    pub blocks: Vec<BlockInfo>,
    pub problems: Vec<FsckProblem>,
    /// Where the next page starts; `None` when the volume is done.
    pub next: Option<FsckCursor>,
}

/// What a volume holds, counted from the metadata (`dfs volume info`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeUsage {
    pub files: u64,
    pub directories: u64,
    /// Symlinks, FIFOs, sockets and device nodes.
    pub other: u64,
    /// Sum of file sizes.
    pub bytes: u64,
    /// Committed, referenced blocks, their data bytes, and how many have shards on servers
    /// that are down (or missing).
    pub blocks: u64,
    pub block_bytes: u64,
    pub degraded_blocks: u64,
    /// Of those, blocks kept in the metadata store (no shards), and their bytes.
    pub inline_blocks: u64,
    pub inline_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub ino: InodeId,
    pub kind: FileKind,
    /// Present when the listing asked for attributes (readdirplus).
    pub attr: Option<Attr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirPage {
    pub entries: Vec<DirEntry>,
    /// More entries follow the last one returned.
    pub more: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatFs {
    /// The cluster's raw capacity, or the volume's byte quota where that is smaller.
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// The volume's inode quota, or its usage plus 2^32 when it has none.
    pub total_inodes: u64,
    pub free_inodes: u64,
    pub block_size: u64,
}

/// A chunk server as the cluster sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub id: ServerId,
    pub addr: String,
    pub up: bool,
    pub capacity: u64,
    pub used: u64,
    pub shards: u64,
    /// Seconds since the last heartbeat, if one was seen since the metadata server started.
    pub last_seen_secs: Option<u64>,
    /// Being drained: placement avoids it and repair moves its shards away.
    pub draining: bool,
    /// Shards the metadata server places on it, as of the repair service's last scan.
    pub placed: u64,
}

impl ServerStatus {
    /// The state as tables and the status page show it.
    pub fn state(&self) -> &'static str {
        match (self.up, self.draining) {
            (true, false) => "up",
            (true, true) => "draining",
            (false, false) => "down",
            (false, true) => "down, draining",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub servers: Vec<ServerStatus>,
    pub volumes: u64,
    pub inodes: u64,
    pub blocks: u64,
    /// Committed, referenced blocks by redundancy, as of the repair service's last scan.
    pub health: BlockHealth,
    pub repair: RepairProgress,
}

/// Blocks by how many of their shards sit on live servers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHealth {
    /// Every shard on a live server.
    pub healthy: u64,
    /// Shards lost, still readable (at least k left): queued for repair.
    pub degraded: u64,
    /// Fewer than k shards left: unreadable until servers come back.
    pub unavailable: u64,
    /// Written but not yet committed (or abandoned by a client, until collected).
    pub pending: u64,
    /// Unreferenced blocks waiting for garbage collection.
    pub garbage: u64,
}

/// What the repair service has done since the metadata server started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairProgress {
    /// Shards rebuilt, and their bytes.
    pub shards_done: u64,
    pub bytes_done: u64,
    /// Shards still to rebuild, as of the last scan.
    pub shards_left: u64,
    /// Rebuilds that failed (retried on a later scan).
    pub failures: u64,
    /// Wall-clock milliseconds spent rebuilding (for the rate).
    pub busy_ms: u64,
    /// Blocks and bytes freed by garbage collection.
    pub blocks_collected: u64,
    /// Scans completed.
    pub scans: u64,
    /// A rebalance is under way.
    pub rebalancing: bool,
}

/// Where a shard lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardLocation {
    pub server: ServerId,
    pub addr: String,
    /// Whether the server was heartbeating when the reply was made; readers skip servers that
    /// are down instead of waiting for them to time out.
    pub up: bool,
    /// In placements: the permission to store this shard there.
    pub cap: Option<ShardCapability>,
}

/// A block handed out for writing, with one server per shard index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockPlacement {
    pub block: BlockId,
    pub volume: VolumeId,
    pub policy: EcPolicy,
    pub shards: Vec<ShardLocation>,
    /// Shards that must be stored for the block to be committed: k+m, or k+1 where the
    /// volume allows degraded writes.
    pub min_shards: u8,
}

/// A committed block as a reader needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockInfo {
    pub block: BlockId,
    pub len: u64,
    pub policy: EcPolicy,
    /// One per shard index; none for a block kept inline.
    pub shards: Vec<ShardLocation>,
    /// The bytes of a block kept in the metadata store (see `WriteInline`).
    #[serde(with = "serde_bytes")]
    pub inline: Option<Vec<u8>>,
}

impl BlockInfo {
    pub fn is_inline(&self) -> bool {
        self.inline.is_some()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub size: u64,
    /// Extents overlapping the asked range, in file order; gaps read as zeros.
    pub extents: Vec<Extent>,
    pub blocks: Vec<BlockInfo>,
    /// The extents are complete from the asked offset up to here: the end of the asked range,
    /// or less when the reply hit [`MAX_LAYOUT_EXTENTS`](crate::proto::MAX_LAYOUT_EXTENTS).
    /// Beyond it nothing is known (not even holes): a reader asks again from here.
    pub complete_to: u64,
}

/// Identifies one mutation of one client, so that a retry (its reply was lost) gets the first
/// reply back instead of being applied twice. A client numbers its mutations; it keeps the
/// number of a mutation across its retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CallId {
    /// Random per client instance (a mount, a CLI run).
    pub client: u64,
    /// Starts at 1, one more per mutation.
    pub seq: u64,
    /// The client has every reply below this sequence number: the server may forget them.
    pub done_below: u64,
}

/// What goes over the wire to the metadata server: a request, and for a client's mutations
/// the id that makes its retries safe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaCall {
    pub id: Option<CallId>,
    pub request: MetaRequest,
}

impl MetaCall {
    /// A call without retry protection (reads, and chunk servers' idempotent reports).
    pub fn untracked(request: MetaRequest) -> MetaCall {
        MetaCall { id: None, request }
    }
}

/// [`MetaCall`] with a borrowed request: encodes to the same bytes, without cloning the
/// request for every attempt.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct MetaCallRef<'a> {
    pub id: Option<CallId>,
    pub request: &'a MetaRequest,
}

/// The messages members of the metadata group exchange; their contents travel as raw bytes
/// after the frame, so the protocol stays apart from the consensus library's types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
    /// Asks a server started with `--join` to become a member: it answers with its member id.
    Join,
}

/// Who holds a lock: a client session (one per mount, random) and the owner within it (the
/// kernel's lock owner: a process's file table for fcntl locks, an open file for flock).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LockOwner {
    pub session: u64,
    pub owner: u64,
    /// The locking process, reported to others that test for a conflict.
    pub pid: u32,
}

/// Bytes `start..=end` of a file; `end == u64::MAX` reaches past any end of file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRange {
    pub start: u64,
    pub end: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockKind {
    Read,
    Write,
    Unlock,
}

/// A lock that stands in the way, as `TestLock` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockConflict {
    pub range: LockRange,
    pub kind: LockKind,
    pub pid: u32,
}

/// The reply to a request that makes a name (`MakeNode`, `Symlink`, `Link`): the node it
/// names, and its directory just after. The kernel asks for a directory's attributes again
/// after every change to it; with them at hand, the mount answers without asking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Made {
    pub attr: Attr,
    pub dir: Attr,
}

/// The reply to an `UnlinkOrHide`: what became of the name's inode, and the directory just
/// after. The inode's links left tell the caller whether its cached attributes of that one
/// inode are stale, so it need not drop every file's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub victim: InodeId,
    /// Links the inode has left (0: it is gone, unless hidden).
    pub links: u32,
    /// The hidden name the file now has, when it was the last link of a file the caller has
    /// open.
    pub hidden: Option<String>,
    pub dir: Attr,
}

/// The reply to an `OpenAttr`: the file's attributes, and whether the caller holds an open
/// delegation of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opened {
    pub attr: Attr,
    pub delegated: bool,
    /// The change feed's id and position just before the attributes were read: they show
    /// every change the feed holds before that position (see [`ChangePage`]).
    pub feed_at: (u64, u64),
}

/// The reply to a `Move`: the attributes of the directories it changed, just after it (one
/// directory, or the source's then the target's), the inodes whose own attributes it changed
/// (the one moved, and the one replaced or exchanged, if any), and the attributes of those
/// of them that still exist, read just after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    pub dirs: Vec<Attr>,
    pub touched: Vec<InodeId>,
    pub attrs: Vec<Attr>,
}

/// The reply to a `CommitWrite`: the file's attributes just before and just after it, in the
/// same transaction, so a client can tell whether anyone else changed the file since it last
/// looked (as NFS's weak cache consistency does).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub before: Attr,
    pub after: Attr,
}

/// The reply to a chunk server's heartbeat: the key that checks shard capabilities.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub capability_key: CapabilityKey,
}

/// A member's digest of its replicated state, at the log entry it has applied up to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub member: u64,
    pub applied: u64,
    pub digest: [u8; 32],
}

/// The reply to a `Peer` message: `len` bytes follow the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReply {
    pub len: u64,
}

/// What a mount must drop from its caches because another client changed the namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Invalidation {
    /// The name `name` in directory `parent` now points elsewhere, or nowhere, or somewhere
    /// where it pointed nowhere before.
    Entry { parent: InodeId, name: String },
    /// The inode's attributes changed; with `data`, its contents too.
    Inode { ino: InodeId, data: bool },
}

/// The answer to `WatchChanges`: what changed in the volume after the position asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangePage {
    /// The feed's identity: a new leader (or a restarted server) starts a new feed.
    pub feed: u64,
    /// Where the next call continues.
    pub next: u64,
    /// What other clients changed.
    pub changes: Vec<Invalidation>,
    /// Changes were missed: the position asked is from another feed, or so old the server no
    /// longer holds what followed it. The caller drops everything it caches.
    pub missed: bool,
}

/// A member of the metadata group, as `dfs meta status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaMember {
    pub id: u64,
    pub addr: String,
    /// leader, follower, candidate or learner.
    pub role: String,
    /// The member answering the status call.
    pub answering: bool,
    pub term: Option<u64>,
    /// The last entry of its log, and the last applied to its store, where known (a leader
    /// knows how far each member's log matches its own; the answering member knows its own).
    pub last_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Entries its log is behind the leader's last.
    pub lag: Option<u64>,
}
