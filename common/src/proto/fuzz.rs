//! Every wire decoder takes random and mutated bytes without panicking or allocating past its
//! bound: a bounded, seeded fuzz run that CI repeats on every change.

use crate::capability::ShardCapability;
use crate::codec::{decode_body, encode_body};
use crate::proto::chunk::*;
use crate::proto::meta::*;
use crate::{BlockId, EcPolicy, FsError, InodeId, ServerId, Timestamp, VolumeId};
use rand::{Rng, RngCore, SeedableRng};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Random byte strings per decoder, and mutations per valid sample.
const RANDOM_INPUTS: usize = 3000;
const MUTATIONS: usize = 1500;

/// Flips, overwrites, truncates, extends or splices `bytes` a few times.
fn mutate(rng: &mut impl Rng, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for _ in 0..rng.random_range(1..4) {
        match rng.random_range(0..5) {
            0 if !out.is_empty() => {
                let i = rng.random_range(0..out.len());
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !out.is_empty() => {
                let i = rng.random_range(0..out.len());
                out[i] = *[0u8, 0xff, 0x7f, 0x80, 0xfb, 0xfc, 0xfd]
                    .get(rng.random_range(0..7))
                    .expect("in range");
            }
            2 => out.truncate(rng.random_range(0..=out.len())),
            3 => {
                let extra = rng.random_range(1..16);
                out.extend((0..extra).map(|_| rng.random::<u8>()));
            }
            _ if out.len() > 2 => {
                let i = rng.random_range(0..out.len());
                let j = rng.random_range(0..out.len());
                out.insert(i, out[j]);
            }
            _ => out.push(rng.random()),
        }
    }
    out
}

/// Feeds `T`'s decoder random bytes and mutations of every sample; any panic fails the test.
fn fuzz<T: Serialize + DeserializeOwned>(seed: u64, samples: &[T]) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    for _ in 0..RANDOM_INPUTS {
        let mut bytes = vec![0u8; rng.random_range(0..256)];
        rng.fill_bytes(&mut bytes);
        let _ = decode_body::<T>(&bytes);
    }
    for sample in samples {
        let valid = encode_body(sample).expect("samples encode");
        assert!(decode_body::<T>(&valid).is_ok(), "a valid sample decodes");
        for _ in 0..MUTATIONS {
            let _ = decode_body::<T>(&mutate(&mut rng, &valid));
        }
    }
}

fn owner() -> LockOwner {
    LockOwner {
        session: 1,
        owner: 2,
        pid: 3,
    }
}

fn attr() -> Attr {
    let t = Timestamp { secs: 5, nanos: 6 };
    Attr {
        ino: InodeId(9),
        volume: VolumeId(1),
        kind: FileKind::File,
        mode: 0o644,
        uid: 1,
        gid: 2,
        nlink: 1,
        size: 77,
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        rdev: 0,
        has_xattrs: false,
    }
}

fn block_info() -> BlockInfo {
    BlockInfo {
        block: BlockId(3),
        len: 4096,
        policy: EcPolicy::new(4, 2).expect("valid policy"),
        shards: vec![
            ShardLocation {
                server: ServerId(4),
                addr: "127.0.0.1:7100".into(),
                up: true,
                cap: Some(ShardCapability {
                    volume: VolumeId(1),
                    expires: Timestamp { secs: 9, nanos: 0 },
                    mac: [3; 32],
                }),
            };
            6
        ],
        inline: None,
    }
}

