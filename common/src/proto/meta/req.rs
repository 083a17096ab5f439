//! One type per metadata request, each tied to the one type its reply has.
//!
//! A caller sends a request of type `Q` and decodes the reply as `Q::Reply`
//! ([`MetaRpc::Reply`]); the server answers each request through a handler that returns that
//! same type. A mismatch is a compile error on both sides, not a run-time check.
//!
//! On the wire a request travels as [`MetaRequest`] (one variant per type, in the order of
//! the list below), and its reply as the bare value of its reply type inside
//! `Result<_, FsError>`.

use super::{
    Attr, BlockPlacement, ChangePage, ClientInfo, Committed, Digest, DirPage, Extent, FsckCursor,
    FsckPage, Layout, LockConflict, LockKind, LockOwner, LockRange, Made, MetaMember, Moved,
    NewExtent, Opened, PeerReply, PeerRpc, Registered, Removed, RepairProgress,
    SetAttr as AttrChange, ShardLocation, StatFs as FsStats, VolumeChange, VolumeGrant, VolumeInfo,
    VolumeLimits, VolumeUsage as Usage,
};
use crate::ec::EcPolicy;
use crate::ids::{BlockId, InodeId, ServerId, Timestamp};
use crate::model::FileKind;
use crate::proto::chunk::ShardKey;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A metadata request and the type of its reply.
pub trait MetaRpc: Into<MetaRequest> {
    type Reply: Serialize + DeserializeOwned + std::fmt::Debug + Send + 'static;
}

/// Declares the requests: the wire enum, its names, which requests change durable state, and
/// each request's reply type.
macro_rules! meta_requests {
    ($($name:ident => $reply:ty, $kind:ident;)*) => {
        /// A metadata request as the wire carries it.
        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        pub enum MetaRequest {
            $($name($name),)*
        }

        impl MetaRequest {
            /// The request's kind, for metrics and logs.
            pub fn name(&self) -> &'static str {
                match self {
                    $(MetaRequest::$name(_) => stringify!($name),)*
                }
            }

            /// Whether the request changes durable state, and so carries a
            /// [`CallId`](super::CallId) that makes its retries exactly-once. Locks, recorded
            /// by the server itself, do not.
            pub fn is_mutation(&self) -> bool {
                match self {
                    $(MetaRequest::$name(_) => meta_requests!(@mutation $kind),)*
                }
            }
        }

        $(
            impl MetaRpc for $name {
                type Reply = $reply;
            }

            impl From<$name> for MetaRequest {
                fn from(request: $name) -> MetaRequest {
                    MetaRequest::$name(request)
                }
            }
        )*
    };
    (@mutation mutation) => { true };
    (@mutation query) => { false };
}

