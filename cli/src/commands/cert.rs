//! `dfs cert`: the cluster's certificate authority. `init` makes a CA plus a server and an
//! administrator certificate (enough for a dev cluster); `issue` adds more from an existing CA.
//! Client certificates limited to some volumes come from `dfs client add`.

use anyhow::{bail, Context};
use clap::Subcommand;
use dfs_common::net::tls::{generate_ca, issue, read_pair, write_pair, Role};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Create a new cluster CA in DIR with `meta`, `server` and `admin` certificates.
    Init {
        /// Directory to write ca.pem, ca.key, meta.pem, meta.key (the metadata server),
        /// server.pem, server.key (chunk servers), admin.pem, admin.key.
        #[arg(long)]
        dir: PathBuf,
        /// Extra host names or IP addresses for the server certificate.
        #[arg(long = "san")]
        sans: Vec<String>,
    },
    /// Issue a certificate from the CA in DIR, written as DIR/NAME.pem and DIR/NAME.key.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
        /// A chunk server's certificate instead of an administrator's.
        #[arg(long, conflicts_with = "meta_server")]
        server: bool,
        /// A metadata server's certificate (chunk servers take deletes and rebuilds only
        /// from it; members of a metadata group take Raft messages only from it).
        #[arg(long)]
        meta_server: bool,
        /// Extra host names or IP addresses (server certificates).
        #[arg(long = "san")]
        sans: Vec<String>,
    },
}

pub fn run(cmd: &CertCommand) -> anyhow::Result<()> {
    match cmd {
        CertCommand::Init { dir, sans } => {
            if dir.join("ca.key").exists() || dir.join("ca.pem").exists() {
                bail!(
                    "{} already holds a CA; refusing to replace it",
                    dir.display()
                );
            }
            let ca = generate_ca()?;
            write_pair(dir, "ca", &ca)?;
            let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
            names.extend(sans.iter().cloned());
            write_pair(dir, "meta", &issue(&ca, "dfs-meta", Role::Meta, &names)?)?;
            write_pair(
                dir,
                "server",
                &issue(&ca, "dfs-server", Role::Server, &names)?,
            )?;
            write_pair(dir, "admin", &issue(&ca, "dfs-admin", Role::Admin, &[])?)?;
            println!(
                "created CA and meta/server/admin certificates in {}",
                dir.display()
            );
            Ok(())
        }
        CertCommand::Issue {
            dir,
            name,
            server,
            meta_server,
            sans,
        } => {
            if name.is_empty() || name.contains('/') || name == "ca" {
                bail!("invalid certificate name {name:?}");
            }
            let ca = read_pair(dir, "ca").context("reading the CA (ca.pem and ca.key)")?;
            let (role, what) = match (*server, *meta_server) {
                (_, true) => (Role::Meta, "metadata server"),
                (true, false) => (Role::Server, "chunk server"),
                (false, false) => (Role::Admin, "administrator"),
            };
            write_pair(dir, name, &issue(&ca, name, role, sans)?)?;
            println!("issued {what} certificate {}/{name}.pem", dir.display());
            Ok(())
        }
    }
}
