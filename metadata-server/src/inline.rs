//! Small data kept in the metadata store. A small write may come with its bytes
//! (`WriteInline`): they become a block like any other (extents, reference counts, garbage
//! collection, quotas), but one with no shards, whose bytes sit in the `inline_data` table and
//! are replicated with the metadata. A small file then costs one metadata commit to write,
//! instead of a block allocation, k+m fsynced shard writes and a commit, and its reads are
//! served from the layout. So does a small append to a log.
//!
//! What bounds the metadata one file costs is its inline allowance: the inline blocks a file
//! refers to hold at most [`MAX_INLINE_PER_FILE`] bytes (`inline_bytes`, kept by
//! [`crate::layout::RefDelta`]). A writer that finds it spent moves the file's inline tail
//! into an erasure-coded block with a guarded commit ([`commit_if_unchanged`]), which frees
//! it again. (The first format of the command, [`Op::WriteInline`](crate::command::Op), took
//! only writes within a file's first [`MAX_INLINE_END`] bytes; it is kept for old logs.)

use crate::command::Outcome;
use crate::layout;
use crate::state_machine::commit_write;
use crate::store::schema::{encode, BlockRecord, NEXT_BLOCK};
use crate::store::tables::{get_inode, get_volume_by_id, WriteTables};
use crate::store::DbResult;
use dfs_common::model::{Extent, FileKind, NewExtent};
use dfs_common::proto::{MAX_INLINE_END, MAX_INLINE_PER_FILE, MAX_LAYOUT_EXTENTS};
use dfs_common::{BlockId, FsError, FsResult, InodeId, Timestamp};

/// Which rule an inline write is held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// Every piece ends within a file's first [`MAX_INLINE_END`] bytes (the first format).
    FileStart,
    /// Anywhere, while the file's inline blocks stay within [`MAX_INLINE_PER_FILE`] bytes.
    Allowance,
}

/// Keeps small data in the metadata store: one new block, kept inline and committed at once,
/// holding `pieces` laid end to end in `data`; then the same commit as [`commit_write`].
#[allow(clippy::too_many_arguments)]
pub fn write(
    t: &mut WriteTables,
    now: Timestamp,
    ino: InodeId,
    pieces: &[(u64, u64)],
    data: &[u8],
    mtime: Timestamp,
    append: bool,
    bound: Bound,
) -> FsResult<Outcome> {
    let rec = get_inode(t.inodes.table()?, ino)?;
    if rec.kind != FileKind::File {
        return Err(FsError::invalid("writes go to regular files"));
    }
    let total = pieces.iter().try_fold(0u64, |sum, &(_, len)| {
        (len > 0).then(|| sum.checked_add(len))?
    });
    if data.is_empty() || total != Some(data.len() as u64) {
        return Err(FsError::invalid(
            "inline pieces must be non-empty and add up to the data",
        ));
    }
    if data.len() as u64 > MAX_INLINE_END {
        return Err(FsError::TooBig(format!(
            "{} bytes to keep inline, at most {MAX_INLINE_END}",
            data.len()
        )));
    }
    if bound == Bound::FileStart {
        let base = if append { rec.size } else { 0 };
        let beyond = pieces.iter().any(|&(offset, len)| {
            base.checked_add(offset)
                .and_then(|o| o.checked_add(len))
                .is_none_or(|end| end > MAX_INLINE_END)
        });
        if beyond {
            return Err(FsError::TooBig(format!(
                "only a file's first {MAX_INLINE_END} bytes are kept inline"
            )));
        }
    }
    let (_, volume) = get_volume_by_id(t.volumes.table()?, t.volume_ids.table()?, rec.volume)?;
    let block = BlockId(t.next_id(NEXT_BLOCK, 1)?);
    let block_len = data.len() as u64;
    let block_rec = BlockRecord {
        volume: rec.volume,
        policy: volume.policy,
        len: Some(block_len),
        shards: Vec::new(),
        refs: 0,
        created: now,
    };
    t.blocks
        .table()?
        .insert(block.0, encode(&block_rec).as_slice())
        .db()?;
    crate::store::inline_data::put(t, block.0, data)?;
    let extents = NewExtent::packed(block, block_len, 0, pieces.iter().copied());
    let outcome = commit_write(t, now, ino, &extents, mtime, append)?;
    if bound == Bound::Allowance {
        // Checked once applied, so a write that replaces inline bytes is charged only for
        // what it adds; a refusal rolls the whole command back.
        let charged = layout::inline_bytes(t.inline_bytes.table()?, ino)?;
        if charged > MAX_INLINE_PER_FILE {
            return Err(FsError::TooBig(format!(
                "the file would keep {charged} bytes inline, at most {MAX_INLINE_PER_FILE}"
            )));
        }
    }
    Ok(outcome)
}

