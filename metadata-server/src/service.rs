//! The metadata server's request handler: reads go to a snapshot, mutations to the committer,
//! placement decisions are made here (from live membership) and travel inside the command.

use crate::access::{self, ClientRegistry, Need, Target};
use crate::calls;
use crate::changes::{self, ChangeFeed};
use crate::command::{Call, Command, Op, Outcome};
use crate::committer::Committer;
use crate::delegations::Delegations;
use crate::locks::LockTable;
use crate::membership::Membership;
use crate::orphans::Reaper;
use crate::placement::place;
use crate::queries;
use crate::repair::Repair;
use crate::reply::{answer, Answer, FromOutcome, Renamed, Unlinked};
use crate::store::schema::{decode, BlockRecord};
use crate::store::tables::{
    get_inode, get_volume_by_id, get_volume_state, has_xattrs, lookup, ReadTables,
};
use crate::store::{self, DbResult};
use dfs_common::capability::CapabilityKey;
use dfs_common::fault::Faults;
use dfs_common::metrics::OpMetrics;
use dfs_common::model::NewExtent;
use dfs_common::net::server::{PeerInfo, Response, Service};
use dfs_common::net::tls::{Fingerprint, Principal};
use dfs_common::proto::chunk::ShardKey;
use dfs_common::proto::meta::*;
use dfs_common::proto::{MAX_CHECK_SHARDS, MAX_LAYOUT_EXTENTS};
use dfs_common::{BlockId, FsError, FsResult, InodeId, ServerId, Timestamp, VolumeId};
use quinn::RecvStream;
use redb::{Database, ReadableTable};
use std::future::ready;
use std::sync::Arc;
use std::time::Duration;

/// The command of a request whose fields carry over to an [`Op`] of the same name.
macro_rules! op {
    ($q:ident => $op:ident { $($field:ident),* }) => {
        Op::$op { $($field: $q.$field),* }
    };
}

/// The command of a rename, asked as `Rename` or as `Move`.
fn rename_op(q: req::Rename) -> Op {
    op!(q => Rename { parent, name, new_parent, new_name, flags })
}

/// Whether any of `extents` names a block stored with shards missing.
fn degraded(extents: &[NewExtent]) -> bool {
    extents.iter().any(|e| e.missing_shards != 0)
}

/// How often a leader whose take-over failed tries again.
const TAKE_OVER_RETRY: Duration = Duration::from_secs(1);

/// How long a lock call waits for its change to reach the metadata log.
const LOCK_RECORD_TIMEOUT: Duration = Duration::from_secs(10);

/// Entries of a listing page read on the calling task at most (see [`MetaService::read_dir`]):
/// with their attributes, a few microseconds each.
const LIST_HERE: u32 = 64;
/// Extents of a layout read on the calling task (see [`LIST_HERE`]); a longer layout is read
/// in the blocking pool.
const LAYOUT_HERE: usize = 64;

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
    /// Whether this process has followed another leader: then a take-over cannot know what
    /// that one granted, even in a group shrunk to this member alone.
    led_by_another: std::sync::atomic::AtomicBool,
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
    /// What the namespace mutations made stale, for the mounts' caches.
    changes: ChangeFeed,
    /// Open delegations granted to mounts.
    delegations: Delegations,
    /// Changes that waited for a holder's delegation to lapse (it stopped following the
    /// feed without saying so: a crash, or a network cut).
    delegation_lapses: prometheus_client::metrics::counter::Counter,
    /// Files unlinked while open, waiting to be freed (see [`crate::orphans`]).
    orphans: Reaper,
    space: Arc<crate::space::Space>,
    orphans_kept: prometheus_client::metrics::counter::Counter,
    orphans_reaped: prometheus_client::metrics::counter::Counter,
    faults: Faults,
    /// Cancelled when the server stops: long polls end then, not at their deadline.
    stopping: tokio_util::sync::CancellationToken,
    failure: Arc<std::sync::OnceLock<String>>,
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
    pub delegation_lapses: prometheus_client::metrics::counter::Counter,
    pub orphans_kept: prometheus_client::metrics::counter::Counter,
    pub orphans_reaped: prometheus_client::metrics::counter::Counter,
    /// How long a mount cut off keeps the orphans it reported open (see [`crate::orphans`]).
    pub orphan_hold: Duration,
    pub space: Arc<crate::space::Space>,
    pub capability_key: CapabilityKey,
    pub capability_key_path: std::path::PathBuf,
    /// The server's data directory.
    pub data_dir: std::path::PathBuf,
    pub faults: Faults,
    pub stopping: tokio_util::sync::CancellationToken,
    /// Set, with the reason, when the server stops of its own accord.
    pub failure: Arc<std::sync::OnceLock<String>>,
}

