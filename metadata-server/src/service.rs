//! The metadata server's request handler: reads go to a snapshot, mutations to the committer,
//! placement decisions are made here (from live membership) and travel inside the command.

use crate::access::{self, ClientRegistry, Need, Target};
use crate::calls;
use crate::command::{Call, Command, Op, Outcome, ShardAt};
use crate::committer::Committer;
use crate::locks::LockTable;
use crate::membership::Membership;
use crate::placement::place;
use crate::queries;
use crate::repair::Repair;
use crate::store::schema::{decode, BlockRecord};
use crate::store::tables::{get_inode, get_volume_by_id, get_volume_state, to_attr, ReadTables};
use crate::store::{self, DbResult};
use crate::volumes::volume_info;
use dfs_common::capability::CapabilityKey;
use dfs_common::codec::{decode_body, encode_body};
use dfs_common::fault::Faults;
use dfs_common::metrics::OpMetrics;
use dfs_common::net::server::{PeerInfo, Response, Service};
use dfs_common::net::tls::{Fingerprint, Principal};
use dfs_common::proto::chunk::ShardKey;
use dfs_common::proto::meta::*;
use dfs_common::proto::MAX_CHECK_SHARDS;
use dfs_common::{BlockId, FsError, FsResult, InodeId, ServerId, Timestamp, VolumeId};
use quinn::RecvStream;
use redb::{Database, ReadableTable};
use std::sync::Arc;
use std::time::Duration;

/// How often a leader whose take-over failed tries again.
const TAKE_OVER_RETRY: Duration = Duration::from_secs(1);

/// How long a lock call waits for its change to reach the metadata log.
const LOCK_RECORD_TIMEOUT: Duration = Duration::from_secs(10);

/// Batches of lock changes in the metadata log, and ones that failed to get there.
#[derive(Clone, Copy, Debug, Default)]
struct LocksRecorded {
    done: u64,
    failed: u64,
}

pub struct MetaService {
    ops: OpMetrics,
    locks_recorded: tokio::sync::watch::Sender<LocksRecorded>,
    /// Whether this member, as leader, has loaded what the group recorded (locks, grants,
    /// certificates, draining): until then it takes no lock call, which could be lost in the
    /// load.
    taken_over: std::sync::atomic::AtomicBool,
    log: crate::raft::Group,
    clients: ClientRegistry,
    db: Arc<Database>,
    committer: Committer,
    membership: Arc<Membership>,
    locks: LockTable,
    repair: Arc<Repair>,
    /// The key shard capabilities are signed with, shared by every member of the group: a
    /// server that joins a group takes its leader's.
    capability_key: std::sync::RwLock<CapabilityKey>,
    /// Where the capability key is kept.
    capability_key_path: std::path::PathBuf,
    /// Each chunk server's id and the certificate it registered with (the `server_certs`
    /// table, cached): another server certificate cannot speak for it.
    server_certs: std::sync::Mutex<std::collections::HashMap<ServerId, Fingerprint>>,
    faults: Faults,
}

/// What the service is built from; the rest it derives.
pub struct ServiceParts {
    pub db: Arc<Database>,
    pub log: crate::raft::Group,
    pub committer: Committer,
    pub membership: Arc<Membership>,
    pub locks: LockTable,
    pub repair: Arc<Repair>,
    pub ops: OpMetrics,
    pub capability_key: CapabilityKey,
    pub capability_key_path: std::path::PathBuf,
    pub faults: Faults,
}

impl MetaService {
    pub fn new(parts: ServiceParts) -> FsResult<Self> {
        let clients = ClientRegistry::default();
        let tx = store::read(&parts.db)?;
        let tables = ReadTables::open(&tx)?;
        clients.reload(&tables)?;
        let mut server_certs = std::collections::HashMap::new();
        for item in tables.server_certs.iter().db()? {
            let (server, fingerprint) = item.db()?;
            server_certs.insert(ServerId(server.value()), Fingerprint(fingerprint.value()));
        }
        drop(tables);
        drop(tx);
        Ok(MetaService {
            server_certs: std::sync::Mutex::new(server_certs),
            locks_recorded: tokio::sync::watch::Sender::new(LocksRecorded::default()),
            taken_over: std::sync::atomic::AtomicBool::new(false),
            ops: parts.ops,
            log: parts.log,
            clients,
            db: parts.db,
            committer: parts.committer,
            membership: parts.membership,
            locks: parts.locks,
            repair: parts.repair,
            capability_key: std::sync::RwLock::new(parts.capability_key),
            capability_key_path: parts.capability_key_path,
            faults: parts.faults,
        })
    }