meta_requests! {
    CreateVolume => VolumeInfo, mutation;
    SetVolume => VolumeInfo, mutation;
    DeleteVolume => (), mutation;
    ListVolumes => Vec<VolumeInfo>, query;
    AddClient => (), mutation;
    RevokeClient => (), mutation;
    ListClients => Vec<ClientInfo>, query;
    ClientGrants => Option<Vec<VolumeGrant>>, query;
    Fsck => FsckPage, query;
    VolumeUsage => Usage, query;
    GetVolume => VolumeInfo, query;
    Heartbeat => Registered, mutation;
    ClusterStatus => super::ClusterStatus, query;
    Lookup => Attr, query;
    GetAttr => Attr, query;
    SetAttr => Attr, mutation;
    MakeNode => Made, mutation;
    Symlink => Made, mutation;
    Link => Made, mutation;
    Unlink => Attr, mutation;
    Rmdir => Attr, mutation;
    Rename => (), mutation;
    ReadLink => String, query;
    ReadDir => DirPage, query;
    StatFs => FsStats, query;
    GetXattr => Vec<u8>, query;
    SetXattr => (), mutation;
    ListXattr => Vec<String>, query;
    RemoveXattr => (), mutation;
    AllocateBlock => BlockPlacement, mutation;
    ReplaceShard => ShardLocation, mutation;
    CommitWrite => Committed, mutation;
    GetLayout => Layout, query;
    SetLock => (), query;
    CancelLockWait => (), query;
    TestLock => Option<LockConflict>, query;
    ReleaseLocks => (), query;
    RenewSession => (), query;
    ReportBadShard => (), mutation;
    MoveShard => (), mutation;
    DropBlocks => Vec<BlockId>, mutation;
    CheckShards => Vec<ShardKey>, query;
    RepairStatus => RepairProgress, query;
    DrainServer => (), mutation;
    Rebalance => (), query;
    RemoveServer => (), mutation;
    ExpireCalls => (), mutation;
    BindServer => (), mutation;
    MetaStatus => Vec<MetaMember>, query;
    MetaAdd => Vec<MetaMember>, query;
    MetaRemove => Vec<MetaMember>, query;
    MetaDigest => Digest, query;
    Leader => Option<String>, query;
    Peer => PeerReply, query;
    WatchChanges => ChangePage, query;
    WriteInline => Committed, mutation;
    CommitIfUnchanged => Committed, mutation;
    UnlinkOrHide => Removed, mutation;
    Move => Moved, mutation;
    OpenAttr => Opened, query;
    StopWatching => (), query;
    WatchOpen => ChangePage, query;
}

impl MetaRequest {
    /// How long the server may hold the request before it answers, by design (a long poll):
    /// callers wait that long before they suspect the server.
    pub fn wait(&self) -> std::time::Duration {
        match self {
            MetaRequest::WatchChanges(q) | MetaRequest::WatchOpen(WatchOpen { watch: q, .. }) => {
                q.wait()
            }
            _ => std::time::Duration::ZERO,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateVolume {
    pub name: String,
    pub policy: EcPolicy,
    pub block_size: u64,
    pub limits: VolumeLimits,
}

/// Changes a volume's quotas or read-only flag; answered with the updated volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetVolume {
    pub name: String,
    pub change: VolumeChange,
}

/// Deletes a volume; `NotEmpty` if it holds anything unless `force`, which deletes its whole
/// tree (the blocks become garbage, collected after the grace period).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteVolume {
    pub name: String,
    pub force: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListVolumes;

/// Registers a client certificate (by fingerprint) with rights to the named volumes:
/// (name, read-write). Admin only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddClient {
    pub name: String,
    pub fingerprint: [u8; 32],
    pub volumes: Vec<(String, bool)>,
}

/// Refuses a client certificate from now on. Admin only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeClient {
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListClients;

/// Sent by chunk servers: the rights of a client certificate, `None` if it has none (unknown
/// or revoked).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientGrants {
    pub fingerprint: [u8; 32],
}

/// Checks one page of a volume's inodes and extents (`dfs fsck`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fsck {
    pub volume: String,
    pub from: Option<FsckCursor>,
}

/// What a volume holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeUsage {
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetVolume {
    pub name: String,
}

/// Sent by chunk servers: registers on first contact, then refreshes liveness and usage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub server: ServerId,
    pub addr: String,
    pub capacity: u64,
    pub used: u64,
    pub shards: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lookup {
    pub parent: InodeId,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetAttr {
    pub ino: InodeId,
}

/// A file's attributes for an open (close-to-open), with an open delegation for client
/// `origin` where the server grants one: until the server recalls it through the change feed
/// (or the feed stops answering for [`OPEN_DELEGATION_LEASE`]), another client's change to the
/// file is not acknowledged before `origin` has dropped the delegation, so `origin` may
/// reopen the file with the attributes it keeps without asking again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenAttr {
    pub ino: InodeId,
    pub origin: u64,
}

/// How long after sending a change-feed call that was answered a mount may use its open
/// delegations ([`OpenAttr`]) without another answer. The server holds a delegation longer
/// (from when the call arrived, plus a margin).
pub const OPEN_DELEGATION_LEASE: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    pub ino: InodeId,
    pub set: AttrChange,
}

