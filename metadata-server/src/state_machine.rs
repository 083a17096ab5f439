//! The metadata state machine: every change to the namespace is a [`Command`] applied to a
//! write transaction by [`apply`].
//!
//! `apply` is deterministic: the time, and any placement decided from live membership, travel
//! inside the command, so the same commands applied to the same state give the same result.
//! That is what lets the state machine sit behind a replicated log (Raft) later unchanged.
//! Each operation checks everything before it changes anything; the committer also wraps each
//! command in a savepoint, so a failed command leaves no trace.

use crate::access;
use crate::calls;
use crate::command::{Command, Op, Outcome, ShardAt};
use crate::layout::{self, RefDelta};
use crate::maintenance;
use crate::store::schema::*;
use crate::store::tables::{
    dir_is_empty, get_dir, get_inode, get_volume_by_id, get_volume_state, lookup, WriteTables,
};
use crate::store::DbResult;
use crate::volumes;
use dfs_common::proto::meta::*;
use dfs_common::proto::{
    MAX_BLOCK_SIZE, MAX_COMMIT_EXTENTS, MAX_FILE_SIZE, MAX_NAME_LEN, MAX_SYMLINK_LEN,
    MAX_XATTR_NAME_LEN, MAX_XATTR_VALUE_LEN,
};
use dfs_common::{BlockId, FsError, FsResult, InodeId, ServerId, Timestamp};
use redb::ReadableTable;
use std::collections::BTreeMap;

/// Extended attributes one inode may have, and their names and values together in bytes.
pub const MAX_XATTRS_PER_INODE: usize = 1024;
pub const MAX_XATTR_BYTES_PER_INODE: usize = 1 << 20;

/// Smallest block size a volume may use.
pub const MIN_BLOCK_SIZE: u64 = 64 * 1024;

/// [`apply_in`] in a transaction's tables opened for this command alone (tests).
#[cfg(test)]
pub fn apply(tx: &redb::WriteTransaction, cmd: &Command) -> FsResult<Outcome> {
    apply_in(&mut WriteTables::open(tx), cmd)
}

/// Applies a command, or for a retried call gives its first outcome back (see [`calls`]), in
/// tables already open: the commands applied in one transaction share them, as opening a redb
/// table and closing it again costs about as much as a small change to it.
pub fn apply_in(t: &mut WriteTables, cmd: &Command) -> FsResult<Outcome> {
    let Some(call) = cmd.call else {
        let now = t.advance_clock(cmd.now)?;
        return apply_op(t, now, &cmd.op);
    };
    if let Some(outcome) = calls::replay(t, &call)? {
        return Ok(outcome);
    }
    let now = t.advance_clock(cmd.now)?;
    let outcome = apply_op(t, now, &cmd.op)?;
    calls::record(t, &call, &outcome, now)?;
    Ok(outcome)
}

