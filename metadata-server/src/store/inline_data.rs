//! Where the bytes of inline blocks sit in redb: cut into pieces that fill its pages.
//!
//! redb keeps a value too big to share a leaf in a page of its own, whose size is the next
//! power of two: 16,384 bytes and their key take a 32 KiB page. The sizes that files and
//! writes most often have (4, 8, 16, 64 KiB) would so cost twice their bytes in the store's
//! file, in its cache and in every snapshot. A block's bytes are therefore cut into pieces
//! that each just fill a page of 16, 8 or 4 KiB (the largest first) in `inline_pieces`, and
//! a tail shorter than the smallest piece in `inline_tails`, where small tails share leaves.
//! Every block written this way has a tail, maybe empty: it says the block is here. Blocks
//! written whole by earlier versions stay in `inline_data` until they are dropped; reads look
//! there for a block without a tail. An earlier version finds no bytes for a block written
//! here, and says so, rather than reading a part of them.

use super::tables::{ReadTables, WriteTables};
use super::DbResult;
use dfs_common::FsResult;
use redb::ReadableTable;

/// Piece sizes, largest first: each with its key fills a leaf page of 16, 8 or 4 KiB, with a
/// few bytes to spare (redb takes 15 bytes of a page holding one entry with this key).
pub const PIECE_SIZES: [usize; 3] = [16_352, 8_160, 4_064];

/// Piece numbers a block can have: its bytes are far fewer than this many smallest pieces.
const MAX_PIECES: u32 = u32::MAX;

/// The lengths of the pieces `len` bytes are cut into, in order; what is left is the tail.
pub fn piece_lengths(len: usize) -> Vec<usize> {
    let mut pieces = Vec::new();
    let mut left = len;
    for size in PIECE_SIZES {
        while left >= size {
            pieces.push(size);
            left -= size;
        }
    }
    pieces
}

/// Stores `data` as the bytes of inline `block`.
pub fn put(t: &mut WriteTables, block: u64, data: &[u8]) -> FsResult<()> {
    let mut at = 0;
    let lengths = piece_lengths(data.len());
    // (A short block, the commonest, has no pieces: their table is not even opened.)
    if !lengths.is_empty() {
        let pieces = t.inline_pieces.table()?;
        for (n, len) in lengths.into_iter().enumerate() {
            pieces.insert((block, n as u32), &data[at..at + len]).db()?;
            at += len;
        }
    }
    t.inline_tails.table()?.insert(block, &data[at..]).db()?;
    Ok(())
}

/// The bytes of inline `block`, if the store has them.
pub fn get(t: &ReadTables, block: u64) -> FsResult<Option<Vec<u8>>> {
    let Some(tail) = t.inline_tails.table()?.get(block).db()? else {
        let whole = t.inline_data.table()?.get(block).db()?;
        return Ok(whole.map(|v| v.value().to_vec()));
    };
    let tail = tail.value().to_vec();
    assemble(t.inline_pieces.table()?, block, tail).map(Some)
}

/// How many bytes inline `block` holds, if the store has them: [`get`] without the copy.
pub fn len(t: &ReadTables, block: u64) -> FsResult<Option<u64>> {
    let Some(tail) = t.inline_tails.table()?.get(block).db()? else {
        let whole = t.inline_data.table()?.get(block).db()?;
        return Ok(whole.map(|v| v.value().len() as u64));
    };
    let mut len = tail.value().len() as u64;
    for item in t
        .inline_pieces
        .table()?
        .range((block, 0)..=(block, MAX_PIECES))
        .db()?
    {
        len += item.db()?.1.value().len() as u64;
    }
    Ok(Some(len))
}

/// A block's pieces in order, then its tail.
fn assemble(
    pieces: &impl ReadableTable<(u64, u32), &'static [u8]>,
    block: u64,
    tail: Vec<u8>,
) -> FsResult<Vec<u8>> {
    let mut bytes = Vec::new();
    for item in pieces.range((block, 0)..=(block, MAX_PIECES)).db()? {
        let (_, piece) = item.db()?;
        bytes.extend_from_slice(piece.value());
    }
    bytes.extend_from_slice(&tail);
    Ok(bytes)
}

/// Removes the bytes of inline `block`, wherever they are.
pub fn remove(t: &mut WriteTables, block: u64) -> FsResult<()> {
    if t.inline_tails.table()?.remove(block).db()?.is_none() {
        t.inline_data.table()?.remove(block).db()?;
        return Ok(());
    }
    let pieces = t.inline_pieces.table()?;
    for n in 0..MAX_PIECES {
        if pieces.remove((block, n)).db()?.is_none() {
            break;
        }
    }
    Ok(())
}

/// [`get`] within a write transaction.
#[cfg(test)]
fn get_in(t: &mut WriteTables, block: u64) -> FsResult<Option<Vec<u8>>> {
    let tail = t.inline_tails.table()?.get(block).db()?;
    let Some(tail) = tail.map(|v| v.value().to_vec()) else {
        let whole = t.inline_data.table()?.get(block).db()?;
        return Ok(whole.map(|v| v.value().to_vec()));
    };
    assemble(t.inline_pieces.table()?, block, tail).map(Some)
}