impl MetaService {
    pub fn new(parts: ServiceParts) -> FsResult<Self> {
        let clients = ClientRegistry::default();
        let tx = store::read(&parts.db)?;
        let tables = ReadTables::open(&tx);
        clients.reload(&tables)?;
        let mut server_certs = std::collections::HashMap::new();
        for item in tables.server_certs.table()?.iter().db()? {
            let (server, fingerprint) = item.db()?;
            server_certs.insert(ServerId(server.value()), Fingerprint(fingerprint.value()));
        }
        drop(tables);
        drop(tx);
        Ok(MetaService {
            server_certs: std::sync::Mutex::new(server_certs),
            locks_recorded: tokio::sync::watch::Sender::new(LocksRecorded::default()),
            taken_over: std::sync::atomic::AtomicBool::new(false),
            led_by_another: std::sync::atomic::AtomicBool::new(false),
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
            changes: ChangeFeed::new(),
            delegations: Delegations::open(&parts.data_dir),
            delegation_lapses: parts.delegation_lapses,
            orphans: Reaper::new(parts.orphan_hold),
            space: parts.space,
            orphans_kept: parts.orphans_kept,
            orphans_reaped: parts.orphans_reaped,
            faults: parts.faults,
            stopping: parts.stopping,
            failure: parts.failure,
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
                    MetaRequest::Heartbeat(req::Heartbeat { server, .. }) => {
                        self.check_server(*server, fingerprint, true).await?
                    }
                    MetaRequest::CheckShards(req::CheckShards { server, .. })
                    | MetaRequest::ReportBadShard(req::ReportBadShard { server, .. }) => {
                        self.check_server(*server, fingerprint, false).await?
                    }
                    MetaRequest::ClientGrants(_) => {}
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
            let volume = self.query_now(|t| access::volume_of(t, &Target::Volume(name)))?;
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
        let volumes = self.query_now(|t| {
            let first = access::volume_of(t, &target)?.ok_or(FsError::NotFound)?;
            let second = match second {
                Some(ino) => {
                    Some(access::volume_of(t, &Target::Inode(ino))?.ok_or(FsError::NotFound)?)
                }
                None => None,
            };
            Ok([Some(first), second])
        })?;
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
                    .query(move |t| {
                        Ok(t.server_certs
                            .table()?
                            .get(server.0)
                            .db()?
                            .map(|f| f.value()))
                    })
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

    /// Runs a read of a few records (an inode, a name, an attribute) on a fresh snapshot,
    /// on the calling task: a hand-off to the blocking pool and back costs more than the
    /// read. Anything that scans goes through [`Self::query`].
    fn query_now<T>(&self, f: impl FnOnce(&ReadTables) -> FsResult<T>) -> FsResult<T> {
        let tx = store::read(&self.db)?;
        f(&ReadTables::open(&tx))
    }

    /// Runs a read-only query on a fresh snapshot, off the async runtime. Every read of the
    /// store that may scan goes through here.
    async fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ReadTables) -> FsResult<T> + Send + 'static,
    ) -> FsResult<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let tx = store::read(&db)?;
            f(&ReadTables::open(&tx))
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

    /// Applies a mutation durably and gives its outcome as the reply type `T`.
    async fn mutate_as<T: FromOutcome>(&self, op: Op, call: Option<Call>) -> FsResult<T> {
        T::from_outcome(self.mutate(op, call).await?)
    }

    /// Applies an unlink or a rename that keeps a regular file losing its last name as an
    /// orphan, and hands the orphans it made to the reaper (see [`crate::orphans`]). `dir` is
    /// a directory of the change, for its volume. Gives the unlink's or rename's own outcome
    /// as the reply type `T`, as [`Self::mutate_as`] does.
    async fn mutate_keeping_orphans<T: FromOutcome>(
        &self,
        op: Op,
        call: Option<Call>,
        dir: InodeId,
    ) -> FsResult<T> {
        let origin = call.as_ref().map(|c| c.client);
        match self.mutate(Op::KeepOrphans(Box::new(op)), call).await? {
            Outcome::KeptOrphans { outcome, orphans } => {
                if !orphans.is_empty() {
                    self.track_orphans(&orphans, dir, origin);
                }
                T::from_outcome(*outcome)
            }
            // A call retried across an upgrade, recorded without the wrapper.
            outcome => T::from_outcome(outcome),
        }
    }

    /// Hands `orphans` to the reaper, with a change of the feed that tells the mounts they
    /// lost their names: the reaper waits for each mount to call after it (see
    /// [`crate::changes::ChangeFeed::may_reap`]).
    fn track_orphans(&self, orphans: &[InodeId], dir: InodeId, origin: Option<u64>) {
        let what = orphans
            .iter()
            .map(|&ino| Invalidation::Inode { ino, data: false })
            .collect();
        // Published even when no other mount watches: positions then still move past it.
        let (feed, position) = match self.volume_of(dir) {
            Ok(volume) => {
                let end = self.changes.publish(volume, origin, what);
                (self.changes.position().0, end)
            }
            Err(_) => self.changes.position(),
        };
        self.orphans.track(orphans, feed, position);
        self.orphans_kept.inc_by(orphans.len() as u64);
    }

    /// Frees, as leader, the orphans no mount can have open any more (see
    /// [`crate::orphans`]), until `shutdown`.
    pub async fn reap_orphans(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        const EVERY: Duration = Duration::from_millis(100);
        loop {
            // Idle (no orphans) costs nothing; waiting ones are looked at every `EVERY`.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.orphans.work() => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(EVERY) => {}
            }
            if !self.taken_over.load(std::sync::atomic::Ordering::SeqCst) {
                continue;
            }
            let ready = self.orphans.ready(&self.changes);
            if ready.is_empty() {
                continue;
            }
            let op = Op::ReapOrphans {
                inos: ready.clone(),
            };
            match self
                .committer
                .submit(Command::internal(Timestamp::now(), op))
                .await
            {
                Ok(_) => {
                    self.orphans.freed(&ready);
                    self.orphans_reaped.inc_by(ready.len() as u64);
                }
                Err(e) => tracing::debug!("freeing orphans (tried again shortly): {e}"),
            }
        }
    }

    /// Applies a commit of written bytes; `degraded`: some blocks were stored with shards
    /// missing, and are repaired now, not at the next periodic scan. The reply says whether
    /// the file has extended attributes, as a `GetAttr` does: a mount keeps the attributes of
    /// both, and two answers for one ctime that differ (one "maybe", one "none") cannot be
    /// ordered, so it would drop them and ask again.
    async fn commit(&self, op: Op, degraded: bool, call: Option<Call>) -> FsResult<Committed> {
        let mut committed: Committed = self.mutate_as(op, call).await?;
        if degraded {
            self.repair.kick();
        }
        // Unreadable: the reply keeps "maybe", which only costs the mount a question.
        if let Ok(has) = self.xattrs_exist(committed.after.ino) {
            committed.before.has_xattrs = has;
            committed.after.has_xattrs = has;
        }
        Ok(committed)
    }

