//! The state machine's input and output: a [`Command`] is one entry of the metadata log, an
//! [`Outcome`] what applying it gave.
//!
//! Both are owned by the store, not by the wire protocol: a command holds everything needed to
//! apply it deterministically (the time, the servers chosen for new shards, the client's call
//! id), and only plain values from [`dfs_common::model`] besides the store's own records. They
//! are written to disk (commands in the log, outcomes in the duplicate-request table), so their
//! encoding is versioned and pinned by old-bytes tests: a new operation is a new variant at the
//! end of [`Op`], and a changed one a new format version.
//!
//! The service turns wire requests into commands ([`crate::service`]) and outcomes back into
//! wire replies; nothing here knows the wire types.

use crate::store::schema::{
    decode_body, encode_as, split_format, InodeRecord, VolumeRecord, VolumeState,
};
use dfs_common::model::{
    Extent, FileKind, HeldLock, NewExtent, SetAttr, ShardKey, VolumeChange, VolumeLimits,
};
use dfs_common::{BlockId, EcPolicy, FsError, FsResult, InodeId, ServerId, Timestamp, VolumeId};
use serde::{Deserialize, Serialize};

/// Format of an encoded [`Command`].
const COMMAND_FORMAT: u8 = 1;

/// One mutation, with everything it needs to be applied deterministically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The time the mutation takes effect; every member applies this one, never its own clock.
    pub now: Timestamp,
    /// The client's id for this mutation: a retry of it gets the first outcome back.
    pub call: Option<Call>,
    pub op: Op,
}

/// Commands that go into the log as one entry: concurrent mutations share one append, one
/// flush and one transaction. Applied in order; each has its own outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch(pub Vec<Command>);

impl Batch {
    /// About how many bytes the batch takes in the log.
    pub fn weight(&self) -> usize {
        self.0.iter().map(|c| c.op.weight()).sum()
    }
}

/// A client's mutation id (see [`crate::calls`]) and the fingerprint of its request, so that a
/// sequence number reused for another request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    /// Random per client instance (a mount, a CLI run).
    pub client: u64,
    /// One more per mutation; kept across the retries of one.
    pub seq: u64,
    /// The client has every outcome below this sequence number: they may be forgotten.
    pub done_below: u64,
    /// blake3 of the request as the client sent it.
    pub request: [u8; 32],
}