/// Creates a file, directory, FIFO, socket or device node; `Exists` if the name is taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MakeNode {
    pub parent: InodeId,
    pub name: String,
    pub kind: FileKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Symlink {
    pub parent: InodeId,
    pub name: String,
    pub target: String,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub ino: InodeId,
    pub new_parent: InodeId,
    pub new_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unlink {
    pub parent: InodeId,
    pub name: String,
}

/// Most open inodes an [`UnlinkOrHide`] may name.
pub const MAX_OPEN_NAMED: usize = 1024;

/// Removes a name, as [`Unlink`] does, unless it is the last link of a regular file in `open`
/// (the files the caller has open): that file is renamed to a hidden name in the same
/// directory instead, so it lives on until its last close there (as an NFS client's "silly
/// rename", but decided by the server in one step, with no name looked up before).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlinkOrHide {
    pub parent: InodeId,
    pub name: String,
    pub open: Vec<InodeId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rmdir {
    pub parent: InodeId,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rename {
    pub parent: InodeId,
    pub name: String,
    pub new_parent: InodeId,
    pub new_name: String,
    pub flags: u32,
}

/// A [`Rename`] whose answer says what it changed ([`Moved`]): the directories' attributes
/// after it, and the inodes it moved or replaced. A client then keeps what it knows of every
/// other inode, instead of dropping all it kept because any file might have changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub rename: Rename,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadLink {
    pub ino: InodeId,
}

/// Lists a directory in name order, starting after `after` (the resume cookie).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadDir {
    pub dir: InodeId,
    pub after: Option<String>,
    pub limit: u32,
    pub with_attrs: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatFs {
    pub ino: InodeId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetXattr {
    pub ino: InodeId,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetXattr {
    pub ino: InodeId,
    pub name: String,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub flags: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListXattr {
    pub ino: InodeId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveXattr {
    pub ino: InodeId,
    pub name: String,
}

/// Reserves a new block for `ino` and places its shards on distinct live servers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocateBlock {
    pub ino: InodeId,
}

/// A shard write failed: place that shard index of an uncommitted block elsewhere.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplaceShard {
    pub block: BlockId,
    pub index: u8,
    pub failed: ServerId,
}

/// Makes written blocks visible in one transaction, in order (later extents win), and grows
/// the size to cover them. With `append`, the extents' offsets count from the file's end at
/// commit time, so appends from several clients never overwrite each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitWrite {
    pub ino: InodeId,
    pub extents: Vec<NewExtent>,
    pub mtime: Timestamp,
    pub append: bool,
}

/// Writes small data into the metadata store: one new block kept inline holding `pieces`
/// (file offset, length) laid end to end in `data`, committed at once as `CommitWrite` would
/// commit it. `data` holds at most [`MAX_INLINE_END`](crate::proto::MAX_INLINE_END) bytes,
/// and the inline blocks the file refers to afterwards at most
/// [`MAX_INLINE_PER_FILE`](crate::proto::MAX_INLINE_PER_FILE); else `TooBig`, nothing is
/// changed, and the writer stores the data in erasure-coded blocks instead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteInline {
    pub ino: InodeId,
    pub pieces: Vec<(u64, u64)>,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    pub mtime: Timestamp,
    pub append: bool,
}

/// A `CommitWrite` (never an append) that happens only if the file is still as the writer
/// last saw it: `size` bytes long, with exactly the extents `expect` from offset `from` to its
/// end. Else `Changed`, and nothing is done. A writer moving a file's inline tail into a block
/// commits the bytes it read from that tail this way, so it can never bring back bytes another
/// client has overwritten meanwhile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitIfUnchanged {
    pub ino: InodeId,
    pub extents: Vec<NewExtent>,
    pub mtime: Timestamp,
    pub size: u64,
    pub from: u64,
    pub expect: Vec<Extent>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetLayout {
    pub ino: InodeId,
    pub offset: u64,
    pub len: u64,
}

/// Takes, changes or drops (`LockKind::Unlock`) a byte-range lock with POSIX semantics;
/// `Locked` if another owner holds a conflicting one. The leader decides in memory and
/// records the change in the metadata log before it answers; a session's locks are held for
/// its lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetLock {
    pub ino: InodeId,
    pub owner: LockOwner,
    pub range: LockRange,
    pub kind: LockKind,
    /// The owner will wait for the lock (F_SETLKW, flock without LOCK_NB): on a conflict the
    /// server records whom it waits for, and answers `Deadlock` instead of `Locked` when the
    /// wait would close a cycle of waiters, across every client.
    pub wait: bool,
    /// The client believes its session holds locks. If the server does not know the session
    /// (its lease ran out), those locks are gone and maybe held by others: the request fails
    /// with `LocksLost` instead of quietly starting a new session.
    pub holding: bool,
}