    /// Applies `op`, a `MakeNode` in `parent`, and gives the new inode's attributes.
    async fn make_node(&self, parent: InodeId, op: Op, call: Option<Call>) -> FsResult<Made> {
        let client = call.as_ref().map(|c| c.client);
        let mut attr: Attr = self.mutate_as(op, call).await?;
        // A file is made to be opened (a create), by a mount that may fall silent before it
        // reports it open.
        if let (Some(client), FileKind::File) = (client, attr.kind) {
            self.changes.opened_by(client, attr.ino);
        }
        // A new inode has no extended attributes.
        attr.has_xattrs = false;
        Ok(Made {
            attr,
            dir: self.dir_after(parent)?,
        })
    }

    /// Applies a change of attributes; the reply says whether the inode has extended
    /// attributes, so a mount that changes a file's mode or times (as `tar` does before it
    /// writes) still knows it has none to ask for.
    async fn set_attr(&self, ino: InodeId, set: SetAttr, call: Option<Call>) -> FsResult<Attr> {
        let mut attr: Attr = self.mutate_as(Op::SetAttr { ino, set }, call).await?;
        attr.has_xattrs = self.xattrs_exist(ino)?;
        Ok(attr)
    }

    /// Whether `ino` has extended attributes now: the state machine's outcomes say "maybe"
    /// (it does not look), and a reply a mount keeps must say exactly, as a `GetAttr` does.
    fn xattrs_exist(&self, ino: InodeId) -> FsResult<bool> {
        self.query_now(|t| has_xattrs(t.xattrs.table()?, ino))
    }

    /// The attributes of a directory just after this call changed it, for its reply: the
    /// kernel asks for them after every change to a directory, and the mount then answers
    /// without a round trip. Read after the change was applied, so never older than it.
    fn dir_after(&self, dir: InodeId) -> FsResult<Attr> {
        self.query_now(|t| queries::get_attr(t, dir))
    }

