//! The metadata log: mutations are entries of a Raft log (openraft), batched by the committer,
//! applied to the redb state machine once they are committed.
//!
//! - [`log`]: the log on disk, appended by one thread that flushes many appends with one
//!   fdatasync (group commit) before Raft counts them.
//! - [`state`]: the state machine: committed commands applied to redb, and snapshots of it.
//! - [`network`]: the transport between members.
//! - [`snapshot_file`]: snapshots as files, moved between members in chunks.
//!
//! The log is the write-ahead log of the store: entries are applied to redb without an fsync
//! each, and redb is made durable at checkpoints (every [`state::CHECKPOINT_EVERY`] entries or
//! [`state::CHECKPOINT_INTERVAL`], before a snapshot, at shutdown). After a crash, redb is back
//! at its last checkpoint and the entries after it are applied again from the log: an
//! acknowledged mutation was flushed to the log before it was acknowledged, so it survives.
//!
//! A single metadata server is a group of one member: it elects itself at start and commits as
//! soon as its own log has the entry.

// openraft's `StorageError` (over 200 bytes) is the error its storage traits demand; the
// helpers around them return it too rather than convert at every call.
#[allow(clippy::result_large_err)]
pub mod log;
pub mod network;
pub mod snapshot_file;
#[allow(clippy::result_large_err)]
pub mod state;

use crate::command::{Batch, Outcome};
use dfs_common::{FsError, FsResult};

