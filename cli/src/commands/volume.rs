//! `dfs volume`: create, list and describe volumes.

use crate::output;
use clap::Subcommand;
use dfs_client::Client;
use dfs_common::config::parse_size;
use dfs_common::EcPolicy;

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a volume.
    Create {
        name: String,
        /// Erasure-coding policy K+M: K data and M parity shards per block.
        #[arg(long, default_value = "4+2")]
        ec: String,
        /// Block size, e.g. 4M (64K to 64M).
        #[arg(long, default_value = "4M", value_parser = parse_size)]
        block_size: u64,
    },
    /// List volumes.
    List,
    /// A volume's policy, block size and what it holds: files, bytes, blocks, degraded blocks.
    Info { name: String },
}

/// `dfs volume info --json` prints this.
#[derive(serde::Serialize)]
struct VolumeReport {
    #[serde(flatten)]
    volume: dfs_common::proto::meta::VolumeInfo,
    usage: dfs_common::proto::meta::VolumeUsage,
}

pub async fn run(client: &Client, cmd: VolumeCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        VolumeCommand::Create {
            name,
            ec,
            block_size,
        } => {
            let policy: EcPolicy = ec.parse()?;
            let live = client
                .cluster_status()
                .await?
                .servers
                .iter()
                .filter(|s| s.up)
                .count();
            if policy.total() > live {
                anyhow::bail!(
                    "policy {policy} needs {} chunk servers, only {live} are up",
                    policy.total()
                );
            }
            let volume = client
                .create_volume(&name, policy, block_size)
                .await
                .map_err(|e| match e {
                    dfs_common::FsError::Exists => {
                        anyhow::anyhow!("volume {name:?} already exists")
                    }
                    other => other.into(),
                })?;
            if json {
                output::json(&volume)
            } else {
                println!(
                    "created volume {} (ec {}, block size {})",
                    volume.name,
                    volume.policy,
                    output::size(volume.block_size)
                );
                Ok(())
            }
        }
        VolumeCommand::Info { name } => {
            let not_found = |e: dfs_common::FsError| match e {
                dfs_common::FsError::NotFound => anyhow::anyhow!("no volume named {name:?}"),
                other => other.into(),
            };
            let volume = client.volume(&name).await.map_err(not_found)?;
            let usage = client.volume_usage(&name).await.map_err(not_found)?;
            if json {
                return output::json(&VolumeReport { volume, usage });
            }
            let stored =
                usage.block_bytes / volume.policy.k() as u64 * volume.policy.total() as u64;
            output::table(
                &["FIELD", "VALUE"],
                &[
                    vec!["name".into(), volume.name.clone()],
                    vec!["id".into(), volume.id.to_string()],
                    vec!["erasure coding".into(), volume.policy.to_string()],
                    vec!["block size".into(), output::size(volume.block_size)],
                    vec!["files".into(), usage.files.to_string()],
                    vec!["directories".into(), usage.directories.to_string()],
                    vec!["other inodes".into(), usage.other.to_string()],
                    vec!["file bytes".into(), output::size(usage.bytes)],
                    vec!["blocks".into(), usage.blocks.to_string()],
                    vec!["stored (with parity)".into(), output::size(stored)],
                    vec!["degraded blocks".into(), usage.degraded_blocks.to_string()],
                ],
            );
            Ok(())
        }
        VolumeCommand::List => {
            let volumes = client.list_volumes().await?;
            if json {
                return output::json(&volumes);
            }
            let rows: Vec<Vec<String>> = volumes
                .iter()
                .map(|v| {
                    vec![
                        v.name.clone(),
                        v.policy.to_string(),
                        output::size(v.block_size),
                        v.id.to_string(),
                    ]
                })
                .collect();
            output::table(&["NAME", "EC", "BLOCK", "ID"], &rows);
            Ok(())
        }
    }
}