    /// Sorts a request into a mutation (applied by the committer), a query (answered from a
    /// snapshot) or state kept in memory (locks, membership, repair), and answers it with its
    /// reply type. The match is exhaustive: a new request must be placed here.
    async fn dispatch(
        &self,
        request: MetaRequest,
        id: Option<CallId>,
        grants: Option<Vec<VolumeGrant>>,
    ) -> FsResult<Answer> {
        let call = match id {
            Some(id) => Some(Call {
                client: id.client,
                seq: id.seq,
                done_below: id.done_below,
                request: calls::fingerprint(&request)?,
            }),
            None => None,
        };
        use MetaRequest as R;
        match request {
            // Mutations.
            R::CreateVolume(q) => {
                answer(q, |q| self.mutate_as(op!(q => CreateVolume { name, policy, block_size, limits }), call)).await
            }
            R::SetVolume(q) => {
                answer(q, |q| self.mutate_as(op!(q => SetVolume { name, change }), call)).await
            }
            R::DeleteVolume(q) => {
                answer(q, |q| self.mutate_as(op!(q => DeleteVolume { name, force }), call)).await
            }
            R::AddClient(q) => {
                answer(q, |q| async move {
                    let op = op!(q => AddClient { name, fingerprint, volumes });
                    self.mutate_as::<()>(op, call).await?;
                    self.reload_clients()
                })
                .await
            }
            R::RevokeClient(q) => {
                answer(q, |q| async move {
                    let op = op!(q => RevokeClient { name });
                    self.mutate_as::<()>(op, call).await?;
                    self.reload_clients()
                })
                .await
            }
            R::Heartbeat(q) => answer(q, |q| self.heartbeat(q, call)).await,
            R::BindServer(q) => {
                answer(q, |q| self.mutate_as(op!(q => BindServer { server, fingerprint }), call)).await
            }
            R::SetAttr(q) => answer(q, |q| self.set_attr(q.ino, q.set, call)).await,
            R::MakeNode(q) => {
                answer(q, |q| async move {
                    if q.kind == FileKind::Symlink {
                        return Err(FsError::invalid("symlinks are made with Symlink"));
                    }
                    let parent = q.parent;
                    let op = Op::MakeNode {
                        parent,
                        name: q.name,
                        kind: q.kind,
                        mode: q.mode,
                        uid: q.uid,
                        gid: q.gid,
                        rdev: q.rdev,
                        target: None,
                    };
                    self.make_node(parent, op, call).await
                })
                .await
            }
            R::Symlink(q) => {
                answer(q, |q| {
                    let parent = q.parent;
                    let op = Op::MakeNode {
                        parent,
                        name: q.name,
                        kind: FileKind::Symlink,
                        mode: 0o777,
                        uid: q.uid,
                        gid: q.gid,
                        rdev: 0,
                        target: Some(q.target),
                    };
                    self.make_node(parent, op, call)
                })
                .await
            }
            R::Link(q) => {
                answer(q, |q| async move {
                    let (dir, ino) = (q.new_parent, q.ino);
                    let mut attr: Attr = self.mutate_as(op!(q => Link { ino, new_parent, new_name }), call).await?;
                    if let Ok(has) = self.xattrs_exist(ino) {
                        attr.has_xattrs = has;
                    }
                    Ok(Made { attr, dir: self.dir_after(dir)? })
                })
                .await
            }
            R::Unlink(q) => {
                answer(q, |q| async move {
                    let dir = q.parent;
                    let op = op!(q => Unlink { parent, name });
                    self.mutate_keeping_orphans::<()>(op, call, dir).await?;
                    self.dir_after(dir)
                })
                .await
            }
            R::UnlinkOrHide(q) => {
                answer(q, |q| async move {
                    let dir = q.parent;
                    let op = Op::UnlinkOrHide {
                        parent: q.parent,
                        name: q.name,
                        open: q.open,
                        // The hidden name's tail: chosen here, so every member applies the same.
                        tag: rand::random(),
                    };
                    let unlinked: Unlinked = self.mutate_keeping_orphans(op, call, dir).await?;
                    Ok(Removed {
                        victim: unlinked.victim,
                        links: unlinked.links,
                        hidden: unlinked.hidden,
                        dir: self.dir_after(dir)?,
                    })
                })
                .await
            }
            R::Rmdir(q) => {
                answer(q, |q| async move {
                    let dir = q.parent;
                    self.mutate_as::<()>(op!(q => Rmdir { parent, name }), call).await?;
                    self.dir_after(dir)
                })
                .await
            }
            R::Rename(q) => {
                answer(q, |q| async move {
                    let dir = q.parent;
                    let _: Renamed = self.mutate_keeping_orphans(rename_op(q), call, dir).await?;
                    Ok(())
                })
                .await
            }
            R::Move(q) => {
                answer(q, |q| async move {
                    let (parent, new_parent) = (q.rename.parent, q.rename.new_parent);
                    let Renamed(touched) = self
                        .mutate_keeping_orphans(rename_op(q.rename), call, parent)
                        .await?;
                    // Everything read just after the change, from one snapshot.
                    let (dirs, attrs) = self.query_now(|t| {
                        let mut dirs = vec![queries::get_attr(t, parent)?];
                        if new_parent != parent {
                            dirs.push(queries::get_attr(t, new_parent)?);
                        }
                        // A replaced inode may be gone; one that cannot be read is left out
                        // (the caller then drops what it kept of it).
                        let attrs = touched.iter().filter_map(|&ino| queries::get_attr(t, ino).ok());
                        Ok((dirs, attrs.collect()))
                    })?;
                    Ok(Moved { dirs, touched, attrs })
                })
                .await
            }
            R::SetXattr(q) => {
                answer(q, |q| async move {
                    refuse_posix_acl(&q.name)?;
                    self.mutate_as(op!(q => SetXattr { ino, name, value, flags }), call).await
                })
                .await
            }
            R::RemoveXattr(q) => {
                answer(q, |q| self.mutate_as(op!(q => RemoveXattr { ino, name }), call)).await
            }
            R::AllocateBlock(q) => answer(q, |q| self.allocate_block(q.ino, call)).await,
            R::ReplaceShard(q) => {
                answer(q, |q| self.replace_shard(q.block, q.index, q.failed, call)).await
            }
            R::CommitWrite(q) => {
                answer(q, |q| {
                    let degraded = degraded(&q.extents);
                    self.commit(op!(q => CommitWrite { ino, extents, mtime, append }), degraded, call)
                })
                .await
            }
            R::WriteInline(q) => {
                answer(q, |q| self.commit(op!(q => KeepInline { ino, pieces, data, mtime, append }), false, call)).await
            }
            R::CommitIfUnchanged(q) => {
                answer(q, |q| {
                    let degraded = degraded(&q.extents);
                    let op = op!(q => CommitIfUnchanged { ino, extents, mtime, size, from, expect });
                    self.commit(op, degraded, call)
                })
                .await
            }
            R::ReportBadShard(q) => {
                answer(q, |q| self.mutate_as(op!(q => ReportBadShard { server, key }), call)).await
            }
            R::MoveShard(q) => {
                answer(q, |q| self.mutate_as(op!(q => MoveShard { key, from, to }), call)).await
            }
            R::DropBlocks(q) => {
                answer(q, |q| self.mutate_as(op!(q => DropBlocks { blocks }), call)).await
            }
            R::DrainServer(q) => {
                answer(q, |q| async move {
                    let op = op!(q => DrainServer { server, drain });
                    self.mutate_as::<()>(op, call).await?;
                    self.membership.set_draining(q.server, q.drain);
                    self.repair.kick();
                    Ok(())
                })
                .await
            }
            R::RemoveServer(q) => {
                answer(q, |q| async move {
                    let server = q.server;
                    if self.membership.is_live(server) {
                        return Err(FsError::invalid(format!(
                            "chunk server {server} is up: stop it first (drain it before, so it holds nothing)"
                        )));
                    }
                    self.mutate_as::<()>(Op::RemoveServer { server }, call)
                        .await?;
                    self.membership.forget(server);
                    self.server_certs
                        .lock()
                        .expect("server certificates")
                        .remove(&server);
                    Ok(())
                })
                .await
            }
            R::ExpireCalls(q) => answer(q, |_| self.mutate_as(Op::ExpireCalls, call)).await,

            // Queries of the store.
            R::ListVolumes(q) => {
                answer(q, |_| async move {
                    let mut volumes = self.query(queries::list_volumes).await?;
                    if let Some(grants) = grants {
                        // A client sees only the volumes it was granted.
                        volumes.retain(|v| grants.iter().any(|g| g.volume == v.id));
                    }
                    Ok(volumes)
                })
                .await
            }
            R::ListClients(q) => answer(q, |_| self.query(access::list_clients)).await,
            R::GetVolume(q) => {
                answer(q, |q| self.query(move |t| queries::get_volume(t, &q.name))).await
            }
            R::Lookup(q) => {
                answer(q, |q| {
                    ready(self.query_now(|t| queries::lookup_attr(t, q.parent, &q.name)))
                })
                .await
            }
            R::GetAttr(q) => {
                answer(q, |q| ready(self.query_now(|t| queries::get_attr(t, q.ino)))).await
            }
            R::OpenAttr(q) => answer(q, |q| ready(self.open_attr(q.ino, q.origin))).await,
            R::ReadLink(q) => {
                answer(q, |q| ready(self.query_now(|t| queries::read_link(t, q.ino)))).await
            }
            R::ReadDir(q) => answer(q, |q| self.read_dir(q)).await,
            R::GetXattr(q) => {
                answer(q, |q| {
                    ready(self.query_now(|t| queries::get_xattr(t, q.ino, &q.name)))
                })
                .await
            }
            R::ListXattr(q) => {
                answer(q, |q| ready(self.query_now(|t| queries::list_xattr(t, q.ino)))).await
            }
            R::GetLayout(q) => {
                answer(q, |q| async move {
                    // Most layouts are a few extents, read on the calling task; a longer one
                    // is read again, whole, off the runtime.
                    let mut layout = self.query_now(|t| {
                        queries::get_layout(t, q.ino, q.offset, q.len, LAYOUT_HERE)
                    })?;
                    if layout.complete_to < q.offset.saturating_add(q.len) {
                        layout = self
                            .query(move |t| {
                                queries::get_layout(t, q.ino, q.offset, q.len, MAX_LAYOUT_EXTENTS)
                            })
                            .await?;
                    }
                    let live: Vec<_> = self.membership.live().into_iter().map(|c| c.id).collect();
                    for shard in layout.blocks.iter_mut().flat_map(|b| b.shards.iter_mut()) {
                        shard.up = live.contains(&shard.server);
                    }
                    Ok(layout)
                })
                .await
            }
            R::StatFs(q) => answer(q, |q| self.stat_fs(q.ino)).await,
            R::VolumeUsage(q) => {
                answer(q, |q| {
                    let live = self.membership.live_addrs().into_keys().collect();
                    self.query(move |t| queries::volume_usage(t, &q.name, &live))
                })
                .await
            }
            R::Fsck(q) => {
                answer(q, |q| {
                    let live = self.membership.live_addrs().into_keys().collect();
                    self.query(move |t| crate::fsck::check_page(t, &q.volume, q.from, &live))
                })
                .await
            }
            R::CheckShards(q) => {
                answer(q, |q| async move {
                    if q.keys.len() > MAX_CHECK_SHARDS {
                        return Err(FsError::TooBig(format!(
                            "{} shards in one check",
                            q.keys.len()
                        )));
                    }
                    let server = q.server;
                    let stale = self
                        .query(move |t| queries::stale_shards(t, server, &q.keys))
                        .await?;
                    Ok(stale
                        .into_iter()
                        .filter(|&key| !self.repair.is_rebuilding(key, server))
                        .collect())
                })
                .await
            }
            R::ClusterStatus(q) => answer(q, |_| self.cluster_status()).await,

            // State kept in memory.
            R::ClientGrants(q) => {
                answer(q, |q| async move { Ok(self.clients.grants(&q.fingerprint)) }).await
            }
            R::SetLock(q) => {
                answer(q, |q| async move {
                    let ino = q.ino;
                    // Only files that exist can be locked; anything can be unlocked.
                    if q.kind != LockKind::Unlock {
                        self.query_now(|t| get_inode(t.inodes.table()?, ino).map(drop))?;
                    }
                    let set = self
                        .locks
                        .set(ino, q.owner, q.range, q.kind, q.wait, q.holding);
                    self.record_locks().await?;
                    set
                })
                .await
            }
            R::CancelLockWait(q) => {
                answer(q, |q| async move {
                    self.locks.cancel_wait(q.owner);
                    Ok(())
                })
                .await
            }
            R::TestLock(q) => {
                answer(q, |q| async move {
                    let conflict = self.locks.test(q.ino, q.owner, q.range, q.kind);
                    self.record_locks().await?;
                    conflict
                })
                .await
            }
            R::ReleaseLocks(q) => {
                answer(q, |q| async move {
                    self.locks.release(q.ino, q.owner);
                    self.record_locks().await
                })
                .await
            }
            R::RenewSession(q) => {
                answer(q, |q| async move {
                    let renewed = self.locks.renew(q.session);
                    self.record_locks().await?;
                    renewed
                })
                .await
            }
            R::RepairStatus(q) => answer(q, |_| async move { Ok(self.repair.progress()) }).await,
            R::MetaStatus(q) => answer(q, |_| async move { Ok(self.log.members()) }).await,
            R::MetaAdd(q) => {
                answer(q, |q| async move {
                    let join = crate::raft::network::JoinRequest {
                        capability_key: self.capability_key(),
                        addr: q.addr.clone(),
                    };
                    self.log.add_member(&q.addr, &join).await?;
                    Ok(self.log.members())
                })
                .await
            }
            R::MetaRemove(q) => {
                answer(q, |q| async move {
                    self.log.remove_member(q.id).await?;
                    Ok(self.log.members())
                })
                .await
            }
            R::Leader(q) => answer(q, |_| async move { Ok(self.log.leader_addr()) }).await,
            R::MetaDigest(q) => {
                answer(q, |_| async move {
                    let db = self.db.clone();
                    let (applied, digest) =
                        tokio::task::spawn_blocking(move || crate::raft::state::digest(&db))
                            .await
                            .map_err(|e| FsError::io(format!("digest task: {e}")))??;
                    Ok(Digest {
                        member: self.log.id,
                        applied,
                        digest,
                    })
                })
                .await
            }
            R::Peer(_) => Err(FsError::protocol(
                "peer messages are answered before dispatch",
            )),
            R::WatchChanges(q) => answer(q, |q| self.watch(q, None)).await,
            R::WatchOpen(q) => {
                answer(q, |q| async move {
                    let req::WatchOpen { watch, report } = q;
                    if report.opened.len() > req::MAX_OPEN_REPORTED
                        || report.released.len() > req::MAX_OPEN_REPORTED
                    {
                        return Err(FsError::invalid(format!(
                            "at most {} open files reported per call",
                            req::MAX_OPEN_REPORTED
                        )));
                    }
                    self.watch(watch, Some(report)).await
                })
                .await
            }
            R::StopWatching(q) => {
                answer(q, |q| async move {
                    self.changes.forget(q.origin);
                    self.delegations.forget_client(q.origin);
                    Ok(())
                })
                .await
            }
            R::Rebalance(q) => {
                answer(q, |_| async move {
                    self.repair.start_rebalance();
                    Ok(())
                })
                .await
            }
        }
    }

