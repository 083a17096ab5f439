//! `dfs meta`: the members of the metadata group, where their logs stand, and changes of
//! membership.

use crate::output;
use clap::Subcommand;
use dfs_client::Client;

#[derive(Subcommand, Debug)]
pub enum MetaCommand {
    /// Each member of the metadata group: address, role, term, last log entry, last entry
    /// applied, and how far it is behind the leader.
    Status,
    /// Adds the metadata server at ADDR (HOST:PORT, started with `--join` on an empty data
    /// directory) to the group. It catches up with the log as a learner, then votes; the
    /// command returns when it votes.
    Add {
        /// The new member's address, as the other members and clients will reach it.
        addr: String,
    },
    /// Removes member ID (see `dfs meta status`) from the group.
    Remove {
        /// The member's id.
        id: u64,
    },
    /// A digest of the replicated state of the member --meta names first, and the log entry
    /// it has applied: members that applied the same entries must show the same digest.
    Digest,
}

/// What `dfs meta digest --json` prints.
#[derive(serde::Serialize)]
struct Digest {
    member: u64,
    applied: u64,
    digest: String,
}

pub async fn run(client: &Client, cmd: MetaCommand, json: bool) -> anyhow::Result<()> {
    let members = match cmd {
        MetaCommand::Digest => {
            let (member, applied, digest) = client.meta_digest().await?;
            let digest = Digest {
                member,
                applied,
                digest: hex::encode(digest),
            };
            if json {
                return output::json(&digest);
            }
            println!(
                "member {} applied {} digest {}",
                digest.member, digest.applied, digest.digest
            );
            return Ok(());
        }
        MetaCommand::Status => client.meta_status().await?,
        MetaCommand::Add { addr } => client.meta_add(&addr).await?,
        MetaCommand::Remove { id } => client.meta_remove(id).await?,
    };
    show(&members, json)
}

fn show(members: &[dfs_common::proto::meta::MetaMember], json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(&members);
    }
    let known = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.addr.clone(),
                if m.answering {
                    format!("{} (answering)", m.role)
                } else {
                    m.role.clone()
                },
                known(m.term),
                known(m.last_index),
                known(m.applied_index),
                known(m.lag),
            ]
        })
        .collect();
    output::table(
        &[
            "MEMBER", "ADDRESS", "ROLE", "TERM", "LAST", "APPLIED", "LAG",
        ],
        &rows,
    );
    Ok(())
}
