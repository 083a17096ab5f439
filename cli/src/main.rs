//! `dfs`: the admin and file command-line tool. Human tables by default, `--json` for scripts;
//! exit code 0 on success, 1 on failure (with a one-line message), 2 on bad usage.

mod commands;
mod output;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// dfs: manage a cluster and move files in and out of it.
#[derive(Parser, Debug)]
#[command(version)]
pub struct Cli {
    /// Metadata server address, HOST:PORT; for a group of several, every member's,
    /// comma-separated.
    #[arg(long, global = true, env = "DFS_META")]
    meta: Option<String>,
    /// Certificate directory with ca.pem and the certificate to use (see --identity).
    #[arg(long, global = true, env = "DFS_CERTS")]
    certs: Option<PathBuf>,
    /// Which certificate of the directory to use: NAME.pem and NAME.key [default: admin, or
    /// client if there is no admin.pem].
    #[arg(long, global = true, env = "DFS_IDENTITY")]
    identity: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create and issue certificates of the cluster's own CA.
    #[command(subcommand)]
    Cert(commands::cert::CertCommand),
    /// Create and list volumes.
    #[command(subcommand)]
    Volume(commands::volume::VolumeCommand),
    /// Cluster-wide state.
    #[command(subcommand)]
    Cluster(commands::cluster::ClusterCommand),
    /// The metadata group: its members and their logs.
    #[command(subcommand)]
    Meta(commands::meta::MetaCommand),
    /// Chunk servers: list, drain (move every shard off), remove.
    #[command(subcommand)]
    Node(commands::node::NodeCommand),
    /// Quick benchmark of a volume, or of a directory (a mount, or local for comparison).
    Bench(commands::bench::BenchArgs),
    /// Check a volume: entries, extents, blocks and shard placement (--deep: checksums too).
    Fsck(commands::fsck::FsckArgs),
    /// Client certificates limited to some volumes: add, list, revoke.
    #[command(subcommand)]
    Client(commands::client::ClientCommand),
    /// Progress of the automatic repair of lost shards.
    #[command(subcommand)]
    Repair(commands::repair::RepairCommand),
    /// Move shards toward even counts per chunk server (after adding servers), at the repair
    /// rate. With --wait, follows it until the counts are even.
    Rebalance {
        #[arg(long)]
        wait: bool,
    },
    /// Re-verify every shard's checksums on every chunk server.
    #[command(subcommand)]
    Scrub(commands::repair::ScrubCommand),
    /// Copy a local file into the cluster: `dfs put LOCAL VOLUME:/path`.
    Put(commands::files::PutArgs),
    /// Copy a file out of the cluster: `dfs get VOLUME:/path LOCAL`.
    Get(commands::files::GetArgs),
    /// List a directory: `dfs ls VOLUME:/path`.
    Ls(commands::files::PathArgs),
    /// Show a file's attributes: `dfs stat VOLUME:/path`.
    Stat(commands::files::PathArgs),
    /// Remove a file or an empty directory: `dfs rm VOLUME:/path`.
    Rm(commands::files::RmArgs),
    /// Create a directory: `dfs mkdir [-p] VOLUME:/path`.
    Mkdir(commands::files::MkdirArgs),
}

fn main() -> ExitCode {
    dfs_common::memory::keep_freed_memory();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dfs: error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dfs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
