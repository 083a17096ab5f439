//! `dfs repair status`, `dfs rebalance` and `dfs scrub start|status`: the self-healing of the
//! cluster.

use crate::output;
use clap::Subcommand;
use dfs_client::Client;
use dfs_common::proto::chunk::{ChunkReply, ChunkRequest, ScrubProgress};
use dfs_common::proto::meta::RepairProgress;
use std::io::IsTerminal;
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum RepairCommand {
    /// Shards rebuilt and left, bytes, rate and time left. With --watch, follows the repair
    /// (a progress bar on a terminal) until nothing is left.
    Status {
        #[arg(long)]
        watch: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ScrubCommand {
    /// Start a scrub pass on every chunk server that is up (servers already scrubbing go on).
    Start,
    /// Each server's scrub progress.
    Status,
}

/// One line: done, left, bytes, rate and ETA.
pub fn summary(p: &RepairProgress) -> String {
    let rate = if p.busy_ms > 0 {
        p.bytes_done as f64 * 1000.0 / p.busy_ms as f64
    } else {
        0.0
    };
    let eta = if p.shards_left == 0 {
        "none left".to_string()
    } else if rate > 0.0 && p.shards_done > 0 {
        let per_shard = p.bytes_done as f64 / p.shards_done as f64;
        format!("about {:.0}s left", per_shard * p.shards_left as f64 / rate)
    } else {
        "starting".to_string()
    };
    format!(
        "{} shards rebuilt ({}), {} left, {}/s, {}; {} failures; {} blocks collected",
        p.shards_done,
        output::size(p.bytes_done),
        p.shards_left,
        output::size(rate as u64),
        eta,
        p.failures,
        p.blocks_collected
    )
}

pub async fn run(client: &Client, cmd: RepairCommand, json: bool) -> anyhow::Result<()> {
    let RepairCommand::Status { watch } = cmd;
    let progress = client.repair_status().await?;
    if !watch {
        if json {
            return output::json(&progress);
        }
        println!("{}", summary(&progress));
        return Ok(());
    }
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(progress.shards_done + progress.shards_left);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} shards {msg}")
                .expect("valid template"),
        );
        bar
    });
    let mut progress = progress;
    loop {
        match &bar {
            Some(bar) => {
                bar.set_length(progress.shards_done + progress.shards_left);
                bar.set_position(progress.shards_done);
                bar.set_message(summary(&progress));
            }
            None if json => output::json(&progress)?,
            None => println!("{}", summary(&progress)),
        }
        if progress.shards_left == 0 {
            if let Some(bar) = bar {
                bar.finish();
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        progress = client.repair_status().await?;
    }
}

pub async fn scrub(client: &Client, cmd: ScrubCommand, json: bool) -> anyhow::Result<()> {
    let request = match cmd {
        ScrubCommand::Start => ChunkRequest::ScrubStart,
        ScrubCommand::Status => ChunkRequest::ScrubStatus,
    };
    let status = client.cluster_status().await?;
    let mut rows = Vec::new();
    let mut all = Vec::new();
    let mut failed = 0;
    for server in status.servers.iter().filter(|s| s.up) {
        match client.chunk_request(&server.addr, &request).await {
            Ok(ChunkReply::Scrub(p)) => {
                rows.push(scrub_row(&server.id.to_string(), &server.addr, &p));
                all.push((server.id, p));
            }
            Ok(other) => anyhow::bail!("unexpected reply from {}: {other:?}", server.addr),
            Err(e) => {
                failed += 1;
                eprintln!("dfs: chunk server {} ({}): {e}", server.id, server.addr);
            }
        }
    }
    if json {
        output::json(&all)?;
    } else {
        output::table(
            &[
                "SERVER", "ADDRESS", "STATE", "CHECKED", "BYTES", "CORRUPT", "ERRORS", "PASSES",
            ],
            &rows,
        );
    }
    anyhow::ensure!(failed == 0, "{failed} chunk servers did not answer");
    Ok(())
}

fn scrub_row(id: &str, addr: &str, p: &ScrubProgress) -> Vec<String> {
    vec![
        id.to_string(),
        addr.to_string(),
        if p.running { "running" } else { "idle" }.to_string(),
        format!("{}/{}", p.checked, p.total),
        output::size(p.bytes),
        p.corrupt.to_string(),
        p.errors.to_string(),
        p.passes.to_string(),
    ]
}

pub async fn rebalance(client: &Client, wait: bool) -> anyhow::Result<()> {
    client.rebalance().await?;
    if !wait {
        println!("rebalance started; `dfs node list` shows shards placed per server");
        return Ok(());
    }
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let status = client.cluster_status().await?;
        if !status.repair.rebalancing {
            println!("rebalanced:");
            super::cluster::server_table(&status.servers);
            return Ok(());
        }
    }
}
