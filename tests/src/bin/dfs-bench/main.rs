//! `dfs-bench`: measurements that are not tests. Results go to docs/BENCHMARKS.md.
//!
//! - `ec`: erasure encode and reconstruct throughput per policy (no I/O).
//! - `creates`: file creates per second through the client library against a live cluster,
//!   with one and with many concurrent tasks, next to the same creates in a local directory.
//! - `apply`: the metadata server's state machine alone: commands applied to a store on this
//!   disk as Raft hands them over (one command per entry and transaction), CPU time per
//!   command (no log, no network).

use clap::{Parser, Subcommand};
use dfs_client::Client;
use dfs_common::config::tls_paths;
use dfs_common::erasure::Erasure;
use dfs_common::net::resolve_addr;
use dfs_common::net::tls::Identity;
use dfs_common::proto::meta::FileKind;
use dfs_common::EcPolicy;
use std::path::PathBuf;
use std::time::Instant;

mod apply;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Erasure-coding throughput.
    Ec {
        /// Block size in bytes.
        #[arg(long, default_value_t = 4 << 20)]
        block: usize,
        /// Blocks per measurement.
        #[arg(long, default_value_t = 256)]
        blocks: usize,
    },
    /// Creates per second, dfs against a local directory.
    Creates {
        #[arg(long, env = "DFS_META")]
        meta: String,
        #[arg(long, env = "DFS_CERTS")]
        certs: PathBuf,
        #[arg(long, default_value = "default")]
        volume: String,
        /// Files per run.
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Concurrent tasks in the second run.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Local directory for the comparison (files are fsynced like dfs's durable creates).
        #[arg(long, default_value = "/tmp")]
        local: PathBuf,
    },
    /// Commands applied to a metadata store, per kind.
    Apply {
        /// Commands of each kind.
        #[arg(long, default_value_t = 3000)]
        count: usize,
        /// Volumes in the store besides the one written to.
        #[arg(long, default_value_t = 0)]
        other_volumes: usize,
        /// Where the store goes (a fresh directory is made in it).
        #[arg(long, default_value = "/tmp")]
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Cmd::Ec { block, blocks } => ec(block, blocks),
        Cmd::Apply {
            count,
            other_volumes,
            dir,
        } => apply::run(count, other_volumes, &dir),
        Cmd::Creates {
            meta,
            certs,
            volume,
            count,
            concurrency,
            local,
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(creates(&meta, certs, &volume, count, concurrency, &local))
        }
    }
}

fn ec(block: usize, blocks: usize) -> anyhow::Result<()> {
    let data: Vec<u8> = (0..block).map(|i| (i * 7 + i / 13) as u8).collect();
    println!("| policy | encode GB/s | reconstruct (m data shards lost) GB/s |");
    println!("|---|---|---|");
    for policy in ["4+2", "2+1", "6+3"] {
        let policy: EcPolicy = policy.parse()?;
        let codec = Erasure::new(policy)?;
        let start = Instant::now();
        let mut last = None;
        for _ in 0..blocks {
            last = Some(codec.encode(&data));
        }
        let encode = (block * blocks) as f64 / start.elapsed().as_secs_f64() / 1e9;
        let enc = last.expect("at least one block");
        let template: Vec<Option<Vec<u8>>> = (0..policy.total())
            .map(|i| Some(enc.shard(i).to_vec()))
            .collect();
        let mut elapsed = 0.0;
        for _ in 0..blocks {
            let mut shards = template.clone();
            for s in shards.iter_mut().take(policy.m()) {
                *s = None;
            }
            let t = Instant::now();
            codec.reconstruct_data(&mut shards)?;
            elapsed += t.elapsed().as_secs_f64();
        }
        let decode = (block * blocks) as f64 / elapsed / 1e9;
        println!("| {policy} | {encode:.1} | {decode:.1} |");
    }
    Ok(())
}

async fn creates(
    meta: &str,
    certs: PathBuf,
    volume: &str,
    count: usize,
    concurrency: usize,
    local: &std::path::Path,
) -> anyhow::Result<()> {
    let name = dfs_common::config::pick_identity(&certs, &["admin", "client"]);
    let identity = Identity::load(&tls_paths(Some(certs.clone()), name, None, None, None)?)?;
    let client = Client::connect(resolve_addr(meta)?, &identity, Default::default()).await?;
    let volume = client.volume(volume).await?;
    let stamp = std::process::id();
    let mut rows = Vec::new();
    for tasks in [1, concurrency] {
        let dir = client
            .mkdir(
                volume.root,
                &format!("bench-creates-{stamp}-{tasks}"),
                0o755,
                0,
                0,
            )
            .await?;
        let start = Instant::now();
        let mut handles = Vec::new();
        for t in 0..tasks {
            let client = client.clone();
            handles.push(tokio::spawn(async move {
                for i in (t..count).step_by(tasks) {
                    client
                        .make_node(dir.ino, &format!("f{i}"), FileKind::File, 0o644, 0, 0, 0)
                        .await?;
                }
                Ok::<_, dfs_common::FsError>(())
            }));
        }
        for h in handles {
            h.await??;
        }
        let dfs_rate = count as f64 / start.elapsed().as_secs_f64();
        let local_rate = local_creates(local, count, tasks, stamp)?;
        rows.push((tasks, dfs_rate, local_rate));
    }
    println!("| concurrent creators | dfs creates/s | local (fsync) creates/s | ratio |");
    println!("|---|---|---|---|");
    for (tasks, dfs_rate, local_rate) in rows {
        println!(
            "| {tasks} | {dfs_rate:.0} | {local_rate:.0} | {:.0}% |",
            100.0 * dfs_rate / local_rate
        );
    }
    Ok(())
}

/// Creates `count` empty files in a fresh local directory from `tasks` threads, fsyncing each
/// file and its directory (what a durable create costs on a local disk).
fn local_creates(
    base: &std::path::Path,
    count: usize,
    tasks: usize,
    stamp: u32,
) -> anyhow::Result<f64> {
    let dir = base.join(format!("dfs-bench-local-{stamp}-{tasks}"));
    std::fs::create_dir_all(&dir)?;
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..tasks {
            let dir = &dir;
            s.spawn(move || {
                let d = std::fs::File::open(dir).expect("open dir");
                for i in (t..count).step_by(tasks) {
                    let f = std::fs::File::create(dir.join(format!("f{i}"))).expect("create");
                    f.sync_all().expect("fsync file");
                    d.sync_all().expect("fsync dir");
                }
            });
        }
    });
    let rate = count as f64 / start.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&dir)?;
    Ok(rate)
}