    /// Refuses what `principal` may not do: administrators may do anything, servers only the
    /// calls chunk servers make, clients what their grants allow. Returns a client's grants
    /// (`None` otherwise) for filtering the reply.
    async fn authorize(
        &self,
        principal: &Principal,
        request: &MetaRequest,
    ) -> FsResult<Option<Vec<VolumeGrant>>> {
        let fingerprint = match principal {
            // The metadata role is held by metadata servers only.
            Principal::Admin | Principal::Meta => return Ok(None),
            // Chunk servers make only these calls; a server certificate grants nothing else,
            // so a chunk host's key is not an administrator's.
            Principal::Server(fingerprint) => {
                match request {
                    MetaRequest::Heartbeat { server, .. } => {
                        self.check_server(*server, fingerprint, true).await?
                    }
                    MetaRequest::CheckShards { server, .. }
                    | MetaRequest::ReportBadShard { server, .. } => {
                        self.check_server(*server, fingerprint, false).await?
                    }
                    MetaRequest::ClientGrants { .. } => {}
                    _ => return Err(FsError::Denied(
                        "a server certificate may only make chunk-server calls; use an administrator certificate".into(),
                    )),
                }
                return Ok(None);
            }
            Principal::Client(fingerprint) => fingerprint,
        };
        let grants = self.clients.grants(&fingerprint.0).ok_or_else(|| {
            FsError::Denied(format!(
                "client certificate {fingerprint} is not registered with this cluster, or was revoked"
            ))
        })?;
        let (target, write) = match access::need(request) {
            Need::Admin => {
                return Err(FsError::Denied(
                    "this needs an administrator certificate".into(),
                ))
            }
            Need::Anyone => return Ok(Some(grants)),
            Need::Read(target) => (target, false),
            Need::Write(target) => (target, true),
        };
        if target == Target::VolumeList {
            // Filtered to the client's own volumes in the reply.
            return Ok(Some(grants));
        }
        if let Target::Volume(name) = &target {
            // Do not tell a client whether a volume it may not use exists.
            let name = name.clone();
            let volume = self
                .query(move |t| access::volume_of(t, &Target::Volume(name)))
                .await?;
            return match volume {
                Some(v) if grants.iter().any(|g| g.volume == v) => Ok(Some(grants)),
                _ => Err(FsError::Denied(format!(
                    "this client certificate has no access to volume {:?}",
                    request_volume_name(request)
                ))),
            };
        }
        let second = access::second_inode(request);
        // Inode and block ids are never reused and never change volume, so a target that
        // exists now is in the volume checked here when the request applies. A target that
        // does not exist yet is refused: it could be created in another volume meanwhile.
        let volumes = self
            .query(move |t| {
                let first = access::volume_of(t, &target)?.ok_or(FsError::NotFound)?;
                let second = match second {
                    Some(ino) => {
                        Some(access::volume_of(t, &Target::Inode(ino))?.ok_or(FsError::NotFound)?)
                    }
                    None => None,
                };
                Ok([Some(first), second])
            })
            .await?;
        for volume in volumes.into_iter().flatten() {
            access::check_grant(&grants, volume, write)?;
        }
        Ok(Some(grants))
    }

    /// Refuses a server certificate that speaks for a chunk server id registered with another
    /// certificate; binds an id seen for the first time (at its heartbeat) to this one.
    async fn check_server(
        &self,
        server: ServerId,
        fingerprint: &Fingerprint,
        may_register: bool,
    ) -> FsResult<()> {
        let cached = self
            .server_certs
            .lock()
            .expect("server certificates")
            .get(&server)
            .copied();
        let bound = match cached {
            Some(b) => Some(b),
            // Bound through another member, perhaps: the store has what the group decided.
            None => {
                let stored = self
                    .query(move |t| Ok(t.server_certs.get(server.0).db()?.map(|f| f.value())))
                    .await?
                    .map(Fingerprint);
                if let Some(b) = stored {
                    self.server_certs
                        .lock()
                        .expect("server certificates")
                        .insert(server, b);
                }
                stored
            }
        };
        match bound {
            Some(b) if b == *fingerprint => Ok(()),
            Some(_) => Err(FsError::Denied(format!(
                "chunk server {server} is registered with another certificate"
            ))),
            None if may_register => {
                self.log.ensure_leader()?;
                let bind = Op::BindServer {
                    server,
                    fingerprint: fingerprint.0,
                };
                self.mutate(bind, None).await?;
                self.server_certs
                    .lock()
                    .expect("server certificates")
                    .insert(server, *fingerprint);
                Ok(())
            }
            None => Err(FsError::Denied(format!(
                "chunk server {server} has not registered"
            ))),
        }
    }

    /// Gives a placed shard the capability to store it there (none for a missing shard).
    fn grant(&self, shard: &mut ShardLocation, key: ShardKey, volume: VolumeId, now: Timestamp) {
        if shard.server != ServerId::NONE {
            shard.cap = Some(self.capability_key().grant(key, volume, shard.server, now));
        }
    }

