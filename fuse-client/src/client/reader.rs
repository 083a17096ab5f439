//! Reading file bytes: map the range onto extents, extents onto blocks, blocks onto data
//! shards, and fetch every piece in parallel straight from the data shards (no decoding).
//! A piece whose server is down, fails, or returns corrupt data is rebuilt from the same byte
//! range of any k other shards; a block with fewer than k readable shards is an error, never
//! wrong data. A block kept inline came with the layout: its bytes are copied from there.
//! Small pieces go through the client's [`ShardCache`](super::shard_cache::ShardCache) of whole
//! 64 KiB units of shards.

use super::layouts::LayoutPage;
use super::shard_cache::{UnitKey, CACHED_READ_MAX, CACHE_UNIT};
use super::Client;
use bytes::Bytes;
use dfs_common::proto::chunk::ShardKey;
use dfs_common::proto::meta::BlockInfo;
use dfs_common::{FsError, FsResult, InodeId, ServerId};
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// One contiguous range of one data shard, and where its bytes go in the output.
struct Piece {
    block: Arc<BlockInfo>,
    index: usize,
    shard_offset: u64,
    len: u64,
    out_offset: usize,
}

/// Reads up to `len` bytes at `offset`; returns fewer at end of file. A file with more extents
/// in the range than one layout reply holds is read a layout page at a time.
pub async fn read(
    client: &Client,
    ino: InodeId,
    offset: u64,
    len: u64,
    cache: CacheUse,
) -> FsResult<Vec<u8>> {
    let end = offset.saturating_add(len);
    let mut out = Vec::new();
    let mut pos = offset;
    while pos < end {
        let layout = LayoutPage::new(pos, client.layout(ino, pos, end - pos).await?);
        let stop = end.min(layout.size).min(layout.complete_to);
        if stop <= pos {
            if pos < end.min(layout.size) {
                return Err(FsError::protocol(format!(
                    "layout of inode {ino} from {pos} covers nothing"
                )));
            }
            break;
        }
        let part = read_with_layout(client, &layout, pos, stop - pos, cache).await?;
        if out.is_empty() {
            out = part;
        } else {
            out.extend_from_slice(&part);
        }
        pos = stop;
    }
    Ok(out)
}

/// How a read uses the client's [`ShardCache`](super::shard_cache::ShardCache).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheUse {
    /// Small pieces come from the cache, and what they fetch is kept there.
    Fill,
    /// Small pieces come from the cache when there, but a miss fetches only the piece and
    /// keeps nothing (`O_DIRECT`: minimize cache effects).
    Peek,
}

/// Reads up to `len` bytes at `offset` with `layout`, which must be complete for the range
/// (up to the end of file): a range it does not describe is an error, never zeros.
pub async fn read_with_layout(
    client: &Client,
    layout: &LayoutPage,
    offset: u64,
    len: u64,
    cache: CacheUse,
) -> FsResult<Vec<u8>> {
    let (mut out, mut pieces) = lay_out(layout, offset, len)?;
    fetch_pieces(client, &mut out, &mut pieces, cache).await?;
    Ok(out)
}

/// The bytes of a read with `layout` when every one is at hand: kept inline in the layout or
/// in the shard cache. `None` when some must be fetched, or the layout does not fit the read
/// (the fetching read reports that).
pub fn read_cached(client: &Client, layout: &LayoutPage, offset: u64, len: u64) -> Option<Vec<u8>> {
    let (mut out, pieces) = lay_out(layout, offset, len).ok()?;
    let shards = &client.inner.shard_cache;
    if pieces.is_empty() {
        return Some(out);
    }
    if !shards.enabled() || pieces.iter().any(|p| p.len >= CACHED_READ_MAX) {
        return None;
    }
    let mut found = Vec::new();
    for piece in &pieces {
        for (key, start, _) in units_of(piece) {
            found.push((piece, start, shards.peek(&key)?));
        }
    }
    shards.count_hits(found.len() as u64);
    for (piece, start, data) in found {
        let at = piece.out_offset;
        copy_overlap(piece, start, &data, &mut out[at..at + piece.len as usize]);
    }
    Some(out)
}

