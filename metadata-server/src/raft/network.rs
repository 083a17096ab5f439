//! The transport between members of the metadata group: Raft's messages over the same QUIC
//! endpoint and protocol as every other metadata call, as a `Peer` request whose body is the
//! message in bincode. Only a certificate with the metadata role may send one.
//!
//! A message larger than [`MAX_MESSAGE`] is never sent: appends are split by asking Raft for
//! fewer entries, snapshots already travel in chunks.

use super::{MemberId, TypeConfig};
use bytes::Bytes;
use dfs_common::net::endpoint::Endpoint;
use dfs_common::net::rpc::read_body_into;
use dfs_common::net::Peer;
use dfs_common::proto::meta::{req, MetaCall, PeerReply, PeerRpc};
use dfs_common::{FsError, FsResult};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

/// The largest message between members, either way. A snapshot chunk is a few MiB, and the
/// committer's entries at most 4 MiB each.
pub const MAX_MESSAGE: usize = 64 << 20;
/// Bound on a message whose caller gives no deadline (joining a member).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Encodes a message between members.
pub fn encode<T: Serialize>(value: &T) -> FsResult<Vec<u8>> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| FsError::protocol(format!("encoding a metadata peer message: {e}")))
}

/// Decodes a message between members, refusing one over [`MAX_MESSAGE`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> FsResult<T> {
    let config = bincode::config::standard().with_limit::<MAX_MESSAGE>();
    match bincode::serde::decode_from_slice(bytes, config) {
        Ok((value, used)) if used == bytes.len() => Ok(value),
        Ok(_) => Err(FsError::protocol(
            "metadata peer message has trailing bytes",
        )),
        Err(e) => Err(FsError::protocol(format!(
            "malformed metadata peer message: {e}"
        ))),
    }
}

/// Sends one message to the member at `peer` and returns its reply's bytes.
pub async fn send(peer: &Peer, rpc: PeerRpc, message: Vec<u8>) -> FsResult<Vec<u8>> {
    let request = MetaCall::untracked(
        req::Peer {
            rpc,
            len: message.len() as u64,
        }
        .into(),
    );
    let (PeerReply { len }, mut stream) = peer
        .call(&request, Some(Bytes::from(message)), 4096)
        .await?;
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_MESSAGE)
        .ok_or_else(|| FsError::TooBig(format!("a {len}-byte peer reply")))?;
    let mut bytes = vec![0u8; len];
    read_body_into(&mut stream, &mut bytes, peer.timeout()).await?;
    Ok(bytes)
}

/// Connects members to each other over the server's own endpoint.
pub struct Peers {
    pub endpoint: Endpoint,
}

/// The connection to one member.
pub struct PeerLink {
    target: MemberId,
    addr: String,
    endpoint: Endpoint,
    /// Made at the first message: resolving the address may wait on DNS.
    peer: Option<Peer>,
}

impl RaftNetworkFactory<TypeConfig> for Peers {
    type Network = PeerLink;

    async fn new_client(&mut self, target: MemberId, node: &BasicNode) -> PeerLink {
        PeerLink {
            target,
            addr: node.addr.clone(),
            endpoint: self.endpoint.clone(),
            peer: None,
        }
    }
}

type Rpc<T, E = openraft::error::Infallible> =
    Result<T, RPCError<MemberId, BasicNode, RaftError<MemberId, E>>>;

impl PeerLink {
    /// Sends `message` and decodes the member's answer: its reply, or the Raft error it
    /// returned. Transport failures make the member unreachable for now.
    async fn exchange<Q, R, E>(
        &mut self,
        rpc: PeerRpc,
        message: &Q,
        option: &RPCOption,
    ) -> Rpc<R, E>
    where
        Q: Serialize,
        R: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let bytes = encode(message).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if bytes.len() > MAX_MESSAGE {
            let e = FsError::TooBig(format!("a {}-byte peer message", bytes.len()));
            return Err(RPCError::Network(NetworkError::new(&e)));
        }
        let peer = match &self.peer {
            Some(peer) => peer,
            None => {
                let addr = dfs_common::net::lookup(&self.addr)
                    .await
                    .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
                self.peer
                    .insert(Peer::new(self.endpoint.clone(), addr).with_timeout(option.hard_ttl()))
            }
        };
        let reply = send(peer, rpc, bytes)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let answer: Result<R, RaftError<MemberId, E>> =
            decode(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// Appends sent at once: a hint to Raft when a message would be too large.
fn fewer_entries(entries: usize) -> PayloadTooLarge {
    PayloadTooLarge::new_entries_hint((entries as u64 / 2).max(1))
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<MemberId>> {
        let size: usize = rpc
            .entries
            .iter()
            .map(|e| match &e.payload {
                openraft::EntryPayload::Normal(batch) => batch.weight(),
                _ => 0,
            })
            .sum();
        if size > MAX_MESSAGE / 2 && rpc.entries.len() > 1 {
            return Err(RPCError::PayloadTooLarge(fewer_entries(rpc.entries.len())));
        }
        self.exchange(PeerRpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<MemberId>, InstallSnapshotError> {
        self.exchange(PeerRpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<MemberId>,
        option: RPCOption,
    ) -> Rpc<VoteResponse<MemberId>> {
        self.exchange(PeerRpc::Vote, &rpc, &option).await
    }
}

/// Asks the server at `addr` (started with `--join`) to join this group, handing it the
/// group's shared secrets; returns the member id it answers with.
pub async fn ask_to_join(
    endpoint: &Endpoint,
    addr: &str,
    join: &JoinRequest,
) -> FsResult<MemberId> {
    let socket = dfs_common::net::lookup(addr).await?;
    let peer = Peer::new(endpoint.clone(), socket).with_timeout(DEFAULT_TIMEOUT);
    let reply = send(&peer, PeerRpc::Join, encode(join)?).await?;
    let answer: Result<MemberId, FsError> = decode(&reply)?;
    answer
}

/// What a leader hands a server that joins its group.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct JoinRequest {
    /// The key shard capabilities are signed with: every member must grant the same ones.
    pub capability_key: dfs_common::capability::CapabilityKey,
    /// The address the group will know the new member by.
    pub addr: String,
}