openraft::declare_raft_types!(
    /// The metadata group's types: commands in, outcomes out.
    pub TypeConfig:
        D = Batch,
        R = Vec<FsResult<Outcome>>,
        NodeId = MemberId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = snapshot_file::SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A member of the metadata group.
pub type MemberId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<MemberId>;
pub type Vote = openraft::Vote<MemberId>;
pub type StorageError = openraft::StorageError<MemberId>;
pub type StoredMembership = openraft::StoredMembership<MemberId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<MemberId, openraft::BasicNode>;

/// The member id of the first server of a group (and of a server that runs alone).
pub const FIRST_MEMBER: MemberId = 1;

/// Timing of the group. A follower that has not heard from the leader for its lease
/// (`election_timeout_max`) plus a random 0.5 to 0.9 s stands for election: a failover takes
/// 1.4 to 1.8 s, then the clients' next question finds the new leader. Heartbeats every
/// 100 ms keep a healthy leader well inside that, on a busy host too.
pub fn config(snapshot_every: u64) -> openraft::Config {
    let snapshot_every = snapshot_every.max(1);
    openraft::Config {
        cluster_name: "dfs-meta".into(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 900,
        // Entries kept in the log between snapshots (the newest also in memory, see
        // `log::MEMORY_BUDGET`).
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
        // Entries kept behind a snapshot, for followers a little behind.
        max_in_snapshot_log_to_keep: (snapshot_every / 10).min(1000),
        ..Default::default()
    }
}

/// A storage failure as openraft reports it, from any error.
pub fn storage_error(what: &str, e: impl std::fmt::Display) -> StorageError {
    let e = FsError::io(format!("metadata log: {what}: {e}"));
    openraft::StorageIOError::write(&e).into()
}

/// How long a starting server waits to lead its group and apply its log.
const STARTUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a read waits to confirm that this member still leads.
const READ_BARRIER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How a server starts when it has no group yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// It creates a group with itself as the one member.
    Create,
    /// It waits to be added to an existing group (`dfs meta add`).
    Join,
}

/// A running member of the metadata group, with what the rest of the server needs of it.
#[derive(Clone)]
pub struct Group {
    pub raft: Raft,
    pub id: MemberId,
    log: log::LogStore,
    db: std::sync::Arc<redb::Database>,
    pub progress: std::sync::Arc<state::Progress>,
    endpoint: dfs_common::net::endpoint::Endpoint,
    /// When a majority last acknowledged this member as leader (see [`Group::read_barrier`]).
    quorum_acked: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// How long after a majority last acknowledged it a leader serves reads without asking again.
/// A follower votes for no one else until `election_timeout_max` (900 ms) after the leader's
/// last message reached it, plus its election timeout; this stays well inside that, leaving
/// room for clock rates and for the delay with which the acknowledgement is observed.
const READ_LEASE: std::time::Duration = std::time::Duration::from_millis(400);

/// Follows this member's metrics and keeps when a majority last acknowledged it as leader:
/// the metrics give the time since, as of when they were made; the time they are seen here
/// is a little later, which the lease's margin covers.
async fn track_quorum_acks(
    mut metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<MemberId, openraft::BasicNode>>,
    acked: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
) {
    while metrics.changed().await.is_ok() {
        let at = {
            let m = metrics.borrow_and_update();
            match (m.state, m.millis_since_quorum_ack) {
                (openraft::ServerState::Leader, Some(ms)) => {
                    std::time::Instant::now().checked_sub(std::time::Duration::from_millis(ms))
                }
                _ => None,
            }
        };
        *acked.lock().expect("quorum acknowledgement") = at;
    }
}

/// Follows this member's metrics and lets its log flush appends in Raft's own task except
/// while it leads other members (see [`log::LogStore::set_appends_inline`]).
async fn place_log_flushes(
    mut metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<MemberId, openraft::BasicNode>>,
    log: log::LogStore,
) {
    while metrics.changed().await.is_ok() {
        let leads_others = {
            let m = metrics.borrow_and_update();
            m.state == openraft::ServerState::Leader
                && m.membership_config.membership().nodes().count() > 1
        };
        log.set_appends_inline(!leads_others);
    }
}

/// How often [`Group::snapshot_by_size`] looks at the log.
const SNAPSHOT_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether a log grown by `grown` bytes since the last snapshot calls for another.
fn snapshot_due(grown: u64, store_bytes: u64, every_bytes: u64) -> bool {
    grown >= every_bytes.max(store_bytes / 2)
}

async fn snapshot_when_log_grows(
    raft: Raft,
    log: log::LogStore,
    store_file: std::path::PathBuf,
    every_bytes: u64,
) {
    let metrics = raft.metrics();
    let mut seen = metrics.borrow().snapshot;
    // The log read at open counts: a restart with a long log snapshots soon.
    let mut since = 0;
    let mut tick = tokio::time::interval(SNAPSHOT_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if metrics.has_changed().is_err() {
            return; // Raft stopped.
        }
        let appended = log.appended_bytes();
        let snapshot = metrics.borrow().snapshot;
        if snapshot != seen {
            seen = snapshot;
            since = appended;
            continue;
        }
        let store = std::fs::metadata(&store_file).map_or(0, |m| m.len());
        if snapshot_due(appended - since, store, every_bytes) {
            tracing::info!(
                log_bytes = appended - since,
                store_bytes = store,
                "metadata log: snapshot, the log having grown"
            );
            since = appended;
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
        }
    }
}

fn fatal(what: &str, e: impl std::fmt::Display) -> FsError {
    FsError::unavailable(format!("metadata log: {what}: {e}"))
}

/// This server's member id: kept in `member-id` beside the log. A server whose log predates
/// the file is the first member of its group; a new server that joins one picks a random id.
fn member_id(dir: &std::path::Path, log: &log::LogStore, start: Start) -> FsResult<MemberId> {
    let path = dir.join("member-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return text
                .trim()
                .parse()
                .map_err(|e| FsError::Corrupt(format!("{}: {e}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let id = if log.last_index().is_some() || start == Start::Create {
        FIRST_MEMBER
    } else {
        // Not 0 or the first member's id.
        rand::random::<u32>() as MemberId + 2
    };
    dfs_common::durable::write_file(&path, format!("{id}\n").as_bytes())?;
    Ok(id)
}

/// Starts this server as a member of its metadata group. On first start it creates the group
/// (`Start::Create`) or waits to be added to one (`Start::Join`). A server that is the one
/// voter of its group returns once it leads and has applied every entry of its log, so that
/// what it serves includes everything it acknowledged before a crash; a member of a larger
/// group returns at once, and serves once an election makes it leader.
pub async fn start(
    dir: &std::path::Path,
    db: std::sync::Arc<redb::Database>,
    endpoint: dfs_common::net::endpoint::Endpoint,
    advertise: &str,
    how: Start,
    snapshot_every: u64,
    log_memory: usize,
) -> FsResult<Group> {
    let log = log::LogStore::open_with_budget(dir, log_memory).map_err(|e| fatal("opening", e))?;
    let id = member_id(dir, &log, how)?;
    // Where redb stands before Raft starts: the entries after it are applied again.
    let durable = {
        let tx = crate::store::read(&db)?;
        state::applied_state(&tx)?.0.map_or(0, |l| l.index)
    };
    let state = state::StateMachine::new(db.clone(), &dir.join("snapshots"))
        .map_err(|e| fatal("opening", e))?;
    let progress = state.progress();
    let config = std::sync::Arc::new(
        config(snapshot_every)
            .validate()
            .map_err(|e| fatal("configuration", e))?,
    );
    let peers = network::Peers {
        endpoint: endpoint.clone(),
    };
    let raft = Raft::new(id, config, peers, log.clone(), state)
        .await
        .map_err(|e| fatal("starting", e))?;
    let quorum_acked = std::sync::Arc::new(std::sync::Mutex::new(None));
    tokio::spawn(track_quorum_acks(raft.metrics(), quorum_acked.clone()));
    tokio::spawn(place_log_flushes(raft.metrics(), log.clone()));
    let group = Group {
        raft,
        id,
        log,
        db,
        progress,
        endpoint,
        quorum_acked,
    };
    let initialized = group
        .raft
        .is_initialized()
        .await
        .map_err(|e| fatal("starting", e))?;
    if !initialized {
        match how {
            Start::Create => {
                let members =
                    std::collections::BTreeMap::from([(id, openraft::BasicNode::new(advertise))]);
                group
                    .raft
                    .initialize(members)
                    .await
                    .map_err(|e| fatal("creating the group", e))?;
                tracing::info!(%advertise, "metadata group created with this server as its one member");
            }
            Start::Join => {
                tracing::info!(
                    member = id,
                    %advertise,
                    "waiting to be added to a metadata group: run `dfs meta add {advertise}` against its leader"
                );
                return Ok(group);
            }
        }
    }
    // A group just created has this one member, though the metrics may not show its
    // membership yet: wait for the election all the same, else the first write is refused.
    let created = !initialized && how == Start::Create;
    if created || (group.voters() == 1 && group.is_voter()) {
        let last = group.log.last_index();
        let wait = group.raft.wait(Some(STARTUP_TIMEOUT));
        wait.state(openraft::ServerState::Leader, "leading the group")
            .await
            .map_err(|e| fatal("electing itself", e))?;
        wait.applied_index_at_least(last, "applying the log")
            .await
            .map_err(|e| fatal("applying the log", e))?;
    }
    tracing::info!(
        member = id,
        store = durable,
        log = ?group.log.last_index(),
        "metadata log: the store was at entry {durable}; the entries after it are applied"
    );
    Ok(group)
}

/// A failed membership change, as callers see it.
fn change_error(
    what: &str,
    e: openraft::error::RaftError<
        MemberId,
        openraft::error::ClientWriteError<MemberId, openraft::BasicNode>,
    >,
) -> FsError {
    match e {
        openraft::error::RaftError::APIError(
            openraft::error::ClientWriteError::ForwardToLeader(f),
        ) => FsError::NotLeader(f.leader_node.map(|n| n.addr)),
        other => FsError::unavailable(format!("metadata group: {what}: {other}")),
    }
}

/// Where the group stands, as this member sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogStatus {
    pub member: MemberId,
    pub leader: Option<MemberId>,
    pub term: u64,
    /// The last entry in this member's log, and the last applied to its store.
    pub last_index: u64,
    pub applied_index: u64,
    pub checkpoints: u64,
    /// Log appends flushed by Raft's own task (the log was idle), not by the writer thread,
    /// and whether that is allowed now (not while leading other members).
    pub appends_flushed_inline: u64,
    pub appends_inline: bool,
}

impl Group {
    /// The group as this member sees it now.
    pub fn status(&self) -> LogStatus {
        let m = self.raft.metrics().borrow().clone();
        LogStatus {
            member: m.id,
            leader: m.current_leader,
            term: m.current_term,
            last_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            checkpoints: self
                .progress
                .checkpoints
                .load(std::sync::atomic::Ordering::Relaxed),
            appends_flushed_inline: self.log.appends_written_here() as u64,
            appends_inline: self.log.appends_inline(),
        }
    }

    /// Every member of the group, with what this member knows of its log.
    pub fn members(&self) -> Vec<dfs_common::proto::meta::MetaMember> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let leading = m.current_leader == Some(m.id);
        let voters: std::collections::BTreeSet<MemberId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(&id, node)| {
                let me = id == m.id;
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).copied().flatten())
                    .map(|l| l.index);
                let last_index = if me { m.last_log_index } else { matched };
                let role = if m.current_leader == Some(id) {
                    "leader"
                } else if !voters.contains(&id) {
                    "learner"
                } else if me && m.state == openraft::ServerState::Candidate {
                    "candidate"
                } else {
                    "follower"
                };
                dfs_common::proto::meta::MetaMember {
                    id,
                    addr: node.addr.clone(),
                    role: role.into(),
                    answering: me,
                    term: me.then_some(m.current_term),
                    last_index,
                    applied_index: if me {
                        m.last_applied.map(|l| l.index)
                    } else {
                        None
                    },
                    lag: match (leading, last_index, m.last_log_index) {
                        (true, Some(theirs), Some(ours)) => Some(ours.saturating_sub(theirs)),
                        _ => None,
                    },
                }
            })
            .collect()
    }

    /// Applies a batch of commands once the group has committed it: one outcome per command.
    pub async fn write(&self, batch: Batch) -> FsResult<Vec<FsResult<Outcome>>> {
        match self.raft.client_write(batch).await {
            Ok(response) => Ok(response.data),
            Err(openraft::error::RaftError::APIError(
                openraft::error::ClientWriteError::ForwardToLeader(f),
            )) => Err(FsError::NotLeader(f.leader_node.map(|n| n.addr))),
            Err(e) => Err(fatal("writing", e)),
        }
    }

    /// The group's membership as this member knows it now.
    fn membership(&self) -> std::sync::Arc<StoredMembership> {
        self.raft.metrics().borrow().membership_config.clone()
    }

    /// The term this member is in: each election starts a new one, so a leader's term names
    /// its time of leading.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// How many members vote.
    pub fn voters(&self) -> usize {
        self.membership().membership().voter_ids().count()
    }

    /// Whether this member votes (a server waiting to join, or a learner, does not).
    pub fn is_voter(&self) -> bool {
        self.is_voter_id(self.id)
    }

    fn is_voter_id(&self, id: MemberId) -> bool {
        self.membership().membership().voter_ids().any(|v| v == id)
    }

    /// Whether this member belongs to a group yet (a server started with `--join` does not
    /// until it is added).
    pub fn is_member(&self) -> bool {
        self.membership()
            .membership()
            .nodes()
            .any(|(&id, _)| id == self.id)
    }

    /// The leader's address as this member knows it, if one is known.
    pub fn leader_addr(&self) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    /// Refuses unless this member leads: clients are sent to the leader.
    pub fn ensure_leader(&self) -> FsResult<()> {
        // Asked for every request: the metrics are read in place, not copied.
        let leading = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            m.current_leader == Some(self.id) && m.state == openraft::ServerState::Leader
        };
        if leading {
            Ok(())
        } else {
            Err(FsError::NotLeader(self.leader_addr()))
        }
    }

    /// Makes a read linearizable: confirms with a majority that this member still leads and
    /// waits until everything committed before the read is applied. A group with one voter
    /// needs no round: it cannot be deposed without knowing. Nor does a leader that a
    /// majority acknowledged within [`READ_LEASE`] and that has applied an entry of its own
    /// term: no other leader can exist yet, and every write acknowledged before the read is
    /// applied here (this leader's acknowledges after applying; an earlier leader's precede
    /// this term's first entry).
    pub async fn read_barrier(&self) -> FsResult<()> {
        self.ensure_leader()?;
        if self.voters() <= 1 || self.holds_read_lease() {
            return Ok(());
        }
        match tokio::time::timeout(READ_BARRIER_TIMEOUT, self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(openraft::error::RaftError::APIError(
                openraft::error::CheckIsLeaderError::ForwardToLeader(f),
            ))) => Err(FsError::NotLeader(f.leader_node.map(|n| n.addr))),
            Ok(Err(e)) => Err(FsError::NotLeader(None)).inspect_err(|_| {
                tracing::debug!("read barrier: {e}");
            }),
            Err(_) => Err(FsError::NotLeader(None)),
        }
    }

    fn holds_read_lease(&self) -> bool {
        let acked = *self.quorum_acked.lock().expect("quorum acknowledgement");
        let fresh = acked.is_some_and(|at| at.elapsed() < READ_LEASE);
        let m = self.raft.metrics();
        let m = m.borrow();
        let own_term_applied = m
            .last_applied
            .is_some_and(|l| l.leader_id.term == m.current_term);
        fresh && own_term_applied && m.state == openraft::ServerState::Leader
    }

    /// Answers a message from another member (see [`network`]).
    pub async fn answer_peer(
        &self,
        rpc: dfs_common::proto::meta::PeerRpc,
        message: &[u8],
    ) -> FsResult<Vec<u8>> {
        use dfs_common::proto::meta::PeerRpc;
        match rpc {
            PeerRpc::AppendEntries => {
                network::encode(&self.raft.append_entries(network::decode(message)?).await)
            }
            PeerRpc::Vote => network::encode(&self.raft.vote(network::decode(message)?).await),
            PeerRpc::InstallSnapshot => {
                network::encode(&self.raft.install_snapshot(network::decode(message)?).await)
            }
            PeerRpc::Join => Err(FsError::protocol("join is answered by the service")),
        }
    }

    /// Adds the server at `addr` (started with `--join`) to the group: it is handed the
    /// group's secrets and answers with its id, catches up as a learner, then becomes a voter.
    pub async fn add_member(&self, addr: &str, join: &network::JoinRequest) -> FsResult<MemberId> {
        self.ensure_leader()?;
        let id = network::ask_to_join(&self.endpoint, addr, join).await?;
        // Asked again after a change that did not finish: it goes on from where it stopped.
        if self.is_voter_id(id) {
            return Ok(id);
        }
        tracing::info!(member = id, %addr, "adding a metadata member: catching up as a learner");
        self.raft
            .add_learner(id, openraft::BasicNode::new(addr), true)
            .await
            .map_err(|e| change_error("adding a learner", e))?;
        tracing::info!(member = id, %addr, "the new member has caught up: it now votes");
        let voters = std::collections::BTreeSet::from([id]);
        self.raft
            .change_membership(openraft::ChangeMembers::AddVoterIds(voters), false)
            .await
            .map_err(|e| change_error("making it a voter", e))?;
        Ok(id)
    }

    /// Removes member `id` from the group.
    pub async fn remove_member(&self, id: MemberId) -> FsResult<()> {
        self.ensure_leader()?;
        let members = self.members_now();
        if !members.contains_key(&id) {
            return Err(FsError::NotFound);
        }
        let voters: std::collections::BTreeSet<MemberId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        if voters.len() == 1 && voters.contains(&id) {
            return Err(FsError::invalid("the last voting member cannot be removed"));
        }
        let change = if voters.contains(&id) {
            openraft::ChangeMembers::RemoveVoters(std::collections::BTreeSet::from([id]))
        } else {
            openraft::ChangeMembers::RemoveNodes(std::collections::BTreeSet::from([id]))
        };
        self.raft
            .change_membership(change, false)
            .await
            .map_err(|e| change_error("removing a member", e))?;
        Ok(())
    }

    fn members_now(&self) -> std::collections::BTreeMap<MemberId, openraft::BasicNode> {
        self.membership()
            .membership()
            .nodes()
            .map(|(&id, n)| (id, n.clone()))
            .collect()
    }

    /// Starts a snapshot whenever the log grew by `every_bytes` since the last one, or by half
    /// the store's file if that is more: entries of small files written inline are large,
    /// and 100,000 of them would fill gigabytes of log, which a restart reads back. A
    /// snapshot copies the whole store; growing the log by at least half of it in between
    /// keeps what snapshots write within twice what the log took.
    pub fn snapshot_by_size(&self, store_file: std::path::PathBuf, every_bytes: u64) {
        tokio::spawn(snapshot_when_log_grows(
            self.raft.clone(),
            self.log.clone(),
            store_file,
            every_bytes,
        ));
    }

    /// Stops Raft, waits for the log writer and makes redb durable, so the next start has
    /// nothing to apply again.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("metadata log: stopping: {e}");
        }
        let log = self.log.clone();
        let db = self.db.clone();
        let progress = self.progress.clone();
        let done = tokio::task::spawn_blocking(move || {
            log.sync().map_err(|e| fatal("stopping", e))?;
            state::checkpoint(&db, &progress)
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("metadata log: final checkpoint: {e}"),
            Err(e) => tracing::warn!("metadata log: final checkpoint: {e}"),
        }
    }
}