    /// Runs a read-only query on a fresh snapshot, off the async runtime. Every read of the
    /// store goes through here.
    async fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ReadTables) -> FsResult<T> + Send + 'static,
    ) -> FsResult<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let tx = store::read(&db)?;
            f(&ReadTables::open(&tx)?)
        })
        .await
        .map_err(|e| FsError::io(format!("query task failed: {e}")))?
    }

    /// Applies a mutation durably and gives its outcome. Every change to the store goes
    /// through here.
    async fn mutate(&self, op: Op, call: Option<Call>) -> FsResult<Outcome> {
        self.committer
            .submit(Command {
                now: Timestamp::now(),
                call,
                op,
            })
            .await
    }

    /// [`Self::mutate`], answered with the outcome as the wire shows it.
    async fn mutate_reply(&self, op: Op, call: Option<Call>) -> FsResult<MetaReply> {
        let creates = matches!(op, Op::MakeNode { .. });
        let mut reply = reply_of(self.mutate(op, call).await?)?;
        if let (true, MetaReply::Attr(attr)) = (creates, &mut reply) {
            // A new inode has no extended attributes.
            attr.has_xattrs = false;
        }
        Ok(reply)
    }

    /// Sorts a request into a mutation (applied by the committer), a query (answered from a
    /// snapshot) or state kept in memory (locks, membership, repair). The match is
    /// exhaustive: a new request must be placed here.
    async fn dispatch(&self, request: MetaRequest, id: Option<CallId>) -> FsResult<MetaReply> {
        let call = match id {
            Some(id) => Some(Call {
                client: id.client,
                seq: id.seq,
                done_below: id.done_below,
                request: calls::fingerprint(&encode_body(&request)?),
            }),
            None => None,
        };
        use MetaRequest as R;
        match request {
            // Mutations.
            R::CreateVolume {
                name,
                policy,
                block_size,
                limits,
            } => {
                let op = Op::CreateVolume {
                    name,
                    policy,
                    block_size,
                    limits,
                };
                self.mutate_reply(op, call).await
            }
            R::SetVolume { name, change } => {
                self.mutate_reply(Op::SetVolume { name, change }, call)
                    .await
            }
            R::DeleteVolume { name, force } => {
                self.mutate_reply(Op::DeleteVolume { name, force }, call)
                    .await
            }
            R::AddClient {
                name,
                fingerprint,
                volumes,
            } => {
                let op = Op::AddClient {
                    name,
                    fingerprint,
                    volumes,
                };
                let reply = self.mutate_reply(op, call).await?;
                self.reload_clients()?;
                Ok(reply)
            }
            R::RevokeClient { name } => {
                let reply = self.mutate_reply(Op::RevokeClient { name }, call).await?;
                self.reload_clients()?;
                Ok(reply)
            }
            R::Heartbeat {
                server,
                addr,
                capacity,
                used,
                shards,
            } => {
                if self
                    .membership
                    .heartbeat(server, &addr, capacity, used, shards)
                    // The leader records addresses; the others learn them from the log.
                    && self.log.ensure_leader().is_ok()
                {
                    tracing::info!(%server, %addr, "chunk server registered");
                    if let Err(e) = self.mutate(Op::RegisterServer { server, addr }, call).await {
                        self.membership.forget_address(server);
                        return Err(e);
                    }
                }
                Ok(MetaReply::Registered {
                    capability_key: self.capability_key(),
                })
            }
            R::BindServer {
                server,
                fingerprint,
            } => {
                let op = Op::BindServer {
                    server,
                    fingerprint,
                };
                self.mutate_reply(op, call).await
            }
            R::SetAttr { ino, set } => self.mutate_reply(Op::SetAttr { ino, set }, call).await,
            R::MakeNode {
                parent,
                name,
                kind,
                mode,
                uid,
                gid,
                rdev,
            } => {
                if kind == FileKind::Symlink {
                    return Err(FsError::invalid("symlinks are made with Symlink"));
                }
                let op = Op::MakeNode {
                    parent,
                    name,
                    kind,
                    mode,
                    uid,
                    gid,
                    rdev,
                    target: None,
                };
                self.mutate_reply(op, call).await
            }
            R::Symlink {
                parent,
                name,
                target,
                uid,
                gid,
            } => {
                let op = Op::MakeNode {
                    parent,
                    name,
                    kind: FileKind::Symlink,
                    mode: 0o777,
                    uid,
                    gid,
                    rdev: 0,
                    target: Some(target),
                };
                self.mutate_reply(op, call).await
            }
            R::Link {
                ino,
                new_parent,
                new_name,
            } => {
                let op = Op::Link {
                    ino,
                    new_parent,
                    new_name,
                };
                self.mutate_reply(op, call).await
            }
            R::Unlink { parent, name } => {
                self.mutate_reply(Op::Unlink { parent, name }, call).await
            }
            R::Rmdir { parent, name } => self.mutate_reply(Op::Rmdir { parent, name }, call).await,
            R::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
            } => {
                let op = Op::Rename {
                    parent,
                    name,
                    new_parent,
                    new_name,
                    flags,
                };
                self.mutate_reply(op, call).await
            }
            R::SetXattr {
                ino,
                name,
                value,
                flags,
            } => {
                let op = Op::SetXattr {
                    ino,
                    name,
                    value,
                    flags,
                };
                self.mutate_reply(op, call).await
            }
            R::RemoveXattr { ino, name } => {
                self.mutate_reply(Op::RemoveXattr { ino, name }, call).await
            }
            R::AllocateBlock { ino } => self.allocate_block(ino, call).await,
            R::ReplaceShard {
                block,
                index,
                failed,
            } => self.replace_shard(block, index, failed, call).await,
            R::CommitWrite {
                ino,
                extents,
                mtime,
                append,
            } => {
                let degraded = extents.iter().any(|e| e.missing_shards != 0);
                let op = Op::CommitWrite {
                    ino,
                    extents,
                    mtime,
                    append,
                };
                let reply = self.mutate_reply(op, call).await?;
                if degraded {
                    // A block committed with shards missing is repaired now, not at the next
                    // periodic scan.
                    self.repair.kick();
                }
                Ok(reply)
            }
            R::ReportBadShard { server, key } => {
                self.mutate_reply(Op::ReportBadShard { server, key }, call)
                    .await
            }
            R::MoveShard { key, from, to } => {
                self.mutate_reply(Op::MoveShard { key, from, to }, call)
                    .await
            }
            R::DropBlocks { blocks } => self.mutate_reply(Op::DropBlocks { blocks }, call).await,
            R::DrainServer { server, drain } => {
                let reply = self
                    .mutate_reply(Op::DrainServer { server, drain }, call)
                    .await?;
                self.membership.set_draining(server, drain);
                self.repair.kick();
                Ok(reply)
            }
            R::RemoveServer { server } => {
                if self.membership.is_live(server) {
                    return Err(FsError::invalid(format!(
                        "chunk server {server} is up: stop it first (drain it before, so it holds nothing)"
                    )));
                }
                let reply = self.mutate_reply(Op::RemoveServer { server }, call).await?;
                self.membership.forget(server);
                self.server_certs
                    .lock()
                    .expect("server certificates")
                    .remove(&server);
                Ok(reply)
            }
            R::ExpireCalls => self.mutate_reply(Op::ExpireCalls, call).await,

            // Queries of the store.
            R::ListVolumes => Ok(MetaReply::Volumes(self.query(queries::list_volumes).await?)),
            R::ListClients => Ok(MetaReply::Clients(self.query(access::list_clients).await?)),
            R::GetVolume { name } => Ok(MetaReply::Volume(
                self.query(move |t| queries::get_volume(t, &name)).await?,
            )),
            R::Lookup { parent, name } => Ok(MetaReply::Attr(
                self.query(move |t| queries::lookup_attr(t, parent, &name))
                    .await?,
            )),
            R::GetAttr { ino } => Ok(MetaReply::Attr(
                self.query(move |t| queries::get_attr(t, ino)).await?,
            )),
            R::ReadLink { ino } => Ok(MetaReply::Target(
                self.query(move |t| queries::read_link(t, ino)).await?,
            )),
            R::ReadDir {
                dir,
                after,
                limit,
                with_attrs,
            } => Ok(MetaReply::Dir(
                self.query(move |t| queries::read_dir(t, dir, after.as_deref(), limit, with_attrs))
                    .await?,
            )),
            R::GetXattr { ino, name } => Ok(MetaReply::Xattr(
                self.query(move |t| queries::get_xattr(t, ino, &name))
                    .await?,
            )),
            R::ListXattr { ino } => Ok(MetaReply::XattrNames(
                self.query(move |t| queries::list_xattr(t, ino)).await?,
            )),
            R::GetLayout { ino, offset, len } => {
                let mut layout = self
                    .query(move |t| queries::get_layout(t, ino, offset, len))
                    .await?;
                let live: Vec<_> = self.membership.live().into_iter().map(|c| c.id).collect();
                for shard in layout.blocks.iter_mut().flat_map(|b| b.shards.iter_mut()) {
                    shard.up = live.contains(&shard.server);
                }
                Ok(MetaReply::Layout(layout))
            }
            R::StatFs { ino } => self.stat_fs(ino).await,
            R::VolumeUsage { name } => {
                let live = self.membership.live_addrs().into_keys().collect();
                let usage = self
                    .query(move |t| queries::volume_usage(t, &name, &live))
                    .await?;
                Ok(MetaReply::Usage(usage))
            }
            R::Fsck { volume, from } => {
                let live = self.membership.live_addrs().into_keys().collect();
                let page = self
                    .query(move |t| crate::fsck::check_page(t, &volume, from, &live))
                    .await?;
                Ok(MetaReply::Fsck(page))
            }
            R::CheckShards { server, keys } => {
                if keys.len() > MAX_CHECK_SHARDS {
                    return Err(FsError::TooBig(format!(
                        "{} shards in one check",
                        keys.len()
                    )));
                }
                let stale = self
                    .query(move |t| queries::stale_shards(t, server, &keys))
                    .await?;
                Ok(MetaReply::StaleShards(
                    stale
                        .into_iter()
                        .filter(|&key| !self.repair.is_rebuilding(key, server))
                        .collect(),
                ))
            }
            R::ClusterStatus => {
                let (volumes, inodes, blocks) = self.query(queries::counts).await?;
                let mut servers = self.membership.status();
                let placed = self.repair.placed();
                for s in &mut servers {
                    s.placed = placed.get(&s.id).copied().unwrap_or(0);
                }
                Ok(MetaReply::Cluster(ClusterStatus {
                    servers,
                    volumes,
                    inodes,
                    blocks,
                    health: self.repair.health(),
                    repair: self.repair.progress(),
                }))
            }

            // State kept in memory.
            R::ClientGrants { fingerprint } => {
                Ok(MetaReply::Grants(self.clients.grants(&fingerprint)))
            }
            R::SetLock {
                ino,
                owner,
                range,
                kind,
                wait,
                holding,
            } => {
                // Only files that exist can be locked; anything can be unlocked.
                if kind != LockKind::Unlock {
                    self.query(move |t| get_inode(&t.inodes, ino).map(drop))
                        .await?;
                }
                let set = self.locks.set(ino, owner, range, kind, wait, holding);
                self.record_locks().await?;
                set.map(|()| MetaReply::Done)
            }
            R::CancelLockWait { owner } => {
                self.locks.cancel_wait(owner);
                Ok(MetaReply::Done)
            }
            R::TestLock {
                ino,
                owner,
                range,
                kind,
            } => {
                let conflict = self.locks.test(ino, owner, range, kind);
                self.record_locks().await?;
                conflict.map(MetaReply::Lock)
            }
            R::ReleaseLocks { ino, owner } => {
                self.locks.release(ino, owner);
                self.record_locks().await?;
                Ok(MetaReply::Done)
            }
            R::RenewSession { session } => {
                let renewed = self.locks.renew(session);
                self.record_locks().await?;
                renewed.map(|()| MetaReply::Done)
            }
            R::RepairStatus => Ok(MetaReply::Repair(self.repair.progress())),
            R::MetaStatus => Ok(MetaReply::MetaGroup(self.log.members())),
            R::MetaAdd { addr } => {
                let join = crate::raft::network::JoinRequest {
                    capability_key: self.capability_key(),
                    addr: addr.clone(),
                };
                self.log.add_member(&addr, &join).await?;
                Ok(MetaReply::MetaGroup(self.log.members()))
            }
            R::MetaRemove { id } => {
                self.log.remove_member(id).await?;
                Ok(MetaReply::MetaGroup(self.log.members()))
            }
            R::Leader => Ok(MetaReply::Leader(self.log.leader_addr())),
            R::MetaDigest => {
                let db = self.db.clone();
                let (applied, digest) =
                    tokio::task::spawn_blocking(move || crate::raft::state::digest(&db))
                        .await
                        .map_err(|e| FsError::io(format!("digest task: {e}")))??;
                Ok(MetaReply::Digest {
                    member: self.log.id,
                    applied,
                    digest,
                })
            }
            R::Peer { .. } => Err(FsError::protocol(
                "peer messages are answered before dispatch",
            )),
            R::Rebalance => {
                self.repair.start_rebalance();
                Ok(MetaReply::Done)
            }
        }
    }

    /// Records the lock table's changes in the metadata log and waits until every change made
    /// so far (this call's, or another's that took it along) is there: a lock is granted or
    /// released only once a new leader would know it.
    async fn record_locks(&self) -> FsResult<()> {
        let now = Timestamp::now();
        let mut queued = None;
        let batch = self.locks.record_changes(|files, sessions| {
            let op = Op::SetLocks { files, sessions };
            queued = Some(self.committer.enqueue(Command::internal(now, op))?);
            Ok(())
        })?;
        if let Some(wait) = queued {
            let recorded = self.locks_recorded.clone();
            tokio::spawn(async move {
                let ok = matches!(wait.await, Ok(Ok(_)));
                if !ok {
                    tracing::warn!(
                        batch,
                        "a batch of lock changes did not reach the metadata log"
                    );
                }
                recorded.send_modify(|r| {
                    if ok {
                        r.done = r.done.max(batch);
                    } else {
                        r.failed = r.failed.max(batch);
                    }
                });
            });
        }
        let mut recorded = self.locks_recorded.subscribe();
        let outcome = tokio::time::timeout(
            LOCK_RECORD_TIMEOUT,
            recorded.wait_for(|r| r.done >= batch || r.failed >= batch),
        )
        .await;
        match outcome {
            Ok(Ok(r)) if r.done >= batch => Ok(()),
            // This member lost its leadership meanwhile, most likely: the call goes to the
            // new leader, which holds what was recorded.
            _ => Err(FsError::NotLeader(self.log.leader_addr())),
        }
    }

    fn capability_key(&self) -> CapabilityKey {
        self.capability_key.read().expect("capability key").clone()
    }

    /// Sends clients to the leader, and makes the leader's reads linearizable. Messages
    /// between members, questions about the group and chunk-server heartbeats (which every
    /// member takes, so that a new leader knows at once which servers are alive) are answered
    /// by any member.
    async fn route(&self, request: &MetaRequest) -> FsResult<()> {
        match request {
            MetaRequest::Leader | MetaRequest::MetaDigest | MetaRequest::Peer { .. } => Ok(()),
            // The leader knows every member's lag: it answers when there is one; without one
            // (an election, a lost majority), any member tells what it sees.
            MetaRequest::MetaStatus => match self.log.ensure_leader() {
                Err(FsError::NotLeader(Some(leader))) => Err(FsError::NotLeader(Some(leader))),
                _ => Ok(()),
            },
            // A server waiting to join would hand out a key of its own.
            MetaRequest::Heartbeat { .. } if self.log.is_member() => Ok(()),
            MetaRequest::Heartbeat { .. } => Err(FsError::NotLeader(None)),
            r if r.is_mutation() => self.log.ensure_leader(),
            MetaRequest::SetLock { .. }
            | MetaRequest::TestLock { .. }
            | MetaRequest::ReleaseLocks { .. }
            | MetaRequest::RenewSession { .. }
            | MetaRequest::CancelLockWait { .. } => {
                self.log.read_barrier().await?;
                if self.taken_over.load(std::sync::atomic::Ordering::SeqCst) {
                    Ok(())
                } else {
                    // A new leader still loading the recorded locks: the client asks again.
                    Err(FsError::NotLeader(None))
                }
            }
            _ => self.log.read_barrier().await,
        }
    }

    /// Answers a message from another member of the group: only metadata servers may send
    /// one.
    async fn answer_peer(
        &self,
        rpc: PeerRpc,
        len: u64,
        body: &mut RecvStream,
        peer: &PeerInfo,
    ) -> Response<MetaReply> {
        if !matches!(peer.principal, Principal::Meta) {
            return Err(FsError::Denied(
                "only metadata servers (certificates with the metadata role) talk to the metadata group".into(),
            ));
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= crate::raft::network::MAX_MESSAGE)
            .ok_or_else(|| FsError::TooBig(format!("a {len}-byte peer message")))?;
        let mut message = vec![0u8; len];
        dfs_common::net::rpc::read_body_into(body, &mut message, Self::REQUEST_TIMEOUT).await?;
        let answer = match rpc {
            PeerRpc::Join => crate::raft::network::encode(&self.join(&message))?,
            _ => self.log.answer_peer(rpc, &message).await?,
        };
        let reply = MetaReply::Peer {
            len: answer.len() as u64,
        };
        Ok((reply, Some(bytes::Bytes::from(answer))))
    }

    /// Takes the group's secrets from the leader that adds this server, and answers with this
    /// server's member id.
    fn join(&self, message: &[u8]) -> FsResult<u64> {
        let join: crate::raft::network::JoinRequest = crate::raft::network::decode(message)?;
        if self.log.is_member() && join.capability_key == self.capability_key() {
            // Asked again by the same group: a change that did not finish goes on.
            return Ok(self.log.id);
        }
        if self.log.is_member() {
            return Err(FsError::invalid(
                "this metadata server already belongs to a group (start a new member with --join and an empty data directory)",
            ));
        }
        dfs_common::durable::write_file(&self.capability_key_path, &join.capability_key.0)?;
        *self.capability_key.write().expect("capability key") = join.capability_key;
        tracing::info!(addr = %join.addr, member = self.log.id, "joining a metadata group");
        Ok(self.log.id)
    }

    /// Reloads what the service keeps in memory from the store (client grants, chunk-server
    /// certificates, draining servers), each time this member becomes leader: as a follower
    /// it took the group's changes into the store only.
    pub async fn follow_leadership(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut metrics = self.log.raft.metrics();
        let mut leading = false;
        loop {
            let now = self.log.ensure_leader().is_ok();
            if !now {
                if leading {
                    tracing::info!(member = self.log.id, leader = ?self.log.leader_addr(), "this metadata server no longer leads");
                }
                self.taken_over
                    .store(false, std::sync::atomic::Ordering::SeqCst);
            } else if !leading || !self.taken_over.load(std::sync::atomic::Ordering::SeqCst) {
                if !leading {
                    tracing::info!(
                        member = self.log.id,
                        "this metadata server now leads its group"
                    );
                }
                match self.take_over().await {
                    Ok(()) => self
                        .taken_over
                        .store(true, std::sync::atomic::Ordering::SeqCst),
                    Err(e) => tracing::warn!("taking over as leader (tried again shortly): {e}"),
                }
            }
            leading = now;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = metrics.changed() => if changed.is_err() { return },
                // A take-over that failed is tried again.
                _ = tokio::time::sleep(TAKE_OVER_RETRY) => {}
            }
        }
    }

    async fn take_over(&self) -> FsResult<()> {
        self.log.read_barrier().await?;
        self.faults.hit("meta.take_over").await?;
        self.reload_clients()?;
        let (certs, draining) = self
            .query(|t| {
                let mut certs = std::collections::HashMap::new();
                for item in t.server_certs.iter().db()? {
                    let (server, fingerprint) = item.db()?;
                    certs.insert(ServerId(server.value()), Fingerprint(fingerprint.value()));
                }
                Ok((certs, queries::draining_servers(t)?))
            })
            .await?;
        *self.server_certs.lock().expect("server certificates") = certs;
        let (files, sessions) = self.query(crate::locks::recorded).await?;
        tracing::info!(
            files = files.len(),
            sessions = sessions.len(),
            "file locks taken over from the metadata log"
        );
        self.locks.load(files, sessions);
        for server in draining {
            self.membership.set_draining(server, true);
        }
        Ok(())
    }

    fn reload_clients(&self) -> FsResult<()> {
        let tx = store::read(&self.db)?;
        self.clients.reload(&ReadTables::open(&tx)?)
    }

    /// Places a new block on live servers, records it, and grants the capabilities to store
    /// its shards.
    async fn allocate_block(&self, ino: InodeId, call: Option<Call>) -> FsResult<MetaReply> {
        let (policy, block_size, full) = self
            .query(move |t| {
                let rec = get_inode(&t.inodes, ino)?;
                let (_, vol) = get_volume_by_id(&t.volumes, rec.volume)?;
                let state = get_volume_state(&t.volume_state, rec.volume)?;
                Ok((vol.policy, vol.block_size, state.limits.require_full_writes))
            })
            .await?;
        let live = self.membership.live_when_known(policy.total()).await;
        if full && live.len() < policy.total() {
            return Err(FsError::unavailable(format!(
                "the volume requires all {} shards of each block, and only {} chunk servers are up",
                policy.total(),
                live.len()
            )));
        }
        // Fewer servers up than shards: place what can be placed, down to the write floor;
        // the rest are missing from the start and left to repair.
        let count = policy
            .total()
            .min(live.len().max(policy.min_write_shards()));
        let mut placement = place(
            &live,
            count,
            policy.shard_len(block_size),
            rand::random(),
            &[],
        )?;
        placement.resize(policy.total(), ServerId::NONE);
        let mut reply = self
            .mutate_reply(Op::AllocateBlock { ino, placement }, call)
            .await?;
        if let MetaReply::Placement(p) = &mut reply {
            let now = Timestamp::now();
            for (index, shard) in p.shards.iter_mut().enumerate() {
                let key = ShardKey {
                    block: p.block,
                    index: index as u8,
                };
                self.grant(shard, key, p.volume, now);
            }
        }
        Ok(reply)
    }

    /// Moves a shard of an uncommitted block off a server its writer could not reach.
    async fn replace_shard(
        &self,
        block: BlockId,
        index: u8,
        failed: ServerId,
        call: Option<Call>,
    ) -> FsResult<MetaReply> {
        let rec: BlockRecord = self
            .query(move |t| match t.blocks.get(block.0).db()? {
                Some(v) => decode(v.value()),
                None => Err(FsError::NotFound),
            })
            .await?;
        let min_free = rec.policy.shard_len(rec.len.unwrap_or(0));
        // No server left for it: the shard is recorded missing, and the writer decides
        // whether the block has enough without it.
        let to = match place(
            &self.membership.live_when_known(rec.shards.len() + 1).await,
            1,
            min_free,
            rand::random(),
            &rec.shards,
        ) {
            Ok(p) => p.first().copied(),
            Err(FsError::Unavailable(_) | FsError::NoSpace(_)) => None,
            Err(e) => return Err(e),
        };
        let op = Op::ReplaceShard {
            block,
            index,
            failed,
            to,
        };
        let mut reply = self.mutate_reply(op, call).await?;
        if let MetaReply::Shard(shard) = &mut reply {
            let key = ShardKey { block, index };
            self.grant(shard, key, rec.volume, Timestamp::now());
        }
        Ok(reply)
    }

    /// Capacity of the cluster, bounded by the volume's quotas.
    async fn stat_fs(&self, ino: InodeId) -> FsResult<MetaReply> {
        let state = self
            .query(move |t| {
                let rec = get_inode(&t.inodes, ino)?;
                get_volume_state(&t.volume_state, rec.volume)
            })
            .await?;
        let (mut total_bytes, mut free_bytes) = self.membership.capacity();
        if let Some(quota) = state.limits.quota_bytes {
            total_bytes = total_bytes.min(quota);
            free_bytes = free_bytes.min(quota.saturating_sub(state.bytes));
        }
        let (total_inodes, free_inodes) = match state.limits.quota_inodes {
            Some(quota) => (quota, quota.saturating_sub(state.inodes)),
            None => (state.inodes + (1 << 32), 1 << 32),
        };
        Ok(MetaReply::StatFs(StatFs {
            total_bytes,
            free_bytes,
            total_inodes,
            free_inodes,
            block_size: 4096,
        }))
    }
}

