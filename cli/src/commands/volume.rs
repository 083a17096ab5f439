//! `dfs volume`: create, list, describe, change and delete volumes.

use crate::output;
use clap::Subcommand;
use dfs_client::Client;
use dfs_common::config::parse_size;
use dfs_common::proto::meta::{VolumeChange, VolumeInfo, VolumeLimits};
use dfs_common::{EcPolicy, FsError};

/// A quota argument: a number (with a unit for bytes), or `none` for no limit.
#[derive(Clone, Copy, Debug)]
pub struct Limit(Option<u64>);

fn parse_limit(s: &str, size: bool) -> Result<Limit, String> {
    if s.eq_ignore_ascii_case("none") || s.eq_ignore_ascii_case("unlimited") {
        return Ok(Limit(None));
    }
    if size {
        parse_size(s).map(|n| Limit(Some(n)))
    } else {
        s.parse()
            .map(|n| Limit(Some(n)))
            .map_err(|_| format!("bad count {s:?}: expected a whole number or 'none'"))
    }
}

fn parse_byte_limit(s: &str) -> Result<Limit, String> {
    parse_limit(s, true)
}

fn parse_inode_limit(s: &str) -> Result<Limit, String> {
    parse_limit(s, false)
}

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
        /// Most bytes of file data (sizes as `du --apparent-size` counts), e.g. 100G
        /// [default: none].
        #[arg(long, value_parser = parse_byte_limit)]
        quota_bytes: Option<Limit>,
        /// Most files, directories and other inodes [default: none].
        #[arg(long, value_parser = parse_inode_limit)]
        quota_inodes: Option<Limit>,
        /// With `false`, blocks are written only with all k+m shards, so writes fail while
        /// fewer chunk servers are up; with `true` they go out with at least k+1 shards and
        /// are repaired later [default: true].
        #[arg(long)]
        degraded_writes: Option<bool>,
    },
    /// List volumes with their usage and quotas.
    List,
    /// A volume's policy, limits and what it holds: files, bytes, blocks, degraded blocks.
    Info { name: String },
    /// Change a volume's quotas (a size or count, or `none`) or read-only flag.
    Set {
        name: String,
        #[arg(long, value_parser = parse_byte_limit)]
        quota_bytes: Option<Limit>,
        #[arg(long, value_parser = parse_inode_limit)]
        quota_inodes: Option<Limit>,
        /// `true` makes every change to the volume fail with EROFS.
        #[arg(long)]
        read_only: Option<bool>,
        /// Whether blocks may be written with shards missing while servers are down.
        #[arg(long)]
        degraded_writes: Option<bool>,
    },
    /// Delete a volume. Its space comes back through garbage collection.
    Delete {
        name: String,
        /// Delete it with everything in it (otherwise only an empty volume is deleted).
        #[arg(long)]
        force: bool,
    },
}

/// `quota (used%)` or `none`.
fn limit_cell(used: u64, quota: Option<u64>, fmt: fn(u64) -> String) -> String {
    match quota {
        Some(q) => format!(
            "{} of {} ({:.0}%)",
            fmt(used),
            fmt(q),
            used as f64 * 100.0 / q.max(1) as f64
        ),
        None => format!("{} (no quota)", fmt(used)),
    }
}

fn count(n: u64) -> String {
    n.to_string()
}

/// Maps "no such volume" to a message naming it.
fn named(name: &str) -> impl Fn(FsError) -> anyhow::Error + '_ {
    move |e| match e {
        FsError::NotFound => anyhow::anyhow!("no volume named {name:?}"),
        other => other.into(),
    }
}

fn print_limits(v: &VolumeInfo) {
    println!(
        "volume {}: bytes {}, inodes {}, {}",
        v.name,
        limit_cell(v.used_bytes, v.limits.quota_bytes, output::size),
        limit_cell(v.used_inodes, v.limits.quota_inodes, count),
        if v.limits.read_only {
            "read-only"
        } else {
            "read-write"
        }
    );
}

/// `dfs volume info --json` prints this.
#[derive(serde::Serialize)]
struct VolumeReport {
    #[serde(flatten)]
    volume: VolumeInfo,
    usage: dfs_common::proto::meta::VolumeUsage,
}