/// Inline blocks the store holds bytes for.
#[cfg(test)]
pub fn count(tx: &redb::ReadTransaction) -> FsResult<u64> {
    use redb::ReadableTableMetadata;
    let tails = tx
        .open_table(super::schema::INLINE_TAILS)
        .db()?
        .len()
        .db()?;
    let whole = tx.open_table(super::schema::INLINE_DATA).db()?.len().db()?;
    Ok(tails + whole)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store;
    use crate::store::schema::{INLINE_PIECES, INLINE_TAILS};
    use redb::{ReadableDatabase, ReadableTableMetadata};

    #[test]
    fn bytes_are_cut_into_page_sized_pieces_and_a_short_tail() {
        assert_eq!(piece_lengths(0), Vec::<usize>::new());
        assert_eq!(piece_lengths(4_063), Vec::<usize>::new());
        assert_eq!(piece_lengths(4_096), vec![4_064]);
        assert_eq!(piece_lengths(8_192), vec![8_160]);
        assert_eq!(piece_lengths(12_288), vec![8_160, 4_064]);
        assert_eq!(piece_lengths(16_384), vec![16_352]);
        assert_eq!(piece_lengths(65_536), vec![16_352; 4]);
        for len in [1, 100, 4_064, 16_351, 16_352, 40_000, 65_536] {
            let pieces: usize = piece_lengths(len).iter().sum();
            assert!(pieces <= len && len - pieces < PIECE_SIZES[2], "{len}");
        }
    }

    #[test]
    fn blocks_read_back_whole_and_are_removed_whole_in_either_format() {
        let dir = tempfile::tempdir().unwrap();
        let db = store::open(&dir.path().join("meta.redb")).unwrap();
        let sizes = [0usize, 1, 4_063, 4_064, 4_096, 16_384, 20_000, 65_536];
        let data = |len: usize, seed: u64| -> Vec<u8> {
            (0..len).map(|i| (i as u64 * 31 + seed) as u8).collect()
        };
        let tx = db.begin_write().unwrap();
        {
            let mut t = WriteTables::open(&tx);
            for (i, &len) in sizes.iter().enumerate() {
                put(&mut t, i as u64 + 1, &data(len, i as u64)).unwrap();
            }
            // Written whole by an earlier version.
            t.inline_data
                .table()
                .unwrap()
                .insert(100, data(16_384, 100).as_slice())
                .unwrap();
            for (i, &len) in sizes.iter().enumerate() {
                assert_eq!(
                    get_in(&mut t, i as u64 + 1).unwrap(),
                    Some(data(len, i as u64))
                );
            }
        }
        tx.commit().unwrap();
        {
            let read = db.begin_read().unwrap();
            let t = ReadTables::open(&read);
            for (i, &len) in sizes.iter().enumerate() {
                assert_eq!(get(&t, i as u64 + 1).unwrap(), Some(data(len, i as u64)));
            }
            assert_eq!(get(&t, 100).unwrap(), Some(data(16_384, 100)));
            assert_eq!(get(&t, 99).unwrap(), None);
            for (i, &len) in sizes.iter().enumerate() {
                assert_eq!(super::len(&t, i as u64 + 1).unwrap(), Some(len as u64));
            }
            assert_eq!(super::len(&t, 100).unwrap(), Some(16_384));
            assert_eq!(super::len(&t, 99).unwrap(), None);
            assert_eq!(count(&read).unwrap(), sizes.len() as u64 + 1);
        }

        let tx = db.begin_write().unwrap();
        {
            let mut t = WriteTables::open(&tx);
            remove(&mut t, 7).unwrap(); // 20,000 bytes: three pieces and a tail
            remove(&mut t, 100).unwrap();
            assert_eq!(get_in(&mut t, 7).unwrap(), None);
            assert_eq!(get_in(&mut t, 100).unwrap(), None);
            assert_eq!(get_in(&mut t, 8).unwrap(), Some(data(65_536, 7)));
        }
        tx.commit().unwrap();
        let read = db.begin_read().unwrap();
        let pieces = read.open_table(INLINE_PIECES).unwrap();
        let left: Vec<u64> = pieces
            .iter()
            .unwrap()
            .map(|item| item.unwrap().0.value().0)
            .collect();
        assert!(!left.contains(&7), "block 7 left pieces behind");
        assert_eq!(count(&read).unwrap(), sizes.len() as u64 - 1);
    }

    /// The point of the cut: the store holds blocks of the common sizes in about their own
    /// bytes. Fails if redb's page layout changes so that a piece no longer fits its page.
    #[test]
    fn blocks_of_power_of_two_sizes_take_about_their_own_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let db = store::open(&dir.path().join("meta.redb")).unwrap();
        let mut block = 0;
        for len in [4_096usize, 8_192, 16_384, 65_536] {
            let tx = db.begin_write().unwrap();
            {
                let mut t = WriteTables::open(&tx);
                for _ in 0..100 {
                    block += 1;
                    put(&mut t, block, &vec![7u8; len]).unwrap();
                }
            }
            tx.commit().unwrap();
        }
        let read = db.begin_read().unwrap();
        let mut stored = 0;
        let mut pages = 0;
        for stats in [
            read.open_table(INLINE_PIECES).unwrap().stats().unwrap(),
            read.open_table(INLINE_TAILS).unwrap().stats().unwrap(),
        ] {
            stored += stats.stored_bytes();
            pages += stats.stored_bytes() + stats.metadata_bytes() + stats.fragmented_bytes();
        }
        let data = 100 * (4_096 + 8_192 + 16_384 + 65_536);
        assert!(stored >= data);
        assert!(
            pages < data + data / 20,
            "{pages} bytes of pages for {data} bytes of data"
        );
    }
}