    /// Answers a call for changes, noting what it reports of its mount's open files.
    async fn watch(
        &self,
        q: req::WatchChanges,
        report: Option<req::OpenReport>,
    ) -> FsResult<ChangePage> {
        // Its changes no longer wait for it: it must not take its feed as whole.
        if self.changes.has_left(q.origin) {
            return Err(FsError::invalid("this client said it stopped watching"));
        }
        let volume = self.volume_of(q.root)?;
        let wait = q.wait();
        // A stopping server waits for the requests in flight: not for this one's wait (up to
        // 10 s), which would hold up every restart.
        tokio::select! {
            page = self.changes.watch(volume, q.origin, q.feed, q.after, wait, report) => Ok(page),
            _ = self.stopping.cancelled() => {
                Err(FsError::unavailable("the metadata server is stopping"))
            }
        }
    }

    /// A file's attributes for an open, with a delegation for `origin` when this server can
    /// grant one: `origin` follows the change feed (so a change can be told to it), and this
    /// leader has taken over (see `crate::delegations`). The delegation is recorded before
    /// the attributes are read.
    fn open_attr(&self, ino: InodeId, origin: u64) -> FsResult<Opened> {
        // Changes are published once applied: the attributes read below show all before this.
        let feed_at = self.changes.position();
        let delegated =
            self.changes.follows(origin) && self.delegations.grant(ino, origin, self.log.term())?;
        let attr = self.query_now(|t| queries::get_attr(t, ino))?;
        // A file unlinked while open (an orphan) is opened again only by a mount that reports
        // it open: another reached it through a name it has not dropped yet, and the file may
        // be freed under that open (see `crate::orphans`). To it, the file is gone.
        if attr.kind == FileKind::File && attr.nlink == 0 && !self.changes.reports_open(origin, ino)
        {
            return Err(FsError::NotFound);
        }
        // Directories and the rest are not opened through a delegation (nothing is recorded
        // of them either way: no change to them is waited for).
        let delegated = delegated && attr.kind == FileKind::File;
        if attr.kind == FileKind::File {
            self.changes.opened_by(origin, ino);
        }
        Ok(Opened {
            attr,
            delegated,
            feed_at,
        })
    }

