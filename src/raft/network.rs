//! Raft RPC transport. This build runs every group on one node, so a group never
//! has a peer to call: any RPC reports the target unreachable, which is exactly
//! what openraft expects of a node that cannot be contacted. The multi-node
//! transport (one multiplexed TCP connection per node pair, tagged by group id)
//! plugs in behind the same factory.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;

use super::{GroupId, NodeId, TypeConfig};

type RpcResult<T, E = RaftError<NodeId>> = Result<T, RPCError<NodeId, BasicNode, E>>;

#[derive(Debug, Clone)]
pub struct GroupNetwork {
    group: GroupId,
}

impl GroupNetwork {
    pub fn new(group: GroupId) -> Self {
        GroupNetwork { group }
    }
}

pub struct PeerLink {
    group: GroupId,
    target: NodeId,
}

impl PeerLink {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        let reason = std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            format!(
                "group {}: no transport to node {} in single-node mode",
                self.group, self.target
            ),
        );
        RPCError::Unreachable(Unreachable::new(&reason))
    }
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> PeerLink {
        PeerLink {
            group: self.group,
            target,
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        Err(self.unreachable())
    }

    async fn vote(&mut self, _rpc: VoteRequest<NodeId>, _option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        Err(self.unreachable())
    }
}
