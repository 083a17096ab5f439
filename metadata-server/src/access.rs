//! Who may do what. Administrators (by the role their certificate names) may do anything;
//! servers only what chunk servers ask of the metadata server. A client certificate may do only what `dfs client add` granted it: read, or read
//! and write, the volumes it names. Unknown and revoked certificates are refused, so a
//! revoked client loses access at its very next request.

use crate::command::Outcome;
use crate::store::schema::{decode, encode, ClientRecord, VolumeRecord};
use crate::store::tables::{get_inode, ReadTables, WriteTables};
use crate::store::DbResult;
use crate::volumes::validate_volume_name;
use dfs_common::proto::meta::*;
use dfs_common::{BlockId, FsError, FsResult, InodeId, Timestamp, VolumeId};
use redb::ReadableTable;
use std::collections::HashMap;
use std::sync::RwLock;

/// The rights of every registered, unrevoked client certificate, by fingerprint. Loaded from
/// the store at start and reloaded after each change to it.
#[derive(Default)]
pub struct ClientRegistry {
    by_fingerprint: RwLock<HashMap<[u8; 32], Vec<VolumeGrant>>>,
}

impl ClientRegistry {
    pub fn reload(&self, t: &ReadTables) -> FsResult<()> {
        let mut map = HashMap::new();
        for item in t.clients.table()?.iter().db()? {
            let (_, value) = item.db()?;
            let rec: ClientRecord = decode(value.value())?;
            if !rec.revoked {
                map.insert(rec.fingerprint, rec.grants);
            }
        }
        *self.by_fingerprint.write().expect("registry lock") = map;
        Ok(())
    }

    pub fn grants(&self, fingerprint: &[u8; 32]) -> Option<Vec<VolumeGrant>> {
        self.by_fingerprint
            .read()
            .expect("registry lock")
            .get(fingerprint)
            .cloned()
    }
}

/// What a request touches, for the access check.
pub enum Need {
    /// Only servers and administrators.
    Admin,
    /// Anyone with a valid certificate.
    Anyone,
    Read(Target),
    Write(Target),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Inode(InodeId),
    Block(BlockId),
    Volume(String),
    /// Listing volumes: a client sees only its own.
    VolumeList,
}

pub fn need(request: &MetaRequest) -> Need {
    use MetaRequest as R;
    use Target::*;
    match request {
        R::ListVolumes(_) => Need::Read(VolumeList),
        R::GetVolume(req::GetVolume { name }) => Need::Read(Volume(name.clone())),
        R::Lookup(req::Lookup { parent: ino, .. })
        | R::GetAttr(req::GetAttr { ino })
        | R::OpenAttr(req::OpenAttr { ino, .. })
        | R::ReadLink(req::ReadLink { ino })
        | R::ReadDir(req::ReadDir { dir: ino, .. })
        | R::StatFs(req::StatFs { ino })
        | R::GetXattr(req::GetXattr { ino, .. })
        | R::ListXattr(req::ListXattr { ino })
        | R::GetLayout(req::GetLayout { ino, .. })
        | R::SetLock(req::SetLock { ino, .. })
        | R::TestLock(req::TestLock { ino, .. }) => Need::Read(Inode(*ino)),
        R::MakeNode(req::MakeNode { parent: ino, .. })
        | R::Symlink(req::Symlink { parent: ino, .. })
        | R::Unlink(req::Unlink { parent: ino, .. })
        | R::UnlinkOrHide(req::UnlinkOrHide { parent: ino, .. })
        | R::Rmdir(req::Rmdir { parent: ino, .. })
        | R::Rename(req::Rename { parent: ino, .. })
        | R::Move(req::Move {
            rename: req::Rename { parent: ino, .. },
        })
        | R::Link(req::Link { ino, .. })
        | R::SetAttr(req::SetAttr { ino, .. })
        | R::SetXattr(req::SetXattr { ino, .. })
        | R::RemoveXattr(req::RemoveXattr { ino, .. })
        | R::AllocateBlock(req::AllocateBlock { ino })
        | R::CommitWrite(req::CommitWrite { ino, .. })
        | R::WriteInline(req::WriteInline { ino, .. })
        | R::CommitIfUnchanged(req::CommitIfUnchanged { ino, .. }) => Need::Write(Inode(*ino)),
        R::ReplaceShard(req::ReplaceShard { block, .. }) => Need::Write(Block(*block)),
        R::WatchChanges(req::WatchChanges { root: ino, .. })
        | R::WatchOpen(req::WatchOpen {
            watch: req::WatchChanges { root: ino, .. },
            ..
        }) => Need::Read(Inode(*ino)),
        R::ReleaseLocks(_)
        | R::RenewSession(_)
        | R::CancelLockWait(_)
        | R::StopWatching(_) => Need::Anyone,
        // Where to send calls: asked by every kind of caller.
        R::Leader(_) => Need::Anyone,
        R::CreateVolume(_)
        | R::SetVolume(_)
        | R::DeleteVolume(_)
        | R::AddClient(_)
        | R::RevokeClient(_)
        | R::ListClients(_)
        | R::ClientGrants(_)
        | R::Fsck(_)
        | R::VolumeUsage(_)
        | R::Heartbeat(_)
        | R::ClusterStatus(_)
        | R::ReportBadShard(_)
        | R::MoveShard(_)
        | R::DropBlocks(_)
        | R::CheckShards(_)
        | R::RepairStatus(_)
        | R::DrainServer(_)
        | R::Rebalance(_)
        | R::RemoveServer(_)
        | R::ExpireCalls(_)
        | R::BindServer(_)
        | R::MetaStatus(_)
        | R::MetaDigest(_)
        | R::MetaAdd(_)
        | R::MetaRemove(_)
        // Refused to everyone but metadata servers before this is asked.
        | R::Peer(_) => Need::Admin,
    }
}

