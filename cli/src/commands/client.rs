//! `dfs client add|list|revoke`: certificates for machines that may use only some volumes.
//!
//! `add` issues a certificate from the cluster CA (it needs `ca.key` in the certificate
//! directory) and registers its fingerprint with the metadata server together with the volumes
//! it may use. The metadata server and every chunk server refuse anything else it asks for,
//! and refuse it entirely once revoked.

use crate::output;
use anyhow::{bail, Context};
use clap::Subcommand;
use dfs_client::Client;
use dfs_common::net::tls::{issue, read_pair, write_pair, Fingerprint, PemPair, Role};
use dfs_common::FsError;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Issue a client certificate limited to the given volumes, and register it.
    Add {
        /// A name for the client (letters, digits, '-', '_', '.').
        name: String,
        /// A volume it may use (repeat for several).
        #[arg(long = "volume", required = true)]
        volumes: Vec<String>,
        /// Read and write the volumes.
        #[arg(long, conflicts_with = "ro", required_unless_present = "ro")]
        rw: bool,
        /// Only read them: every change fails with EROFS.
        #[arg(long)]
        ro: bool,
        /// Write a directory ready to copy to the client machine (ca.pem, client.pem,
        /// client.key) instead of NAME.pem and NAME.key in the certificate directory.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Registered client certificates and their volumes.
    List,
    /// Refuse a client certificate from now on.
    Revoke { name: String },
}

pub async fn run(
    client: &Client,
    cmd: ClientCommand,
    certs: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Add {
            name,
            volumes,
            rw,
            ro: _,
            out,
        } => {
            let certs = certs.context("no certificate directory: pass --certs DIR")?;
            let ca = read_pair(certs, "ca")
                .context("issuing needs the CA's ca.pem and ca.key in --certs")?;
            let pair = issue(&ca, &name, Role::Client, &[])?;
            let fingerprint = Fingerprint::of_pem(&pair.cert_pem)?;
            let grants = volumes.iter().map(|v| (v.clone(), rw)).collect();
            client
                .add_client(&name, fingerprint.0, grants)
                .await
                .map_err(|e| match e {
                    FsError::Exists => anyhow::anyhow!("a client named {name:?} already exists"),
                    other => other.into(),
                })?;
            let written = write_certificate(certs, &ca, &name, &pair, out.as_deref())?;
            if json {
                return output::json(&serde_json::json!({
                    "name": name,
                    "fingerprint": fingerprint.to_string(),
                    "volumes": volumes,
                    "write": rw,
                    "certificate": written,
                }));
            }
            println!(
                "client {name} may {} {}; certificate {}",
                if rw { "read and write" } else { "read" },
                volumes.join(", "),
                written.display()
            );
            Ok(())
        }
        ClientCommand::List => {
            let clients = client.list_clients().await?;
            if json {
                return output::json(&clients);
            }
            let rows: Vec<Vec<String>> = clients
                .iter()
                .map(|c| {
                    let volumes: Vec<String> = c
                        .volumes
                        .iter()
                        .map(|(v, w)| format!("{v}:{}", if *w { "rw" } else { "ro" }))
                        .collect();
                    vec![
                        c.name.clone(),
                        volumes.join(","),
                        if c.revoked { "revoked" } else { "active" }.into(),
                        c.fingerprint[..16].to_string(),
                    ]
                })
                .collect();
            output::table(&["NAME", "VOLUMES", "STATE", "FINGERPRINT"], &rows);
            Ok(())
        }
        ClientCommand::Revoke { name } => {
            client.revoke_client(&name).await.map_err(|e| match e {
                FsError::NotFound => anyhow::anyhow!("no client named {name:?}"),
                other => other.into(),
            })?;
            println!("client {name} revoked: it is refused from its next request on");
            Ok(())
        }
    }
}

/// Writes the new certificate; returns the certificate file's path.
fn write_certificate(
    certs: &Path,
    ca: &PemPair,
    name: &str,
    pair: &PemPair,
    out: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    match out {
        None => {
            write_pair(certs, name, pair)?;
            Ok(certs.join(format!("{name}.pem")))
        }
        Some(dir) => {
            if dir.join("client.pem").exists() {
                bail!("{} already holds a client certificate", dir.display());
            }
            std::fs::create_dir_all(dir)?;
            std::fs::write(dir.join("ca.pem"), &ca.cert_pem)?;
            write_pair(dir, "client", pair)?;
            Ok(dir.join("client.pem"))
        }
    }
}