/// The output buffer of a read with `layout`, holding already the bytes kept inline, and the
/// pieces of data shards still to fetch into it.
fn lay_out(layout: &LayoutPage, offset: u64, len: u64) -> FsResult<(Vec<u8>, Vec<Piece>)> {
    let end = offset.saturating_add(len).min(layout.size);
    if offset >= end {
        return Ok((Vec::new(), Vec::new()));
    }
    if !layout.covers(offset, end) {
        return Err(FsError::protocol(format!(
            "layout covers {}..{}, the read needs {offset}..{end}",
            layout.start, layout.complete_to
        )));
    }
    let mut out = vec![0u8; (end - offset) as usize];
    let mut pieces = Vec::new();
    for e in layout.extents_in(offset, end) {
        let start = e.file_offset.max(offset);
        let stop = e.file_offset.saturating_add(e.len).min(end);
        if start >= stop {
            continue;
        }
        let block = layout
            .block(e.block)
            .ok_or_else(|| FsError::protocol(format!("layout lacks block {}", e.block)))?;
        let in_block = e.block_offset + (start - e.file_offset);
        if let Some(bytes) = &block.inline {
            let at = (start - offset) as usize;
            copy_inline(
                block,
                bytes,
                in_block,
                &mut out[at..at + (stop - start) as usize],
            )?;
            continue;
        }
        split_into_pieces(
            block,
            in_block,
            stop - start,
            (start - offset) as usize,
            &mut pieces,
        )?;
    }
    Ok((out, pieces))
}

/// Fetches `pieces` into their parts of `out`, in parallel.
async fn fetch_pieces(
    client: &Client,
    out: &mut [u8],
    pieces: &mut [Piece],
    cache: CacheUse,
) -> FsResult<()> {
    // Every piece lands straight in its own disjoint part of `out`; pieces are polled together
    // in this task, so they are fetched in parallel without copying through task results.
    pieces.sort_by_key(|p| p.out_offset);
    let mut fetches = FuturesUnordered::new();
    let mut rest: &mut [u8] = out;
    let mut consumed = 0;
    for piece in pieces.iter() {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(piece.out_offset - consumed);
        let (slot, tail) = tail.split_at_mut(piece.len as usize);
        rest = tail;
        consumed = piece.out_offset + piece.len as usize;
        fetches.push(fetch_piece(client, piece, slot, cache));
    }
    while let Some(result) = fetches.next().await {
        result?;
    }
    Ok(())
}

/// Copies bytes of a block kept inline (they came with the layout) from `in_block` on.
fn copy_inline(block: &BlockInfo, bytes: &[u8], in_block: u64, slot: &mut [u8]) -> FsResult<()> {
    let from = usize::try_from(in_block).unwrap_or(usize::MAX);
    let source = (bytes.len() as u64 == block.len)
        .then(|| bytes.get(from..from.saturating_add(slot.len())))
        .flatten()
        .ok_or_else(|| {
            FsError::Corrupt(format!(
                "extent does not fit inline block {} of {} bytes",
                block.block,
                bytes.len()
            ))
        })?;
    slot.copy_from_slice(source);
    Ok(())
}

/// Splits block bytes `[in_block, in_block + len)` into per-data-shard pieces.
fn split_into_pieces(
    block: &Arc<BlockInfo>,
    in_block: u64,
    len: u64,
    out_offset: usize,
    pieces: &mut Vec<Piece>,
) -> FsResult<()> {
    if in_block + len > block.len || block.shards.len() != block.policy.total() {
        return Err(FsError::Corrupt(format!(
            "extent does not fit block {}",
            block.block
        )));
    }
    let shard_len = block.policy.shard_len(block.len);
    let mut pos = in_block;
    let end = in_block + len;
    while pos < end {
        let index = (pos / shard_len) as usize;
        let shard_offset = pos % shard_len;
        let take = (shard_len - shard_offset).min(end - pos);
        pieces.push(Piece {
            block: block.clone(),
            index,
            shard_offset,
            len: take,
            out_offset: out_offset + (pos - in_block) as usize,
        });
        pos += take;
    }
    Ok(())
}

