//! A file's inline tail: the bytes at its end kept in the metadata store by small writes and
//! appends. The metadata server bounds the inline bytes of each file
//! ([`MAX_INLINE_PER_FILE`](dfs_common::proto::MAX_INLINE_PER_FILE)); a writer that has spent
//! the allowance moves the tail, with its new bytes, into one erasure-coded block, and the
//! next small appends are one metadata commit each again. The move is a guarded commit
//! (`CommitIfUnchanged`) naming the extents read here, so bytes another client wrote meanwhile
//! are never replaced by older ones.

use dfs_common::proto::meta::{Extent, Layout};
use dfs_common::BlockId;
use std::collections::HashMap;

/// The inline tail of a file as a layout shows it.
#[derive(Debug, PartialEq, Eq)]
pub struct InlineTail {
    /// Where the tail begins; it ends at the file's end.
    pub from: u64,
    /// The extents from `from` to the end, as the server must still have them.
    pub extents: Vec<Extent>,
    /// Their bytes, in file order.
    pub bytes: Vec<u8>,
}

/// The run of inline extents that ends exactly at the end of the file of `layout`, with no
/// hole, or `None` if the file does not end in one (or the layout does not reach its end).
/// `layout` comes from the network: every slice is checked.
pub fn find(layout: &Layout) -> Option<InlineTail> {
    let size = layout.size;
    if layout.complete_to < size {
        return None;
    }
    let mut extents: Vec<&Extent> = layout.extents.iter().collect();
    extents.sort_by_key(|e| e.file_offset);
    // A tail of small appends is an extent and a block per append: looked up, not searched.
    let inline: HashMap<BlockId, &[u8]> = layout
        .blocks
        .iter()
        .filter_map(|b| Some((b.block, b.inline.as_deref()?)))
        .collect();
    let mut start = size;
    let mut picked = Vec::new();
    for e in extents.iter().rev() {
        if e.file_offset.checked_add(e.len) != Some(start) || e.len == 0 {
            break;
        }
        let Some(&bytes) = inline.get(&e.block) else {
            break;
        };
        let from = usize::try_from(e.block_offset).ok()?;
        let slice = bytes.get(from..from.checked_add(usize::try_from(e.len).ok()?)?)?;
        picked.push((**e, slice));
        start = e.file_offset;
    }
    if picked.is_empty() {
        return None;
    }
    picked.reverse();
    Some(InlineTail {
        from: start,
        extents: picked.iter().map(|(e, _)| *e).collect(),
        bytes: picked.iter().map(|(_, s)| *s).collect::<Vec<_>>().concat(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::test_extent as extent;
    use dfs_common::proto::meta::BlockInfo;
    use dfs_common::BlockId;

    fn block(id: u64, inline: Option<&[u8]>) -> BlockInfo {
        BlockInfo {
            block: BlockId(id),
            len: inline.map_or(100, |b| b.len() as u64),
            policy: "4+2".parse().unwrap(),
            shards: Vec::new(),
            inline: inline.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn the_tail_is_the_inline_run_that_ends_the_file() {
        // [0, 100) in a block with shards, then "abc" (from the middle of block 2), "de".
        let layout = Layout {
            size: 105,
            extents: vec![
                extent(103, 2, 3, 0),
                extent(0, 100, 1, 0),
                extent(100, 3, 2, 1),
            ],
            blocks: vec![
                block(1, None),
                block(2, Some(b"xabcx")),
                block(3, Some(b"de")),
            ],
            complete_to: 105,
        };
        let tail = find(&layout).unwrap();
        assert_eq!(tail.from, 100);
        assert_eq!(tail.bytes, b"abcde");
        assert_eq!(
            tail.extents,
            vec![extent(100, 3, 2, 1), extent(103, 2, 3, 0)]
        );
    }

    #[test]
    fn no_tail_after_a_hole_a_block_or_past_what_is_known() {
        let inline = |size, extents, complete_to| Layout {
            size,
            extents,
            blocks: vec![block(2, Some(b"abc"))],
            complete_to,
        };
        // A hole at the end, or a file that ends in a block with shards.
        assert_eq!(find(&inline(10, vec![extent(0, 3, 2, 0)], 10)), None);
        let in_block = Layout {
            blocks: vec![block(1, None)],
            ..inline(3, vec![extent(0, 3, 1, 0)], 3)
        };
        assert_eq!(find(&in_block), None);
        // The layout stops short of the end.
        assert_eq!(find(&inline(3, vec![extent(0, 3, 2, 0)], 2)), None);
        // A hole inside the run ends the tail there.
        let holed = inline(7, vec![extent(0, 3, 2, 0), extent(4, 3, 2, 0)], 7);
        assert_eq!(find(&holed).unwrap().from, 4);
        // Slices a peer got wrong are no tail, never a panic.
        assert_eq!(find(&inline(3, vec![extent(0, 3, 2, 1)], 3)), None);
        assert_eq!(find(&inline(3, vec![extent(0, 3, 2, u64::MAX)], 3)), None);
    }
}