/// Every change to the metadata. Matches over it are exhaustive: a new operation cannot be
/// forgotten by the state machine, the write checks or the access rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    CreateVolume {
        name: String,
        policy: EcPolicy,
        block_size: u64,
        limits: VolumeLimits,
    },
    SetVolume {
        name: String,
        change: VolumeChange,
    },
    DeleteVolume {
        name: String,
        force: bool,
    },
    AddClient {
        name: String,
        fingerprint: [u8; 32],
        volumes: Vec<(String, bool)>,
    },
    RevokeClient {
        name: String,
    },
    /// A chunk server's address, recorded when it registers.
    RegisterServer {
        server: ServerId,
        addr: String,
    },
    /// Binds a chunk server id to the certificate it first registered with.
    BindServer {
        server: ServerId,
        fingerprint: [u8; 32],
    },
    SetAttr {
        ino: InodeId,
        set: SetAttr,
    },
    /// Makes a file, directory, FIFO, socket, device node, or (with `target`) a symlink.
    MakeNode {
        parent: InodeId,
        name: String,
        kind: FileKind,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        target: Option<String>,
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
    SetXattr {
        ino: InodeId,
        name: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        flags: u32,
    },
    RemoveXattr {
        ino: InodeId,
        name: String,
    },
    /// A new block of `ino` on these servers, one per shard index (`ServerId::NONE` where no
    /// server was left: that shard is missing from the start).
    AllocateBlock {
        ino: InodeId,
        placement: Vec<ServerId>,
    },
    /// Moves shard `index` of an uncommitted block off `failed`, to `to` (`None`: no server
    /// was left, the shard is recorded missing).
    ReplaceShard {
        block: BlockId,
        index: u8,
        failed: ServerId,
        to: Option<ServerId>,
    },
    CommitWrite {
        ino: InodeId,
        extents: Vec<NewExtent>,
        mtime: Timestamp,
        append: bool,
    },
    ReportBadShard {
        server: ServerId,
        key: ShardKey,
    },
    MoveShard {
        key: ShardKey,
        from: ServerId,
        to: ServerId,
    },
    DropBlocks {
        blocks: Vec<BlockId>,
    },
    DrainServer {
        server: ServerId,
        drain: bool,
    },
    RemoveServer {
        server: ServerId,
    },
    /// Forgets the duplicate-request records of clients that went away long ago.
    ExpireCalls,
    /// The locks of files whose locks changed, and lock sessions begun (`true`) or ended, as
    /// the leader's lock table has them: recorded, so that a new leader holds the same locks.
    SetLocks {
        files: Vec<(InodeId, Vec<HeldLock>)>,
        sessions: Vec<(u64, bool)>,
    },
    /// Small data kept in the metadata store: a new inline block holding `pieces` (file
    /// offset, length) laid end to end in `data`, committed as `CommitWrite` commits.
    WriteInline {
        ino: InodeId,
        pieces: Vec<(u64, u64)>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        mtime: Timestamp,
        append: bool,
    },
    /// As `WriteInline`, but anywhere in the file: the inline blocks the file refers to
    /// afterwards must hold at most [`MAX_INLINE_PER_FILE`](dfs_common::proto::MAX_INLINE_PER_FILE)
    /// bytes (see [`crate::inline`]).
    KeepInline {
        ino: InodeId,
        pieces: Vec<(u64, u64)>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        mtime: Timestamp,
        append: bool,
    },
    /// `CommitWrite` (not appending) if the file still has `size` bytes and exactly the extents
    /// `expect` from `from` to its end; else `Changed`.
    CommitIfUnchanged {
        ino: InodeId,
        extents: Vec<NewExtent>,
        mtime: Timestamp,
        size: u64,
        from: u64,
        expect: Vec<Extent>,
    },
    /// Removes a name, or renames it to `.dfs-hidden-<ino>-<tag>` when it is the last link of
    /// a regular file in `open` (files the caller has open).
    UnlinkOrHide {
        parent: InodeId,
        name: String,
        open: Vec<InodeId>,
        tag: u32,
    },
    /// An unlink or a rename (`Unlink`, `UnlinkOrHide` or `Rename`) that keeps a regular file
    /// losing its last name as an orphan, since a mount may have it open: no name, its usage
    /// given back, its data still readable through the open descriptors (see
    /// [`crate::orphans`]).
    KeepOrphans(Box<Op>),
    /// Frees the orphans among `inos`; any other inode is left alone.
    ReapOrphans {
        inos: Vec<InodeId>,
    },
}

/// What applying a command gave, in the store's own terms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    /// A volume as created or changed.
    Volume {
        name: String,
        record: VolumeRecord,
        state: VolumeState,
    },
    /// An inode as created, linked or changed.
    Node {
        ino: InodeId,
        record: InodeRecord,
    },
    /// A new block and where its shards go.
    Placement {
        block: BlockId,
        volume: VolumeId,
        policy: EcPolicy,
        shards: Vec<ShardAt>,
        /// Shards that must be stored for the block to be committed.
        min_shards: u8,
    },
    /// Where a replaced shard now goes.
    Shard(ShardAt),
    /// A commit: the file just before and just after it, in the same transaction.
    Committed {
        ino: InodeId,
        before: InodeRecord,
        after: InodeRecord,
    },
    /// The blocks a `DropBlocks` really forgot.
    Dropped(Vec<BlockId>),
    /// A reply recorded by a server whose duplicate-request table held wire replies (its
    /// format 1): the tagged reply's bytes. A client of this version cannot take them, so a
    /// retry that finds one gets an error. Such records expire within a day; applying a
    /// command never makes one.
    WireReply(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A name removed or hidden: its inode, the links it has left, its hidden name if any.
    Unlinked {
        victim: InodeId,
        links: u32,
        hidden: Option<String>,
    },
    /// A name moved: the inodes whose own attributes changed (the one moved, and the one it
    /// replaced or was exchanged with); none when the rename changed nothing.
    Renamed {
        touched: Vec<InodeId>,
    },
    /// What a `KeepOrphans` command's unlink or rename gave, and the files it kept as orphans.
    KeptOrphans {
        outcome: Box<Outcome>,
        orphans: Vec<InodeId>,
    },
}