/// Second targets of two-inode requests (rename and link into another directory): both must
/// be granted. Cross-volume renames and links are refused later anyway; this keeps a client
/// from learning about a volume it may not see.
pub fn second_inode(request: &MetaRequest) -> Option<InodeId> {
    match request {
        MetaRequest::Rename(req::Rename { new_parent, .. })
        | MetaRequest::Move(req::Move {
            rename: req::Rename { new_parent, .. },
        })
        | MetaRequest::Link(req::Link { new_parent, .. }) => Some(*new_parent),
        _ => None,
    }
}

/// The volume a target lies in; `None` for an inode or block that does not exist (the
/// request then fails on its own with ENOENT, which reveals nothing).
pub fn volume_of(t: &ReadTables, target: &Target) -> FsResult<Option<VolumeId>> {
    match target {
        Target::Inode(ino) => match get_inode(t.inodes.table()?, *ino) {
            Ok(rec) => Ok(Some(rec.volume)),
            Err(FsError::NotFound) => Ok(None),
            Err(e) => Err(e),
        },
        Target::Block(block) => match t.blocks.table()?.get(block.0).db()? {
            Some(v) => Ok(Some(
                decode::<crate::store::schema::BlockRecord>(v.value())?.volume,
            )),
            None => Ok(None),
        },
        Target::Volume(name) => match t.volumes.table()?.get(name.as_str()).db()? {
            Some(v) => Ok(Some(decode::<VolumeRecord>(v.value())?.id)),
            None => Ok(None),
        },
        Target::VolumeList => Ok(None),
    }
}

/// Checks one volume against a client's grants.
pub fn check_grant(grants: &[VolumeGrant], volume: VolumeId, write: bool) -> FsResult<()> {
    match grants.iter().find(|g| g.volume == volume) {
        None => Err(FsError::Denied(format!(
            "this client certificate has no access to volume {volume}"
        ))),
        Some(g) if write && !g.write => Err(FsError::ReadOnly),
        Some(_) => Ok(()),
    }
}

pub fn add_client(
    t: &mut WriteTables,
    now: Timestamp,
    name: &str,
    fingerprint: [u8; 32],
    volumes: &[(String, bool)],
) -> FsResult<Outcome> {
    validate_volume_name(name)
        .map_err(|_| FsError::invalid(format!("invalid client name {name:?}")))?;
    if t.clients.table()?.get(name).db()?.is_some() {
        return Err(FsError::Exists);
    }
    for item in t.clients.table()?.iter().db()? {
        let (_, value) = item.db()?;
        if decode::<ClientRecord>(value.value())?.fingerprint == fingerprint {
            return Err(FsError::invalid(
                "this certificate is already registered under another name",
            ));
        }
    }
    let mut grants = Vec::new();
    for (volume, write) in volumes {
        let rec: VolumeRecord = match t.volumes.table()?.get(volume.as_str()).db()? {
            Some(v) => decode(v.value())?,
            None => return Err(FsError::invalid(format!("no volume named {volume:?}"))),
        };
        grants.push(VolumeGrant {
            volume: rec.id,
            write: *write,
        });
    }
    let rec = ClientRecord {
        fingerprint,
        grants,
        created: now,
        revoked: false,
    };
    t.clients
        .table()?
        .insert(name, encode(&rec).as_slice())
        .db()?;
    Ok(Outcome::Done)
}

pub fn revoke_client(t: &mut WriteTables, name: &str) -> FsResult<Outcome> {
    let mut rec: ClientRecord = match t.clients.table()?.get(name).db()? {
        Some(v) => decode(v.value())?,
        None => return Err(FsError::NotFound),
    };
    rec.revoked = true;
    t.clients
        .table()?
        .insert(name, encode(&rec).as_slice())
        .db()?;
    Ok(Outcome::Done)
}

pub fn list_clients(t: &ReadTables) -> FsResult<Vec<ClientInfo>> {
    let mut names = HashMap::new();
    for item in t.volumes.table()?.iter().db()? {
        let (name, value) = item.db()?;
        names.insert(
            decode::<VolumeRecord>(value.value())?.id,
            name.value().to_string(),
        );
    }
    let mut out = Vec::new();
    for item in t.clients.table()?.iter().db()? {
        let (name, value) = item.db()?;
        let rec: ClientRecord = decode(value.value())?;
        out.push(ClientInfo {
            name: name.value().to_string(),
            fingerprint: rec.fingerprint.iter().map(|b| format!("{b:02x}")).collect(),
            volumes: rec
                .grants
                .iter()
                .filter_map(|g| names.get(&g.volume).map(|n| (n.clone(), g.write)))
                .collect(),
            created: rec.created,
            revoked: rec.revoked,
        });
    }
    Ok(out)
}
