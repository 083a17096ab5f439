//! `dfs fsck`: a read-only check of one volume, a page at a time, from a snapshot.
//!
//! For every inode of the volume: a directory's entries name inodes that exist, of the kind
//! the entry says; a file's extents lie within its size and within committed blocks of its
//! volume that still count the reference; every shard of those blocks is placed on a server
//! that is up (else the block is degraded, or unavailable below k shards), or for a block
//! kept inline, its bytes are there, and the file's inline allowance counts exactly the inline
//! blocks it refers to; a file no name links to is kept as an orphan (to be freed after its
//! last close). The blocks with shards go back with the page, so the CLI can have each chunk
//! server re-verify their checksums.

use crate::store::schema::{decode, kind_from_code, BlockRecord, InodeRecord, ServerRecord};
use crate::store::tables::{get_inode, ReadTables};
use crate::store::DbResult;
use dfs_common::proto::meta::*;
use dfs_common::{BlockId, FsError, FsResult, InodeId, ServerId};
use std::collections::{BTreeMap, HashSet};

/// Inodes of any volume looked at per page, and extents returned per page at most: bounds the
/// time of one request and the size of its reply.
const SCAN_PER_PAGE: usize = 20_000;
const EXTENTS_PER_PAGE: usize = 5_000;
/// Problems reported per page at most (the rest are counted on the next pages' passes).
const PROBLEMS_PER_PAGE: usize = 1_000;

pub fn check_page(
    t: &ReadTables,
    volume: &str,
    from: Option<FsckCursor>,
    live: &HashSet<ServerId>,
) -> FsResult<FsckPage> {
    let volume = crate::queries::get_volume(t, volume)?;
    let mut page = FsckPage::default();
    let mut blocks: BTreeMap<BlockId, BlockInfo> = BTreeMap::new();
    let start = from.map_or(0, |c| c.ino.0);
    let mut scanned = 0;
    for item in t.inodes.table()?.range(start..).db()? {
        let (key, value) = item.db()?;
        let ino = InodeId(key.value());
        scanned += 1;
        if scanned > SCAN_PER_PAGE || page.extents as usize >= EXTENTS_PER_PAGE {
            page.next = Some(FsckCursor { ino, offset: 0 });
            break;
        }
        let rec: InodeRecord = decode(value.value())?;
        if rec.volume != volume.id {
            continue;
        }
        let resume_at = match from {
            Some(c) if c.ino == ino => c.offset,
            _ => 0,
        };
        if resume_at == 0 {
            page.inodes += 1;
        }
        match rec.kind {
            FileKind::Dir if resume_at == 0 => {
                check_dir(t, ino, &mut |ino, what| {
                    report(&mut page, ino, None, false, what)
                })?;
            }
            FileKind::File => {
                if resume_at == 0 {
                    page.files += 1;
                    check_links(t, ino, &rec, &mut page)?;
                }
                let stopped = check_file(t, ino, &rec, resume_at, live, &mut page, &mut blocks)?;
                if let Some(offset) = stopped {
                    page.next = Some(FsckCursor { ino, offset });
                    break;
                }
            }
            _ => {}
        }
    }
    page.blocks = blocks.into_values().collect();
    Ok(page)
}

/// Records a problem, up to [`PROBLEMS_PER_PAGE`] per page.
fn report(page: &mut FsckPage, ino: InodeId, block: Option<BlockId>, degraded: bool, what: String) {
    if page.problems.len() < PROBLEMS_PER_PAGE {
        page.problems.push(FsckProblem {
            ino,
            block,
            degraded,
            what,
        });
    }
}

