//! Every table of the metadata store, and the records they hold.
//!
//! | table      | key                       | value                              | why                                   |
//! |------------|---------------------------|------------------------------------|---------------------------------------|
//! | `volumes`  | volume name               | [`VolumeRecord`]                   | mount and CLI look volumes up by name |
//! | `inodes`   | inode id                  | [`InodeRecord`]                    | getattr is one point read             |
//! | `dentries` | (parent inode, name)      | (child inode, [`kind_code`])       | readdir is one range scan, in name order, resumable after any name |
//! | `extents`  | (inode, file offset)      | (length, block, offset in block)   | a read finds its extents with one range scan |
//! | `blocks`   | block id                  | [`BlockRecord`]                    | placement and reference count per block |
//! | `inline_data` | block id               | the block's bytes, whole (earlier versions) | a small write is one metadata commit, not k+m shard writes |
//! | `inline_pieces` | (block id, piece)    | page-sized pieces of the block's bytes | a block of 16 KiB takes 16 KiB of pages, not 32 (see [`super::inline_data`]) |
//! | `inline_tails` | block id              | the rest after the pieces          | small tails share leaves              |
//! | `inline_bytes` | inode id              | bytes of the inline blocks it refers to | bounds the inline bytes of each file, checked in one read |
//! | `xattrs`   | (inode, name)             | value bytes                        | listxattr is one range scan           |
//! | `servers`  | server id                 | [`ServerRecord`]                   | chunk-server addresses survive restarts |
//! | `counters` | counter name              | next id; `store_format`            | ids are never reused; a store is not read by a `dfs-meta` too old for it |
//! | `draining` | server id                 | seconds when the drain began       | placement avoids it, repair empties it |
//! | `clients`  | client name               | [`ClientRecord`]                   | rights of client certificates, by fingerprint once loaded |
//! | `volume_state` | volume id             | [`VolumeState`]                    | quotas are checked and usage kept in the same transaction as each change |
//! | `server_certs` | server id             | certificate fingerprint (32 bytes) | a chunk server's id answers only to the certificate it registered with |
//! | `calls`    | (client id, sequence)     | [`CallRecord`]                     | a retried mutation gets its first reply back (the duplicate-request table) |
//! | `orphans`  | inode id                  | the file's size when it lost its last name | a file unlinked while a mount has it open lives until no mount has (see [`crate::orphans`]) |
//! | `raft`     | `applied`, `membership`   | the last log entry applied, the group's membership | redb and the metadata log agree after a crash (see [`crate::raft`]) |
//!
//! Blocks at zero references are found by the collector's scan of `blocks`; their grace period
//! is kept in its memory on the monotonic clock. Databases made before that keep an unused
//! `garbage` table.
//!
//! Records are bincode behind a one-byte format version (see [`encode`]), so an older record can
//! still be decoded after a format change; integers in keys are fixed-width by redb.