fn apply_op(t: &mut WriteTables, now: Timestamp, op: &Op) -> FsResult<Outcome> {
    volumes::check_writable(t, op)?;
    match op {
        Op::CreateVolume {
            name,
            policy,
            block_size,
            limits,
        } => volumes::create(t, now, name, *policy, *block_size, *limits),
        Op::SetVolume { name, change } => volumes::set(t, name, change),
        Op::DeleteVolume { name, force } => volumes::delete(t, name, *force),
        Op::AddClient {
            name,
            fingerprint,
            volumes,
        } => access::add_client(t, now, name, *fingerprint, volumes),
        Op::RevokeClient { name } => access::revoke_client(t, name),
        Op::RegisterServer { server, addr } => {
            let rec = ServerRecord {
                addr: addr.clone(),
                registered: now,
            };
            t.servers
                .table()?
                .insert(server.0, encode(&rec).as_slice())
                .db()?;
            Ok(Outcome::Done)
        }
        Op::BindServer {
            server,
            fingerprint,
        } => maintenance::bind_server(t, *server, *fingerprint),
        Op::SetAttr { ino, set } => set_attr(t, now, *ino, set),
        Op::MakeNode {
            parent,
            name,
            kind,
            mode,
            uid,
            gid,
            rdev,
            target,
        } => {
            let node = match (kind, target) {
                (FileKind::Symlink, Some(target)) => {
                    if target.is_empty() {
                        return Err(FsError::NotFound);
                    }
                    if dfs_common::name::raw_len(target) > MAX_SYMLINK_LEN {
                        return Err(FsError::NameTooLong);
                    }
                    if target.contains('\0') || !dfs_common::name::is_canonical(target) {
                        return Err(FsError::invalid("invalid symlink target"));
                    }
                    NewNode {
                        kind: FileKind::Symlink,
                        mode: 0o777,
                        uid: *uid,
                        gid: *gid,
                        rdev: 0,
                        target: Some(target.clone()),
                    }
                }
                (FileKind::Symlink, None) | (_, Some(_)) => {
                    return Err(FsError::invalid(
                        "a symlink, and only a symlink, has a target",
                    ))
                }
                (kind, None) => NewNode {
                    kind: *kind,
                    mode: *mode,
                    uid: *uid,
                    gid: *gid,
                    rdev: *rdev,
                    target: None,
                },
            };
            make_node(t, now, *parent, name, node)
        }
        Op::Link {
            ino,
            new_parent,
            new_name,
        } => link(t, now, *ino, *new_parent, new_name),
        Op::Unlink { parent, name } => unlink(t, now, *parent, name),
        Op::UnlinkOrHide {
            parent,
            name,
            open,
            tag,
        } => unlink_or_hide(t, now, *parent, name, open, *tag),
        Op::Rmdir { parent, name } => rmdir(t, now, *parent, name),
        Op::KeepOrphans(op) => {
            if !matches!(
                **op,
                Op::Unlink { .. } | Op::UnlinkOrHide { .. } | Op::Rename { .. }
            ) {
                return Err(FsError::invalid(format!(
                    "{} does not keep orphans",
                    op.name()
                )));
            }
            t.keep_orphans = true;
            t.orphaned.clear();
            let outcome = apply_op(t, now, op);
            t.keep_orphans = false;
            Ok(Outcome::KeptOrphans {
                outcome: Box::new(outcome?),
                orphans: std::mem::take(&mut t.orphaned),
            })
        }
        Op::ReapOrphans { inos } => crate::orphans::reap(t, inos),
        Op::Rename {
            parent,
            name,
            new_parent,
            new_name,
            flags,
        } => rename(t, now, *parent, name, *new_parent, new_name, *flags),
        Op::SetXattr {
            ino,
            name,
            value,
            flags,
        } => set_xattr(t, now, *ino, name, value, *flags),
        Op::RemoveXattr { ino, name } => {
            let mut rec = get_inode(t.inodes.table()?, *ino)?;
            if t.xattrs
                .table()?
                .remove((ino.0, name.as_str()))
                .db()?
                .is_none()
            {
                return Err(FsError::NoAttribute);
            }
            rec.ctime = now;
            t.put_inode(*ino, &rec)?;
            Ok(Outcome::Done)
        }
        Op::AllocateBlock { ino, placement } => allocate_block(t, now, *ino, placement),
        Op::ReplaceShard {
            block,
            index,
            failed,
            to,
        } => replace_shard(t, *block, *index, *failed, *to),
        Op::CommitWrite {
            ino,
            extents,
            mtime,
            append,
        } => commit_write(t, now, *ino, extents, *mtime, *append),
        Op::ReportBadShard { server, key } => maintenance::report_bad_shard(t, *server, *key),
        Op::MoveShard { key, from, to } => maintenance::move_shard(t, *key, *from, *to),
        Op::DropBlocks { blocks } => maintenance::drop_blocks(t, blocks),
        Op::DrainServer { server, drain } => maintenance::drain_server(t, now, *server, *drain),
        Op::RemoveServer { server } => maintenance::remove_server(t, *server),
        Op::ExpireCalls => {
            let expired = calls::expire(t, now)?;
            if expired > 0 {
                tracing::info!(expired, "forgot the calls of clients that went away");
            }
            Ok(Outcome::Done)
        }
        Op::SetLocks { files, sessions } => crate::locks::record(t, files, sessions),
        Op::WriteInline {
            ino,
            pieces,
            data,
            mtime,
            append,
        }
        | Op::KeepInline {
            ino,
            pieces,
            data,
            mtime,
            append,
        } => {
            let bound = match op {
                Op::WriteInline { .. } => crate::inline::Bound::FileStart,
                _ => crate::inline::Bound::Allowance,
            };
            crate::inline::write(t, now, *ino, pieces, data, *mtime, *append, bound)
        }
        Op::CommitIfUnchanged {
            ino,
            extents,
            mtime,
            size,
            from,
            expect,
        } => {
            crate::inline::commit_if_unchanged(t, now, *ino, extents, *mtime, *size, *from, expect)
        }
    }
}