/// A shard's server and its address; `ServerId::NONE` (with no address) for a missing shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardAt {
    pub server: ServerId,
    pub addr: String,
}

impl Command {
    /// A command the metadata server makes itself (repair, collection, registration).
    pub fn internal(now: Timestamp, op: Op) -> Command {
        Command {
            now,
            call: None,
            op,
        }
    }

    /// The command as the log stores it: a format byte, then bincode.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_as(COMMAND_FORMAT, self)
    }

    /// Decodes a logged command, refusing unknown formats, oversized lengths and trailing
    /// bytes.
    pub fn from_bytes(bytes: &[u8]) -> FsResult<Command> {
        match split_format(bytes)? {
            (COMMAND_FORMAT, body) => decode_body(body),
            (v, _) => Err(FsError::Corrupt(format!("unknown command format {v}"))),
        }
    }
}

impl Op {
    /// About how many bytes the operation takes in the log, to bound a batch.
    pub fn weight(&self) -> usize {
        const BASE: usize = 128;
        match self {
            Op::SetXattr { name, value, .. } => BASE + name.len() + value.len(),
            Op::CommitWrite { extents, .. } => BASE + extents.len() * 48,
            Op::WriteInline { pieces, data, .. } | Op::KeepInline { pieces, data, .. } => {
                BASE + pieces.len() * 16 + data.len()
            }
            Op::CommitIfUnchanged {
                extents, expect, ..
            } => BASE + extents.len() * 48 + expect.len() * 32,
            Op::AllocateBlock { placement, .. } => BASE + placement.len() * 8,
            Op::DropBlocks { blocks } => BASE + blocks.len() * 8,
            Op::SetLocks { files, sessions } => {
                BASE + sessions.len() * 10
                    + files.iter().map(|(_, h)| 16 + h.len() * 40).sum::<usize>()
            }
            Op::AddClient { volumes, .. } => {
                BASE + volumes.iter().map(|(n, _)| n.len() + 8).sum::<usize>()
            }
            Op::MakeNode { name, target, .. } => {
                BASE + name.len() + target.as_ref().map_or(0, String::len)
            }
            Op::Rename { name, new_name, .. } => BASE + name.len() + new_name.len(),
            Op::UnlinkOrHide { name, open, .. } => BASE + name.len() + open.len() * 8,
            Op::KeepOrphans(op) => op.weight(),
            Op::ReapOrphans { inos } => BASE + inos.len() * 8,
            _ => BASE,
        }
    }

