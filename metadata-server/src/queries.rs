//! Read-only operations, answered from a consistent snapshot without touching the committer.

use crate::layout;
use crate::store::schema::{decode, kind_from_code, BlockRecord, ServerRecord, VolumeRecord};
use crate::store::tables::{attr_of, get_dir, get_inode, get_volume_state, lookup, ReadTables};
use crate::store::DbResult;
use dfs_common::proto::meta::*;
use dfs_common::{FsError, FsResult, InodeId, ServerId};
use redb::{ReadableTable, ReadableTableMetadata};
use std::collections::BTreeMap;

/// Most entries one directory page returns.
pub const MAX_DIR_PAGE: u32 = 1024;

fn volume_info(t: &ReadTables, name: &str, rec: VolumeRecord) -> FsResult<VolumeInfo> {
    let state = get_volume_state(t.volume_state.table()?, rec.id)?;
    Ok(crate::volumes::volume_info(name, &rec, &state))
}

pub fn list_volumes(t: &ReadTables) -> FsResult<Vec<VolumeInfo>> {
    let mut out = Vec::new();
    for item in t.volumes.table()?.iter().db()? {
        let (name, value) = item.db()?;
        out.push(volume_info(t, name.value(), decode(value.value())?)?);
    }
    Ok(out)
}

pub fn get_volume(t: &ReadTables, name: &str) -> FsResult<VolumeInfo> {
    match t.volumes.table()?.get(name).db()? {
        Some(v) => volume_info(t, name, decode(v.value())?),
        None => Err(FsError::NotFound),
    }
}

pub fn lookup_attr(t: &ReadTables, parent: InodeId, name: &str) -> FsResult<Attr> {
    if dfs_common::name::raw_len(name) > dfs_common::proto::MAX_NAME_LEN {
        return Err(FsError::NameTooLong);
    }
    get_dir(t.inodes.table()?, parent)?;
    let (ino, _) = lookup(t.dentries.table()?, parent, name)?.ok_or(FsError::NotFound)?;
    attr_of(t.xattrs.table()?, ino, &get_inode(t.inodes.table()?, ino)?)
}

pub fn get_attr(t: &ReadTables, ino: InodeId) -> FsResult<Attr> {
    attr_of(t.xattrs.table()?, ino, &get_inode(t.inodes.table()?, ino)?)
}

pub fn read_link(t: &ReadTables, ino: InodeId) -> FsResult<String> {
    get_inode(t.inodes.table()?, ino)?
        .target
        .ok_or_else(|| FsError::invalid("not a symbolic link"))
}

pub fn read_dir(
    t: &ReadTables,
    dir: InodeId,
    after: Option<&str>,
    limit: u32,
    with_attrs: bool,
) -> FsResult<DirPage> {
    get_dir(t.inodes.table()?, dir)?;
    let limit = limit.clamp(1, MAX_DIR_PAGE) as usize;
    let start = after.unwrap_or("");
    let mut entries = Vec::new();
    let mut more = false;
    for item in t
        .dentries
        .table()?
        .range((dir.0, start)..(dir.0 + 1, ""))
        .db()?
    {
        let (key, value) = item.db()?;
        let (_, name) = key.value();
        if after == Some(name) {
            continue;
        }
        if entries.len() == limit {
            more = true;
            break;
        }
        let (ino, kind) = value.value();
        let ino = InodeId(ino);
        let attr = if with_attrs {
            Some(attr_of(
                t.xattrs.table()?,
                ino,
                &get_inode(t.inodes.table()?, ino)?,
            )?)
        } else {
            None
        };
        entries.push(DirEntry {
            name: name.to_string(),
            ino,
            kind: kind_from_code(kind)?,
            attr,
        });
    }
    Ok(DirPage { entries, more })
}

pub fn get_xattr(t: &ReadTables, ino: InodeId, name: &str) -> FsResult<Vec<u8>> {
    get_inode(t.inodes.table()?, ino)?;
    match t.xattrs.table()?.get((ino.0, name)).db()? {
        Some(v) => Ok(v.value().to_vec()),
        None => Err(FsError::NoAttribute),
    }
}

pub fn list_xattr(t: &ReadTables, ino: InodeId) -> FsResult<Vec<String>> {
    get_inode(t.inodes.table()?, ino)?;
    let mut names = Vec::new();
    for item in t.xattrs.table()?.range((ino.0, "")..(ino.0 + 1, "")).db()? {
        let (k, _) = item.db()?;
        names.push(k.value().1.to_string());
    }
    Ok(names)
}

fn server_addr(t: &ReadTables, server: ServerId) -> FsResult<String> {
    match t.servers.table()?.get(server.0).db()? {
        Some(v) => Ok(decode::<ServerRecord>(v.value())?.addr),
        None => Ok(String::new()),
    }
}