/// A group of one on a loopback endpoint, for tests of what runs on top of the log.
#[cfg(test)]
pub async fn start_alone(dir: &std::path::Path, db: std::sync::Arc<redb::Database>) -> Group {
    use dfs_common::net::tls::{generate_ca, issue, Identity, Role};
    let ca = generate_ca().unwrap();
    let own = issue(&ca, "meta", Role::Meta, &[]).unwrap();
    let identity = Identity::from_pairs(&ca, &own).unwrap();
    let endpoint =
        dfs_common::net::endpoint::server_endpoint("127.0.0.1:0".parse().unwrap(), &identity, None)
            .unwrap();
    let addr = endpoint.local_addr().unwrap().to_string();
    start(
        dir,
        db,
        endpoint,
        &addr,
        Start::Create,
        state::SNAPSHOT_EVERY,
        log::MEMORY_BUDGET,
    )
    .await
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Op, Outcome};
    use dfs_common::model::VolumeLimits;
    use dfs_common::Timestamp;

    #[test]
    fn a_snapshot_is_due_past_the_bound_or_half_the_store_whichever_is_more() {
        assert!(!snapshot_due(999, 0, 1000));
        assert!(snapshot_due(1000, 0, 1000));
        assert!(!snapshot_due(1999, 4000, 1000));
        assert!(snapshot_due(2000, 4000, 1000));
    }

    /// A log of large entries gets a snapshot by its size, long before the entry count
    /// (100,000) would call for one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_of_large_entries_gets_a_snapshot_by_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("meta.redb");
        let db = crate::store::open(&store).unwrap();
        let group = start_alone(&dir.path().join("raft"), db).await;
        group.snapshot_by_size(store.clone(), 1 << 20);
        let committer = crate::committer::Committer::start(group.clone());
        let command = |op| Command::internal(Timestamp { secs: 1, nanos: 0 }, op);
        let created = committer
            .submit(command(Op::CreateVolume {
                name: "v".into(),
                policy: "2+1".parse().unwrap(),
                block_size: 1 << 20,
                limits: VolumeLimits::default(),
            }))
            .await;
        let Ok(Outcome::Volume { record: v, .. }) = created else {
            panic!("volume not created: {created:?}")
        };
        let metrics = group.raft.metrics();
        let mut written = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while metrics.borrow().snapshot.is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "no snapshot after {written} entries of 60 KiB"
            );
            committer
                .submit(command(Op::SetXattr {
                    ino: v.root,
                    name: "user.big".into(),
                    value: vec![written as u8; 60 << 10],
                    flags: 0,
                }))
                .await
                .unwrap();
            written += 1;
        }
        let snapshot = metrics.borrow().snapshot.expect("a snapshot");
        assert!(
            snapshot.index < state::SNAPSHOT_EVERY / 10,
            "snapshot at entry {}",
            snapshot.index
        );
        group.shutdown().await;
    }
}
