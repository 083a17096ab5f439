//! QUIC transport: every link in dfs is a quinn connection authenticated by the cluster CA.
//!
//! - [`tls`]: the cluster certificate authority, issuing certificates, loading identities.
//! - [`endpoint`]: tuned quinn endpoints (flow-control windows, socket buffers, timeouts).
//! - [`rpc`]: one long-lived connection per peer, one bidirectional stream per request.
//! - [`server`]: the accept loop that hands every stream to a service's handler.
//! - [`meta`]: the members of the metadata group, and finding the one that leads.
//! - [`chunks`]: connections to chunk servers and the shard transfers, for every party.
//! - [`stats`]: transport counters of the process's connections, for `/metrics`.

pub mod chunks;
pub mod endpoint;
pub mod meta;
pub mod rpc;
pub mod server;
pub mod stats;
pub mod tls;

pub use rpc::Peer;

use crate::error::FsError;
use std::net::{SocketAddr, ToSocketAddrs};

/// Resolves `HOST:PORT` to one socket address, preferring IPv4, without blocking the async
/// runtime: a literal address needs no lookup, a name is looked up on tokio's resolver.
pub async fn lookup(addr: &str) -> Result<SocketAddr, FsError> {
    if let Ok(socket) = addr.parse::<SocketAddr>() {
        return Ok(socket);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| FsError::invalid(format!("address {addr:?}: {e}")))?
        .collect();
    pick(addr, &addrs)
}

fn pick(addr: &str, addrs: &[SocketAddr]) -> Result<SocketAddr, FsError> {
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| FsError::invalid(format!("address {addr:?} resolves to nothing")))
}

/// Resolves `HOST:PORT` to one socket address, preferring IPv4. It may block on DNS: for
/// start-up code, not for the async runtime (use [`lookup`] there).
pub fn resolve_addr(addr: &str) -> Result<SocketAddr, FsError> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| FsError::invalid(format!("address {addr:?}: {e}")))?
        .collect();
    pick(addr, &addrs)
}