pub async fn run(client: &Client, cmd: VolumeCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        VolumeCommand::Create {
            name,
            ec,
            block_size,
            quota_bytes,
            quota_inodes,
            degraded_writes,
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
            let limits = VolumeLimits {
                quota_bytes: quota_bytes.and_then(|l| l.0),
                quota_inodes: quota_inodes.and_then(|l| l.0),
                read_only: false,
                require_full_writes: degraded_writes == Some(false),
            };
            let volume = client
                .create_volume_with(&name, policy, block_size, limits)
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
            let volume = client.volume(&name).await.map_err(named(&name))?;
            let usage = client.volume_usage(&name).await.map_err(named(&name))?;
            if json {
                return output::json(&VolumeReport { volume, usage });
            }
            // Blocks kept inline are stored with the metadata, without parity.
            let coded = usage.block_bytes.saturating_sub(usage.inline_bytes);
            let stored = coded / volume.policy.k() as u64 * volume.policy.total() as u64;
            output::table(
                &["FIELD", "VALUE"],
                &[
                    vec!["name".into(), volume.name.clone()],
                    vec!["id".into(), volume.id.to_string()],
                    vec!["erasure coding".into(), volume.policy.to_string()],
                    vec!["block size".into(), output::size(volume.block_size)],
                    vec![
                        "bytes used".into(),
                        limit_cell(volume.used_bytes, volume.limits.quota_bytes, output::size),
                    ],
                    vec![
                        "inodes used".into(),
                        limit_cell(volume.used_inodes, volume.limits.quota_inodes, count),
                    ],
                    vec!["read-only".into(), volume.limits.read_only.to_string()],
                    vec![
                        "degraded writes".into(),
                        (!volume.limits.require_full_writes).to_string(),
                    ],
                    vec!["files".into(), usage.files.to_string()],
                    vec!["directories".into(), usage.directories.to_string()],
                    vec!["other inodes".into(), usage.other.to_string()],
                    vec!["file bytes".into(), output::size(usage.bytes)],
                    vec!["blocks".into(), usage.blocks.to_string()],
                    vec!["stored (with parity)".into(), output::size(stored)],
                    vec![
                        "kept inline".into(),
                        format!(
                            "{} in {} blocks",
                            output::size(usage.inline_bytes),
                            usage.inline_blocks
                        ),
                    ],
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
                    let quota = |q: Option<u64>, fmt: fn(u64) -> String| q.map_or("-".into(), fmt);
                    vec![
                        v.name.clone(),
                        v.policy.to_string(),
                        output::size(v.block_size),
                        output::size(v.used_bytes),
                        quota(v.limits.quota_bytes, output::size),
                        v.used_inodes.to_string(),
                        quota(v.limits.quota_inodes, count),
                        if v.limits.read_only { "ro" } else { "rw" }.into(),
                        v.id.to_string(),
                    ]
                })
                .collect();
            output::table(
                &[
                    "NAME", "EC", "BLOCK", "USED", "QUOTA", "INODES", "IQUOTA", "MODE", "ID",
                ],
                &rows,
            );
            Ok(())
        }
        VolumeCommand::Set {
            name,
            quota_bytes,
            quota_inodes,
            read_only,
            degraded_writes,
        } => {
            let change = VolumeChange {
                quota_bytes: quota_bytes.map(|l| l.0),
                quota_inodes: quota_inodes.map(|l| l.0),
                read_only,
                require_full_writes: degraded_writes.map(|d| !d),
            };
            if change == VolumeChange::default() {
                anyhow::bail!(
                    "nothing to change: pass --quota-bytes, --quota-inodes, --read-only or --degraded-writes"
                );
            }
            let volume = client
                .set_volume(&name, change)
                .await
                .map_err(named(&name))?;
            if json {
                return output::json(&volume);
            }
            print_limits(&volume);
            Ok(())
        }
        VolumeCommand::Delete { name, force } => {
            let volume = client.volume(&name).await.map_err(named(&name))?;
            client
                .delete_volume(&name, force)
                .await
                .map_err(|e| match e {
                    FsError::NotEmpty => anyhow::anyhow!(
                        "volume {name:?} is not empty ({} inodes, {}); pass --force to delete it with everything in it",
                        volume.used_inodes,
                        output::size(volume.used_bytes)
                    ),
                    other => named(&name)(other),
                })?;
            if json {
                return output::json(&serde_json::json!({ "deleted": name }));
            }
            println!(
                "deleted volume {name} ({} inodes, {} of files; their space is freed by garbage collection)",
                volume.used_inodes,
                output::size(volume.used_bytes)
            );
            Ok(())
        }
    }
}
