//! Layouts as reads use them: one reply indexed for lookups ([`LayoutPage`]), and an open
//! file's cache of the pages it has fetched ([`LayoutPages`]). A file rewritten by many small
//! random writes has tens of thousands of extents; a read then finds its few by binary search,
//! and random reads over the whole file are served from a bounded set of pages instead of
//! fetching a page per read.

use dfs_common::proto::meta::{BlockInfo, Extent, Layout};
use dfs_common::BlockId;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// One layout reply: the extents from `start` on, complete up to `complete_to`.
pub struct LayoutPage {
    pub start: u64,
    pub size: u64,
    pub complete_to: u64,
    /// In file order, not overlapping (as the metadata server keeps them).
    extents: Vec<Extent>,
    blocks: HashMap<BlockId, Arc<BlockInfo>>,
}

impl LayoutPage {
    pub fn new(start: u64, layout: Layout) -> Self {
        let mut extents = layout.extents;
        // Replies are in file order; sorting again costs nothing then and keeps lookups right
        // whatever a peer sends.
        extents.sort_by_key(|e| e.file_offset);
        LayoutPage {
            start,
            size: layout.size,
            complete_to: layout.complete_to,
            extents,
            blocks: layout
                .blocks
                .into_iter()
                .map(|b| (b.block, Arc::new(b)))
                .collect(),
        }
    }

    /// Whether this page describes every byte of `[offset, end)` that lies inside the file.
    pub fn covers(&self, offset: u64, end: u64) -> bool {
        self.start <= offset && end.min(self.size) <= self.complete_to
    }

    /// The extents overlapping `[offset, end)`, in file order.
    pub fn extents_in(&self, offset: u64, end: u64) -> &[Extent] {
        let first = self
            .extents
            .partition_point(|e| e.file_offset.saturating_add(e.len) <= offset);
        let stop = first + self.extents[first..].partition_point(|e| e.file_offset < end);
        &self.extents[first..stop]
    }

    pub fn block(&self, id: BlockId) -> Option<&Arc<BlockInfo>> {
        self.blocks.get(&id)
    }

    fn extent_count(&self) -> usize {
        self.extents.len()
    }
}

/// Extents an open file keeps cached at most, over all its pages (a few MiB of memory).
const MAX_CACHED_EXTENTS: usize = 64 * dfs_common::proto::MAX_LAYOUT_EXTENTS;

/// The layout pages an open file has fetched, keyed by start; the oldest go first when the
/// cache holds more than [`MAX_CACHED_EXTENTS`].
#[derive(Default)]
pub struct LayoutPages {
    pages: BTreeMap<u64, Arc<LayoutPage>>,
    order: VecDeque<u64>,
    extents: usize,
}

impl LayoutPages {
    /// A cached page that describes all of `[offset, end)`.
    pub fn covering(&self, offset: u64, end: u64) -> Option<Arc<LayoutPage>> {
        self.pages
            .range(..=offset)
            .rev()
            .map(|(_, page)| page)
            .find(|page| page.covers(offset, end))
            .cloned()
    }

    pub fn insert(&mut self, page: Arc<LayoutPage>) {
        if let Some(old) = self.pages.insert(page.start, page.clone()) {
            self.extents -= old.extent_count();
            self.order.retain(|&s| s != page.start);
        }
        self.extents += page.extent_count();
        self.order.push_back(page.start);
        while self.extents > MAX_CACHED_EXTENTS && self.order.len() > 1 {
            let oldest = self.order.pop_front().expect("not empty");
            if let Some(old) = self.pages.remove(&oldest) {
                self.extents -= old.extent_count();
            }
        }
    }

    pub fn contains(&self, page: &Arc<LayoutPage>) -> bool {
        self.pages
            .get(&page.start)
            .is_some_and(|p| Arc::ptr_eq(p, page))
    }

    pub fn clear(&mut self) {
        self.pages.clear();
        self.order.clear();
        self.extents = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfs_common::EcPolicy;

    fn page(start: u64, size: u64, complete_to: u64, extents: &[(u64, u64)]) -> LayoutPage {
        let extents: Vec<Extent> = extents
            .iter()
            .map(|&(file_offset, len)| Extent {
                file_offset,
                len,
                block: BlockId(1),
                block_offset: file_offset,
            })
            .collect();
        LayoutPage::new(
            start,
            Layout {
                size,
                extents,
                blocks: vec![BlockInfo {
                    block: BlockId(1),
                    len: size,
                    policy: EcPolicy::new(4, 2).unwrap(),
                    shards: Vec::new(),
                    inline: None,
                }],
                complete_to,
            },
        )
    }

    #[test]
    fn extents_in_finds_exactly_the_overlapping_ones() {
        // Extents at 0..10, 10..20, 30..40 (a hole at 20..30).
        let p = page(0, 40, 40, &[(0, 10), (10, 10), (30, 10)]);
        let offsets =
            |o, e| -> Vec<u64> { p.extents_in(o, e).iter().map(|x| x.file_offset).collect() };
        assert_eq!(offsets(0, 1), vec![0]);
        assert_eq!(offsets(9, 11), vec![0, 10]);
        assert_eq!(offsets(10, 20), vec![10]);
        assert_eq!(offsets(20, 30), Vec::<u64>::new());
        assert_eq!(offsets(25, 31), vec![30]);
        assert_eq!(offsets(0, 40), vec![0, 10, 30]);
        assert_eq!(offsets(40, 50), Vec::<u64>::new());
        assert!(p.block(BlockId(1)).is_some());
        assert!(p.block(BlockId(2)).is_none());
    }

    #[test]
    fn pages_cover_only_what_they_describe_and_stay_bounded() {
        let mut pages = LayoutPages::default();
        pages.insert(Arc::new(page(100, 1000, 200, &[(100, 100)])));
        assert!(pages.covering(100, 200).is_some());
        assert!(pages.covering(150, 160).is_some());
        assert!(pages.covering(99, 120).is_none(), "starts before the page");
        assert!(pages.covering(150, 201).is_none(), "ends past complete_to");
        // A page complete to the end of file covers reads past the end.
        pages.insert(Arc::new(page(500, 1000, 1000, &[(500, 500)])));
        assert!(pages.covering(900, 5000).is_some());
        let big = dfs_common::proto::MAX_LAYOUT_EXTENTS as u64;
        let many: Vec<(u64, u64)> = (0..big).map(|i| (10_000 + i, 1)).collect();
        for n in 0..70u64 {
            let start = 10_000 + n * big;
            let shifted: Vec<(u64, u64)> = many.iter().map(|&(o, l)| (o + n * big, l)).collect();
            pages.insert(Arc::new(page(start, u64::MAX, start + big, &shifted)));
        }
        assert!(pages.extents <= MAX_CACHED_EXTENTS);
        assert!(
            pages.covering(100, 200).is_none(),
            "oldest pages went first"
        );
        let last = 10_000 + 69 * big;
        assert!(pages.covering(last, last + 1).is_some());
    }
}