/// A name is any bytes but `/` and NUL, at most [`MAX_NAME_LEN`] of them, carried as its
/// encoding (see [`dfs_common::name`]).
fn validate_name(name: &str) -> FsResult<()> {
    if dfs_common::name::raw_len(name) > MAX_NAME_LEN {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
        || !dfs_common::name::is_canonical(name)
    {
        return Err(FsError::invalid(format!("invalid file name {name:?}")));
    }
    Ok(())
}

struct NewNode {
    kind: FileKind,
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u32,
    target: Option<String>,
}

fn make_node(
    t: &mut WriteTables,
    now: Timestamp,
    parent: InodeId,
    name: &str,
    node: NewNode,
) -> FsResult<Outcome> {
    validate_name(name)?;
    let mut parent_rec = get_dir(t.inodes.table()?, parent)?;
    if parent_rec.nlink == 0 {
        return Err(FsError::NotFound);
    }
    if lookup(t.dentries.table()?, parent, name)?.is_some() {
        return Err(FsError::Exists);
    }
    let ino = InodeId(t.next_id(NEXT_INODE, 2)?);
    let is_dir = node.kind == FileKind::Dir;
    let rec = InodeRecord {
        volume: parent_rec.volume,
        kind: node.kind,
        mode: node.mode & 0o7777,
        uid: node.uid,
        gid: node.gid,
        nlink: if is_dir { 2 } else { 1 },
        size: node
            .target
            .as_ref()
            .map_or(0, |s| dfs_common::name::raw_len(s) as u64),
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        rdev: node.rdev,
        parent: if is_dir { parent } else { InodeId(0) },
        target: node.target,
    };
    volumes::charge(t, rec.volume, 0, 1)?;
    t.put_inode(ino, &rec)?;
    t.dentries
        .table()?
        .insert((parent.0, name), (ino.0, kind_code(node.kind)))
        .db()?;
    if is_dir {
        parent_rec.nlink += 1;
    }
    parent_rec.mtime = now;
    parent_rec.ctime = now;
    t.put_inode(parent, &parent_rec)?;
    Ok(Outcome::Node { ino, record: rec })
}

fn link(
    t: &mut WriteTables,
    now: Timestamp,
    ino: InodeId,
    new_parent: InodeId,
    new_name: &str,
) -> FsResult<Outcome> {
    validate_name(new_name)?;
    let mut rec = get_inode(t.inodes.table()?, ino)?;
    if rec.kind == FileKind::Dir {
        return Err(FsError::NotPermitted);
    }
    let mut parent_rec = get_dir(t.inodes.table()?, new_parent)?;
    if parent_rec.volume != rec.volume {
        return Err(FsError::invalid("hard links cannot cross volumes"));
    }
    if lookup(t.dentries.table()?, new_parent, new_name)?.is_some() {
        return Err(FsError::Exists);
    }
    if rec.nlink == 0 {
        return Err(FsError::NotFound);
    }
    rec.nlink += 1;
    rec.ctime = now;
    t.put_inode(ino, &rec)?;
    t.dentries
        .table()?
        .insert((new_parent.0, new_name), (ino.0, kind_code(rec.kind)))
        .db()?;
    parent_rec.mtime = now;
    parent_rec.ctime = now;
    t.put_inode(new_parent, &parent_rec)?;
    Ok(Outcome::Node { ino, record: rec })
}

/// Drops one link of a non-directory; frees it with its extents and xattrs at zero links.
fn drop_link(t: &mut WriteTables, now: Timestamp, ino: InodeId) -> FsResult<()> {
    let mut rec = get_inode(t.inodes.table()?, ino)?;
    rec.nlink = rec.nlink.saturating_sub(1);
    rec.ctime = now;
    if rec.nlink > 0 {
        return t.put_inode(ino, &rec);
    }
    if rec.kind == FileKind::File && t.keep_orphans {
        return crate::orphans::keep(t, ino, &rec);
    }
    free_inode(t, ino)
}

fn free_inode(t: &mut WriteTables, ino: InodeId) -> FsResult<()> {
    let rec = get_inode(t.inodes.table()?, ino)?;
    let bytes = if rec.kind == FileKind::File {
        rec.size
    } else {
        0
    };
    volumes::charge(t, rec.volume, volumes::size_delta(bytes, 0), -1)?;
    let mut refs = RefDelta::default();
    purge_inode(t, ino, &mut refs)?;
    refs.apply(t)
}

/// Removes an inode with its extents (their references go to `refs`) and xattrs. Usage and
/// directory entries are the caller's business.
pub fn purge_inode(t: &mut WriteTables, ino: InodeId, refs: &mut RefDelta) -> FsResult<()> {
    layout::truncate(t, ino, 0, refs)?;
    let names: Vec<String> = t
        .xattrs
        .table()?
        .range((ino.0, "")..(ino.0 + 1, ""))
        .db()?
        .map(|item| item.db().map(|(k, _)| k.value().1.to_string()))
        .collect::<FsResult<_>>()?;
    for name in names {
        t.xattrs.table()?.remove((ino.0, name.as_str())).db()?;
    }
    t.inodes.table()?.remove(ino.0).db()?;
    Ok(())
}

fn touch_dir(t: &mut WriteTables, now: Timestamp, dir: InodeId, nlink_delta: i32) -> FsResult<()> {
    let mut rec = get_inode(t.inodes.table()?, dir)?;
    rec.nlink = (rec.nlink as i64 + nlink_delta as i64).max(0) as u32;
    rec.mtime = now;
    rec.ctime = now;
    t.put_inode(dir, &rec)
}

fn unlink(t: &mut WriteTables, now: Timestamp, parent: InodeId, name: &str) -> FsResult<Outcome> {
    let (child, _) = unlinkable(t, parent, name)?;
    remove_link(t, now, parent, name, child)?;
    Ok(Outcome::Done)
}

/// The node `name` names in directory `parent`, and its kind, if an unlink may remove it (it
/// is not a directory).
fn unlinkable(t: &mut WriteTables, parent: InodeId, name: &str) -> FsResult<(InodeId, FileKind)> {
    get_dir(t.inodes.table()?, parent)?;
    let (child, kind) = lookup(t.dentries.table()?, parent, name)?.ok_or(FsError::NotFound)?;
    if kind == FileKind::Dir {
        return Err(FsError::IsDir);
    }
    Ok((child, kind))
}

/// Removes the name `name` of `child` from `parent`: the inode loses a link, and goes with
/// its last.
fn remove_link(
    t: &mut WriteTables,
    now: Timestamp,
    parent: InodeId,
    name: &str,
    child: InodeId,
) -> FsResult<()> {
    t.dentries.table()?.remove((parent.0, name)).db()?;
    drop_link(t, now, child)?;
    touch_dir(t, now, parent, 0)
}

/// [`unlink`], unless the name is the last link of a regular file in `open`: that file is
/// renamed to `.dfs-hidden-<ino>-<tag>` in the same directory instead.
fn unlink_or_hide(
    t: &mut WriteTables,
    now: Timestamp,
    parent: InodeId,
    name: &str,
    open: &[InodeId],
    tag: u32,
) -> FsResult<Outcome> {
    if open.len() > req::MAX_OPEN_NAMED {
        return Err(FsError::invalid(format!(
            "{} open files named, at most {} may be",
            open.len(),
            req::MAX_OPEN_NAMED
        )));
    }
    let (victim, kind) = unlinkable(t, parent, name)?;
    let links = get_inode(t.inodes.table()?, victim)?.nlink;
    if kind == FileKind::File && links == 1 && open.contains(&victim) {
        let hidden = format!(".dfs-hidden-{victim}-{tag:08x}");
        rename(t, now, parent, name, parent, &hidden, RENAME_NOREPLACE)?;
        return Ok(Outcome::Unlinked {
            victim,
            links,
            hidden: Some(hidden),
        });
    }
    remove_link(t, now, parent, name, victim)?;
    Ok(Outcome::Unlinked {
        victim,
        links: links.saturating_sub(1),
        hidden: None,
    })
}

fn rmdir(t: &mut WriteTables, now: Timestamp, parent: InodeId, name: &str) -> FsResult<Outcome> {
    if name == "." {
        return Err(FsError::invalid("cannot remove '.'"));
    }
    if name == ".." {
        return Err(FsError::NotEmpty);
    }
    get_dir(t.inodes.table()?, parent)?;
    let (child, kind) = lookup(t.dentries.table()?, parent, name)?.ok_or(FsError::NotFound)?;
    if kind != FileKind::Dir {
        return Err(FsError::NotDir);
    }
    if !dir_is_empty(t.dentries.table()?, child)? {
        return Err(FsError::NotEmpty);
    }
    t.dentries.table()?.remove((parent.0, name)).db()?;
    free_inode(t, child)?;
    touch_dir(t, now, parent, -1)?;
    Ok(Outcome::Done)
}

/// Whether `candidate` is `dir` or lies below it.
fn is_within(t: &mut WriteTables, candidate: InodeId, dir: InodeId) -> FsResult<bool> {
    let mut cur = candidate;
    // Bounded walk: a cycle in parent pointers would be corruption, not an infinite loop.
    for _ in 0..100_000 {
        if cur == dir {
            return Ok(true);
        }
        let rec = get_inode(t.inodes.table()?, cur)?;
        if rec.parent == cur {
            return Ok(false);
        }
        cur = rec.parent;
    }
    Err(FsError::Corrupt("directory parent chain too deep".into()))
}

fn rename(
    t: &mut WriteTables,
    now: Timestamp,
    parent: InodeId,
    name: &str,
    new_parent: InodeId,
    new_name: &str,
    flags: u32,
) -> FsResult<Outcome> {
    if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
        || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
    {
        return Err(FsError::invalid(format!("bad rename flags {flags:#x}")));
    }
    validate_name(name)?;
    validate_name(new_name)?;
    let parent_rec = get_dir(t.inodes.table()?, parent)?;
    let new_parent_rec = get_dir(t.inodes.table()?, new_parent)?;
    if parent_rec.volume != new_parent_rec.volume {
        return Err(FsError::invalid("rename cannot cross volumes"));
    }
    let (src, src_kind) = lookup(t.dentries.table()?, parent, name)?.ok_or(FsError::NotFound)?;
    let dst = lookup(t.dentries.table()?, new_parent, new_name)?;

    if flags & RENAME_EXCHANGE != 0 {
        let (dst, dst_kind) = dst.ok_or(FsError::NotFound)?;
        if src == dst {
            return Ok(Outcome::Renamed { touched: vec![] });
        }
        if src_kind == FileKind::Dir && is_within(t, new_parent, src)? {
            return Err(FsError::invalid("cannot move a directory into itself"));
        }
        if dst_kind == FileKind::Dir && is_within(t, parent, dst)? {
            return Err(FsError::invalid("cannot move a directory into itself"));
        }
        t.dentries
            .table()?
            .insert((parent.0, name), (dst.0, kind_code(dst_kind)))
            .db()?;
        t.dentries
            .table()?
            .insert((new_parent.0, new_name), (src.0, kind_code(src_kind)))
            .db()?;
        let src_dir = (src_kind == FileKind::Dir) as i32;
        let dst_dir = (dst_kind == FileKind::Dir) as i32;
        reparent(t, now, src, new_parent)?;
        reparent(t, now, dst, parent)?;
        if parent != new_parent {
            touch_dir(t, now, parent, dst_dir - src_dir)?;
            touch_dir(t, now, new_parent, src_dir - dst_dir)?;
        } else {
            touch_dir(t, now, parent, 0)?;
        }
        return Ok(Outcome::Renamed {
            touched: vec![src, dst],
        });
    }

    let mut touched = vec![src];
    if let Some((dst, dst_kind)) = dst {
        if dst == src {
            // Two names of one file, or the same name: POSIX says do nothing.
            return Ok(Outcome::Renamed { touched: vec![] });
        }
        if flags & RENAME_NOREPLACE != 0 {
            return Err(FsError::Exists);
        }
        match (src_kind == FileKind::Dir, dst_kind == FileKind::Dir) {
            (true, false) => return Err(FsError::NotDir),
            (false, true) => return Err(FsError::IsDir),
            _ => {}
        }
        if src_kind == FileKind::Dir && is_within(t, new_parent, src)? {
            return Err(FsError::invalid("cannot move a directory into itself"));
        }
        if dst_kind == FileKind::Dir {
            if !dir_is_empty(t.dentries.table()?, dst)? {
                return Err(FsError::NotEmpty);
            }
            free_inode(t, dst)?;
            touch_dir(t, now, new_parent, -1)?;
        } else {
            drop_link(t, now, dst)?;
        }
        touched.push(dst);
    } else if src_kind == FileKind::Dir && is_within(t, new_parent, src)? {
        return Err(FsError::invalid("cannot move a directory into itself"));
    }

    t.dentries.table()?.remove((parent.0, name)).db()?;
    t.dentries
        .table()?
        .insert((new_parent.0, new_name), (src.0, kind_code(src_kind)))
        .db()?;
    reparent(t, now, src, new_parent)?;
    let moved_dir = (src_kind == FileKind::Dir) as i32;
    if parent != new_parent {
        touch_dir(t, now, parent, -moved_dir)?;
        touch_dir(t, now, new_parent, moved_dir)?;
    } else {
        touch_dir(t, now, parent, 0)?;
    }
    Ok(Outcome::Renamed { touched })
}

/// Records a moved inode's new parent (directories only) and its ctime.
fn reparent(
    t: &mut WriteTables,
    now: Timestamp,
    ino: InodeId,
    new_parent: InodeId,
) -> FsResult<()> {
    let mut rec = get_inode(t.inodes.table()?, ino)?;
    if rec.kind == FileKind::Dir {
        rec.parent = new_parent;
    }
    rec.ctime = now;
    t.put_inode(ino, &rec)
}

fn set_attr(t: &mut WriteTables, now: Timestamp, ino: InodeId, set: &SetAttr) -> FsResult<Outcome> {
    for time in [set.atime, set.mtime].into_iter().flatten() {
        if let TimeSet::At(at) = time {
            if !at.is_valid() {
                return Err(FsError::invalid(format!("time {at:?} out of range")));
            }
        }
    }
    let mut rec = get_inode(t.inodes.table()?, ino)?;
    if let Some(size) = set.size {
        match rec.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(FsError::IsDir),
            _ => return Err(FsError::invalid("only regular files can be truncated")),
        }
        if size > MAX_FILE_SIZE {
            return Err(FsError::FileTooLarge);
        }
    }
    if let Some(mode) = set.mode {
        rec.mode = mode & 0o7777;
    }
    if let Some(uid) = set.uid {
        rec.uid = uid;
    }
    if let Some(gid) = set.gid {
        rec.gid = gid;
    }
    if let Some(size) = set.size {
        volumes::charge(t, rec.volume, volumes::size_delta(rec.size, size), 0)?;
        if size < rec.size {
            let mut refs = RefDelta::default();
            layout::truncate(t, ino, size, &mut refs)?;
            refs.apply(t)?;
        }
        if size != rec.size || set.mtime.is_none() {
            rec.mtime = now;
        }
        rec.size = size;
    }
    let resolve = |ts: TimeSet| match ts {
        TimeSet::Now => now,
        TimeSet::At(at) => at,
    };
    if let Some(atime) = set.atime {
        rec.atime = resolve(atime);
    }
    if let Some(mtime) = set.mtime {
        rec.mtime = resolve(mtime);
    }
    rec.ctime = now;
    t.put_inode(ino, &rec)?;
    Ok(Outcome::Node { ino, record: rec })
}

