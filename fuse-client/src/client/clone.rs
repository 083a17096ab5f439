//! Copies between files as new references to the same blocks (`copy_file_range`).
//!
//! Blocks never change, and each counts the extents that refer to it, so a range of one file
//! can be copied into another by committing extents that name the source's blocks: no byte is
//! read or written, and the copy shares the source's storage until either is overwritten.
//! Only what such a commit can say exactly is copied this way: a range of the source in
//! erasure-coded blocks. Inline blocks (each belongs to the one file that wrote it) are left
//! to the kernel, which copies those bytes itself when told the operation is not supported.
//! So are holes, unless the destination holds nothing from the copy's start on (a new file,
//! or the copy's next piece): there a hole copied as nothing reads as zeros too, and the
//! commit is made on that condition (`CommitIfUnchanged`). A copy that would end in such a
//! hole ends at its last block instead; the caller asks again for the rest.

use dfs_common::model::{Extent, NewExtent};
use dfs_common::proto::meta::Layout;

/// The extents that make `[to, to + len)` of a file hold what `[from, from + len)` holds in
/// the file of `layout` (asked for that range), with the number of bytes they copy; `None`
/// when the range is not wholly covered by erasure-coded blocks the layout describes. With
/// `skip_holes` (the destination holds nothing from `to` on), holes need no extent, and the
/// copy ends where the range's last block does.
pub fn extents_for_copy(
    layout: &Layout,
    from: u64,
    len: u64,
    to: u64,
    skip_holes: bool,
) -> Option<(Vec<NewExtent>, u64)> {
    let end = from.checked_add(len)?;
    to.checked_add(len)?;
    if layout.complete_to < end {
        return None;
    }
    let mut out = Vec::new();
    let mut at = from;
    for e in &layout.extents {
        let e_end = e.file_offset + e.len;
        if e_end <= at {
            continue;
        }
        if e.file_offset >= end {
            break;
        }
        if e.file_offset > at {
            if !skip_holes {
                return None;
            }
            at = e.file_offset;
        }
        let block = layout.blocks.iter().find(|b| b.block == e.block)?;
        if block.is_inline() {
            return None;
        }
        let skip = at - e.file_offset;
        let take = (e_end.min(end)) - at;
        out.push(NewExtent {
            extent: Extent {
                file_offset: to + (at - from),
                len: take,
                block: e.block,
                block_offset: e.block_offset + skip,
            },
            block_len: block.len,
            missing_shards: 0,
        });
        at += take;
    }
    if out.is_empty() || (at < end && !skip_holes) {
        return None;
    }
    Some((out, at - from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::test_extent as extent;
    use dfs_common::proto::meta::{BlockInfo, ShardLocation};
    use dfs_common::{BlockId, EcPolicy, ServerId};

    fn block(id: u64, len: u64, inline: bool) -> BlockInfo {
        BlockInfo {
            block: BlockId(id),
            len,
            policy: "2+1".parse::<EcPolicy>().unwrap(),
            shards: if inline {
                Vec::new()
            } else {
                (1..=3)
                    .map(|s| ShardLocation {
                        server: ServerId(s),
                        addr: "127.0.0.1:1".into(),
                        up: true,
                        cap: None,
                    })
                    .collect()
            },
            inline: inline.then(|| vec![0; len as usize]),
        }
    }

    /// A 300-byte file: [0, 100) in block 1, [100, 300) in block 2 from its byte 50.
    fn layout() -> Layout {
        Layout {
            size: 300,
            extents: vec![extent(0, 100, 1, 0), extent(100, 200, 2, 50)],
            blocks: vec![block(1, 100, false), block(2, 400, false)],
            complete_to: 300,
        }
    }

    #[test]
    fn a_covered_range_becomes_the_same_blocks_at_the_destination() {
        let (got, copied) = extents_for_copy(&layout(), 40, 160, 1000, false).unwrap();
        assert_eq!(copied, 160);
        let want = vec![
            NewExtent {
                extent: extent(1000, 60, 1, 40),
                block_len: 100,
                missing_shards: 0,
            },
            NewExtent {
                extent: extent(1060, 100, 2, 50),
                block_len: 400,
                missing_shards: 0,
            },
        ];
        assert_eq!(got, want);
        let (within, _) = extents_for_copy(&layout(), 150, 10, 0, false).unwrap();
        assert_eq!(within[0].extent, extent(0, 10, 2, 100));
    }

    #[test]
    fn holes_inline_blocks_and_unknown_ranges_are_left_to_the_kernel() {
        let mut holed = layout();
        holed.extents[1].file_offset = 120;
        holed.extents[1].len = 180;
        assert!(extents_for_copy(&holed, 0, 300, 0, false).is_none());
        assert!(extents_for_copy(&holed, 0, 100, 0, false).is_some());
        let mut inline = layout();
        inline.blocks[0] = block(1, 100, true);
        assert!(extents_for_copy(&inline, 0, 150, 0, false).is_none());
        assert!(extents_for_copy(&inline, 0, 150, 0, true).is_none());
        assert!(extents_for_copy(&inline, 100, 50, 0, false).is_some());
        let mut partial = layout();
        partial.complete_to = 100;
        assert!(extents_for_copy(&partial, 50, 100, 0, false).is_none());
        // Past the end of the extents: a hole too.
        assert!(extents_for_copy(&layout(), 250, 100, 0, false).is_none());
        assert!(extents_for_copy(&layout(), u64::MAX - 5, 10, 0, false).is_none());
    }

    #[test]
    fn holes_are_skipped_into_a_destination_that_holds_nothing_there() {
        // [0, 100) block 1, a hole to 120, [120, 300) block 2.
        let mut holed = layout();
        holed.extents[1].file_offset = 120;
        holed.extents[1].len = 180;
        let (got, copied) = extents_for_copy(&holed, 50, 250, 1000, true).unwrap();
        assert_eq!(copied, 250);
        let got: Vec<Extent> = got.iter().map(|e| e.extent).collect();
        assert_eq!(got, vec![extent(1000, 50, 1, 50), extent(1070, 180, 2, 50)]);
        // A range ending in a hole ends at its last block; one with no block is not copied.
        let mut asked_far = layout();
        asked_far.complete_to = 700;
        let (_, copied) = extents_for_copy(&asked_far, 200, 500, 0, true).unwrap();
        assert_eq!(copied, 100);
        assert!(extents_for_copy(&holed, 100, 20, 0, true).is_none());
        assert!(extents_for_copy(&asked_far, 300, 50, 0, true).is_none());
    }
}