#[test]
fn metadata_requests_and_replies() {
    let extent = Extent {
        file_offset: 1,
        len: 2,
        block: BlockId(3),
        block_offset: 4,
    };
    let calls = vec![
        MetaCall::untracked(req::ListVolumes.into()),
        MetaCall {
            id: Some(CallId {
                client: 1,
                seq: 2,
                done_below: 1,
            }),
            request: MetaRequest::CommitWrite(req::CommitWrite {
                ino: InodeId(5),
                extents: vec![
                    NewExtent {
                        extent,
                        block_len: 9,
                        missing_shards: 2,
                    };
                    3
                ],
                mtime: Timestamp { secs: 1, nanos: 2 },
                append: true,
            }),
        },
        MetaCall::untracked(MetaRequest::Rename(req::Rename {
            parent: InodeId(1),
            name: "a".into(),
            new_parent: InodeId(2),
            new_name: "b".into(),
            flags: RENAME_EXCHANGE,
        })),
        MetaCall::untracked(MetaRequest::Move(req::Move {
            rename: req::Rename {
                parent: InodeId(1),
                name: "c".into(),
                new_parent: InodeId(1),
                new_name: "d".into(),
                flags: 0,
            },
        })),
        MetaCall::untracked(MetaRequest::OpenAttr(req::OpenAttr {
            ino: InodeId(2),
            origin: 7,
        })),
        MetaCall::untracked(MetaRequest::SetLock(req::SetLock {
            ino: InodeId(1),
            owner: owner(),
            range: LockRange { start: 0, end: 9 },
            kind: LockKind::Write,
            wait: true,
            holding: false,
        })),
        MetaCall::untracked(MetaRequest::SetXattr(req::SetXattr {
            ino: InodeId(1),
            name: "user.x".into(),
            value: vec![1, 2, 3],
            flags: 0,
        })),
        MetaCall::untracked(MetaRequest::WriteInline(req::WriteInline {
            ino: InodeId(1),
            pieces: vec![(0, 2), (7, 1)],
            data: vec![1, 2, 3],
            mtime: Timestamp { secs: 1, nanos: 2 },
            append: false,
        })),
        MetaCall::untracked(MetaRequest::CommitIfUnchanged(req::CommitIfUnchanged {
            ino: InodeId(1),
            extents: vec![NewExtent {
                extent,
                block_len: 9,
                missing_shards: 0,
            }],
            mtime: Timestamp { secs: 1, nanos: 2 },
            size: 7,
            from: 3,
            expect: vec![extent; 2],
        })),
    ];
    fuzz(1, &calls);
    let attrs: Vec<Result<Attr, FsError>> = vec![Ok(attr()), Err(FsError::Invalid("bad".into()))];
    fuzz(2, &attrs);
    let layouts: Vec<Result<Layout, FsError>> = vec![Ok(Layout {
        size: 10,
        extents: vec![extent; 4],
        blocks: vec![
            block_info(),
            BlockInfo {
                block: BlockId(4),
                len: 3,
                policy: EcPolicy::new(4, 2).expect("valid policy"),
                shards: vec![],
                inline: Some(vec![7, 8, 9]),
            },
        ],
        complete_to: u64::MAX,
    })];
    fuzz(5, &layouts);
    let pages: Vec<Result<DirPage, FsError>> = vec![Ok(DirPage {
        entries: vec![DirEntry {
            name: "x".into(),
            ino: InodeId(2),
            kind: FileKind::Dir,
            attr: Some(attr()),
        }],
        more: true,
    })];
    fuzz(6, &pages);
    let dropped: Vec<Result<Vec<BlockId>, FsError>> =
        vec![Ok(vec![BlockId(1), BlockId(2)]), Err(FsError::Deadlock)];
    fuzz(7, &dropped);
}

#[test]
fn chunk_requests_and_replies() {
    let key = ShardKey {
        block: BlockId(7),
        index: 1,
    };
    let requests = vec![
        ChunkRequest::Put {
            key,
            owner: ShardOwner {
                volume: VolumeId(1),
                policy: EcPolicy::new(4, 2).expect("valid policy"),
                block_len: 100,
            },
            len: 25,
            cap: ShardCapability {
                volume: VolumeId(1),
                expires: Timestamp { secs: 9, nanos: 0 },
                mac: [3; 32],
            },
        },
        ChunkRequest::Get {
            key,
            offset: 0,
            len: 25,
        },
        ChunkRequest::Rebuild {
            key,
            owner: ShardOwner {
                volume: VolumeId(1),
                policy: EcPolicy::new(2, 1).expect("valid policy"),
                block_len: 100,
            },
            sources: vec![
                ShardSource {
                    index: 0,
                    addr: "127.0.0.1:1".into(),
                };
                3
            ],
        },
    ];
    fuzz(3, &requests);
    let replies: Vec<Result<ChunkReply, FsError>> = vec![
        Ok(ChunkReply::Stored),
        Ok(ChunkReply::Data { len: 5 }),
        Ok(ChunkReply::Scrub(ScrubProgress::default())),
        Err(FsError::Corrupt("x".into())),
    ];
    fuzz(4, &replies);
}