/// Entries of a directory name inodes that exist, with the kind they have.
fn check_dir(
    t: &ReadTables,
    dir: InodeId,
    problem: &mut impl FnMut(InodeId, String),
) -> FsResult<()> {
    for item in t
        .dentries
        .table()?
        .range((dir.0, "")..(dir.0 + 1, ""))
        .db()?
    {
        let (key, value) = item.db()?;
        let name = key.value().1.to_string();
        let (child, code) = value.value();
        match get_inode(t.inodes.table()?, InodeId(child)) {
            Ok(rec) => {
                if kind_from_code(code)? != rec.kind {
                    problem(
                        dir,
                        format!(
                            "entry {name:?} says {:?}, inode {child} is {:?}",
                            kind_from_code(code)?,
                            rec.kind
                        ),
                    );
                }
            }
            Err(FsError::NotFound) => problem(
                dir,
                format!("entry {name:?} names inode {child}, which does not exist"),
            ),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Checks a file's extents from `offset`; returns where it stopped if the page filled up.
/// A file with no name left is an orphan, kept while a mount has it open and listed as one
/// so the leader frees it after: not listed, nothing would ever free it.
fn check_links(
    t: &ReadTables,
    ino: InodeId,
    rec: &InodeRecord,
    page: &mut FsckPage,
) -> FsResult<()> {
    if rec.nlink == 0 && t.orphans.table()?.get(ino.0).db()?.is_none() {
        let what = "no name links to it and it is not kept as an orphan: nothing frees it".into();
        report(page, ino, None, false, what);
    }
    Ok(())
}

fn check_file(
    t: &ReadTables,
    ino: InodeId,
    rec: &InodeRecord,
    offset: u64,
    live: &HashSet<ServerId>,
    page: &mut FsckPage,
    blocks: &mut BTreeMap<BlockId, BlockInfo>,
) -> FsResult<Option<u64>> {
    let report =
        |page: &mut FsckPage, block, degraded, what| report(page, ino, block, degraded, what);
    // Inline blocks the file refers to, with their lengths: what its allowance is charged.
    let mut inline: BTreeMap<BlockId, u64> = BTreeMap::new();
    for item in t
        .extents
        .table()?
        .range((ino.0, offset)..(ino.0 + 1, 0))
        .db()?
    {
        let (key, value) = item.db()?;
        let file_offset = key.value().1;
        if page.extents as usize >= EXTENTS_PER_PAGE {
            return Ok(Some(file_offset));
        }
        page.extents += 1;
        let (len, block, block_offset) = value.value();
        let block = BlockId(block);
        if file_offset.saturating_add(len) > rec.size {
            report(
                page,
                Some(block),
                false,
                format!(
                    "extent at {file_offset} (+{len}) reaches past the file size {}",
                    rec.size
                ),
            );
        }
        if blocks.contains_key(&block) {
            continue;
        }
        let b: BlockRecord = match t.blocks.table()?.get(block.0).db()? {
            Some(v) => decode(v.value())?,
            None => {
                report(
                    page,
                    Some(block),
                    false,
                    format!("extent at {file_offset} refers to missing block {block}"),
                );
                continue;
            }
        };
        let Some(block_len) = b.len else {
            report(
                page,
                Some(block),
                false,
                format!("block {block} is referenced but was never committed"),
            );
            continue;
        };
        if b.volume != rec.volume {
            report(
                page,
                Some(block),
                false,
                format!("block {block} belongs to another volume"),
            );
        }
        if b.refs == 0 {
            report(
                page,
                Some(block),
                false,
                format!("block {block} is referenced but counts no references"),
            );
        }
        if block_offset.saturating_add(len) > block_len {
            report(
                page,
                Some(block),
                false,
                format!("extent at {file_offset} reaches past its {block_len}-byte block {block}"),
            );
        }
        if b.is_inline() {
            inline.insert(block, block_len);
            // Its bytes are in the metadata store: nothing for a chunk server to verify.
            let stored = crate::store::inline_data::len(t, block.0)?;
            if stored != Some(block_len) {
                report(
                    page,
                    Some(block),
                    false,
                    match stored {
                        Some(n) => format!(
                            "inline block {block} holds {n} bytes, its record says {block_len}"
                        ),
                        None => format!("inline block {block} has lost its bytes"),
                    },
                );
            }
            continue;
        }
        let up = b.shards.iter().filter(|s| live.contains(s)).count();
        let k = b.policy.k() as usize;
        if up < k {
            report(
                page,
                Some(block),
                false,
                format!(
                    "block {block} is unavailable: {up} of {} shards on live servers, {k} needed",
                    b.shards.len()
                ),
            );
        } else if up < b.shards.len() {
            report(
                page,
                Some(block),
                true,
                format!(
                    "block {block} is degraded: {up} of {} shards on live servers",
                    b.shards.len()
                ),
            );
        }
        let shards = b
            .shards
            .iter()
            .map(|&server| {
                let addr = match t.servers.table()?.get(server.0).db()? {
                    Some(v) => decode::<ServerRecord>(v.value())?.addr,
                    None => String::new(),
                };
                Ok(ShardLocation {
                    server,
                    addr,
                    up: live.contains(&server),
                    cap: None,
                })
            })
            .collect::<FsResult<Vec<_>>>()?;
        blocks.insert(
            block,
            BlockInfo {
                block,
                len: block_len,
                policy: b.policy,
                shards,
                inline: None,
            },
        );
    }
    // Known only when the whole file was read in this page.
    if offset == 0 {
        let held: u64 = inline.values().sum();
        let charged = crate::layout::inline_bytes(t.inline_bytes.table()?, ino)?;
        if held != charged {
            report(
                page,
                None,
                false,
                format!(
                    "the file refers to {held} bytes kept inline, its allowance counts {charged}"
                ),
            );
        }
    }
    Ok(None)
}
