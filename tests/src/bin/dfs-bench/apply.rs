//! `dfs-bench apply`: what the metadata server's state machine costs per command, alone.
//!
//! Each command goes through `apply_entries` in an entry of its own, as a lone client's
//! commands reach it from Raft: one redb transaction per command, checkpoints included. The
//! figure is CPU time on one thread (the log's fdatasync and the network are not in it), so it
//! moves little with the host's noise, and a change to the apply path shows in it.

use dfs_common::model::FileKind;
use dfs_common::{InodeId, Timestamp};
use dfs_meta::command::{Batch, Call, Command, Op, Outcome};
use dfs_meta::raft::state::{apply_entries, Progress};
use dfs_meta::raft::Entry;
use std::path::Path;

/// Appends to one file before the next: well inside its inline allowance (128 KiB).
const APPENDS_PER_FILE: usize = 1000;

struct Store {
    db: std::sync::Arc<redb::Database>,
    progress: Progress,
    index: u64,
    seq: u64,
}

impl Store {
    /// Applies `op` as a client's command in an entry of its own.
    fn apply(&mut self, op: Op) -> anyhow::Result<Outcome> {
        self.index += 1;
        self.seq += 1;
        let call = Call {
            client: 7,
            seq: self.seq,
            done_below: self.seq,
            request: [0; 32],
        };
        let command = Command {
            now: Timestamp::now(),
            call: Some(call),
            op,
        };
        let entry = Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), self.index),
            payload: openraft::EntryPayload::Normal(Batch(vec![command])),
        };
        let mut outcomes = apply_entries(&self.db, &[entry], &self.progress)?;
        let outcome = outcomes.pop().and_then(|mut e| e.pop());
        Ok(outcome.ok_or_else(|| anyhow::anyhow!("no outcome"))??)
    }

    /// Applies each of `ops`: the CPU time per command in microseconds, and the outcomes.
    fn timed(&mut self, ops: Vec<Op>) -> anyhow::Result<(f64, Vec<Outcome>)> {
        let n = ops.len().max(1);
        let mut outcomes = Vec::with_capacity(n);
        let start = thread_cpu();
        for op in ops {
            outcomes.push(self.apply(op)?);
        }
        Ok(((thread_cpu() - start) * 1e6 / n as f64, outcomes))
    }
}

/// This thread's CPU time so far, in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to; the clock id is a constant the kernel knows.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn make_file(parent: InodeId, name: String) -> Op {
    Op::MakeNode {
        parent,
        name,
        kind: FileKind::File,
        mode: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        target: None,
    }
}

fn keep_inline(ino: InodeId, len: usize, append: bool) -> Op {
    Op::KeepInline {
        ino,
        pieces: vec![(0, len as u64)],
        data: vec![0x5a; len],
        mtime: Timestamp::now(),
        append,
    }
}

pub fn run(count: usize, other_volumes: usize, dir: &Path) -> anyhow::Result<()> {
    let dir = tempfile::tempdir_in(dir)?;
    let db = dfs_meta::store::open(&dir.path().join("meta.redb"))?;
    let mut store = Store {
        db,
        progress: Progress::default(),
        index: 0,
        seq: 0,
    };
    // Other volumes, listed before the one under test.
    for i in 0..other_volumes {
        store.apply(Op::CreateVolume {
            name: format!("a{i:05}"),
            policy: "4+2".parse()?,
            block_size: 4 << 20,
            limits: Default::default(),
        })?;
    }
    let Outcome::Volume { record, .. } = store.apply(Op::CreateVolume {
        name: "v".into(),
        policy: "4+2".parse()?,
        block_size: 4 << 20,
        limits: Default::default(),
    })?
    else {
        anyhow::bail!("no volume made");
    };
    let root = record.root;
    let mut rows = Vec::new();

    let creates = (0..count)
        .map(|i| make_file(root, format!("f{i}")))
        .collect();
    let (each, made) = store.timed(creates)?;
    rows.push(("create an empty file", each));
    let files = made
        .into_iter()
        .map(|outcome| match outcome {
            Outcome::Node { ino, .. } => Ok(ino),
            other => Err(anyhow::anyhow!("a create gave {other:?}")),
        })
        .collect::<anyhow::Result<Vec<InodeId>>>()?;

    let writes = files
        .iter()
        .map(|&ino| keep_inline(ino, 97, false))
        .collect();
    rows.push(("write 97 bytes to a new file", store.timed(writes)?.0));

    // Appends to a few files, each growing by one inline block per append.
    let appends = (0..count)
        .map(|i| keep_inline(files[i / APPENDS_PER_FILE], 97, true))
        .collect();
    rows.push(("append 97 bytes", store.timed(appends)?.0));

    // Files that took no appends get 16 KiB each, over their 97 bytes.
    let first = count.div_ceil(APPENDS_PER_FILE);
    let large = files[first..]
        .iter()
        .map(|&ino| keep_inline(ino, 16 * 1024, false))
        .collect();
    rows.push(("write 16 KiB over a small file", store.timed(large)?.0));

    let unlinks = (0..count)
        .map(|i| {
            Op::KeepOrphans(Box::new(Op::Unlink {
                parent: root,
                name: format!("f{i}"),
            }))
        })
        .collect();
    rows.push(("unlink (kept as an orphan)", store.timed(unlinks)?.0));

    const REAP: usize = 256;
    let reaps: Vec<Op> = files
        .chunks(REAP)
        .map(|inos| Op::ReapOrphans {
            inos: inos.to_vec(),
        })
        .collect();
    let batches = reaps.len() as f64;
    let (each, _) = store.timed(reaps)?;
    rows.push((
        "free an orphan (256 a command)",
        each * batches / count as f64,
    ));

    println!(
        "| command ({count} of each, one per transaction; {} volumes) | µs of CPU each |",
        other_volumes + 1
    );
    println!("|---|---|");
    for (what, each) in rows {
        println!("| {what} | {each:.1} |");
    }
    Ok(())
}