/// An outcome as the wire shows it.
fn reply_of(outcome: Outcome) -> FsResult<MetaReply> {
    let shard = |at: ShardAt| ShardLocation {
        up: at.server != ServerId::NONE,
        server: at.server,
        addr: at.addr,
        cap: None,
    };
    Ok(match outcome {
        Outcome::Done => MetaReply::Done,
        Outcome::Volume {
            name,
            record,
            state,
        } => MetaReply::Volume(volume_info(&name, &record, &state)),
        Outcome::Node { ino, record } => MetaReply::Attr(to_attr(ino, &record)),
        Outcome::Placement {
            block,
            volume,
            policy,
            shards,
            min_shards,
        } => MetaReply::Placement(BlockPlacement {
            block,
            volume,
            policy,
            shards: shards.into_iter().map(shard).collect(),
            min_shards,
        }),
        Outcome::Shard(at) => MetaReply::Shard(shard(at)),
        Outcome::Committed { ino, before, after } => MetaReply::Committed {
            before: to_attr(ino, &before),
            after: to_attr(ino, &after),
        },
        Outcome::Dropped(blocks) => MetaReply::Dropped(blocks),
        Outcome::WireReply(bytes) => {
            decode_body(&bytes).map_err(|e| FsError::Corrupt(format!("stored reply: {e}")))?
        }
    })
}

