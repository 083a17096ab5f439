//! `dfs node list|drain|remove`: chunk servers joining and leaving. A new server joins by
//! starting; one leaves by draining (every shard moved off, reads working throughout), stopping
//! it, and removing it.

use crate::output;
use clap::Subcommand;
use dfs_client::Client;
use dfs_common::ServerId;
use std::io::IsTerminal;
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Chunk servers with their state, capacity, use and placed shards.
    List,
    /// Move every shard off a server; placement avoids it from now on.
    Drain {
        /// Server id (see `dfs node list`).
        id: u64,
        /// Stop draining instead (placement may use the server again).
        #[arg(long)]
        cancel: bool,
        /// Wait until the server holds no placed shard, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Forget a server that is stopped and holds no placed shard (drain it first).
    Remove {
        /// Server id (see `dfs node list`).
        id: u64,
    },
}

pub async fn run(client: &Client, cmd: NodeCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::List => {
            let status = client.cluster_status().await?;
            if json {
                return output::json(&status.servers);
            }
            super::cluster::server_table(&status.servers);
            Ok(())
        }
        NodeCommand::Drain { id, cancel, wait } => {
            let server = known(client, id).await?;
            client.drain_server(server, !cancel).await?;
            if cancel {
                println!("server {id}: drain cancelled");
                return Ok(());
            }
            if !wait {
                println!("server {id}: draining; `dfs node list` shows the shards left (PLACED)");
                return Ok(());
            }
            wait_drained(client, server).await
        }
        NodeCommand::Remove { id } => {
            let server = known(client, id).await?;
            client.remove_server(server).await.map_err(|e| match e {
                dfs_common::FsError::NotEmpty => anyhow::anyhow!(
                    "server {id} still has shards placed on it: drain it first (`dfs node drain {id} --wait`)"
                ),
                other => other.into(),
            })?;
            println!("server {id} removed");
            Ok(())
        }
    }
}

/// The server `id`, if the cluster knows it.
async fn known(client: &Client, id: u64) -> anyhow::Result<ServerId> {
    let status = client.cluster_status().await?;
    anyhow::ensure!(
        status.servers.iter().any(|s| s.id.0 == id),
        "no chunk server {id} (see `dfs node list`)"
    );
    Ok(ServerId(id))
}

async fn wait_drained(client: &Client, server: ServerId) -> anyhow::Result<()> {
    let bar = std::io::stderr()
        .is_terminal()
        .then(indicatif::ProgressBar::new_spinner);
    // The first scan after the drain began has to run before the count means anything.
    let first = client.repair_status().await?.scans;
    loop {
        let status = client.cluster_status().await?;
        let left = status
            .servers
            .iter()
            .find(|s| s.id == server)
            .map_or(0, |s| s.placed);
        if status.repair.scans > first && left == 0 {
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            println!("server {server}: drained, no shards left; stop it, then `dfs node remove {server}`");
            return Ok(());
        }
        if let Some(bar) = &bar {
            bar.set_message(format!("server {server}: {left} shards left to move"));
            bar.tick();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