/// The owner stopped waiting for a lock (interrupted, or its file closed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelLockWait {
    pub owner: LockOwner,
}

/// The first lock of another owner that would conflict with this one, if any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestLock {
    pub ino: InodeId,
    pub owner: LockOwner,
    pub range: LockRange,
    pub kind: LockKind,
}

/// Drops every lock of `owner` on `ino` (a close), or of the whole session if `ino` is None.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseLocks {
    pub ino: Option<InodeId>,
    pub owner: LockOwner,
}

/// Keeps a client session's locks alive for another lease period; `LocksLost` if the server
/// no longer knows the session (its locks are gone).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewSession {
    pub session: u64,
}

/// A chunk server found shard `key` corrupt (and removed it): the block no longer has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportBadShard {
    pub server: ServerId,
    pub key: ShardKey,
}

/// Repair rebuilt shard `key` on `to`: move the placement there if it is still on `from`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveShard {
    pub key: ShardKey,
    pub from: ServerId,
    pub to: ServerId,
}

/// Garbage collection: forget blocks that no extent refers to (still so when applied).
/// Answered with the blocks really forgotten (the others gained a reference meanwhile).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropBlocks {
    pub blocks: Vec<BlockId>,
}

/// Sent by a chunk server: which of these shards it holds are not (or no longer) its to
/// keep.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckShards {
    pub server: ServerId,
    pub keys: Vec<ShardKey>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairStatus;

/// Starts (or with `drain: false` cancels) moving every shard off a server; placement avoids
/// it meanwhile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainServer {
    pub server: ServerId,
    pub drain: bool,
}

/// Starts moving shards toward even counts per server (the repair service does it, at its
/// rate, once nothing is lost or draining).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebalance;

/// Forgets a server that is down and holds no shard the cluster places on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveServer {
    pub server: ServerId,
}

/// Sent by the metadata server to itself: deletes duplicate-request records of clients that
/// went away long ago.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpireCalls;

/// Sent by the metadata server to itself when a chunk server first registers: binds the
/// server id to the fingerprint of the certificate it presented.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindServer {
    pub server: ServerId,
    pub fingerprint: [u8; 32],
}

/// The members of the metadata group and their log positions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaStatus;

/// Adds the metadata server at `addr` (started with `--join`) to the group: it catches up as
/// a learner, then votes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaAdd {
    pub addr: String,
}

/// Removes member `id` from the group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaRemove {
    pub id: u64,
}

/// A digest of this member's replicated state and the log entry it has applied up to;
/// answered by any member. Members at the same entry must agree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaDigest;

/// Which member of the metadata group leads, as the one asked knows. Anyone may ask.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leader;

/// A message between members of the metadata group; `len` bytes of it follow the frame, and
/// the reply's bytes follow the reply. Only metadata servers may send it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub rpc: PeerRpc,
    pub len: u64,
}

