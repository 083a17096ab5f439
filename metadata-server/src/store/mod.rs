//! The durable metadata store: redb, with one committer thread that batches concurrent
//! mutations into a single durable transaction (group commit).
//!
//! An operation is acknowledged only after the transaction holding it has committed with
//! `Durability::Immediate` (fsynced), so anything acknowledged survives `kill -9`. While one
//! commit is syncing, new commands queue up and go into the next one, so N concurrent clients
//! share one fsync instead of paying one each.

pub mod schema;
pub mod tables;

use crate::state_machine::{self, Command};
use dfs_common::proto::meta::MetaReply;
use dfs_common::{FsError, FsResult};
use redb::{Database, ReadTransaction, ReadableDatabase};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most commands applied in one transaction.
const MAX_BATCH: usize = 256;
/// Commands waiting for the committer before submitters wait too (back-pressure).
const QUEUE_DEPTH: usize = 4096;

/// Converts any redb error into the wire error; storage failures surface as EIO.
pub trait DbResult<T> {
    fn db(self) -> FsResult<T>;
}

impl<T, E: Into<redb::Error>> DbResult<T> for Result<T, E> {
    fn db(self) -> FsResult<T> {
        self.map_err(|e| FsError::Io(format!("metadata store: {}", e.into())))
    }
}

/// Opens (or creates) the database file and makes sure every table exists.
pub fn open(path: &Path) -> FsResult<Arc<Database>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let db = Database::create(path).db()?;
    let tx = db.begin_write().db()?;
    tables::WriteTables::open(&tx)?;
    crate::volumes::backfill(&tx)?;
    tx.commit().db()?;
    Ok(Arc::new(db))
}

pub fn read(db: &Database) -> FsResult<ReadTransaction> {
    db.begin_read().db()
}

struct Pending {
    command: Command,
    reply: oneshot::Sender<FsResult<MetaReply>>,
}

/// Hands commands to the committer thread and waits for their durable result.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::Sender<Pending>,
}

impl Committer {
    /// Starts the committer thread; it stops when every `Committer` clone is dropped.
    pub fn start(db: Arc<Database>) -> (Committer, std::thread::JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        let thread = std::thread::Builder::new()
            .name("meta-committer".into())
            .spawn(move || commit_loop(&db, rx))
            .expect("spawning the committer thread");
        (Committer { queue }, thread)
    }

    /// Applies `command` durably and returns its reply.
    pub async fn submit(&self, command: Command) -> FsResult<MetaReply> {
        let (reply, wait) = oneshot::channel();
        self.queue
            .send(Pending { command, reply })
            .await
            .map_err(|_| FsError::unavailable("metadata server is shutting down"))?;
        wait.await
            .map_err(|_| FsError::unavailable("metadata committer stopped"))?
    }
}

fn commit_loop(db: &Database, mut rx: mpsc::Receiver<Pending>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        match apply_batch(db, &batch) {
            Ok(results) => {
                for (p, r) in batch.into_iter().zip(results) {
                    let _ = p.reply.send(r);
                }
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

/// Applies the batch in one transaction and commits it durably. Returns one result per
/// command, or the error that sank the whole batch (a storage failure).
///
/// A command that fails may have changed the transaction before it noticed (redb savepoints
/// cannot be taken inside a dirty transaction), so a failure aborts the transaction and the
/// batch is applied again without the failed command. Commands are deterministic, so the
/// others give the same results again unless they depended on the failed one's partial
/// changes, and then their new results are the right ones.
fn apply_batch(db: &Database, batch: &[Pending]) -> FsResult<Vec<FsResult<MetaReply>>> {
    let mut failed: Vec<Option<FsError>> = vec![None; batch.len()];
    'attempt: loop {
        let tx = db.begin_write().db()?;
        let mut results = Vec::with_capacity(batch.len());
        for (i, p) in batch.iter().enumerate() {
            if let Some(e) = &failed[i] {
                results.push(Err(e.clone()));
                continue;
            }
            match state_machine::apply(&tx, &p.command) {
                Ok(reply) => results.push(Ok(reply)),
                Err(e) => {
                    failed[i] = Some(e);
                    // Dropping the transaction aborts it.
                    drop(tx);
                    continue 'attempt;
                }
            }
        }
        tx.commit().db()?;
        return Ok(results);
    }
}