fn set_xattr(
    t: &mut WriteTables,
    now: Timestamp,
    ino: InodeId,
    name: &str,
    value: &[u8],
    flags: u32,
) -> FsResult<Outcome> {
    if name.is_empty() || dfs_common::name::raw_len(name) > MAX_XATTR_NAME_LEN {
        return Err(FsError::Range);
    }
    if name.contains('\0') {
        return Err(FsError::invalid(
            "extended attribute names cannot contain NUL",
        ));
    }
    if !dfs_common::name::is_canonical(name) {
        return Err(FsError::invalid(
            "an extended attribute name not encoded as dfs encodes names",
        ));
    }
    if value.len() > MAX_XATTR_VALUE_LEN {
        return Err(FsError::TooBig(format!(
            "xattr value of {} bytes",
            value.len()
        )));
    }
    if flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 {
        return Err(FsError::invalid(format!("bad setxattr flags {flags:#x}")));
    }
    let mut rec = get_inode(t.inodes.table()?, ino)?;
    let exists = t.xattrs.table()?.get((ino.0, name)).db()?.is_some();
    if flags & XATTR_CREATE != 0 && exists {
        return Err(FsError::Exists);
    }
    if flags & XATTR_REPLACE != 0 && !exists {
        return Err(FsError::NoAttribute);
    }
    // Bounded per inode, like a local file system's xattr space: ENOSPC when full.
    let (mut count, mut bytes) = (1usize, name.len() + value.len());
    for item in t.xattrs.table()?.range((ino.0, "")..(ino.0 + 1, "")).db()? {
        let (k, v) = item.db()?;
        if k.value().1 != name {
            count += 1;
            bytes += k.value().1.len() + v.value().len();
        }
    }
    if count > MAX_XATTRS_PER_INODE || bytes > MAX_XATTR_BYTES_PER_INODE {
        return Err(FsError::NoSpace(format!(
            "extended attributes of inode {ino} are full ({MAX_XATTRS_PER_INODE} names, {MAX_XATTR_BYTES_PER_INODE} bytes at most)"
        )));
    }
    t.xattrs.table()?.insert((ino.0, name), value).db()?;
    rec.ctime = now;
    t.put_inode(ino, &rec)?;
    Ok(Outcome::Done)
}