use crate::command::Outcome;
use dfs_common::model::{FileKind, VolumeGrant, VolumeLimits};
use dfs_common::{EcPolicy, FsError, InodeId, ServerId, Timestamp, VolumeId};
use redb::TableDefinition;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const VOLUMES: TableDefinition<&str, &[u8]> = TableDefinition::new("volumes");
pub const INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes");
pub const DENTRIES: TableDefinition<(u64, &str), (u64, u8)> = TableDefinition::new("dentries");
pub const EXTENTS: TableDefinition<(u64, u64), (u64, u64, u64)> = TableDefinition::new("extents");
pub const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
/// Bytes of blocks kept in the metadata store (blocks with no shards; see
/// [`BlockRecord::is_inline`]), as earlier versions wrote them: whole. Read and emptied,
/// never written (see [`super::inline_data`]).
pub const INLINE_DATA: TableDefinition<u64, &[u8]> = TableDefinition::new("inline_data");
/// Bytes of inline blocks, cut into pieces that fill redb's pages: (block, piece) -> bytes.
pub const INLINE_PIECES: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("inline_pieces");
/// The rest of each inline block's bytes after its pieces, maybe none: block -> bytes.
pub const INLINE_TAILS: TableDefinition<u64, &[u8]> = TableDefinition::new("inline_tails");
/// Per file, the bytes of the inline blocks its extents refer to (files with none have no
/// row). Kept by [`crate::layout::RefDelta`] as block references come and go.
pub const INLINE_BYTES: TableDefinition<u64, u64> = TableDefinition::new("inline_bytes");
pub const XATTRS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("xattrs");
pub const SERVERS: TableDefinition<u64, &[u8]> = TableDefinition::new("servers");
pub const DRAINING: TableDefinition<u64, i64> = TableDefinition::new("draining");
pub const VOLUME_STATE: TableDefinition<u64, &[u8]> = TableDefinition::new("volume_state");
pub const CLIENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("clients");
pub const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
pub const CALLS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("calls");
pub const SERVER_CERTS: TableDefinition<u64, [u8; 32]> = TableDefinition::new("server_certs");
pub const RAFT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft");
/// File locks: inode -> [`LocksRecord`], so that a new leader holds the locks the old one
/// granted.
pub const LOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("locks");
/// Lock sessions known to the group (client sessions that took a lock and have not expired).
pub const LOCK_SESSIONS: TableDefinition<u64, u8> = TableDefinition::new("lock_sessions");
/// Regular files without a name kept for the mounts that may have them open: inode -> the
/// size whose usage was given back when its last name went.
pub const ORPHANS: TableDefinition<u64, u64> = TableDefinition::new("orphans");
/// Volume id -> name, so that a volume is found by its id without going through them all.
/// Derived from `volumes` (made at open and after a snapshot is installed, kept by creates and
/// deletes): not part of the replicated state that snapshots copy and digests hash.
pub const VOLUME_IDS: TableDefinition<u64, &str> = TableDefinition::new("volume_ids");

pub const NEXT_INODE: &str = "next_inode";
pub const NEXT_BLOCK: &str = "next_block";
pub const NEXT_VOLUME: &str = "next_volume";

/// Current format version of every record.
const FORMAT_VERSION: u8 = 1;

/// Bound on what decoding one record may allocate (records are small; a damaged length field
/// must not become a huge allocation).
const MAX_RECORD: usize = 16 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub id: VolumeId,
    pub root: InodeId,
    pub policy: EcPolicy,
    pub block_size: u64,
    pub created: Timestamp,
}

/// A volume's limits and exact usage. Kept apart from [`VolumeRecord`] (which is keyed by
/// name and rarely changes) because every create, write and delete updates it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeState {
    pub limits: VolumeLimits,
    /// Sum of regular-file sizes.
    pub bytes: u64,
    /// Inodes other than the root directory.
    pub inodes: u64,
}

/// The locks held on one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocksRecord {
    pub held: Vec<dfs_common::model::HeldLock>,
}

/// A client certificate registered by `dfs client add`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    pub fingerprint: [u8; 32],
    pub grants: Vec<VolumeGrant>,
    pub created: Timestamp,
    pub revoked: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeRecord {
    pub volume: VolumeId,
    pub kind: FileKind,
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
    /// For directories: the parent directory (the root is its own parent). Lets rename refuse
    /// to move a directory into itself without scanning.
    pub parent: InodeId,
    /// For symlinks: the target.
    pub target: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    pub volume: VolumeId,
    pub policy: EcPolicy,
    /// `None` until a commit makes the block visible; a block allocated but never committed is
    /// garbage once its grace period passes.
    pub len: Option<u64>,
    /// One server per shard index; none for a block kept inline.
    pub shards: Vec<ServerId>,
    /// Extents referring to this block.
    pub refs: u32,
    pub created: Timestamp,
}

impl BlockRecord {
    /// The block's bytes are in `inline_data`, replicated with the metadata, not in shards.
    /// Such a block is committed when it is made, so it is never pending.
    pub fn is_inline(&self) -> bool {
        self.shards.is_empty()
    }
}