fn key(piece: &Piece, index: usize) -> ShardKey {
    ShardKey {
        block: piece.block.block,
        index: index as u8,
    }
}

/// A direct shard read slower than this gets a reconstruction from other shards started beside
/// it; whichever finishes first wins. A dead or stalled server then costs a read this much, not
/// a whole request timeout.
const HEDGE_AFTER: Duration = Duration::from_millis(1500);

/// Fetches one piece into `slot`: a small one through the shard cache, others straight from
/// their data shard.
async fn fetch_piece(
    client: &Client,
    piece: &Piece,
    slot: &mut [u8],
    cache: CacheUse,
) -> FsResult<()> {
    client.inner.options.faults.hit("client.read_piece").await?;
    let shards = &client.inner.shard_cache;
    if piece.len >= CACHED_READ_MAX || !shards.enabled() {
        return fetch_direct(client, piece, slot).await;
    }
    let units = units_of(piece);
    let found: Vec<Option<Bytes>> = units.iter().map(|(key, _, _)| shards.get(key)).collect();
    if cache == CacheUse::Peek && found.iter().any(Option::is_none) {
        return fetch_direct(client, piece, slot).await;
    }
    for ((key, start, end), data) in units.into_iter().zip(found) {
        let data = match data {
            Some(data) => data,
            None => {
                let whole = Piece {
                    block: piece.block.clone(),
                    index: piece.index,
                    shard_offset: start,
                    len: end - start,
                    out_offset: 0,
                };
                let mut buf = vec![0u8; whole.len as usize];
                fetch_direct(client, &whole, &mut buf).await?;
                let data = Bytes::from(buf);
                shards.insert(key, data.clone());
                data
            }
        };
        copy_overlap(piece, start, &data, slot);
    }
    Ok(())
}

/// The cache units a piece touches: their keys and shard byte ranges.
fn units_of(piece: &Piece) -> Vec<(UnitKey, u64, u64)> {
    let sub = CACHE_UNIT;
    let shard_len = piece.block.policy.shard_len(piece.block.len);
    let first = piece.shard_offset / sub;
    let last = (piece.shard_offset + piece.len).saturating_sub(1) / sub;
    (first..=last)
        .map(|unit| {
            let start = unit * sub;
            let key = UnitKey {
                block: piece.block.block,
                index: piece.index as u8,
                unit: unit as u32,
            };
            (key, start, (start + sub).min(shard_len))
        })
        .collect()
}

/// Copies the part of the cache unit `data` (at `start` of the shard) that `piece` covers into
/// the piece's `slot`.
fn copy_overlap(piece: &Piece, start: u64, data: &[u8], slot: &mut [u8]) {
    let from = piece.shard_offset.max(start);
    let to = (piece.shard_offset + piece.len).min(start + data.len() as u64);
    if from < to {
        slot[(from - piece.shard_offset) as usize..(to - piece.shard_offset) as usize]
            .copy_from_slice(&data[(from - start) as usize..(to - start) as usize]);
    }
}