fn shard_locations(t: &mut WriteTables, servers: &[ServerId]) -> FsResult<Vec<ShardAt>> {
    servers
        .iter()
        .map(|&server| {
            if server == ServerId::NONE {
                return Ok(ShardAt {
                    server,
                    addr: String::new(),
                });
            }
            let rec: ServerRecord = match t.servers.table()?.get(server.0).db()? {
                Some(v) => decode(v.value())?,
                None => {
                    return Err(FsError::unavailable(format!(
                        "unknown chunk server {server}"
                    )))
                }
            };
            Ok(ShardAt {
                server,
                addr: rec.addr,
            })
        })
        .collect()
}

fn allocate_block(
    t: &mut WriteTables,
    now: Timestamp,
    ino: InodeId,
    placement: &[ServerId],
) -> FsResult<Outcome> {
    let rec = get_inode(t.inodes.table()?, ino)?;
    if rec.kind != FileKind::File {
        return Err(FsError::invalid("blocks belong to regular files"));
    }
    let (_, volume) = get_volume_by_id(t.volumes.table()?, t.volume_ids.table()?, rec.volume)?;
    if placement.len() != volume.policy.total() {
        return Err(FsError::unavailable(format!(
            "placement of {} servers for a {} block",
            placement.len(),
            volume.policy
        )));
    }
    let shards = shard_locations(t, placement)?;
    let full = get_volume_state(t.volume_state.table()?, rec.volume)?
        .limits
        .require_full_writes;
    let block = BlockId(t.next_id(NEXT_BLOCK, 1)?);
    let block_rec = BlockRecord {
        volume: rec.volume,
        policy: volume.policy,
        len: None,
        shards: placement.to_vec(),
        refs: 0,
        created: now,
    };
    t.blocks
        .table()?
        .insert(block.0, encode(&block_rec).as_slice())
        .db()?;
    Ok(Outcome::Placement {
        block,
        volume: rec.volume,
        policy: volume.policy,
        shards,
        min_shards: if full {
            volume.policy.total()
        } else {
            volume.policy.min_write_shards()
        } as u8,
    })
}