/// A commit that happens only if the file is still `size` bytes long with exactly the extents
/// `expect` from `from` to its end: blocks never change, so the bytes there are the ones the
/// writer read. Else `Changed`, and nothing is done.
#[allow(clippy::too_many_arguments)]
pub fn commit_if_unchanged(
    t: &mut WriteTables,
    now: Timestamp,
    ino: InodeId,
    extents: &[NewExtent],
    mtime: Timestamp,
    size: u64,
    from: u64,
    expect: &[Extent],
) -> FsResult<Outcome> {
    if expect.len() > MAX_LAYOUT_EXTENTS {
        return Err(FsError::TooBig(format!(
            "{} extents to compare, at most {MAX_LAYOUT_EXTENTS}",
            expect.len()
        )));
    }
    let rec = get_inode(t.inodes.table()?, ino)?;
    if rec.size != size {
        return Err(FsError::Changed(format!(
            "{} bytes long, not {size}",
            rec.size
        )));
    }
    let found = layout::overlapping_at_most(t.extents.table()?, ino, from, size, expect.len() + 1)?;
    if found != expect {
        return Err(FsError::Changed(format!(
            "its extents from offset {from} differ"
        )));
    }
    commit_write(t, now, ino, extents, mtime, false)
}

/// Counts the inline allowance of every file of a store made before it was kept (whose
/// `inline_bytes` table is new): the inline blocks each file's extents refer to, once each.
pub fn backfill(tx: &redb::WriteTransaction) -> FsResult<()> {
    use redb::ReadableTable;
    use std::collections::{BTreeMap, BTreeSet, HashMap};
    let mut t = WriteTables::open(tx);
    let mut inline: HashMap<u64, u64> = HashMap::new();
    for item in t.blocks.table()?.iter().db()? {
        let (id, value) = item.db()?;
        let rec: BlockRecord = crate::store::schema::decode(value.value())?;
        if rec.is_inline() && rec.refs > 0 {
            inline.insert(id.value(), rec.len.unwrap_or(0));
        }
    }
    if inline.is_empty() {
        return Ok(());
    }
    let mut seen: BTreeSet<(u64, u64)> = BTreeSet::new();
    let mut charged: BTreeMap<u64, u64> = BTreeMap::new();
    for item in t.extents.table()?.iter().db()? {
        let (key, value) = item.db()?;
        let (ino, block) = (key.value().0, value.value().1);
        if let Some(&len) = inline.get(&block) {
            if seen.insert((ino, block)) {
                *charged.entry(ino).or_default() += len;
            }
        }
    }
    tracing::info!(files = charged.len(), "inline allowances counted");
    for (ino, bytes) in charged {
        t.inline_bytes.table()?.insert(ino, bytes).db()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Op;
    use crate::store::schema::decode;
    use crate::store::tables::ReadTables;
    use crate::testing::{make_node, run};
    use crate::{fsck, layout, queries, store};
    use dfs_common::model::{SetAttr, VolumeLimits};
    use dfs_common::ServerId;
    use redb::{Database, ReadableDatabase, ReadableTableMetadata};
    use std::collections::HashSet;

    fn read(db: &Database) -> redb::ReadTransaction {
        db.begin_read().unwrap()
    }

    fn inline(ino: InodeId, pieces: Vec<(u64, u64)>, data: Vec<u8>, append: bool) -> Op {
        Op::WriteInline {
            ino,
            pieces,
            data,
            mtime: Timestamp { secs: 2, nanos: 0 },
            append,
        }
    }

    /// A volume "v" (quota as given) with an empty file "f": the root and the file.
    fn volume_with_file(db: &Database, quota_bytes: Option<u64>) -> (InodeId, InodeId) {
        let Ok(Outcome::Volume { record, .. }) = run(
            db,
            Op::CreateVolume {
                name: "v".into(),
                policy: "2+1".parse().unwrap(),
                block_size: 1 << 20,
                limits: VolumeLimits {
                    quota_bytes,
                    ..Default::default()
                },
            },
        ) else {
            panic!("volume not created")
        };
        (record.root, make_file(db, record.root, "f"))
    }

    fn make_file(db: &Database, parent: InodeId, name: &str) -> InodeId {
        let Ok(Outcome::Node { ino, .. }) = run(db, make_node(parent, name, FileKind::File)) else {
            panic!("file not created")
        };
        ino
    }

    /// The file's bytes as a reader assembles them from its layout.
    fn contents(db: &Database, ino: InodeId) -> Vec<u8> {
        let layout = queries::get_layout(
            &ReadTables::open(&read(db)),
            ino,
            0,
            u64::MAX,
            MAX_LAYOUT_EXTENTS,
        )
        .unwrap();
        let mut out = vec![0; layout.size as usize];
        for e in &layout.extents {
            let block = layout.blocks.iter().find(|b| b.block == e.block).unwrap();
            let bytes = block.inline.as_ref().expect("every block is inline");
            let from = e.block_offset as usize;
            out[e.file_offset as usize..(e.file_offset + e.len) as usize]
                .copy_from_slice(&bytes[from..from + e.len as usize]);
        }
        out
    }

    fn stored_blocks(db: &Database) -> usize {
        crate::store::inline_data::count(&db.begin_read().unwrap()).unwrap() as usize
    }

    #[test]
    fn inline_writes_commit_read_back_and_leave_the_store_with_their_last_reference() {
        let dir = tempfile::tempdir().unwrap();
        let db = store::open(&dir.path().join("meta.redb")).unwrap();
        let (_, ino) = volume_with_file(&db, None);
        // Two runs in one block: "hello" at 0 and "abc" at 10, a hole between.
        let Ok(Outcome::Committed { after, .. }) = run(
            &db,
            inline(ino, vec![(0, 5), (10, 3)], b"helloabc".to_vec(), false),
        ) else {
            panic!("inline write refused")
        };
        assert_eq!(after.size, 13);
        assert_eq!(contents(&db, ino), b"hello\0\0\0\0\0abc");
        let layout = queries::get_layout(
            &ReadTables::open(&read(&db)),
            ino,
            0,
            u64::MAX,
            MAX_LAYOUT_EXTENTS,
        )
        .unwrap();
        assert_eq!(layout.blocks.len(), 1);
        assert!(layout.blocks[0].shards.is_empty());
        let first = layout.blocks[0].block;
        let rec: BlockRecord = decode(
            ReadTables::open(&read(&db))
                .blocks
                .table()
                .unwrap()
                .get(first.0)
                .unwrap()
                .unwrap()
                .value(),
        )
        .unwrap();
        assert!(rec.is_inline() && rec.refs == 2 && rec.len == Some(8));
        // Appends land at the end as the server sees it.
        run(&db, inline(ino, vec![(0, 2)], b"XY".to_vec(), true)).unwrap();
        assert_eq!(contents(&db, ino), b"hello\0\0\0\0\0abcXY");
        let usage =
            queries::volume_usage(&ReadTables::open(&read(&db)), "v", &HashSet::new()).unwrap();
        assert_eq!((usage.inline_blocks, usage.inline_bytes), (2, 10));
        assert_eq!(
            usage.degraded_blocks, 0,
            "an inline block has no shards to lose"
        );
        let page =
            fsck::check_page(&ReadTables::open(&read(&db)), "v", None, &HashSet::new()).unwrap();
        assert!(page.problems.is_empty(), "{:?}", page.problems);
        assert!(
            page.blocks.is_empty(),
            "no shards for chunk servers to verify"
        );

        // Overwritten whole: the first block loses its references and leaves the store at
        // once, with its bytes; the collector finds nothing of it.
        run(&db, inline(ino, vec![(0, 15)], vec![7; 15], false)).unwrap();
        assert_eq!(contents(&db, ino), vec![7; 15]);
        assert_eq!(
            stored_blocks(&db),
            1,
            "the overwrite covers both earlier blocks"
        );
        let block_records = |db: &Database| {
            ReadTables::open(&read(db))
                .blocks
                .table()
                .unwrap()
                .len()
                .unwrap()
        };
        assert_eq!(block_records(&db), 1);
        let Ok(Outcome::Dropped(dropped)) = run(
            &db,
            Op::DropBlocks {
                blocks: vec![first],
            },
        ) else {
            panic!("drop refused")
        };
        assert!(dropped.is_empty(), "{dropped:?}");
        // Truncated to nothing: every block goes, and the file's allowance is free.
        let truncate = Op::SetAttr {
            ino,
            set: SetAttr {
                size: Some(0),
                ..Default::default()
            },
        };
        run(&db, truncate).unwrap();
        assert_eq!(stored_blocks(&db), 0);
        assert_eq!(block_records(&db), 0);
        let usage =
            queries::volume_usage(&ReadTables::open(&read(&db)), "v", &HashSet::new()).unwrap();
        assert_eq!((usage.inline_blocks, usage.inline_bytes), (0, 0));
        let page =
            fsck::check_page(&ReadTables::open(&read(&db)), "v", None, &HashSet::new()).unwrap();
        assert!(page.problems.is_empty(), "{:?}", page.problems);
    }

    #[test]
    fn inline_writes_stay_within_the_start_of_a_file_and_the_quota() {
        let dir = tempfile::tempdir().unwrap();
        let db = store::open(&dir.path().join("meta.redb")).unwrap();
        let (root, ino) = volume_with_file(&db, Some(MAX_INLINE_END + 100));
        let refused = |op| {
            let outcome = run(&db, op);
            assert_eq!(stored_blocks(&db), 0, "a refused write leaves no bytes");
            outcome
        };
        let end = MAX_INLINE_END;
        assert!(matches!(
            refused(inline(ino, vec![(end - 2, 3)], vec![1; 3], false)),
            Err(FsError::TooBig(_))
        ));
        assert!(matches!(
            refused(inline(ino, vec![(u64::MAX, 3)], vec![1; 3], false)),
            Err(FsError::TooBig(_))
        ));
        // Overlapping pieces may not carry more than the limit either.
        let many = vec![(0, end); 2];
        assert!(matches!(
            refused(inline(ino, many, vec![1; 2 * end as usize], false)),
            Err(FsError::TooBig(_))
        ));
        assert!(matches!(
            refused(inline(ino, vec![(0, 3)], vec![1; 4], false)),
            Err(FsError::Invalid(_))
        ));
        assert!(matches!(
            refused(inline(ino, vec![(0, 0)], vec![], false)),
            Err(FsError::Invalid(_))
        ));
        // Exactly up to the limit is kept; an append beyond it is refused.
        run(
            &db,
            inline(ino, vec![(0, end)], vec![1; end as usize], false),
        )
        .unwrap();
        assert!(matches!(
            refused_after(&db, inline(ino, vec![(0, 1)], vec![2], true)),
            Err(FsError::TooBig(_))
        ));
        // A second file may not take the volume past its quota.
        let g = make_file(&db, root, "g");
        assert!(matches!(
            run(&db, inline(g, vec![(0, 200)], vec![3; 200], false)),
            Err(FsError::QuotaExceeded(_))
        ));
        run(&db, inline(g, vec![(0, 100)], vec![3; 100], false)).unwrap();
    }

    fn refused_after(db: &Database, op: Op) -> FsResult<Outcome> {
        let before = stored_blocks(db);
        let outcome = run(db, op);
        assert_eq!(stored_blocks(db), before);
        outcome
    }

    fn keep(ino: InodeId, offset: u64, data: Vec<u8>, append: bool) -> Op {
        Op::KeepInline {
            ino,
            pieces: vec![(offset, data.len() as u64)],
            data,
            mtime: Timestamp { secs: 2, nanos: 0 },
            append,
        }
    }

    fn charged(db: &Database, ino: InodeId) -> u64 {
        layout::inline_bytes(
            ReadTables::open(&read(db)).inline_bytes.table().unwrap(),
            ino,
        )
        .unwrap()
    }

    /// A block with shards, as a writer would have stored it, not yet committed.
    fn stored_block(db: &Database) -> BlockId {
        let tx = db.begin_write().unwrap();
        let block = {
            let mut t = WriteTables::open(&tx);
            let block = BlockId(t.next_id(NEXT_BLOCK, 1).unwrap());
            let rec = BlockRecord {
                volume: dfs_common::VolumeId(1),
                policy: "2+1".parse().unwrap(),
                len: None,
                shards: vec![ServerId(1), ServerId(2), ServerId(3)],
                refs: 0,
                created: Timestamp { secs: 1, nanos: 0 },
            };
            t.blocks
                .table()
                .unwrap()
                .insert(block.0, encode(&rec).as_slice())
                .unwrap();
            block
        };
        tx.commit().unwrap();
        block
    }

    #[test]
    fn small_writes_anywhere_stay_within_the_files_inline_allowance() {
        let dir = tempfile::tempdir().unwrap();
        let db = store::open(&dir.path().join("meta.redb")).unwrap();
        let (root, ino) = volume_with_file(&db, None);
        let quarter = (MAX_INLINE_PER_FILE / 4) as usize;
        // Far past the file's start, and appended: each charged in full.
        run(&db, keep(ino, 1 << 30, vec![1; quarter], false)).unwrap();
        run(&db, keep(ino, 0, vec![2; quarter], true)).unwrap();
        assert_eq!(charged(&db, ino), 2 * quarter as u64);
        // Replacing inline bytes costs only what it adds: the old block is uncharged.
        run(&db, keep(ino, 1 << 30, vec![3; 2 * quarter], false)).unwrap();
        assert_eq!(charged(&db, ino), 2 * quarter as u64);
        run(&db, keep(ino, 0, vec![4; quarter], true)).unwrap();
        run(&db, keep(ino, 0, vec![5; quarter], true)).unwrap();
        assert_eq!(charged(&db, ino), MAX_INLINE_PER_FILE);
        // Spent: one more byte is refused and changes nothing.
        let size = |db: &Database| {
            get_inode(ReadTables::open(&read(db)).inodes.table().unwrap(), ino)
                .unwrap()
                .size
        };
        let before = size(&db);
        assert!(matches!(
            refused_after(&db, keep(ino, 0, vec![6], true)),
            Err(FsError::TooBig(_))
        ));
        assert_eq!(size(&db), before);
        assert_eq!(charged(&db, ino), MAX_INLINE_PER_FILE);
        // A block cut in part stays charged whole; truncating it away frees it.
        let truncate = |size| Op::SetAttr {
            ino,
            set: SetAttr {
                size: Some(size),
                ..Default::default()
            },
        };
        run(&db, truncate(before - 1)).unwrap();
        assert_eq!(charged(&db, ino), MAX_INLINE_PER_FILE);
        run(&db, truncate(before - quarter as u64)).unwrap();
        assert_eq!(charged(&db, ino), MAX_INLINE_PER_FILE - quarter as u64);
        // A second file has its own allowance; unlinking a file drops its row.
        let g = make_file(&db, root, "g");
        run(&db, keep(g, 0, vec![7; quarter], false)).unwrap();
        assert_eq!(charged(&db, g), quarter as u64);
        run(
            &db,
            Op::Unlink {
                parent: root,
                name: "g".into(),
            },
        )
        .unwrap();
        assert_eq!(charged(&db, g), 0);
        assert!(ReadTables::open(&read(&db))
            .inline_bytes
            .table()
            .unwrap()
            .get(g.0)
            .unwrap()
            .is_none());
        // fsck finds the count right, and says so when it is not.
        let problems =
            || fsck::check_page(&ReadTables::open(&read(&db)), "v", None, &HashSet::new()).unwrap();
        assert!(problems().problems.is_empty(), "{:?}", problems().problems);
        let tx = db.begin_write().unwrap();
        tx.open_table(crate::store::schema::INLINE_BYTES)
            .unwrap()
            .insert(ino.0, 1)
            .unwrap();
        tx.commit().unwrap();
        let found = problems().problems;
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].what.contains("allowance counts 1"), "{found:?}");
    }

    #[test]
    fn a_store_made_before_the_allowance_has_it_counted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let db = store::open(&path).unwrap();
        let (root, f) = volume_with_file(&db, None);
        let g = make_file(&db, root, "g");
        run(&db, inline(f, vec![(0, 10), (20, 5)], vec![1; 15], false)).unwrap();
        run(&db, keep(f, 1 << 20, vec![2; 7], false)).unwrap();
        run(&db, keep(g, 0, vec![3; 30], false)).unwrap();
        let counted = (charged(&db, f), charged(&db, g));
        assert_eq!(counted, (22, 30));
        // As an older store has it: no table.
        let tx = db.begin_write().unwrap();
        tx.delete_table(crate::store::schema::INLINE_BYTES).unwrap();
        tx.commit().unwrap();
        drop(db);
        let db = store::open(&path).unwrap();
        assert_eq!((charged(&db, f), charged(&db, g)), counted);
        let page =
            fsck::check_page(&ReadTables::open(&read(&db)), "v", None, &HashSet::new()).unwrap();
        assert!(page.problems.is_empty(), "{:?}", page.problems);
    }

    #[test]
    fn an_inline_tail_moves_into_a_block_only_if_the_file_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let db = store::open(&dir.path().join("meta.redb")).unwrap();
        let (_, ino) = volume_with_file(&db, None);
        // A block-backed start, then a tail of small appends kept inline.
        let head = stored_block(&db);
        let commit = |block, offset, len| Op::CommitWrite {
            ino,
            extents: NewExtent::packed(block, len, 0, [(offset, len)]),
            mtime: Timestamp { secs: 2, nanos: 0 },
            append: false,
        };
        run(&db, commit(head, 0, 1000)).unwrap();
        for i in 0..3u8 {
            run(&db, keep(ino, 0, vec![i; 10], true)).unwrap();
        }
        assert_eq!(charged(&db, ino), 30);
        let tail = layout::overlapping(
            ReadTables::open(&read(&db)).extents.table().unwrap(),
            ino,
            1000,
            1030,
        )
        .unwrap();
        assert_eq!(tail.len(), 3);
        let moved = |size, from, expect: Vec<Extent>| {
            let block = stored_block(&db);
            Op::CommitIfUnchanged {
                ino,
                extents: NewExtent::packed(block, 40, 0, [(1000, 40)]),
                mtime: Timestamp { secs: 3, nanos: 0 },
                size,
                from,
                expect,
            }
        };
        // Another size, or other extents: nothing happens.
        assert!(matches!(
            run(&db, moved(1031, 1000, tail.clone())),
            Err(FsError::Changed(_))
        ));
        assert!(matches!(
            run(&db, moved(1030, 1000, tail[1..].to_vec())),
            Err(FsError::Changed(_))
        ));
        assert!(matches!(
            run(&db, moved(1030, 1010, tail.clone())),
            Err(FsError::Changed(_))
        ));
        assert_eq!(charged(&db, ino), 30);
        // As seen: the tail's blocks lose their references and the allowance is whole again.
        let Ok(Outcome::Committed { after, .. }) = run(&db, moved(1030, 1000, tail.clone())) else {
            panic!("guarded commit refused")
        };
        assert_eq!(after.size, 1040);
        assert_eq!(charged(&db, ino), 0);
        for e in &tail {
            let tx = read(&db);
            let tables = ReadTables::open(&tx);
            let rec = tables.blocks.table().unwrap().get(e.block.0).unwrap();
            assert!(rec.is_none(), "inline block {} left the store", e.block);
            assert_eq!(store::inline_data::get(&tables, e.block.0).unwrap(), None);
        }
        // An inline block already referred to can never be named by another commit.
        run(&db, keep(ino, 0, vec![9; 10], true)).unwrap();
        let kept = layout::overlapping(
            ReadTables::open(&read(&db)).extents.table().unwrap(),
            ino,
            1040,
            1050,
        )
        .unwrap()[0];
        assert!(matches!(
            run(&db, commit(kept.block, 0, 10)),
            Err(FsError::Invalid(_))
        ));
    }
}
