//! The metadata log: mutations are entries of a Raft log (openraft), batched by the committer,
//! applied to the redb state machine once they are committed.
//!
//! - [`log`]: the log on disk, appended by one thread that flushes many appends with one
//!   fdatasync (group commit) before Raft counts them.
//! - [`state`]: the state machine: committed commands applied to redb, and snapshots of it.
//! - [`network`]: the transport between members.
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
#[allow(clippy::result_large_err)]
pub mod state;

use crate::command::{Batch, Outcome};
use dfs_common::{FsError, FsResult};
use std::io::Cursor;

openraft::declare_raft_types!(
    /// The metadata group's types: commands in, outcomes out.
    pub TypeConfig:
        D = Batch,
        R = Vec<FsResult<Outcome>>,
        NodeId = MemberId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
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

/// The member id of a metadata server that runs alone.
pub const SOLE_MEMBER: MemberId = 1;

/// Timing of the group. Elections wait 1 to 2 s of silence from the leader, so a failover
/// takes about 2 s; heartbeats every 250 ms keep a healthy leader well inside that.
pub fn config() -> openraft::Config {
    openraft::Config {
        cluster_name: "dfs-meta".into(),
        heartbeat_interval: 250,
        election_timeout_min: 1000,
        election_timeout_max: 2000,
        // Entries kept in the log (and in memory) between snapshots.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(state::SNAPSHOT_EVERY),
        max_in_snapshot_log_to_keep: 1000,
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

/// A running member of the metadata group, with what the rest of the server needs of it.
#[derive(Clone)]
pub struct Group {
    pub raft: Raft,
    log: log::LogStore,
    db: std::sync::Arc<redb::Database>,
    pub progress: std::sync::Arc<state::Progress>,
}

fn fatal(what: &str, e: impl std::fmt::Display) -> FsError {
    FsError::unavailable(format!("metadata log: {what}: {e}"))
}

/// Starts this server as the sole member of its metadata group (creating the group on first
/// start), and returns once it leads and has applied every entry of its log, so that what it
/// serves includes everything it acknowledged before a crash.
pub async fn start(
    dir: &std::path::Path,
    db: std::sync::Arc<redb::Database>,
    addr: std::net::SocketAddr,
) -> FsResult<Group> {
    let log = log::LogStore::open(dir).map_err(|e| fatal("opening", e))?;
    // Where redb stands before Raft starts: the entries after it are applied again.
    let durable = {
        let tx = crate::store::read(&db)?;
        state::applied_state(&tx)?.0.map_or(0, |l| l.index)
    };
    let state = state::StateMachine::new(db.clone(), &dir.join("snapshots"))
        .map_err(|e| fatal("opening", e))?;
    let progress = state.progress();
    let config = std::sync::Arc::new(config().validate().map_err(|e| fatal("configuration", e))?);
    let raft = Raft::new(
        SOLE_MEMBER,
        config,
        network::Unconnected,
        log.clone(),
        state,
    )
    .await
    .map_err(|e| fatal("starting", e))?;
    if !raft
        .is_initialized()
        .await
        .map_err(|e| fatal("starting", e))?
    {
        let members = std::collections::BTreeMap::from([(
            SOLE_MEMBER,
            openraft::BasicNode::new(addr.to_string()),
        )]);
        raft.initialize(members)
            .await
            .map_err(|e| fatal("creating the group", e))?;
        tracing::info!(%addr, "metadata group created with this server as its one member");
    }
    let last = log.last_index();
    let wait = raft.wait(Some(STARTUP_TIMEOUT));
    wait.state(openraft::ServerState::Leader, "leading the group")
        .await
        .map_err(|e| fatal("electing itself", e))?;
    wait.applied_index_at_least(last, "applying the log")
        .await
        .map_err(|e| fatal("applying the log", e))?;
    tracing::info!(
        store = durable,
        log = ?last,
        "metadata log: the store was at entry {durable}; the entries after it are applied"
    );
    let voters = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .count();
    if voters != 1 {
        return Err(fatal(
            "starting",
            format!("the group has {voters} voting members; this server can only run alone"),
        ));
    }
    Ok(Group {
        raft,
        log,
        db,
        progress,
    })
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
            )) => Err(FsError::unavailable(format!(
                "this metadata server is not the leader (the leader is {:?})",
                f.leader_node.map(|n| n.addr)
            ))),
            Err(e) => Err(fatal("writing", e)),
        }
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
