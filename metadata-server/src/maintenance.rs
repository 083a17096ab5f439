//! State-machine commands of block maintenance: repair moving a shard, a corrupt shard dropped
//! from its block, garbage collection forgetting unreferenced blocks. Like every command, each
//! checks the state it acts on, because the scan that chose it read an older snapshot.

use crate::command::Outcome;
use crate::store::schema::{decode, encode, BlockRecord};
use crate::store::tables::WriteTables;
use crate::store::DbResult;
use dfs_common::model::ShardKey;
use dfs_common::{BlockId, FsError, FsResult, ServerId};
use redb::ReadableTable;

fn get_block(t: &mut WriteTables, block: BlockId) -> FsResult<Option<BlockRecord>> {
    match t.blocks.table()?.get(block.0).db()? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

fn put_block(t: &mut WriteTables, block: BlockId, rec: &BlockRecord) -> FsResult<()> {
    t.blocks
        .table()?
        .insert(block.0, encode(rec).as_slice())
        .db()?;
    Ok(())
}

/// The shard of `key` is no longer on `server` (it was found corrupt there and removed).
pub fn report_bad_shard(t: &mut WriteTables, server: ServerId, key: ShardKey) -> FsResult<Outcome> {
    if let Some(mut rec) = get_block(t, key.block)? {
        if let Some(slot) = rec.shards.get_mut(key.index as usize) {
            if *slot == server {
                *slot = ServerId::NONE;
                put_block(t, key.block, &rec)?;
            }
        }
    }
    Ok(Outcome::Done)
}

/// Moves a rebuilt shard's placement from `from` to `to`; refused if the placement changed
/// since the repair was planned (the rebuilt copy is then an orphan, deleted by its server).
pub fn move_shard(
    t: &mut WriteTables,
    key: ShardKey,
    from: ServerId,
    to: ServerId,
) -> FsResult<Outcome> {
    let Some(mut rec) = get_block(t, key.block)? else {
        return Err(FsError::NotFound);
    };
    if rec.len.is_none() {
        return Err(FsError::invalid("block is not committed"));
    }
    if rec.shards.contains(&to) {
        return Err(FsError::invalid(format!(
            "server {to} already holds a shard of block {}",
            key.block
        )));
    }
    let slot = rec
        .shards
        .get_mut(key.index as usize)
        .ok_or_else(|| FsError::invalid("shard index out of range"))?;
    if *slot != from {
        return Err(FsError::invalid(format!(
            "shard {} of block {} moved meanwhile",
            key.index, key.block
        )));
    }
    *slot = to;
    put_block(t, key.block, &rec)?;
    Ok(Outcome::Done)
}

/// Forgets blocks nothing refers to: collected garbage, or pending blocks abandoned before
/// their commit. Blocks referenced again meanwhile are kept. Answers with the blocks really
/// dropped: only their shards may be deleted.
pub fn drop_blocks(t: &mut WriteTables, blocks: &[BlockId]) -> FsResult<Outcome> {
    let mut dropped = Vec::new();
    for &block in blocks {
        let Some(rec) = get_block(t, block)? else {
            continue;
        };
        if rec.refs == 0 {
            t.blocks.table()?.remove(block.0).db()?;
            if rec.is_inline() {
                crate::store::inline_data::remove(t, block.0)?;
            }
            dropped.push(block);
        }
    }
    Ok(Outcome::Dropped(dropped))
}

pub fn drain_server(
    t: &mut WriteTables,
    now: dfs_common::Timestamp,
    server: ServerId,
    drain: bool,
) -> FsResult<Outcome> {
    if t.servers.table()?.get(server.0).db()?.is_none() {
        return Err(FsError::NotFound);
    }
    if drain {
        if t.draining.table()?.get(server.0).db()?.is_none() {
            t.draining.table()?.insert(server.0, now.secs).db()?;
        }
    } else {
        t.draining.table()?.remove(server.0).db()?;
    }
    Ok(Outcome::Done)
}

/// Forgets a server; refused while any block still places a shard on it.
pub fn remove_server(t: &mut WriteTables, server: ServerId) -> FsResult<Outcome> {
    if t.servers.table()?.get(server.0).db()?.is_none() {
        return Err(FsError::NotFound);
    }
    for item in t.blocks.table()?.iter().db()? {
        let (_, value) = item.db()?;
        let rec: BlockRecord = decode(value.value())?;
        if rec.shards.contains(&server) {
            return Err(FsError::NotEmpty);
        }
    }
    t.servers.table()?.remove(server.0).db()?;
    t.draining.table()?.remove(server.0).db()?;
    t.server_certs.table()?.remove(server.0).db()?;
    Ok(Outcome::Done)
}

/// Binds a chunk server's id to the certificate it registers with; refused if the id is
/// bound to another certificate already.
pub fn bind_server(
    t: &mut WriteTables,
    server: ServerId,
    fingerprint: [u8; 32],
) -> FsResult<Outcome> {
    let bound = t
        .server_certs
        .table()?
        .get(server.0)
        .db()?
        .map(|v| v.value());
    match bound {
        Some(bound) if bound != fingerprint => Err(FsError::Denied(format!(
            "chunk server {server} is registered with another certificate"
        ))),
        Some(_) => Ok(Outcome::Done),
        None => {
            t.server_certs.table()?.insert(server.0, fingerprint).db()?;
            Ok(Outcome::Done)
        }
    }
}