pub fn get_layout(
    t: &ReadTables,
    ino: InodeId,
    offset: u64,
    len: u64,
    max_extents: usize,
) -> FsResult<Layout> {
    let rec = get_inode(t.inodes.table()?, ino)?;
    if rec.kind != FileKind::File {
        return Err(FsError::invalid("only regular files have layouts"));
    }
    let end = offset.saturating_add(len).min(rec.size);
    // One more than a page holds tells where the page stops.
    let mut extents = layout::overlapping_at_most(
        t.extents.table()?,
        ino,
        offset,
        end.max(offset),
        max_extents + 1,
    )?;
    extents.retain(|e| e.file_offset < end);
    // A long layout comes in pages: this one is complete up to the first extent it leaves out
    // (extents do not overlap, so that lies past everything listed, and past `offset`).
    let complete_to = match extents.get(max_extents) {
        Some(first_left_out) => first_left_out.file_offset,
        None => offset.saturating_add(len),
    };
    extents.truncate(max_extents);
    let mut blocks = BTreeMap::new();
    for e in &extents {
        if blocks.contains_key(&e.block) {
            continue;
        }
        let rec: BlockRecord = match t.blocks.table()?.get(e.block.0).db()? {
            Some(v) => decode(v.value())?,
            None => {
                return Err(FsError::Corrupt(format!(
                    "extent refers to missing block {}",
                    e.block
                )))
            }
        };
        let shards = rec
            .shards
            .iter()
            .map(|&server| {
                Ok(ShardLocation {
                    server,
                    addr: server_addr(t, server)?,
                    up: true,
                    cap: None,
                })
            })
            .collect::<FsResult<Vec<_>>>()?;
        let inline = if rec.is_inline() {
            let bytes = crate::store::inline_data::get(t, e.block.0)?;
            Some(bytes.ok_or_else(|| {
                FsError::Corrupt(format!("inline block {} has no bytes", e.block))
            })?)
        } else {
            None
        };
        let info = BlockInfo {
            block: e.block,
            len: rec.len.unwrap_or(0),
            policy: rec.policy,
            shards,
            inline,
        };
        blocks.insert(e.block, info);
    }
    Ok(Layout {
        size: rec.size,
        extents,
        blocks: blocks.into_values().collect(),
        complete_to,
    })
}

/// Counts for `cluster status`.
pub fn counts(t: &ReadTables) -> FsResult<(u64, u64, u64)> {
    Ok((
        t.volumes.table()?.len().db()?,
        t.inodes.table()?.len().db()?,
        t.blocks.table()?.len().db()?,
    ))
}

/// Every chunk server ever registered, with its last known address.
pub fn registered_servers(t: &ReadTables) -> FsResult<Vec<(ServerId, String)>> {
    let mut out = Vec::new();
    for item in t.servers.table()?.iter().db()? {
        let (k, v) = item.db()?;
        out.push((ServerId(k.value()), decode::<ServerRecord>(v.value())?.addr));
    }
    Ok(out)
}

pub fn draining_servers(t: &ReadTables) -> FsResult<Vec<ServerId>> {
    let mut out = Vec::new();
    for item in t.draining.table()?.iter().db()? {
        out.push(ServerId(item.db()?.0.value()));
    }
    Ok(out)
}

/// Which of `keys`, held by `server`, it should not keep: their block is gone, or that shard
/// of the block is placed on another server. A shard whose slot is empty (missing, or found
/// corrupt and not yet rebuilt) is kept: until repair places a copy elsewhere, even a
/// damaged copy may hold the only good bytes of some sub-blocks.
pub fn stale_shards(
    t: &ReadTables,
    server: ServerId,
    keys: &[dfs_common::proto::chunk::ShardKey],
) -> FsResult<Vec<dfs_common::proto::chunk::ShardKey>> {
    let mut stale = Vec::new();
    for &key in keys {
        let placed = match t.blocks.table()?.get(key.block.0).db()? {
            Some(v) => decode::<BlockRecord>(v.value())?
                .shards
                .get(key.index as usize)
                .copied(),
            None => None,
        };
        if placed != Some(server) && placed != Some(ServerId::NONE) {
            stale.push(key);
        }
    }
    Ok(stale)
}

/// Counts a volume's inodes and bytes, and its blocks (with how many have a shard outside
/// `live`). Reads every inode and block record: an admin command, not a hot path.
pub fn volume_usage(
    t: &ReadTables,
    name: &str,
    live: &std::collections::HashSet<ServerId>,
) -> FsResult<VolumeUsage> {
    let volume = get_volume(t, name)?.id;
    let mut usage = VolumeUsage::default();
    for item in t.inodes.table()?.iter().db()? {
        let (_, value) = item.db()?;
        let rec: crate::store::schema::InodeRecord = decode(value.value())?;
        if rec.volume != volume {
            continue;
        }
        match rec.kind {
            FileKind::File => {
                usage.files += 1;
                usage.bytes += rec.size;
            }
            FileKind::Dir => usage.directories += 1,
            _ => usage.other += 1,
        }
    }
    for item in t.blocks.table()?.iter().db()? {
        let (_, value) = item.db()?;
        let rec: BlockRecord = decode(value.value())?;
        let Some(len) = rec.len else { continue };
        if rec.volume != volume || rec.refs == 0 {
            continue;
        }
        usage.blocks += 1;
        usage.block_bytes += len;
        if rec.is_inline() {
            usage.inline_blocks += 1;
            usage.inline_bytes += len;
        }
        if rec.shards.iter().any(|s| !live.contains(s)) {
            usage.degraded_blocks += 1;
        }
    }
    Ok(usage)
}