/// Fetches one piece from its data shard into `slot`, falling back to reconstruction when the
/// server is known down, fails, or is too slow.
async fn fetch_direct(client: &Client, piece: &Piece, slot: &mut [u8]) -> FsResult<()> {
    let location = &piece.block.shards[piece.index];
    let chunks = &client.inner.chunks;
    if !location.up || chunks.is_suspect(&location.addr) {
        slot.copy_from_slice(&reconstruct_piece(client, piece).await?);
        return Ok(());
    }
    let rebuilt = {
        let direct = chunks.get_shard_into(
            &location.addr,
            key(piece, piece.index),
            piece.shard_offset,
            slot,
        );
        tokio::pin!(direct);
        let first = tokio::select! {
            result = &mut direct => Some(result),
            _ = tokio::time::sleep(HEDGE_AFTER) => None,
        };
        match first {
            Some(Ok(())) => return Ok(()),
            Some(Err(e)) => {
                tracing::warn!(block = %piece.block.block, index = piece.index, server = %location.server,
                    "shard read failed, reconstructing: {e}");
                reconstruct_piece(client, piece).await?
            }
            None => {
                let hedge = reconstruct_piece(client, piece);
                tokio::pin!(hedge);
                tokio::select! {
                    result = &mut direct => match result {
                        Ok(()) => return Ok(()),
                        Err(_) => hedge.await?,
                    },
                    rebuilt = &mut hedge => {
                        tracing::warn!(block = %piece.block.block, index = piece.index, server = %location.server,
                            "shard read slower than {HEDGE_AFTER:?}, used reconstruction");
                        chunks.mark_suspect(&location.addr);
                        rebuilt?
                    }
                }
            }
        }
    };
    slot.copy_from_slice(&rebuilt);
    Ok(())
}

/// Rebuilds a piece of a data shard from the same range of k other shards.
///
/// Servers that failed moments ago are skipped (so a block with too few live shards fails fast
/// instead of waiting on them again); servers the metadata server reports down are tried last.
/// k fetches start at once; if they have not all succeeded after [`HEDGE_AFTER`], every other
/// candidate starts too, and the first k successes win.
async fn reconstruct_piece(client: &Client, piece: &Piece) -> FsResult<Vec<u8>> {
    client
        .inner
        .fallback_reads
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let policy = piece.block.policy;
    let k = policy.k();
    let chunks = &client.inner.chunks;
    let mut candidates: Vec<usize> = (0..policy.total())
        .filter(|&i| {
            let shard = &piece.block.shards[i];
            i != piece.index && shard.server != ServerId::NONE && !chunks.is_suspect(&shard.addr)
        })
        .collect();
    candidates.sort_by_key(|&i| !piece.block.shards[i].up);
    let mut pending = candidates.into_iter();
    let mut fetches = JoinSet::new();
    let spawn = |fetches: &mut JoinSet<(usize, FsResult<Vec<u8>>)>, i: usize| {
        let client = client.clone();
        let addr = piece.block.shards[i].addr.clone();
        let key = key(piece, i);
        let (off, len) = (piece.shard_offset, piece.len);
        fetches
            .spawn(async move { (i, client.inner.chunks.get_shard(&addr, key, off, len).await) });
    };
    for i in pending.by_ref().take(k) {
        spawn(&mut fetches, i);
    }
    let mut shards: Vec<Option<Vec<u8>>> = vec![None; policy.total()];
    let mut have = 0;
    let mut errors = Vec::new();
    let hedge = tokio::time::sleep(HEDGE_AFTER);
    tokio::pin!(hedge);
    let mut hedged = false;
    while have < k {
        let joined = tokio::select! {
            joined = fetches.join_next() => joined,
            _ = &mut hedge, if !hedged => {
                hedged = true;
                for i in pending.by_ref() {
                    spawn(&mut fetches, i);
                }
                continue;
            }
        };
        let Some(joined) = joined else { break };
        let (i, result) = joined.map_err(|e| FsError::io(format!("read task: {e}")))?;
        match result {
            Ok(data) => {
                shards[i] = Some(data);
                have += 1;
            }
            Err(e) => {
                errors.push(format!("shard {i}: {e}"));
                if let Some(next) = pending.next() {
                    spawn(&mut fetches, next);
                }
            }
        }
    }
    fetches.abort_all();
    if have < k {
        if errors.is_empty() {
            errors.push("other servers failed moments ago".into());
        }
        return Err(FsError::unavailable(format!(
            "block {}: only {have} of {} shards readable, {k} needed ({})",
            piece.block.block,
            policy.total(),
            errors.join("; ")
        )));
    }
    client.codec(policy)?.reconstruct_data(&mut shards)?;
    shards[piece.index]
        .take()
        .ok_or_else(|| FsError::io("reconstruction produced no data"))
}
