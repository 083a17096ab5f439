//! The committer: where every mutation goes to be made durable and applied, through the
//! metadata log ([`crate::raft`]).
//!
//! An operation is acknowledged only after its command is in the log on disk (fdatasynced) and
//! applied to redb, so anything acknowledged survives `kill -9`. Concurrent mutations share
//! those costs: the committer puts every command waiting for it into one log entry (one
//! append, one fdatasync), and the state machine applies an entry in one redb transaction.

use crate::command::{Batch, Command, Outcome};
use crate::raft::Group;
use dfs_common::{FsError, FsResult};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Most commands in one log entry.
const MAX_BATCH: usize = 256;
/// Most bytes (as [`crate::command::Op::weight`] estimates them) in one log entry.
const MAX_BATCH_WEIGHT: usize = 4 << 20;
/// Commands waiting for the log before submitters wait too (back-pressure).
const QUEUE_DEPTH: usize = 4096;
/// Log entries on their way at once: while one is being flushed, the one before it can be
/// applied and answered.
const IN_FLIGHT: usize = 2;

struct Pending {
    command: Command,
    reply: oneshot::Sender<FsResult<Outcome>>,
}

/// Hands commands to the metadata log and waits for their outcome.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::Sender<Pending>,
    group: Group,
}

impl Committer {
    /// Starts the task that batches commands into log entries; it stops when every
    /// `Committer` clone is dropped.
    pub fn start(group: Group) -> Committer {
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(commit_loop(group.clone(), rx));
        Committer { queue, group }
    }

    /// Applies `command` durably and returns its outcome.
    pub async fn submit(&self, command: Command) -> FsResult<Outcome> {
        let (reply, wait) = oneshot::channel();
        self.queue
            .send(Pending { command, reply })
            .await
            .map_err(|_| FsError::unavailable("metadata server is shutting down"))?;
        wait.await
            .map_err(|_| FsError::unavailable("metadata committer stopped"))?
    }

    /// Queues `command` at once, without waiting for room: for callers that must queue
    /// commands in a given order while they hold a lock. Its outcome comes on the receiver.
    pub fn enqueue(&self, command: Command) -> FsResult<oneshot::Receiver<FsResult<Outcome>>> {
        let (reply, wait) = oneshot::channel();
        self.queue
            .try_send(Pending { command, reply })
            .map_err(|_| FsError::unavailable("the metadata committer is full or stopped"))?;
        Ok(wait)
    }

    /// The metadata group the commands go to.
    pub fn group(&self) -> &Group {
        &self.group
    }

    /// Commands applied to a transaction so far, counting applies that were rolled back and
    /// done again: what a batch really cost.
    pub fn applies(&self) -> u64 {
        self.group.progress.applies.load(Ordering::Relaxed)
    }
}

/// Takes every command waiting (up to a bound) into one log entry; while entries are being
/// logged and applied, new commands wait for the next.
async fn commit_loop(group: Group, mut rx: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut next: Option<Pending> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match next.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => {
                    // Let the requests that arrived with this one reach the queue first: a
                    // client's requests sent together (a close's write and its attribute
                    // change) then share an entry, as do other clients' that came at once.
                    tokio::task::yield_now().await;
                    p
                }
                None => return,
            },
        };
        let mut weight = first.command.op.weight();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            let Ok(p) = rx.try_recv() else { break };
            weight += p.command.op.weight();
            if weight > MAX_BATCH_WEIGHT {
                next = Some(p);
                break;
            }
            batch.push(p);
        }
        let group = group.clone();
        tokio::spawn(async move {
            write_batch(&group, batch).await;
            drop(slot);
        });
    }
}

/// Logs one batch and answers each of its commands.
async fn write_batch(group: &Group, batch: Vec<Pending>) {
    let (commands, replies): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    let outcomes = match group.write(Batch(commands)).await {
        Ok(outcomes) if outcomes.len() == replies.len() => outcomes,
        Ok(outcomes) => {
            let e = FsError::io(format!(
                "metadata log: {} outcomes for {} commands",
                outcomes.len(),
                replies.len()
            ));
            vec![Err(e); replies.len()]
        }
        Err(e) => vec![Err(e); replies.len()],
    };
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        let _ = reply.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Op;
    use crate::store::open;
    use dfs_common::model::{FileKind, VolumeLimits};
    use dfs_common::{FsError, Timestamp};

    fn command(op: Op) -> Command {
        Command::internal(Timestamp { secs: 1, nanos: 0 }, op)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failing_commands_cost_about_one_apply_each() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir.path().join("meta.redb")).unwrap();
        let group = crate::raft::start_alone(&dir.path().join("raft"), db).await;
        let committer = Committer::start(group.clone());
        let create = Op::CreateVolume {
            name: "v".into(),
            policy: "2+1".parse().unwrap(),
            block_size: 1 << 20,
            limits: VolumeLimits::default(),
        };
        let created = committer.submit(command(create)).await;
        let Ok(Outcome::Volume { record: v, .. }) = created else {
            panic!("volume not created: {created:?}")
        };
        let make = |name: String| {
            command(Op::MakeNode {
                parent: v.root,
                name,
                kind: FileKind::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                rdev: 0,
                target: None,
            })
        };
        committer.submit(make("taken".into())).await.unwrap();
        let before = committer.applies();
        // Every other command fails (the name exists); all are queued at once, so they share
        // batches.
        let n = 400;
        let results = futures_util::future::join_all((0..n).map(|i| {
            let name = if i % 2 == 0 {
                format!("f{i}")
            } else {
                "taken".into()
            };
            committer.submit(make(name))
        }))
        .await;
        for (i, r) in results.iter().enumerate() {
            if i % 2 == 0 {
                assert!(matches!(r, Ok(Outcome::Node { .. })), "{i}: {r:?}");
            } else {
                assert_eq!(r, &Err(FsError::Exists), "{i}");
            }
        }
        let applies = committer.applies() - before;
        assert!(applies <= 2 * n, "{n} commands took {applies} applies");
        group.shutdown().await;
    }
}
