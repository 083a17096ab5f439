//! File layouts: extents over immutable blocks, and the block reference counts they imply.
//!
//! A write never changes a block; it lays a new extent over the old range, cutting any extents
//! it covers. A block whose reference count drops to zero is garbage for the collector; one
//! that gains a reference again is not. An inline block is dropped, bytes and all, when its
//! count drops to zero: its readers got its bytes with their layouts.
//!
//! The same bookkeeping keeps each file's `inline_bytes`: an inline block is charged, whole, to
//! the file whose extent makes its count leave zero, and uncharged when it returns to zero. An
//! inline block is only ever referred to by the file that wrote it (commits may not name one
//! already referred to), so the charge is exact.

use crate::store::schema::{decode, encode, BlockRecord};
use crate::store::tables::WriteTables;
use crate::store::DbResult;
use dfs_common::proto::meta::Extent;
use dfs_common::{BlockId, FsError, FsResult, InodeId};
use redb::ReadableTable;
use std::collections::BTreeMap;

/// Reference-count changes gathered during one command and applied at its end, so a block cut
/// and re-referenced in the same command never passes through zero. Each block's change comes
/// with the file whose extents made it.
#[derive(Default)]
pub struct RefDelta(BTreeMap<u64, (i64, InodeId)>);

impl RefDelta {
    fn add(&mut self, block: u64, ino: InodeId, n: i64) {
        self.0.entry(block).or_insert((0, ino)).0 += n;
    }

    pub fn apply(self, t: &mut WriteTables) -> FsResult<()> {
        for (block, (delta, ino)) in self.0 {
            if delta == 0 {
                continue;
            }
            let mut rec: BlockRecord = match t.blocks.table()?.get(block).db()? {
                Some(v) => decode(v.value())?,
                None => {
                    return Err(FsError::Corrupt(format!(
                        "extent refers to missing block {block}"
                    )))
                }
            };
            let refs = rec.refs as i64 + delta;
            if refs < 0 {
                return Err(FsError::Corrupt(format!(
                    "block {block} reference count below zero"
                )));
            }
            if rec.is_inline() && (rec.refs == 0) != (refs == 0) {
                let len = rec.len.unwrap_or(0);
                charge_inline(t, ino, if refs == 0 { -(len as i64) } else { len as i64 })?;
            }
            if rec.is_inline() && refs == 0 {
                // Nothing can read an inline block once no extent names it: readers get its
                // bytes with the layout, never by its id later. So its bytes leave the store
                // now rather than after the garbage-collection grace, which protects only
                // readers of shards.
                t.blocks.table()?.remove(block).db()?;
                crate::store::inline_data::remove(t, block)?;
                continue;
            }
            rec.refs = refs as u32;
            t.blocks
                .table()?
                .insert(block, encode(&rec).as_slice())
                .db()?;
        }
        Ok(())
    }
}

/// Bytes of the inline blocks `ino` refers to.
pub fn inline_bytes(table: &impl ReadableTable<u64, u64>, ino: InodeId) -> FsResult<u64> {
    Ok(table.get(ino.0).db()?.map_or(0, |v| v.value()))
}

fn charge_inline(t: &mut WriteTables, ino: InodeId, delta: i64) -> FsResult<()> {
    // Never below zero, whatever a damaged count says (fsck reports a wrong one).
    let bytes = inline_bytes(t.inline_bytes.table()?, ino)?.saturating_add_signed(delta);
    if bytes == 0 {
        t.inline_bytes.table()?.remove(ino.0).db()?;
    } else {
        t.inline_bytes.table()?.insert(ino.0, bytes).db()?;
    }
    Ok(())
}

type ExtentValue = (u64, u64, u64);

/// Extents of `ino` overlapping `[start, end)`, in file order.
pub fn overlapping(
    extents: &impl ReadableTable<(u64, u64), ExtentValue>,
    ino: InodeId,
    start: u64,
    end: u64,
) -> FsResult<Vec<Extent>> {
    overlapping_at_most(extents, ino, start, end, usize::MAX)
}

/// The first `limit` extents of `ino` overlapping `[start, end)`, in file order: a layout page
/// costs the same whatever the length of the file behind it.
pub fn overlapping_at_most(
    extents: &impl ReadableTable<(u64, u64), ExtentValue>,
    ino: InodeId,
    start: u64,
    end: u64,
    limit: usize,
) -> FsResult<Vec<Extent>> {
    let to_extent = |k: (u64, u64), v: ExtentValue| Extent {
        file_offset: k.1,
        len: v.0,
        block: BlockId(v.1),
        block_offset: v.2,
    };
    let mut out = Vec::new();
    if let Some(item) = extents.range((ino.0, 0)..(ino.0, start)).db()?.next_back() {
        let (k, v) = item.db()?;
        let e = to_extent(k.value(), v.value());
        if e.file_offset + e.len > start {
            out.push(e);
        }
    }
    if start < end {
        for item in extents.range((ino.0, start)..(ino.0, end)).db()? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.db()?;
            out.push(to_extent(k.value(), v.value()));
        }
    }
    Ok(out)
}

/// Removes the parts of `ino`'s extents that fall in `[start, end)`, keeping what lies outside.
fn cut(
    t: &mut WriteTables,
    ino: InodeId,
    start: u64,
    end: u64,
    refs: &mut RefDelta,
) -> FsResult<()> {
    for e in overlapping(t.extents.table()?, ino, start, end)? {
        t.extents.table()?.remove((ino.0, e.file_offset)).db()?;
        refs.add(e.block.0, ino, -1);
        let e_end = e.file_offset + e.len;
        if e.file_offset < start {
            t.extents
                .table()?
                .insert(
                    (ino.0, e.file_offset),
                    (start - e.file_offset, e.block.0, e.block_offset),
                )
                .db()?;
            refs.add(e.block.0, ino, 1);
        }
        if e_end > end {
            let skip = end - e.file_offset;
            t.extents
                .table()?
                .insert(
                    (ino.0, end),
                    (e_end - end, e.block.0, e.block_offset + skip),
                )
                .db()?;
            refs.add(e.block.0, ino, 1);
        }
    }
    Ok(())
}

/// Lays `extent` over whatever `ino` had in its range.
pub fn put_extent(
    t: &mut WriteTables,
    ino: InodeId,
    extent: Extent,
    refs: &mut RefDelta,
) -> FsResult<()> {
    let end = extent.file_offset + extent.len;
    cut(t, ino, extent.file_offset, end, refs)?;
    t.extents
        .table()?
        .insert(
            (ino.0, extent.file_offset),
            (extent.len, extent.block.0, extent.block_offset),
        )
        .db()?;
    refs.add(extent.block.0, ino, 1);
    Ok(())
}

/// Drops everything at or beyond `size`.
pub fn truncate(t: &mut WriteTables, ino: InodeId, size: u64, refs: &mut RefDelta) -> FsResult<()> {
    cut(t, ino, size, u64::MAX, refs)
}
