//! The metadata-server protocol: namespace, volumes, membership and file layouts.

use crate::capability::{CapabilityKey, ShardCapability};
use crate::ec::EcPolicy;
use crate::ids::{BlockId, InodeId, ServerId, Timestamp, VolumeId};
use crate::proto::chunk::ShardKey;
use serde::{Deserialize, Serialize};

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
    pub shards: Vec<ShardLocation>,
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaRequest {
    CreateVolume {
        name: String,
        policy: EcPolicy,
        block_size: u64,
        limits: VolumeLimits,
    },
    /// Changes a volume's quotas or read-only flag; answered with the updated `Volume`.
    SetVolume {
        name: String,
        change: VolumeChange,
    },
    /// Deletes a volume; `NotEmpty` if it holds anything unless `force`, which deletes its
    /// whole tree (the blocks become garbage, collected after the grace period).
    DeleteVolume {
        name: String,
        force: bool,
    },
    ListVolumes,
    /// Registers a client certificate (by fingerprint) with rights to the named volumes:
    /// (name, read-write). Admin only.
    AddClient {
        name: String,
        fingerprint: [u8; 32],
        volumes: Vec<(String, bool)>,
    },
    /// Refuses a client certificate from now on. Admin only.
    RevokeClient {
        name: String,
    },
    ListClients,
    /// Sent by chunk servers: the rights of a client certificate, `None` if it has none
    /// (unknown or revoked). Answered with `Grants`.
    ClientGrants {
        fingerprint: [u8; 32],
    },
    /// Checks one page of a volume's inodes and extents (`dfs fsck`); answered with `Fsck`.
    Fsck {
        volume: String,
        from: Option<FsckCursor>,
    },
    /// What a volume holds; answered with `Usage`.
    VolumeUsage {
        name: String,
    },
    GetVolume {
        name: String,
    },
    /// Sent by chunk servers: registers on first contact, then refreshes liveness and usage.
    Heartbeat {
        server: ServerId,
        addr: String,
        capacity: u64,
        used: u64,
        shards: u64,
    },
    ClusterStatus,
    Lookup {
        parent: InodeId,
        name: String,
    },
    GetAttr {
        ino: InodeId,
    },
    SetAttr {
        ino: InodeId,
        set: SetAttr,
    },
    /// Creates a file, directory, FIFO, socket or device node; `Exists` if the name is taken.
    MakeNode {
        parent: InodeId,
        name: String,
        kind: FileKind,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
    },
    Symlink {
        parent: InodeId,
        name: String,
        target: String,
        uid: u32,
        gid: u32,
    },
    Link {
        ino: InodeId,
        new_parent: InodeId,
        new_name: String,
    },
    Unlink {
        parent: InodeId,
        name: String,
    },
    Rmdir {
        parent: InodeId,
        name: String,
    },
    Rename {
        parent: InodeId,
        name: String,
        new_parent: InodeId,
        new_name: String,
        flags: u32,
    },
    ReadLink {
        ino: InodeId,
    },
    /// Lists a directory in name order, starting after `after` (the resume cookie).
    ReadDir {
        dir: InodeId,
        after: Option<String>,
        limit: u32,
        with_attrs: bool,
    },
    StatFs {
        ino: InodeId,
    },
    GetXattr {
        ino: InodeId,
        name: String,
    },
    SetXattr {
        ino: InodeId,
        name: String,
        value: Vec<u8>,
        flags: u32,
    },
    ListXattr {
        ino: InodeId,
    },
    RemoveXattr {
        ino: InodeId,
        name: String,
    },
    /// Reserves a new block for `ino` and places its shards on distinct live servers.
    AllocateBlock {
        ino: InodeId,
    },
    /// A shard write failed: place that shard index of an uncommitted block elsewhere.
    ReplaceShard {
        block: BlockId,
        index: u8,
        failed: ServerId,
    },
    /// Makes written blocks visible in one transaction, in order (later extents win), and grows
    /// the size to cover them. With `append`, the extents' offsets count from the file's end
    /// at commit time, so appends from several clients never overwrite each other.
    CommitWrite {
        ino: InodeId,
        extents: Vec<NewExtent>,
        mtime: Timestamp,
        append: bool,
    },
    GetLayout {
        ino: InodeId,
        offset: u64,
        len: u64,
    },
    /// Takes, changes or drops (`LockKind::Unlock`) a byte-range lock with POSIX semantics;
    /// `Locked` if another owner holds a conflicting one. Locks live in the metadata server's
    /// memory, held for the session's lease.
    SetLock {
        ino: InodeId,
        owner: LockOwner,
        range: LockRange,
        kind: LockKind,
        /// The owner will wait for the lock (F_SETLKW, flock without LOCK_NB): on a conflict
        /// the server records whom it waits for, and answers `Deadlock` instead of `Locked`
        /// when the wait would close a cycle of waiters, across every client.
        wait: bool,
        /// The client believes its session holds locks. If the server does not know the
        /// session (its lease ran out, or the server restarted), those locks are gone and
        /// maybe held by others: the request fails with `LocksLost` instead of quietly
        /// starting a new session.
        holding: bool,
    },
    /// The owner stopped waiting for a lock (interrupted, or its file closed).
    CancelLockWait {
        owner: LockOwner,
    },
    /// The first lock of another owner that would conflict with this one, if any.
    TestLock {
        ino: InodeId,
        owner: LockOwner,
        range: LockRange,
        kind: LockKind,
    },
    /// Drops every lock of `owner` on `ino` (a close), or of the whole session if `ino` is None.
    ReleaseLocks {
        ino: Option<InodeId>,
        owner: LockOwner,
    },
    /// Keeps a client session's locks alive for another lease period; `LocksLost` if the
    /// server no longer knows the session (its locks are gone).
    RenewSession {
        session: u64,
    },
    /// A chunk server found shard `key` corrupt (and removed it): the block no longer has it.
    ReportBadShard {
        server: ServerId,
        key: ShardKey,
    },
    /// Repair rebuilt shard `key` on `to`: move the placement there if it is still on `from`.
    MoveShard {
        key: ShardKey,
        from: ServerId,
        to: ServerId,
    },
    /// Garbage collection: forget blocks that no extent refers to (still so when applied).
    DropBlocks {
        blocks: Vec<BlockId>,
    },
    /// Sent by a chunk server: which of these shards it holds are not (or no longer) its to
    /// keep. Answered with `StaleShards`.
    CheckShards {
        server: ServerId,
        keys: Vec<ShardKey>,
    },
    RepairStatus,
    /// Starts (or with `drain: false` cancels) moving every shard off a server; placement
    /// avoids it meanwhile.
    DrainServer {
        server: ServerId,
        drain: bool,
    },
    /// Starts moving shards toward even counts per server (the repair service does it, at its
    /// rate, once nothing is lost or draining).
    Rebalance,
    /// Forgets a server that is down and holds no shard the cluster places on it.
    RemoveServer {
        server: ServerId,
    },
    /// Sent by the metadata server to itself: deletes duplicate-request records of clients
    /// that went away long ago.
    ExpireCalls,
    /// Sent by the metadata server to itself when a chunk server first registers: binds the
    /// server id to the fingerprint of the certificate it presented.
    BindServer {
        server: ServerId,
        fingerprint: [u8; 32],
    },
    /// The members of the metadata group and their log positions; answered with `MetaGroup`.
    MetaStatus,
    /// Adds the metadata server at `addr` (started with `--join`) to the group: it catches up
    /// as a learner, then votes. Answered with `MetaGroup`.
    MetaAdd {
        addr: String,
    },
    /// Removes member `id` from the group. Answered with `MetaGroup`.
    MetaRemove {
        id: u64,
    },
    /// A digest of this member's replicated state and the log entry it has applied up to;
    /// answered by any member, with `Digest`. Members at the same entry must agree.
    MetaDigest,
    /// Which member of the metadata group leads, as the one asked knows; answered with
    /// `Leader`. Anyone may ask.
    Leader,
    /// A message between members of the metadata group; `len` bytes of it follow the frame.
    /// Only metadata servers may send it. Answered with `Peer`, its reply's bytes after it.
    Peer {
        rpc: PeerRpc,
        len: u64,
    },
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaReply {
    Done,
    Volume(VolumeInfo),
    Volumes(Vec<VolumeInfo>),
    Cluster(ClusterStatus),
    Attr(Attr),
    Target(String),
    Dir(DirPage),
    StatFs(StatFs),
    Xattr(Vec<u8>),
    XattrNames(Vec<String>),
    Placement(BlockPlacement),
    Shard(ShardLocation),
    Layout(Layout),
    Lock(Option<LockConflict>),
    StaleShards(Vec<ShardKey>),
    Repair(RepairProgress),
    Usage(VolumeUsage),
    Clients(Vec<ClientInfo>),
    Grants(Option<Vec<VolumeGrant>>),
    Fsck(FsckPage),
    /// The blocks a `DropBlocks` really forgot (the others gained a reference meanwhile).
    Dropped(Vec<BlockId>),
    /// A `CommitWrite` applied: the file's attributes just before and just after it, in the
    /// same transaction, so a client can tell whether anyone else changed the file since it
    /// last looked (as NFS's weak cache consistency does).
    Committed {
        before: Attr,
        after: Attr,
    },
    /// The answer to a chunk server's heartbeat: the key that checks shard capabilities.
    Registered {
        capability_key: CapabilityKey,
    },
    MetaGroup(Vec<MetaMember>),
    /// The leader's address, if one is known.
    Leader(Option<String>),
    Digest {
        member: u64,
        applied: u64,
        digest: [u8; 32],
    },
    /// The reply to a `Peer` message: `len` bytes follow the frame.
    Peer {
        len: u64,
    },
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

impl MetaRequest {
    /// The request's kind, for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            MetaRequest::CreateVolume { .. } => "CreateVolume",
            MetaRequest::SetVolume { .. } => "SetVolume",
            MetaRequest::DeleteVolume { .. } => "DeleteVolume",
            MetaRequest::ListVolumes => "ListVolumes",
            MetaRequest::AddClient { .. } => "AddClient",
            MetaRequest::RevokeClient { .. } => "RevokeClient",
            MetaRequest::ListClients => "ListClients",
            MetaRequest::ClientGrants { .. } => "ClientGrants",
            MetaRequest::VolumeUsage { .. } => "VolumeUsage",
            MetaRequest::Fsck { .. } => "Fsck",
            MetaRequest::GetVolume { .. } => "GetVolume",
            MetaRequest::Heartbeat { .. } => "Heartbeat",
            MetaRequest::ClusterStatus => "ClusterStatus",
            MetaRequest::Lookup { .. } => "Lookup",
            MetaRequest::GetAttr { .. } => "GetAttr",
            MetaRequest::SetAttr { .. } => "SetAttr",
            MetaRequest::MakeNode { .. } => "MakeNode",
            MetaRequest::Symlink { .. } => "Symlink",
            MetaRequest::Link { .. } => "Link",
            MetaRequest::Unlink { .. } => "Unlink",
            MetaRequest::Rmdir { .. } => "Rmdir",
            MetaRequest::Rename { .. } => "Rename",
            MetaRequest::ReadLink { .. } => "ReadLink",
            MetaRequest::ReadDir { .. } => "ReadDir",
            MetaRequest::StatFs { .. } => "StatFs",
            MetaRequest::GetXattr { .. } => "GetXattr",
            MetaRequest::SetXattr { .. } => "SetXattr",
            MetaRequest::ListXattr { .. } => "ListXattr",
            MetaRequest::RemoveXattr { .. } => "RemoveXattr",
            MetaRequest::AllocateBlock { .. } => "AllocateBlock",
            MetaRequest::ReplaceShard { .. } => "ReplaceShard",
            MetaRequest::CommitWrite { .. } => "CommitWrite",
            MetaRequest::GetLayout { .. } => "GetLayout",
            MetaRequest::SetLock { .. } => "SetLock",
            MetaRequest::CancelLockWait { .. } => "CancelLockWait",
            MetaRequest::TestLock { .. } => "TestLock",
            MetaRequest::ReleaseLocks { .. } => "ReleaseLocks",
            MetaRequest::RenewSession { .. } => "RenewSession",
            MetaRequest::ReportBadShard { .. } => "ReportBadShard",
            MetaRequest::MoveShard { .. } => "MoveShard",
            MetaRequest::DropBlocks { .. } => "DropBlocks",
            MetaRequest::CheckShards { .. } => "CheckShards",
            MetaRequest::RepairStatus => "RepairStatus",
            MetaRequest::DrainServer { .. } => "DrainServer",
            MetaRequest::Rebalance => "Rebalance",
            MetaRequest::RemoveServer { .. } => "RemoveServer",
            MetaRequest::ExpireCalls => "ExpireCalls",
            MetaRequest::BindServer { .. } => "BindServer",
            MetaRequest::MetaStatus => "MetaStatus",
            MetaRequest::MetaAdd { .. } => "MetaAdd",
            MetaRequest::MetaRemove { .. } => "MetaRemove",
            MetaRequest::Peer { .. } => "Peer",
            MetaRequest::Leader => "Leader",
            MetaRequest::MetaDigest => "MetaDigest",
        }
    }

    /// Whether the request changes durable state, and so carries a [`CallId`] that makes its
    /// retries exactly-once. Locks live in memory and do not.
    pub fn is_mutation(&self) -> bool {
        use MetaRequest as R;
        match self {
            R::CreateVolume { .. }
            | R::SetVolume { .. }
            | R::DeleteVolume { .. }
            | R::AddClient { .. }
            | R::RevokeClient { .. }
            | R::Heartbeat { .. }
            | R::SetAttr { .. }
            | R::MakeNode { .. }
            | R::Symlink { .. }
            | R::Link { .. }
            | R::Unlink { .. }
            | R::Rmdir { .. }
            | R::Rename { .. }
            | R::SetXattr { .. }
            | R::RemoveXattr { .. }
            | R::AllocateBlock { .. }
            | R::ReplaceShard { .. }
            | R::CommitWrite { .. }
            | R::ReportBadShard { .. }
            | R::MoveShard { .. }
            | R::DropBlocks { .. }
            | R::DrainServer { .. }
            | R::RemoveServer { .. }
            | R::ExpireCalls
            | R::BindServer { .. } => true,
            R::ListVolumes
            | R::ListClients
            | R::ClientGrants { .. }
            | R::Fsck { .. }
            | R::GetVolume { .. }
            | R::VolumeUsage { .. }
            | R::ClusterStatus
            | R::Lookup { .. }
            | R::GetAttr { .. }
            | R::ReadLink { .. }
            | R::ReadDir { .. }
            | R::StatFs { .. }
            | R::GetXattr { .. }
            | R::ListXattr { .. }
            | R::GetLayout { .. }
            | R::SetLock { .. }
            | R::CancelLockWait { .. }
            | R::TestLock { .. }
            | R::ReleaseLocks { .. }
            | R::RenewSession { .. }
            | R::CheckShards { .. }
            | R::RepairStatus
            | R::Rebalance
            | R::MetaStatus
            | R::MetaAdd { .. }
            | R::MetaRemove { .. }
            | R::Peer { .. }
            | R::Leader
            | R::MetaDigest => false,
        }
    }
}