/// The outcome of one client mutation, kept until the client has seen it. Stored as format
/// [`CALL_FORMAT`]; format 1 records ([`WireCallRecord`]) are still read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// blake3 of the request's encoding: a sequence number reused for another request is
    /// refused instead of answered with a stranger's reply.
    pub request: [u8; 32],
    pub outcome: Outcome,
    /// When it was applied; records of clients that vanished expire after a day.
    pub at: Timestamp,
}

/// Format of [`CallRecord`]s written now.
pub const CALL_FORMAT: u8 = 2;

/// A call record of format 1, which held the reply as the wire encoded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireCallRecord {
    pub request: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub reply: Vec<u8>,
    pub at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    pub addr: String,
    pub registered: Timestamp,
}

/// Serializes a record behind its format version byte.
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    encode_as(FORMAT_VERSION, record)
}

/// Serializes a record behind the given format version byte.
pub fn encode_as<T: Serialize>(version: u8, record: &T) -> Vec<u8> {
    let mut out = vec![version];
    bincode::serde::encode_into_std_write(record, &mut out, bincode::config::standard())
        .expect("records always serialize into a Vec");
    out
}

/// Decodes a record of the current format, refusing other versions and trailing bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FsError> {
    match split_format(bytes)? {
        (FORMAT_VERSION, body) => decode_body(body),
        (v, _) => Err(FsError::Corrupt(format!("unknown record version {v}"))),
    }
}

/// A record's format version and its body, for records with more than one format.
pub fn split_format(bytes: &[u8]) -> Result<(u8, &[u8]), FsError> {
    match bytes.split_first() {
        Some((&v, body)) => Ok((v, body)),
        None => Err(FsError::Corrupt("empty metadata record".into())),
    }
}

/// Decodes a record's body, refusing trailing bytes and oversized lengths.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FsError> {
    let config = bincode::config::standard().with_limit::<MAX_RECORD>();
    let (value, used) = bincode::serde::decode_from_slice(body, config)
        .map_err(|e| FsError::Corrupt(format!("metadata record: {e}")))?;
    if used != body.len() {
        return Err(FsError::Corrupt(
            "metadata record has trailing bytes".into(),
        ));
    }
    Ok(value)
}

/// Dentry values store the child's kind, so readdir needs no inode reads.
pub fn kind_code(kind: FileKind) -> u8 {
    match kind {
        FileKind::File => 1,
        FileKind::Dir => 2,
        FileKind::Symlink => 3,
        FileKind::Fifo => 4,
        FileKind::Socket => 5,
        FileKind::CharDevice => 6,
        FileKind::BlockDevice => 7,
    }
}