    /// Before a change to files is answered: the delegations of `inos` held by clients other
    /// than `origin` are recalled, and each holder takes the change from its feed (which
    /// holds it from `end` on) or lets its delegation lapse. Delegations this server does not
    /// know of (a previous process's) are waited out.
    async fn recall_delegations(&self, inos: &[InodeId], origin: Option<u64>, end: Option<u64>) {
        let in_group = self.log.voters() > 1;
        if let Some(left) = self.delegations.unknown_for(self.log.term(), in_group) {
            tokio::time::sleep(left).await;
        }
        if inos.is_empty() {
            return;
        }
        let holders = self.changes.delegation_holders(origin);
        if holders.is_empty() {
            return;
        }
        let recalled = self.delegations.recall(inos, &holders);
        // (A change with holders is always published: they watch. Without a position, the
        // holders are waited out.)
        let end = end.unwrap_or(u64::MAX);
        for (client, files) in recalled {
            if self.changes.wait_taken(client, end).await {
                self.delegation_lapses.inc();
                // It may have reopened them under the delegation, unknown to this server,
                // just before it fell silent: an unlink leaves them as orphans it holds (see
                // `crate::orphans`), though an open through a call by a name it has not
                // dropped yet still finds them gone.
                for ino in files {
                    self.changes.delegation_lapsed(client, ino);
                }
            }
        }
    }

    /// Tells the mounts watching the volume what a mutation made stale. The volume comes from
    /// the reply where it carries one, else from the feed's memory or the store.
    fn publish(&self, stale: changes::Stale, origin: Option<u64>, reply: &Answer) -> Option<u64> {
        let volume = match reply {
            Answer::Attr(attr) => Ok(attr.volume),
            Answer::Made(made) => Ok(made.attr.volume),
            Answer::Committed(c) => Ok(c.after.volume),
            _ => self.volume_of(stale.anchor),
        };
        match volume {
            Ok(volume) => {
                self.changes.remember_volume(stale.anchor, volume);
                Some(self.changes.publish(volume, origin, stale.what))
            }
            // Gone meanwhile: whoever cached it learns on their next call.
            Err(e) => {
                tracing::debug!("no volume for a change: {e}");
                None
            }
        }
    }

    /// The inodes whose names `request` removes or moves: each loses a link or gets a new
    /// ctime, which other mounts may have cached with their attributes. Read just before the
    /// change is made; a name changed meanwhile costs at worst an attribute refresh.
    fn named_inodes(&self, request: &MetaRequest) -> Vec<InodeId> {
        let names: Vec<(InodeId, &str)> = match request {
            MetaRequest::Unlink(req::Unlink { parent, name })
            | MetaRequest::UnlinkOrHide(req::UnlinkOrHide { parent, name, .. })
            | MetaRequest::Rmdir(req::Rmdir { parent, name }) => vec![(*parent, name)],
            MetaRequest::Rename(q) | MetaRequest::Move(req::Move { rename: q }) => {
                vec![(q.parent, &q.name), (q.new_parent, &q.new_name)]
            }
            _ => return Vec::new(),
        };
        // One read of the store for all the names; a name it cannot read is left out.
        let found = self.query_now(|t| {
            let dentries = t.dentries.table()?;
            let named = names
                .iter()
                .filter_map(|&(parent, name)| lookup(dentries, parent, name).ok().flatten());
            Ok(named.map(|(ino, _)| ino).collect())
        });
        found.unwrap_or_default()
    }