    /// The operation's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Op::CreateVolume { .. } => "CreateVolume",
            Op::SetVolume { .. } => "SetVolume",
            Op::DeleteVolume { .. } => "DeleteVolume",
            Op::AddClient { .. } => "AddClient",
            Op::RevokeClient { .. } => "RevokeClient",
            Op::RegisterServer { .. } => "RegisterServer",
            Op::BindServer { .. } => "BindServer",
            Op::SetAttr { .. } => "SetAttr",
            Op::MakeNode { .. } => "MakeNode",
            Op::Link { .. } => "Link",
            Op::Unlink { .. } => "Unlink",
            Op::Rmdir { .. } => "Rmdir",
            Op::Rename { .. } => "Rename",
            Op::SetXattr { .. } => "SetXattr",
            Op::RemoveXattr { .. } => "RemoveXattr",
            Op::AllocateBlock { .. } => "AllocateBlock",
            Op::ReplaceShard { .. } => "ReplaceShard",
            Op::CommitWrite { .. } => "CommitWrite",
            Op::ReportBadShard { .. } => "ReportBadShard",
            Op::MoveShard { .. } => "MoveShard",
            Op::DropBlocks { .. } => "DropBlocks",
            Op::DrainServer { .. } => "DrainServer",
            Op::RemoveServer { .. } => "RemoveServer",
            Op::ExpireCalls => "ExpireCalls",
            Op::SetLocks { .. } => "SetLocks",
            Op::WriteInline { .. } => "WriteInline",
            Op::KeepInline { .. } => "KeepInline",
            Op::CommitIfUnchanged { .. } => "CommitIfUnchanged",
            Op::UnlinkOrHide { .. } => "UnlinkOrHide",
            Op::KeepOrphans(_) => "KeepOrphans",
            Op::ReapOrphans { .. } => "ReapOrphans",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfs_common::model::TimeSet;

    /// One command of every operation, in the order of [`Op`].
    fn samples() -> Vec<Command> {
        let ino = InodeId(5);
        let key = ShardKey {
            block: BlockId(8),
            index: 2,
        };
        let ops = vec![
            Op::CreateVolume {
                name: "v".into(),
                policy: EcPolicy::new(4, 2).unwrap(),
                block_size: 4 << 20,
                limits: VolumeLimits {
                    quota_bytes: Some(1 << 30),
                    ..Default::default()
                },
            },
            Op::SetVolume {
                name: "v".into(),
                change: VolumeChange {
                    quota_inodes: Some(None),
                    read_only: Some(true),
                    ..Default::default()
                },
            },
            Op::DeleteVolume {
                name: "v".into(),
                force: true,
            },
            Op::AddClient {
                name: "c".into(),
                fingerprint: [1; 32],
                volumes: vec![("v".into(), true)],
            },
            Op::RevokeClient { name: "c".into() },
            Op::RegisterServer {
                server: ServerId(3),
                addr: "h:1".into(),
            },
            Op::BindServer {
                server: ServerId(3),
                fingerprint: [2; 32],
            },
            Op::SetAttr {
                ino,
                set: SetAttr {
                    mode: Some(0o600),
                    size: Some(10),
                    mtime: Some(TimeSet::Now),
                    atime: Some(TimeSet::At(Timestamp { secs: 7, nanos: 8 })),
                    ..Default::default()
                },
            },
            Op::MakeNode {
                parent: InodeId(3),
                name: "l".into(),
                kind: FileKind::Symlink,
                mode: 0o777,
                uid: 1,
                gid: 2,
                rdev: 0,
                target: Some("t".into()),
            },
            Op::Link {
                ino,
                new_parent: InodeId(3),
                new_name: "n".into(),
            },
            Op::Unlink {
                parent: InodeId(3),
                name: "n".into(),
            },
            Op::Rmdir {
                parent: InodeId(3),
                name: "d".into(),
            },
            Op::Rename {
                parent: InodeId(3),
                name: "a".into(),
                new_parent: InodeId(4),
                new_name: "b".into(),
                flags: 2,
            },
            Op::SetXattr {
                ino,
                name: "user.x".into(),
                value: vec![1, 2],
                flags: 1,
            },
            Op::RemoveXattr {
                ino,
                name: "user.x".into(),
            },
            Op::AllocateBlock {
                ino,
                placement: vec![ServerId(1), ServerId::NONE],
            },
            Op::ReplaceShard {
                block: BlockId(8),
                index: 1,
                failed: ServerId(1),
                to: Some(ServerId(2)),
            },
            Op::CommitWrite {
                ino,
                extents: vec![NewExtent {
                    extent: Extent {
                        file_offset: 4096,
                        len: 100,
                        block: BlockId(8),
                        block_offset: 0,
                    },
                    block_len: 100,
                    missing_shards: 0b10,
                }],
                mtime: Timestamp { secs: 9, nanos: 1 },
                append: false,
            },
            Op::ReportBadShard {
                server: ServerId(1),
                key,
            },
            Op::MoveShard {
                key,
                from: ServerId(1),
                to: ServerId(2),
            },
            Op::DropBlocks {
                blocks: vec![BlockId(8), BlockId(9)],
            },
            Op::DrainServer {
                server: ServerId(1),
                drain: true,
            },
            Op::RemoveServer {
                server: ServerId(1),
            },
            Op::ExpireCalls,
            Op::SetLocks {
                files: vec![
                    (
                        ino,
                        vec![HeldLock {
                            session: 0xabcd,
                            owner: 3,
                            pid: 42,
                            start: 0,
                            end: 99,
                            write: true,
                        }],
                    ),
                    (InodeId(6), vec![]),
                ],
                sessions: vec![(0xabcd, true), (7, false)],
            },
            Op::WriteInline {
                ino,
                pieces: vec![(0, 2), (10, 1)],
                data: vec![7, 8, 9],
                mtime: Timestamp { secs: 9, nanos: 1 },
                append: true,
            },
            Op::KeepInline {
                ino,
                pieces: vec![(70_000, 2)],
                data: vec![7, 8],
                mtime: Timestamp { secs: 9, nanos: 1 },
                append: false,
            },
            Op::CommitIfUnchanged {
                ino,
                extents: vec![NewExtent {
                    extent: Extent {
                        file_offset: 90,
                        len: 20,
                        block: BlockId(8),
                        block_offset: 0,
                    },
                    block_len: 20,
                    missing_shards: 0,
                }],
                mtime: Timestamp { secs: 9, nanos: 1 },
                size: 100,
                from: 90,
                expect: vec![Extent {
                    file_offset: 90,
                    len: 10,
                    block: BlockId(7),
                    block_offset: 0,
                }],
            },
            Op::UnlinkOrHide {
                parent: InodeId(3),
                name: "n".into(),
                open: vec![ino, InodeId(9)],
                tag: 0xabcd,
            },
            Op::KeepOrphans(Box::new(Op::Unlink {
                parent: InodeId(3),
                name: "n".into(),
            })),
            Op::ReapOrphans {
                inos: vec![ino, InodeId(9)],
            },
        ];
        ops.into_iter()
            .enumerate()
            .map(|(i, op)| Command {
                now: Timestamp {
                    secs: 1_700_000_000,
                    nanos: i as u32,
                },
                call: (i % 2 == 0).then_some(Call {
                    client: 0xabcd,
                    seq: i as u64,
                    done_below: 1,
                    request: [i as u8; 32],
                }),
                op,
            })
            .collect()
    }

