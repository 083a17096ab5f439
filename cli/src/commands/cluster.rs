//! `dfs cluster status`: servers, their state and capacity, block health, repair progress.

use crate::output;
use clap::Subcommand;
use dfs_client::Client;
use dfs_common::proto::meta::ServerStatus;

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Chunk servers with their state, capacity and use; counts of volumes, inodes and blocks.
    Status,
}

pub async fn run(client: &Client, cmd: ClusterCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Status => {
            let status = client.cluster_status().await?;
            if json {
                return output::json(&status);
            }
            server_table(&status.servers);
            let up = status.servers.iter().filter(|s| s.up).count();
            println!(
                "\n{up}/{} servers up, {}, {}, {}",
                status.servers.len(),
                counted(status.volumes, "volume"),
                counted(status.inodes, "inode"),
                counted(status.blocks, "block")
            );
            let h = &status.health;
            println!(
                "blocks: {} healthy, {} degraded, {} unavailable, {} pending, {} garbage",
                h.healthy, h.degraded, h.unavailable, h.pending, h.garbage
            );
            println!("repair: {}", super::repair::summary(&status.repair));
            Ok(())
        }
    }
}

/// The chunk servers as a table: state, capacity, use, shards held and placed.
pub fn server_table(servers: &[ServerStatus]) {
    let rows: Vec<Vec<String>> = servers
        .iter()
        .map(|s| {
            vec![
                s.id.to_string(),
                s.addr.clone(),
                s.state().into(),
                output::size(s.capacity),
                output::size(s.used),
                s.shards.to_string(),
                s.placed.to_string(),
                s.last_seen_secs
                    .map_or("never".into(), |t| format!("{t}s ago")),
            ]
        })
        .collect();
    output::table(
        &[
            "SERVER", "ADDRESS", "STATE", "CAPACITY", "USED", "SHARDS", "PLACED", "SEEN",
        ],
        &rows,
    );
}

/// `n` things, in the singular for one.
fn counted(n: impl Into<u64>, thing: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}
