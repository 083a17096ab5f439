//! The transport between members of the metadata group.
//!
//! A metadata server runs as a group of one member, which never sends to a peer: every call
//! here answers that the peer is unreachable. Groups of several members need the QUIC peer
//! transport, which is not built yet; until then `start` refuses a membership of more than one
//! (see [`super::start`]).

use super::{MemberId, TypeConfig};
use dfs_common::FsError;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;

/// Connects to no one.
pub struct Unconnected;

/// A "connection" to a peer that cannot be reached.
pub struct NoPeer(MemberId);

impl RaftNetworkFactory<TypeConfig> for Unconnected {
    type Network = NoPeer;

    async fn new_client(&mut self, target: MemberId, _node: &BasicNode) -> NoPeer {
        NoPeer(target)
    }
}

type Rpc<T, E = openraft::error::Infallible> =
    Result<T, RPCError<MemberId, BasicNode, RaftError<MemberId, E>>>;

impl NoPeer {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<MemberId, BasicNode, E> {
        let e = FsError::unavailable(format!(
            "metadata member {} cannot be reached: this server has no peer transport",
            self.0
        ));
        RPCError::Unreachable(Unreachable::new(&e))
    }
}

impl RaftNetwork<TypeConfig> for NoPeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<MemberId>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<MemberId>, InstallSnapshotError> {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<MemberId>,
        _option: RPCOption,
    ) -> Rpc<VoteResponse<MemberId>> {
        Err(self.unreachable())
    }
}