    /// The volume of `ino`: remembered by the change feed, or read from the store.
    fn volume_of(&self, ino: InodeId) -> FsResult<VolumeId> {
        if let Some(volume) = self.changes.volume_of(ino) {
            return Ok(volume);
        }
        self.query_now(|t| get_inode(t.inodes.table()?, ino).map(|r| r.volume))
    }

    /// Registers a chunk server on first contact, refreshes its liveness, and hands it the
    /// key that checks shard capabilities.
    async fn heartbeat(&self, q: req::Heartbeat, call: Option<Call>) -> FsResult<Registered> {
        let server = q.server;
        if self
            .membership
            .heartbeat(server, &q.addr, q.capacity, q.used, q.shards)
            // The leader records addresses; the others learn them from the log.
            && self.log.ensure_leader().is_ok()
        {
            tracing::info!(%server, addr = %q.addr, "chunk server registered");
            let op = Op::RegisterServer {
                server,
                addr: q.addr,
            };
            if let Err(e) = self.mutate(op, call).await {
                self.membership.forget_address(server);
                return Err(e);
            }
        }
        Ok(Registered {
            capability_key: self.capability_key(),
        })
    }

    async fn cluster_status(&self) -> FsResult<ClusterStatus> {
        let (volumes, inodes, blocks) = self.query(queries::counts).await?;
        let mut servers = self.membership.status();
        let placed = self.repair.placed();
        for s in &mut servers {
            s.placed = placed.get(&s.id).copied().unwrap_or(0);
        }
        Ok(ClusterStatus {
            servers,
            volumes,
            inodes,
            blocks,
            health: self.repair.health(),
            repair: self.repair.progress(),
        })
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
            MetaRequest::Leader(_) | MetaRequest::MetaDigest(_) | MetaRequest::Peer(_) => Ok(()),
            // The leader knows every member's lag: it answers when there is one; without one
            // (an election, a lost majority), any member tells what it sees.
            MetaRequest::MetaStatus(_) => match self.log.ensure_leader() {
                Err(FsError::NotLeader(Some(leader))) => Err(FsError::NotLeader(Some(leader))),
                _ => Ok(()),
            },
            // A server waiting to join would hand out a key of its own.
            MetaRequest::Heartbeat(_) if self.log.is_member() => Ok(()),
            MetaRequest::Heartbeat(_) => Err(FsError::NotLeader(None)),
            r if r.is_mutation() => self.log.ensure_leader(),
            MetaRequest::SetLock(_)
            | MetaRequest::TestLock(_)
            | MetaRequest::ReleaseLocks(_)
            | MetaRequest::RenewSession(_)
            | MetaRequest::CancelLockWait(_) => {
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
    ) -> Response<Answer> {
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
        let reply = PeerReply {
            len: answer.len() as u64,
        };
        Ok((reply.into(), Some(bytes::Bytes::from(answer))))
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

    /// The metadata log stopped under a running server (a write to its disk failed: the disk
    /// is full, or failing): this server can neither lead nor follow any more, so it stops,
    /// with an error for its supervisor to restart it, instead of leaving its clients to
    /// retry until they give up. The log's own error names the cause.
    fn stop_for_good(&self) {
        if self.stopping.is_cancelled() {
            return;
        }
        let why = "the metadata log stopped after a failed write (see the error before this); \
                   stopping so that the server is restarted";
        tracing::error!("{why}");
        let _ = self.failure.set(why.to_string());
        self.stopping.cancel();
    }

    /// Reloads what the service keeps in memory from the store (client grants, chunk-server
    /// certificates, draining servers), each time this member becomes leader: as a follower
    /// it took the group's changes into the store only.
    pub async fn follow_leadership(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut metrics = self.log.raft.metrics();
        let mut leading = false;
        loop {
            let now = self.log.ensure_leader().is_ok();
            if !now && self.log.leader_addr().is_some() {
                self.led_by_another
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            if !now {
                if leading {
                    tracing::info!(member = self.log.id, leader = ?self.log.leader_addr(), "this metadata server no longer leads");
                    // The next leader frees them (it finds them in the store).
                    self.orphans.clear();
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
                changed = metrics.changed() => if changed.is_err() {
                    return self.stop_for_good();
                },
                // A take-over that failed is tried again.
                _ = tokio::time::sleep(TAKE_OVER_RETRY) => {}
            }
        }
    }

    async fn take_over(&self) -> FsResult<()> {
        // The term it leads in, as the read barrier confirms (a later one takes over anew).
        let term = self.log.term();
        self.log.read_barrier().await?;
        self.faults.hit("meta.take_over").await?;
        // The mounts' positions in another member's feed mean nothing here.
        self.changes.restart();
        let orphans = self.query(crate::orphans::all).await?;
        if !orphans.is_empty() {
            tracing::info!(
                orphans = orphans.len(),
                "files unlinked while open are kept until the mounts report they closed them"
            );
        }
        // Mounts need a volume: with none, no mount can have an orphan made from now open.
        let (volumes, _, _) = self.query(queries::counts).await?;
        self.orphans
            .reload(orphans, self.changes.position().0, volumes > 0);
        // Mounts need a volume: with none, nobody holds a delegation. A lone server's own
        // restart is told by its marker (see `crate::delegations`).
        let others_led = self.log.voters() > 1
            || self
                .led_by_another
                .load(std::sync::atomic::Ordering::SeqCst);
        self.delegations.take_over(term, volumes > 0 && others_led);
        self.reload_clients()?;
        let (certs, draining) = self
            .query(|t| {
                let mut certs = std::collections::HashMap::new();
                for item in t.server_certs.table()?.iter().db()? {
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
        self.clients.reload(&ReadTables::open(&tx))
    }

    /// Places a new block on live servers, records it, and grants the capabilities to store
    /// its shards.
    async fn allocate_block(&self, ino: InodeId, call: Option<Call>) -> FsResult<BlockPlacement> {
        let (policy, block_size, full) = self.query_now(|t| {
            let rec = get_inode(t.inodes.table()?, ino)?;
            let (_, vol) = get_volume_by_id(t.volumes.table()?, t.volume_ids.table()?, rec.volume)?;
            let state = get_volume_state(t.volume_state.table()?, rec.volume)?;
            Ok((vol.policy, vol.block_size, state.limits.require_full_writes))
        })?;
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
        let mut p: BlockPlacement = self
            .mutate_as(Op::AllocateBlock { ino, placement }, call)
            .await?;
        let now = Timestamp::now();
        for (index, shard) in p.shards.iter_mut().enumerate() {
            let key = ShardKey {
                block: p.block,
                index: index as u8,
            };
            self.grant(shard, key, p.volume, now);
        }
        Ok(p)
    }

    /// Moves a shard of an uncommitted block off a server its writer could not reach.
    async fn replace_shard(
        &self,
        block: BlockId,
        index: u8,
        failed: ServerId,
        call: Option<Call>,
    ) -> FsResult<ShardLocation> {
        let rec: BlockRecord =
            self.query_now(|t| match t.blocks.table()?.get(block.0).db()? {
                Some(v) => decode(v.value()),
                None => Err(FsError::NotFound),
            })?;
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
        let mut shard: ShardLocation = self.mutate_as(op, call).await?;
        let key = ShardKey { block, index };
        self.grant(&mut shard, key, rec.volume, Timestamp::now());
        Ok(shard)
    }

    /// A page of a listing. Its first [`LIST_HERE`] entries are read on the calling task, where
    /// most directories end: the hand-off to the blocking pool and back cost more than reading
    /// them. The rest of a longer page is read there, from a snapshot of its own, as the next
    /// page would be.
    async fn read_dir(&self, q: req::ReadDir) -> FsResult<DirPage> {
        let limit = q.limit.clamp(1, queries::MAX_DIR_PAGE);
        let here = limit.min(LIST_HERE);
        let mut page = self
            .query_now(|t| queries::read_dir(t, q.dir, q.after.as_deref(), here, q.with_attrs))?;
        let Some(last) = page.entries.last().filter(|_| page.more && limit > here) else {
            return Ok(page);
        };
        let after = last.name.clone();
        let rest = self
            .query(move |t| queries::read_dir(t, q.dir, Some(&after), limit - here, q.with_attrs))
            .await?;
        page.entries.extend(rest.entries);
        page.more = rest.more;
        Ok(page)
    }

    /// Capacity of the cluster, bounded by the volume's quotas.
    async fn stat_fs(&self, ino: InodeId) -> FsResult<StatFs> {
        let state = self.query_now(|t| {
            let rec = get_inode(t.inodes.table()?, ino)?;
            get_volume_state(t.volume_state.table()?, rec.volume)
        })?;
        let (mut total_bytes, mut free_bytes) = self.membership.capacity();
        if let Some(quota) = state.limits.quota_bytes {
            total_bytes = total_bytes.min(quota);
            free_bytes = free_bytes.min(quota.saturating_sub(state.bytes));
        }
        let (total_inodes, free_inodes) = match state.limits.quota_inodes {
            Some(quota) => (quota, quota.saturating_sub(state.inodes)),
            None => (state.inodes + (1 << 32), 1 << 32),
        };
        Ok(StatFs {
            total_bytes,
            free_bytes,
            total_inodes,
            free_inodes,
            block_size: 4096,
        })
    }
}

impl Service for MetaService {
    type Request = MetaCall;
    type Reply = Answer;
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
    ) -> Response<Answer> {
        let MetaCall { id, request } = call;
        if let MetaRequest::Peer(req::Peer { rpc, len }) = request {
            return self.answer_peer(rpc, len, body, peer).await;
        }
        self.route(&request).await?;
        let grants = self.authorize(&peer.principal, &request).await?;
        self.space.check(&request)?;
        if self.faults.is_enabled() {
            let point = format!("meta.after_authorize.{}", request.name());
            self.faults.hit(&point).await?;
        }
        let mutation = request.is_mutation().then(|| request.name());
        let origin = id.map(|id| id.client);
        let stale = changes::stale(&request)
            .filter(|_| self.changes.is_watched_by_others(origin))
            .map(|mut stale| {
                let touched = self.named_inodes(&request).into_iter();
                stale
                    .what
                    .extend(touched.map(|ino| Invalidation::Inode { ino, data: false }));
                stale
            });
        let changes_files = changes::changes_files(&request);
        let reply = self.dispatch(request, id, grants).await?;
        let mut recall = Vec::new();
        let mut end = None;
        if let Some(stale) = stale {
            recall = stale.inodes();
            end = self.publish(stale, origin, &reply);
        }
        if changes_files {
            self.recall_delegations(&recall, origin, end).await;
        }
        if let (Some(name), true) = (mutation, self.faults.is_enabled()) {
            // "The leader dies after the commit, before the reply."
            self.faults
                .hit(&format!("meta.after_commit.{name}"))
                .await?;
        }
        Ok((reply, None))
    }
}

fn request_volume_name(request: &MetaRequest) -> &str {
    match request {
        MetaRequest::GetVolume(req::GetVolume { name })
        | MetaRequest::VolumeUsage(req::VolumeUsage { name }) => name,
        _ => "",
    }
}

/// POSIX ACLs are not supported: the mode bits are a file's permissions. An ACL stored as a
/// plain extended attribute would be enforced by nobody and would not change the mode that
/// `cp -p` and `cp -a` set through it (they set the mode with `fchmod` when this is refused,
/// as on a file system mounted without ACLs).
fn refuse_posix_acl(name: &str) -> FsResult<()> {
    match name {
        "system.posix_acl_access" | "system.posix_acl_default" => Err(FsError::NotSupported(
            "POSIX ACLs are not supported; permissions are the mode bits".into(),
        )),
        _ => Ok(()),
    }
}