impl Service for MetaService {
    type Request = MetaCall;
    type Reply = MetaReply;
    /// The largest real requests (a commit of 1,024 extents, a 64 KiB xattr, a check of
    /// 4,096 shards) are far below this.
    const MAX_REQUEST: usize = 256 * 1024;
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

    fn op_name(call: &MetaCall) -> &'static str {
        call.request.name()
    }

    fn op_metrics(&self) -> Option<&OpMetrics> {
        Some(&self.ops)
    }

    async fn handle(
        &self,
        call: MetaCall,
        body: &mut RecvStream,
        peer: &PeerInfo,
    ) -> Response<MetaReply> {
        let MetaCall { id, request } = call;
        if let MetaRequest::Peer { rpc, len } = request {
            return self.answer_peer(rpc, len, body, peer).await;
        }
        self.route(&request).await?;
        let grants = self.authorize(&peer.principal, &request).await?;
        if self.faults.is_enabled() {
            let point = format!("meta.after_authorize.{}", request.name());
            self.faults.hit(&point).await?;
        }
        let mutation = request.is_mutation().then(|| request.name());
        let mut reply = self.dispatch(request, id).await?;
        if let (Some(name), true) = (mutation, self.faults.is_enabled()) {
            // "The leader dies after the commit, before the reply."
            self.faults
                .hit(&format!("meta.after_commit.{name}"))
                .await?;
        }
        if let (Some(grants), MetaReply::Volumes(volumes)) = (grants, &mut reply) {
            volumes.retain(|v| grants.iter().any(|g| g.volume == v.id));
        }
        Ok((reply, None))
    }
}

fn request_volume_name(request: &MetaRequest) -> &str {
    match request {
        MetaRequest::GetVolume { name } | MetaRequest::VolumeUsage { name } => name,
        _ => "",
    }
}