fn replace_shard(
    t: &mut WriteTables,
    block: BlockId,
    index: u8,
    failed: ServerId,
    to: Option<ServerId>,
) -> FsResult<Outcome> {
    let mut rec: BlockRecord = match t.blocks.table()?.get(block.0).db()? {
        Some(v) => decode(v.value())?,
        None => return Err(FsError::NotFound),
    };
    if rec.len.is_some() {
        return Err(FsError::invalid(format!(
            "block {block} is committed; its shards are repaired, not replaced"
        )));
    }
    let slot = rec
        .shards
        .get_mut(index as usize)
        .ok_or_else(|| FsError::invalid(format!("shard index {index} out of range")))?;
    if *slot == failed {
        *slot = to.unwrap_or(ServerId::NONE);
    }
    let current = rec.shards[index as usize];
    t.blocks
        .table()?
        .insert(block.0, encode(&rec).as_slice())
        .db()?;
    let location = shard_locations(t, &[current])?.remove(0);
    Ok(Outcome::Shard(location))
}

pub(crate) fn commit_write(
    t: &mut WriteTables,
    now: Timestamp,
    ino: InodeId,
    extents: &[NewExtent],
    mtime: Timestamp,
    append: bool,
) -> FsResult<Outcome> {
    let mut rec = get_inode(t.inodes.table()?, ino)?;
    if rec.kind != FileKind::File {
        return Err(FsError::invalid("writes go to regular files"));
    }
    let before = rec.clone();
    let shifted: Vec<NewExtent>;
    let extents = if append {
        let mut moved = extents.to_vec();
        for ne in &mut moved {
            ne.extent.file_offset = ne
                .extent
                .file_offset
                .checked_add(rec.size)
                .ok_or(FsError::FileTooLarge)?;
        }
        shifted = moved;
        &shifted[..]
    } else {
        extents
    };
    if extents.len() > MAX_COMMIT_EXTENTS {
        return Err(FsError::TooBig(format!(
            "{} extents in one commit (at most {MAX_COMMIT_EXTENTS})",
            extents.len()
        )));
    }
    // Check every extent before changing anything. Blocks committed for the first time get
    // their length and lose the shards their writer could not store.
    let mut first_commits: BTreeMap<BlockId, (BlockRecord, u64, u32)> = BTreeMap::new();
    let mut seen: BTreeMap<BlockId, u64> = BTreeMap::new();
    for ne in extents {
        let e = ne.extent;
        e.file_offset
            .checked_add(e.len)
            .filter(|&end| end <= MAX_FILE_SIZE)
            .ok_or(FsError::FileTooLarge)?;
        if e.len == 0
            || ne.block_len > MAX_BLOCK_SIZE
            || e.block_offset
                .checked_add(e.len)
                .is_none_or(|x| x > ne.block_len)
        {
            return Err(FsError::invalid(format!(
                "extent {e:?} does not fit its {}-byte block",
                ne.block_len
            )));
        }
        if let Some(&len) = seen.get(&e.block) {
            if len != ne.block_len {
                return Err(FsError::invalid(format!(
                    "block {} named with two lengths",
                    e.block
                )));
            }
            if let Some(first) = first_commits.get_mut(&e.block) {
                first.2 |= ne.missing_shards;
            }
            continue;
        }
        seen.insert(e.block, ne.block_len);
        let block: BlockRecord = match t.blocks.table()?.get(e.block.0).db()? {
            Some(v) => decode(v.value())?,
            None => {
                return Err(FsError::invalid(format!(
                    "block {} was never allocated",
                    e.block
                )))
            }
        };
        if block.volume != rec.volume {
            return Err(FsError::invalid(format!(
                "block {} belongs to another volume",
                e.block
            )));
        }
        // An inline block belongs to the file that wrote it: that keeps its charge against
        // the file's inline allowance exact (see `layout`).
        if block.is_inline() && block.refs > 0 {
            return Err(FsError::invalid(format!(
                "block {} is kept inline for a file already",
                e.block
            )));
        }
        match block.len {
            Some(len) if len != ne.block_len => {
                return Err(FsError::invalid(format!(
                    "block {} committed with another length",
                    e.block
                )));
            }
            Some(_) => {}
            None => {
                first_commits.insert(e.block, (block, ne.block_len, ne.missing_shards));
            }
        }
    }
    let full = get_volume_state(t.volume_state.table()?, rec.volume)?
        .limits
        .require_full_writes;
    for (block, (mut block_rec, len, missing)) in first_commits {
        for (index, server) in block_rec.shards.iter_mut().enumerate() {
            if index < 32 && missing & (1 << index) != 0 {
                *server = ServerId::NONE;
            }
        }
        let stored = block_rec
            .shards
            .iter()
            .filter(|s| **s != ServerId::NONE)
            .count();
        let needed = if full {
            block_rec.policy.total()
        } else {
            block_rec.policy.min_write_shards()
        };
        if stored < needed {
            return Err(FsError::unavailable(format!(
                "block {block} has {stored} of its {} shards stored, {needed} needed{}",
                block_rec.policy.total(),
                if full {
                    " (the volume requires full writes)"
                } else {
                    ""
                }
            )));
        }
        block_rec.len = Some(len);
        t.blocks
            .table()?
            .insert(block.0, encode(&block_rec).as_slice())
            .db()?;
    }
    let mut refs = RefDelta::default();
    let old_size = rec.size;
    for ne in extents {
        layout::put_extent(t, ino, ne.extent, &mut refs)?;
        rec.size = rec.size.max(ne.extent.file_offset + ne.extent.len);
    }
    volumes::charge(t, rec.volume, volumes::size_delta(old_size, rec.size), 0)?;
    refs.apply(t)?;
    rec.mtime = mtime;
    rec.ctime = now;
    t.put_inode(ino, &rec)?;
    Ok(Outcome::Committed {
        ino,
        before,
        after: rec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tables::ReadTables;
    use crate::testing::{make_node, run, store_with_volume};
    use redb::{Database, ReadableDatabase};

    fn make(db: &Database, parent: InodeId, name: &str, kind: FileKind) -> InodeId {
        let Ok(Outcome::Node { ino, .. }) = run(db, make_node(parent, name, kind)) else {
            panic!("{name} not made")
        };
        ino
    }

    /// The inode `name` in `dir` names, and its links, if the name exists.
    fn named(db: &Database, dir: InodeId, name: &str) -> Option<(InodeId, u32)> {
        let tx = db.begin_read().unwrap();
        let t = ReadTables::open(&tx);
        let (ino, _) = lookup(t.dentries.table().unwrap(), dir, name).unwrap()?;
        Some((
            ino,
            get_inode(t.inodes.table().unwrap(), ino).unwrap().nlink,
        ))
    }

    fn hide(parent: InodeId, name: &str, open: Vec<InodeId>) -> Op {
        Op::UnlinkOrHide {
            parent,
            name: name.into(),
            open,
            tag: 0x2a,
        }
    }

    #[test]
    fn unlink_or_hide_hides_only_the_last_link_of_a_file_open_there() {
        let (_dir, db, root) = store_with_volume();
        let (open, closed) = (
            make(&db, root, "open", FileKind::File),
            make(&db, root, "closed", FileKind::File),
        );
        let sub = make(&db, root, "sub", FileKind::Dir);

        // A file open there, with one link: renamed to a hidden name, the inode kept.
        let hidden = format!(".dfs-hidden-{open}-0000002a");
        assert_eq!(
            run(&db, hide(root, "open", vec![closed, open])),
            Ok(Outcome::Unlinked {
                victim: open,
                links: 1,
                hidden: Some(hidden.clone()),
            })
        );
        assert_eq!(named(&db, root, "open"), None);
        assert_eq!(named(&db, root, &hidden), Some((open, 1)));

        // A file not open there: removed with its inode.
        assert_eq!(
            run(&db, hide(root, "closed", vec![open])),
            Ok(Outcome::Unlinked {
                victim: closed,
                links: 0,
                hidden: None,
            })
        );
        assert_eq!(named(&db, root, "closed"), None);
        let tx = db.begin_read().unwrap();
        let gone = get_inode(ReadTables::open(&tx).inodes.table().unwrap(), closed);
        assert_eq!(gone, Err(FsError::NotFound));
        drop(tx);

        // An open file with another link: only the name goes.
        let linked = Op::Link {
            ino: open,
            new_parent: root,
            new_name: "again".into(),
        };
        run(&db, linked).unwrap();
        assert_eq!(
            run(&db, hide(root, "again", vec![open])),
            Ok(Outcome::Unlinked {
                victim: open,
                links: 1,
                hidden: None,
            })
        );
        assert_eq!(named(&db, root, &hidden), Some((open, 1)));

        // Directories are refused, as by an unlink, and so is an overlong list.
        assert_eq!(run(&db, hide(root, "sub", vec![sub])), Err(FsError::IsDir));
        let many = vec![open; req::MAX_OPEN_NAMED + 1];
        assert!(matches!(
            run(&db, hide(root, &hidden, many)),
            Err(FsError::Invalid(_))
        ));
        assert_eq!(named(&db, root, &hidden), Some((open, 1)));
        assert_eq!(run(&db, hide(root, "none", vec![])), Err(FsError::NotFound));
    }

    fn rename(parent: InodeId, name: &str, new_parent: InodeId, new_name: &str, flags: u32) -> Op {
        Op::Rename {
            parent,
            name: name.into(),
            new_parent,
            new_name: new_name.into(),
            flags,
        }
    }

    /// A rename names the inodes whose own attributes it changed, and only those: the caller
    /// keeps what it knows of every other.
    #[test]
    fn a_rename_names_the_inodes_it_moved_or_replaced() {
        let (_dir, db, root) = store_with_volume();
        let (a, b) = (
            make(&db, root, "a", FileKind::Dir),
            make(&db, root, "b", FileKind::Dir),
        );
        let (f, g, sub) = (
            make(&db, a, "f", FileKind::File),
            make(&db, b, "g", FileKind::File),
            make(&db, a, "sub", FileKind::Dir),
        );
        let renamed = |touched: Vec<InodeId>| Ok(Outcome::Renamed { touched });

        // Into a free name: the moved inode alone.
        assert_eq!(run(&db, rename(a, "sub", b, "sub", 0)), renamed(vec![sub]));
        // Over another file: that one loses its name, and its link.
        assert_eq!(run(&db, rename(a, "f", b, "g", 0)), renamed(vec![f, g]));
        assert_eq!(named(&db, b, "g"), Some((f, 1)));
        let tx = db.begin_read().unwrap();
        let gone = get_inode(ReadTables::open(&tx).inodes.table().unwrap(), g);
        assert_eq!(gone, Err(FsError::NotFound));
        drop(tx);
        // An exchange moves both.
        let h = make(&db, a, "h", FileKind::File);
        assert_eq!(
            run(&db, rename(a, "h", b, "g", RENAME_EXCHANGE)),
            renamed(vec![h, f])
        );
        assert_eq!(named(&db, a, "h"), Some((f, 1)));
        // Two names of one file: nothing changes, nothing named.
        run(
            &db,
            Op::Link {
                ino: h,
                new_parent: a,
                new_name: "h2".into(),
            },
        )
        .unwrap();
        assert_eq!(run(&db, rename(b, "g", a, "h2", 0)), renamed(vec![]));
        // A refused rename names nothing either.
        assert_eq!(run(&db, rename(a, "h", b, "sub", 0)), Err(FsError::IsDir));
    }
}
