//! One module per noun; `run` connects (when the command needs a cluster) and dispatches.

pub mod bench;
pub mod cert;
pub mod client;
pub mod cluster;
pub mod files;
pub mod fsck;
pub mod meta;
pub mod node;
pub mod repair;
pub mod volume;

use crate::{Cli, Command};
use anyhow::Context;
use dfs_client::client::ClientOptions;
use dfs_client::Client;
use dfs_common::config::{pick_identity, tls_paths};
use dfs_common::net::tls::Identity;

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Cert(cmd) = &cli.command {
        return cert::run(cmd);
    }
    if let Command::Bench(args) = &cli.command {
        // A directory needs no cluster.
        let client = match args.path {
            Some(_) => None,
            None => Some(connect(&cli).await?),
        };
        let Command::Bench(args) = cli.command else {
            unreachable!("matched above")
        };
        return bench::run(client.as_ref(), args, cli.json).await;
    }
    let client = connect(&cli).await?;
    let json = cli.json;
    match cli.command {
        Command::Cert(_) | Command::Bench(_) => unreachable!("handled above"),
        Command::Volume(cmd) => volume::run(&client, cmd, json).await,
        Command::Cluster(cmd) => cluster::run(&client, cmd, json).await,
        Command::Meta(cmd) => meta::run(&client, cmd, json).await,
        Command::Repair(cmd) => repair::run(&client, cmd, json).await,
        Command::Node(cmd) => node::run(&client, cmd, json).await,
        Command::Client(cmd) => client::run(&client, cmd, cli.certs.as_deref(), json).await,
        Command::Fsck(args) => fsck::run(&client, args, json).await,
        Command::Rebalance { wait } => repair::rebalance(&client, wait).await,
        Command::Scrub(cmd) => repair::scrub(&client, cmd, json).await,
        Command::Put(args) => files::put(&client, args, json).await,
        Command::Get(args) => files::get(&client, args, json).await,
        Command::Ls(args) => files::ls(&client, args, json).await,
        Command::Stat(args) => files::stat(&client, args, json).await,
        Command::Rm(args) => files::rm(&client, args).await,
        Command::Mkdir(args) => files::mkdir(&client, args).await,
    }
}

async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    let meta = cli
        .meta
        .as_deref()
        .context("no metadata server given: pass --meta HOST:PORT or set DFS_META")?;
    let members = dfs_common::net::meta::resolve_list(meta)?;
    let name = match (&cli.identity, &cli.certs) {
        (Some(name), _) => name.as_str(),
        (None, Some(dir)) => pick_identity(dir, &["admin", "client"]),
        (None, None) => "admin",
    };
    let tls = tls_paths(cli.certs.clone(), name, None, None, None)?;
    let identity = Identity::load(&tls)?;
    // A put is a burst of uploads: placements fetched ahead let each start at once.
    let options = ClientOptions {
        spare_blocks: dfs_client::client::spare_blocks::DEFAULT_SPARE_BLOCKS,
        ..ClientOptions::default()
    };
    Client::connect_group(&members, &identity, options)
        .await
        .with_context(|| format!("cannot reach the metadata server at {meta}"))
}
