//! `dfs fsck VOLUME [--deep]`: checks a volume's namespace, layouts and shard placement page by
//! page at the metadata server; `--deep` also has every chunk server re-read each shard and
//! verify its checksums. Prints what is wrong and exits 1 if anything is.

use crate::output;
use dfs_client::Client;
use dfs_common::proto::chunk::ShardKey;
use dfs_common::proto::meta::FsckProblem;
use dfs_common::{BlockId, FsError};
use std::collections::HashSet;
use std::io::IsTerminal;

/// Shards verified at once during a deep check.
const VERIFY_PARALLEL: usize = 8;

#[derive(clap::Args, Debug)]
pub struct FsckArgs {
    pub volume: String,
    /// Also re-read every shard and verify its checksums (reads the whole volume once).
    #[arg(long)]
    pub deep: bool,
}

#[derive(serde::Serialize, Default)]
struct Report {
    volume: String,
    inodes: u64,
    files: u64,
    extents: u64,
    blocks: u64,
    shards_verified: u64,
    problems: Vec<FsckProblem>,
}

pub async fn run(client: &Client, args: FsckArgs, json: bool) -> anyhow::Result<()> {
    let volume = client.volume(&args.volume).await.map_err(|e| match e {
        FsError::NotFound => anyhow::anyhow!("no volume named {:?}", args.volume),
        other => other.into(),
    })?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(volume.used_inodes + 1);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} inodes {msg}")
                .expect("valid template"),
        );
        bar
    });
    let mut report = Report {
        volume: args.volume.clone(),
        ..Default::default()
    };
    let mut seen_blocks: HashSet<BlockId> = HashSet::new();
    let mut reported: HashSet<(u64, Option<BlockId>, String)> = HashSet::new();
    let mut from = None;
    loop {
        let page = client.fsck_page(&args.volume, from).await?;
        report.inodes += page.inodes;
        report.files += page.files;
        report.extents += page.extents;
        for p in page.problems {
            // A block shared by several files is reported once.
            let key = match p.block {
                Some(b) => (0, Some(b), p.what.clone()),
                None => (p.ino.0, None, p.what.clone()),
            };
            if reported.insert(key) {
                report.problems.push(p);
            }
        }
        let new_blocks: Vec<_> = page
            .blocks
            .into_iter()
            .filter(|b| seen_blocks.insert(b.block))
            .collect();
        report.blocks += new_blocks.len() as u64;
        if args.deep {
            let checks: Vec<_> = new_blocks
                .iter()
                .flat_map(|b| {
                    b.shards
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.up)
                        .map(|(i, s)| {
                            let key = ShardKey {
                                block: b.block,
                                index: i as u8,
                            };
                            (b.block, s.addr.clone(), key)
                        })
                })
                .collect();
            for chunk in checks.chunks(VERIFY_PARALLEL) {
                let results = futures_util::future::join_all(
                    chunk
                        .iter()
                        .map(|(_, addr, key)| client.verify_shard(addr, *key)),
                )
                .await;
                for ((block, addr, key), result) in chunk.iter().zip(results) {
                    report.shards_verified += 1;
                    if let Err(e) = result {
                        report.problems.push(FsckProblem {
                            ino: dfs_common::InodeId(0),
                            block: Some(*block),
                            degraded: false,
                            what: format!("shard {} of block {block} on {addr}: {e}", key.index),
                        });
                    }
                }
            }
        }
        if let Some(bar) = &bar {
            bar.set_position(report.inodes);
            bar.set_message(format!("{} problems", report.problems.len()));
        }
        match page.next {
            Some(next) => from = Some(next),
            None => break,
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let problems = report.problems.len();
    if json {
        output::json(&report)?;
    } else {
        for p in &report.problems {
            let level = if p.degraded { "degraded" } else { "error" };
            if p.ino.0 == 0 {
                println!("{level}: {}", p.what);
            } else {
                println!("{level}: inode {}: {}", p.ino, p.what);
            }
        }
        println!(
            "volume {}: {} inodes, {} files, {} extents, {} blocks{}; {}",
            report.volume,
            report.inodes,
            report.files,
            report.extents,
            report.blocks,
            if args.deep {
                format!(", {} shards verified", report.shards_verified)
            } else {
                String::new()
            },
            if problems == 0 {
                "no problems".to_string()
            } else {
                format!("{problems} problems")
            }
        );
    }
    if problems > 0 {
        anyhow::bail!("volume {}: {problems} problems found", report.volume);
    }
    Ok(())
}