pub fn kind_from_code(code: u8) -> Result<FileKind, FsError> {
    Ok(match code {
        1 => FileKind::File,
        2 => FileKind::Dir,
        3 => FileKind::Symlink,
        4 => FileKind::Fifo,
        5 => FileKind::Socket,
        6 => FileKind::CharDevice,
        7 => FileKind::BlockDevice,
        _ => return Err(FsError::Corrupt(format!("unknown file kind code {code}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfs_common::BlockId;

    fn t() -> Timestamp {
        Timestamp {
            secs: 1_700_000_000,
            nanos: 5,
        }
    }

    fn inode_sample() -> InodeRecord {
        InodeRecord {
            volume: VolumeId(2),
            kind: FileKind::Symlink,
            mode: 0o777,
            uid: 1000,
            gid: 100,
            nlink: 1,
            size: 6,
            atime: t(),
            mtime: t(),
            ctime: t(),
            crtime: t(),
            rdev: 0,
            parent: InodeId(0),
            target: Some("target".into()),
        }
    }

    /// One sample of every stored record, encoded as it is written now, in hex.
    fn samples() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            (
                "volume",
                encode(&VolumeRecord {
                    id: VolumeId(2),
                    root: InodeId(3),
                    policy: EcPolicy::new(4, 2).unwrap(),
                    block_size: 4 << 20,
                    created: t(),
                }),
            ),
            (
                "volume_state",
                encode(&VolumeState {
                    limits: VolumeLimits {
                        quota_bytes: Some(1 << 30),
                        quota_inodes: None,
                        read_only: false,
                        require_full_writes: true,
                    },
                    bytes: 12345,
                    inodes: 7,
                }),
            ),
            (
                "client",
                encode(&ClientRecord {
                    fingerprint: [9; 32],
                    grants: vec![VolumeGrant {
                        volume: VolumeId(2),
                        write: true,
                    }],
                    created: t(),
                    revoked: false,
                }),
            ),
            ("inode", encode(&inode_sample())),
            (
                "block",
                encode(&BlockRecord {
                    volume: VolumeId(2),
                    policy: EcPolicy::new(4, 2).unwrap(),
                    len: Some(4 << 20),
                    shards: vec![ServerId(1), ServerId(2), ServerId::NONE],
                    refs: 1,
                    created: t(),
                }),
            ),
            (
                "server",
                encode(&ServerRecord {
                    addr: "10.0.0.1:7100".into(),
                    registered: t(),
                }),
            ),
            (
                "call",
                encode_as(
                    CALL_FORMAT,
                    &CallRecord {
                        request: [7; 32],
                        outcome: Outcome::Committed {
                            ino: InodeId(5),
                            before: inode_sample(),
                            after: inode_sample(),
                        },
                        at: t(),
                    },
                ),
            ),
            (
                "wire_call",
                encode(&WireCallRecord {
                    request: [7; 32],
                    reply: vec![1, 2, 3],
                    at: t(),
                }),
            ),
            (
                "locks",
                encode(&LocksRecord {
                    held: vec![dfs_common::model::HeldLock {
                        session: 0xabcd,
                        owner: 3,
                        pid: 42,
                        start: 0,
                        end: u64::MAX,
                        write: true,
                    }],
                }),
            ),
        ]
    }

    /// The bytes of each sample as format 1 (and calls as format 2) wrote them. A change that
    /// alters them breaks every existing database: give the record a new format instead.
    const GOLDEN: [(&str, &str); 9] = [
        ("volume", "0102030402fc00004000fc00e2a7ca05"),
        ("volume_state", "0101fc00000040000001fb393007"),
        ("client", "010909090909090909090909090909090909090909090909090909090909090909010201fc00e2a7ca0500"),
        ("inode", "010202fbff01fbe803640106fc00e2a7ca05fc00e2a7ca05fc00e2a7ca05fc00e2a7ca0500000106746172676574"),
        ("block", "0102040201fc000040000301020001fc00e2a7ca05"),
        ("server", "010d31302e302e302e313a37313030fc00e2a7ca05"),
        ("call", "02070707070707070707070707070707070707070707070707070707070707070705050202fbff01fbe803640106fc00e2a7ca05fc00e2a7ca05fc00e2a7ca05fc00e2a7ca05000001067461726765740202fbff01fbe803640106fc00e2a7ca05fc00e2a7ca05fc00e2a7ca05fc00e2a7ca0500000106746172676574fc00e2a7ca05"),
        ("wire_call", "01070707070707070707070707070707070707070707070707070707070707070703010203fc00e2a7ca05"),
        ("locks", "0101fbcdab032a00fdffffffffffffffff01"),
    ];

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Every stored record still encodes to, and decodes from, the bytes older servers wrote.
    #[test]
    fn every_record_keeps_its_stored_bytes() {
        let samples = samples();
        assert_eq!(samples.len(), GOLDEN.len());
        for ((name, bytes), (golden_name, golden)) in samples.iter().zip(GOLDEN) {
            assert_eq!(*name, golden_name);
            assert_eq!(hex(bytes), golden, "{name} encodes differently");
        }
        let old = |name: &str| unhex(GOLDEN.iter().find(|(n, _)| *n == name).unwrap().1);
        assert_eq!(
            decode::<InodeRecord>(&old("inode")).unwrap(),
            inode_sample()
        );
        assert_eq!(
            encode(&decode::<VolumeRecord>(&old("volume")).unwrap()),
            old("volume")
        );
        assert_eq!(
            encode(&decode::<VolumeState>(&old("volume_state")).unwrap()),
            old("volume_state")
        );
        assert_eq!(
            encode(&decode::<ClientRecord>(&old("client")).unwrap()),
            old("client")
        );
        assert_eq!(
            encode(&decode::<BlockRecord>(&old("block")).unwrap()),
            old("block")
        );
        assert_eq!(
            encode(&decode::<ServerRecord>(&old("server")).unwrap()),
            old("server")
        );
        let call = old("call");
        let record: CallRecord = decode_body(&call[1..]).unwrap();
        assert_eq!(encode_as(CALL_FORMAT, &record), call);
        assert_eq!(
            encode(&decode::<LocksRecord>(&old("locks")).unwrap()),
            old("locks")
        );
        let wire: WireCallRecord = decode(&old("wire_call")).unwrap();
        assert_eq!(wire.reply, vec![1, 2, 3]);
    }

    #[test]
    fn records_round_trip_and_old_bytes_decode() {
        let rec = ServerRecord {
            addr: "127.0.0.1:7100".into(),
            registered: Timestamp { secs: 5, nanos: 6 },
        };
        let bytes = encode(&rec);
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<ServerRecord>(&bytes).unwrap(), rec);
        // Bytes written by format version 1; this must keep decoding after format changes.
        let v1 = [
            1u8, 14, b'1', b'2', b'7', b'.', b'0', b'.', b'0', b'.', b'1', b':', b'7', b'1', b'0',
            b'0', 10, 6,
        ];
        assert_eq!(decode::<ServerRecord>(&v1).unwrap(), rec);
        assert!(decode::<ServerRecord>(&[9, 1, 2]).is_err());
        assert!(decode::<ServerRecord>(&[]).is_err());
        for code in 1..=7 {
            assert_eq!(kind_code(kind_from_code(code).unwrap()), code);
        }
        assert!(kind_from_code(0).is_err());
    }

    /// Decoding random and damaged records is an error, never a panic.
    #[test]
    fn damaged_records_are_errors_never_panics() {
        use rand::{Rng, SeedableRng};
        let t = Timestamp { secs: 5, nanos: 6 };
        let inode = encode(&InodeRecord {
            volume: VolumeId(1),
            kind: FileKind::Symlink,
            mode: 0o777,
            uid: 1,
            gid: 2,
            nlink: 1,
            size: 3,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            rdev: 0,
            parent: InodeId(1),
            target: Some("target".into()),
        });
        let block = encode(&BlockRecord {
            volume: VolumeId(1),
            policy: EcPolicy::new(4, 2).unwrap(),
            len: Some(7),
            shards: vec![ServerId(3); 6],
            refs: 2,
            created: t,
        });
        let call = encode_as(
            CALL_FORMAT,
            &CallRecord {
                request: [7; 32],
                outcome: Outcome::Dropped(vec![BlockId(4)]),
                at: t,
            },
        );
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        for valid in [inode, block, call] {
            for _ in 0..3000 {
                let mut bytes = valid.clone();
                match rng.random_range(0..3) {
                    0 => {
                        let i = rng.random_range(0..bytes.len());
                        bytes[i] = rng.random();
                    }
                    1 => bytes.truncate(rng.random_range(0..bytes.len())),
                    _ => {
                        bytes = vec![FORMAT_VERSION; rng.random_range(1..64)];
                        rng.fill(&mut bytes[1..]);
                    }
                }
                let _ = decode::<InodeRecord>(&bytes);
                let _ = decode::<BlockRecord>(&bytes);
                let body = bytes.get(1..).unwrap_or_default();
                let _ = decode_body::<CallRecord>(body);
                let _ = decode_body::<WireCallRecord>(body);
                let _ = decode::<ClientRecord>(&bytes);
                let _ = decode::<VolumeState>(&bytes);
            }
        }
    }
}
