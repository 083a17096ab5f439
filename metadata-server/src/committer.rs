//! The committer: one thread that applies mutations to the store, batching concurrent ones
//! into a single durable transaction (group commit).
//!
//! An operation is acknowledged only after the transaction holding it has committed with
//! `Durability::Immediate` (fsynced), so anything acknowledged survives `kill -9`. While one
//! commit is syncing, new commands queue up and go into the next one, so N concurrent clients
//! share one fsync instead of paying one each.

use crate::command::{Command, Outcome};
use crate::state_machine;
use crate::store::DbResult;
use dfs_common::{FsError, FsResult};
use redb::Database;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most commands applied in one transaction.
const MAX_BATCH: usize = 256;
/// Commands waiting for the committer before submitters wait too (back-pressure).
const QUEUE_DEPTH: usize = 4096;

struct Pending {
    command: Command,
    reply: oneshot::Sender<FsResult<Outcome>>,
}

/// Hands commands to the committer thread and waits for their durable result.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::Sender<Pending>,
    applies: Arc<AtomicU64>,
}

impl Committer {
    /// Starts the committer thread; it stops when every `Committer` clone is dropped.
    pub fn start(db: Arc<Database>) -> (Committer, std::thread::JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        let applies = Arc::new(AtomicU64::new(0));
        let counter = applies.clone();
        let thread = std::thread::Builder::new()
            .name("meta-committer".into())
            .spawn(move || commit_loop(&db, rx, &counter))
            .expect("spawning the committer thread");
        (Committer { queue, applies }, thread)
    }

    /// Applies `command` durably and returns its reply.
    pub async fn submit(&self, command: Command) -> FsResult<Outcome> {
        let (reply, wait) = oneshot::channel();
        self.queue
            .send(Pending { command, reply })
            .await
            .map_err(|_| FsError::unavailable("metadata server is shutting down"))?;
        wait.await
            .map_err(|_| FsError::unavailable("metadata committer stopped"))?
    }

    /// Commands applied to a transaction so far, counting applies that were rolled back and
    /// done again: what a batch really cost.
    pub fn applies(&self) -> u64 {
        self.applies.load(Ordering::Relaxed)
    }
}

fn commit_loop(db: &Database, mut rx: mpsc::Receiver<Pending>, applies: &AtomicU64) {
    // Commands a batch cut short left for the next one, oldest first.
    let mut waiting: VecDeque<Pending> = VecDeque::new();
    loop {
        if waiting.is_empty() {
            match rx.blocking_recv() {
                Some(p) => waiting.push_back(p),
                None => return,
            }
        }
        while waiting.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => waiting.push_back(p),
                Err(_) => break,
            }
        }
        let batch: Vec<Pending> = waiting.drain(..).collect();
        match apply_batch(db, &batch, applies) {
            Ok(results) => {
                let mut batch = batch.into_iter();
                for r in results {
                    let p = batch.next().expect("one result per applied command");
                    let _ = p.reply.send(r);
                }
                waiting.extend(batch);
            }
            Err(e) => {
                tracing::error!("metadata commit failed: {e}");
                for p in batch {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Applies a prefix of the batch in one transaction and commits it durably. Returns one result
/// per command of that prefix (the rest go into the next batch), or the error that sank the
/// whole batch (a storage failure).
///
/// A command that fails may have changed the transaction before it noticed (redb savepoints
/// cannot be taken inside a dirty transaction), so at the first failure the transaction is
/// aborted, the commands before it are applied again in a fresh one and committed, and the
/// batch ends with the failed command's error. Commands are deterministic, so they give the
/// same results again. Each command is so applied at most twice: a failing command costs
/// about one apply, however many fail.
fn apply_batch(
    db: &Database,
    batch: &[Pending],
    applies: &AtomicU64,
) -> FsResult<Vec<FsResult<Outcome>>> {
    let tx = db.begin_write().db()?;
    let mut results = Vec::with_capacity(batch.len());
    for p in batch {
        applies.fetch_add(1, Ordering::Relaxed);
        match state_machine::apply(&tx, &p.command) {
            Ok(reply) => results.push(Ok(reply)),
            Err(failure) => {
                // Dropping the transaction aborts it, with the failed command's partial changes.
                drop(tx);
                if !results.is_empty() {
                    let tx = db.begin_write().db()?;
                    for (i, p) in batch[..results.len()].iter().enumerate() {
                        applies.fetch_add(1, Ordering::Relaxed);
                        results[i] = Ok(state_machine::apply(&tx, &p.command).map_err(|e| {
                            FsError::io(format!(
                                "command {} failed when applied again ({e}): not deterministic",
                                p.command.op.name()
                            ))
                        })?);
                    }
                    tx.commit().db()?;
                }
                results.push(Err(failure));
                return Ok(results);
            }
        }
    }
    tx.commit().db()?;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Op;
    use crate::store::open;
    use dfs_common::model::{FileKind, VolumeLimits};
    use dfs_common::Timestamp;

    fn command(op: Op) -> Command {
        Command::internal(Timestamp { secs: 1, nanos: 0 }, op)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failing_commands_cost_about_one_apply_each() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir.path().join("meta.redb")).unwrap();
        let (committer, thread) = Committer::start(db);
        let create = Op::CreateVolume {
            name: "v".into(),
            policy: "2+1".parse().unwrap(),
            block_size: 1 << 20,
            limits: VolumeLimits::default(),
        };
        let Ok(Outcome::Volume { record: v, .. }) = committer.submit(command(create)).await else {
            panic!("volume not created")
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
        drop(committer);
        thread.join().unwrap();
    }
}