    /// Each sample as format 1 encodes it. Commands are the log: a change that alters these
    /// bytes makes older logs unreadable. Add operations at the end of [`Op`]; change one only
    /// with a new format.
    const GOLDEN: [(&str, &str); 31] = [
        ("CreateVolume", "01fc00e2a7ca0001fbcdab000100000000000000000000000000000000000000000000000000000000000000000001760402fc0000400001fc00000040000000"),
        ("SetVolume", "01fc00e2a7ca0100010176000100010100"),
        ("DeleteVolume", "01fc00e2a7ca0201fbcdab0201020202020202020202020202020202020202020202020202020202020202020202017601"),
        ("AddClient", "01fc00e2a7ca0300030163010101010101010101010101010101010101010101010101010101010101010101017601"),
        ("RevokeClient", "01fc00e2a7ca0401fbcdab04010404040404040404040404040404040404040404040404040404040404040404040163"),
        ("RegisterServer", "01fc00e2a7ca0500050303683a31"),
        ("BindServer", "01fc00e2a7ca0601fbcdab0601060606060606060606060606060606060606060606060606060606060606060606030202020202020202020202020202020202020202020202020202020202020202"),
        ("SetAttr", "01fc00e2a7ca0700070501fb80010000010a01010e080100"),
        ("MakeNode", "01fc00e2a7ca0801fbcdab080108080808080808080808080808080808080808080808080808080808080808080803016c02fbff01010200010174"),
        ("Link", "01fc00e2a7ca0900090503016e"),
        ("Unlink", "01fc00e2a7ca0a01fbcdab0a010a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a03016e"),
        ("Rmdir", "01fc00e2a7ca0b000b030164"),
        ("Rename", "01fc00e2a7ca0c01fbcdab0c010c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c03016104016202"),
        ("SetXattr", "01fc00e2a7ca0d000d0506757365722e7802010201"),
        ("RemoveXattr", "01fc00e2a7ca0e01fbcdab0e010e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0506757365722e78"),
        ("AllocateBlock", "01fc00e2a7ca0f000f05020100"),
        ("ReplaceShard", "01fc00e2a7ca1001fbcdab10011010101010101010101010101010101010101010101010101010101010101010100801010102"),
        ("CommitWrite", "01fc00e2a7ca1100110501fb00106408006402120100"),
        ("ReportBadShard", "01fc00e2a7ca1201fbcdab1201121212121212121212121212121212121212121212121212121212121212121212010802"),
        ("MoveShard", "01fc00e2a7ca13001308020102"),
        ("DropBlocks", "01fc00e2a7ca1401fbcdab1401141414141414141414141414141414141414141414141414141414141414141414020809"),
        ("DrainServer", "01fc00e2a7ca1500150101"),
        ("RemoveServer", "01fc00e2a7ca1601fbcdab160116161616161616161616161616161616161616161616161616161616161616161601"),
        ("ExpireCalls", "01fc00e2a7ca170017"),
        ("SetLocks", "01fc00e2a7ca1801fbcdab1801181818181818181818181818181818181818181818181818181818181818181818020501fbcdab032a006301060002fbcdab010700"),
        ("WriteInline", "01fc00e2a7ca190019050200020a0103070809120101"),
        ("KeepInline", "01fc00e2a7ca1a01fbcdab1a011a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a0501fc7011010002020708120100"),
        ("CommitIfUnchanged", "01fc00e2a7ca1b001b05015a14080014001201645a015a0a0700"),
        ("UnlinkOrHide", "01fc00e2a7ca1c01fbcdab1c011c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c03016e020509fbcdab"),
        ("KeepOrphans", "01fc00e2a7ca1d001d0a03016e"),
        ("ReapOrphans", "01fc00e2a7ca1e01fbcdab1e011e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e020509"),
    ];

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn every_operation_keeps_its_logged_bytes() {
        let samples = samples();
        assert_eq!(samples.len(), GOLDEN.len());
        for (command, (name, golden)) in samples.iter().zip(GOLDEN) {
            assert_eq!(command.op.name(), name);
            let bytes = command.to_bytes();
            assert_eq!(hex(&bytes), golden, "{name} is logged differently");
            assert_eq!(&Command::from_bytes(&bytes).unwrap(), command);
        }
    }

    /// Damaged, truncated, padded or foreign bytes are an error, never a panic.
    #[test]
    fn damaged_commands_are_errors() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
        for command in samples() {
            let valid = command.to_bytes();
            let mut longer = valid.clone();
            longer.push(0);
            assert!(Command::from_bytes(&longer).is_err());
            assert!(Command::from_bytes(&valid[..valid.len() - 1]).is_err());
            let mut other_format = valid.clone();
            other_format[0] = 2;
            assert!(Command::from_bytes(&other_format).is_err());
            for _ in 0..500 {
                let mut bytes = valid.clone();
                let i = rng.random_range(0..bytes.len());
                bytes[i] = rng.random();
                let _ = Command::from_bytes(&bytes);
            }
        }
        assert!(Command::from_bytes(&[]).is_err());
        // A length field claiming gigabytes is refused before allocating.
        let mut huge = vec![COMMAND_FORMAT, 0, 0, 0];
        huge.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        assert!(Command::from_bytes(&huge).is_err());
    }
}
