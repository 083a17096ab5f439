//! `dfs meta status`: the members of the metadata group and where their logs stand.

use crate::output;
use clap::Subcommand;
use dfs_client::Client;

#[derive(Subcommand, Debug)]
pub enum MetaCommand {
    /// Each member of the metadata group: address, role, term, last log entry, last entry
    /// applied, and how far it is behind the leader.
    Status,
}

pub async fn run(client: &Client, cmd: MetaCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        MetaCommand::Status => {
            let members = client.meta_status().await?;
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
    }
}