/// Waits up to `wait_ms` for changes in the volume of `root` after position `after` of feed
/// `feed`, and answers with those there are (or none, when the wait ends). Mounts call it in
/// a loop to drop what they cache as soon as another client changes it. Changes made by
/// `origin` (the caller's own calls) are left out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchChanges {
    pub root: InodeId,
    pub origin: u64,
    pub feed: u64,
    pub after: u64,
    pub wait_ms: u32,
}

/// Client `origin` stops following the change feed (its mount ends): changes no longer wait
/// for it to take them, and its open delegations end at once instead of lapsing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopWatching {
    pub origin: u64,
}

/// [`WatchChanges`], telling also which files the caller has open, so the server keeps a file
/// unlinked elsewhere while it is open here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchOpen {
    pub watch: WatchChanges,
    pub report: OpenReport,
}

/// What a mount says of its open files: with `all`, `opened` is every file open, and replaces
/// what the server knew; else the files opened since the last call that was answered, and
/// those closed. At most [`MAX_OPEN_REPORTED`] in each list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenReport {
    pub all: bool,
    pub opened: Vec<InodeId>,
    pub released: Vec<InodeId>,
}

/// Most files one [`WatchOpen`] names in each list; a mount with more open reports the first
/// this many (the others may be freed if unlinked elsewhere while open).
pub const MAX_OPEN_REPORTED: usize = 65_536;

impl WatchChanges {
    /// How long the server may wait for changes before it answers.
    pub fn wait(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.wait_ms.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode_body;

    /// Requests keep the bytes they had as struct and unit variants: an index, then the
    /// fields in order.
    #[test]
    fn requests_encode_as_an_index_then_their_fields() {
        let lookup = MetaRequest::from(Lookup {
            parent: InodeId(5),
            name: "ab".into(),
        });
        assert_eq!(encode_body(&lookup).unwrap(), [13, 5, 2, b'a', b'b']);
        assert_eq!(encode_body(&MetaRequest::from(Leader)).unwrap(), [52]);
        assert_eq!(lookup.name(), "Lookup");
        assert!(!lookup.is_mutation());
        assert!(MetaRequest::from(Unlink {
            parent: InodeId(1),
            name: "x".into()
        })
        .is_mutation());
    }

    /// A reply is the bare value of the request's reply type: `()` costs nothing.
    #[test]
    fn replies_are_bare_values() {
        let done: Result<<Rename as MetaRpc>::Reply, crate::FsError> = Ok(());
        assert_eq!(encode_body(&done).unwrap(), [0]);
        let leader: Result<<Leader as MetaRpc>::Reply, crate::FsError> = Ok(None);
        assert_eq!(encode_body(&leader).unwrap(), [0, 0]);
    }

    /// Byte fields are encoded whole (`serde_bytes`), not a byte at a time, yet to the same
    /// bytes as a sequence of `u8`: what older peers sent and logs hold still decodes.
    #[test]
    fn byte_fields_encode_as_a_length_then_the_bytes() {
        let data: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let write = WriteInline {
            ino: InodeId(9),
            pieces: vec![(0, 300)],
            data: data.clone(),
            mtime: crate::Timestamp { secs: 1, nanos: 2 },
            append: false,
        };
        let as_sequence = (
            InodeId(9),
            vec![(0u64, 300u64)],
            data.clone(),
            crate::Timestamp { secs: 1, nanos: 2 },
            false,
        );
        let bytes = encode_body(&write).unwrap();
        assert_eq!(bytes, encode_body(&as_sequence).unwrap());
        assert_eq!(&bytes[6..9], &[251, 44, 1], "length 300 as a varint");
        assert_eq!(&bytes[9..309], &data[..]);
        assert_eq!(
            crate::codec::decode_body::<WriteInline>(&bytes).unwrap(),
            write
        );
        let set = SetXattr {
            ino: InodeId(3),
            name: "user.a".into(),
            value: vec![7; 3],
            flags: 0,
        };
        let plain = (InodeId(3), "user.a".to_string(), vec![7u8; 3], 0u32);
        assert_eq!(encode_body(&set).unwrap(), encode_body(&plain).unwrap());
    }
}
