//! The peer protocol: what nodes say to each other over their Raft connections.
//! Sans-io: messages and their framing; sockets live in `network.rs` and in the
//! cluster's peer service.
//!
//! A frame is a 4-byte big-endian length, a format version byte
//! ([`PEER_FORMAT`]) and a bincode [`Envelope`].
//! Every request names the Raft group it is for, so one connection carries the
//! RPCs of every group the two nodes share.

use bytes::Bytes;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

use super::command::{Command, CommandResponse};
use super::{GroupId, NodeId, TypeConfig};

/// Bounds one frame: an AppendEntries carries at most `max_payload_entries`
/// entries of at most a produce request each, and snapshot chunks are smaller.
pub const MAX_FRAME_BYTES: usize = 512 * 1024 * 1024;

/// Version tag of every frame after the handshake: a peer speaking another
/// format is refused by its first frame, not misread.
pub const PEER_FORMAT: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("peer frame of format {0}, this node speaks {PEER_FORMAT}")]
    Format(u8),
    #[error("empty peer frame")]
    Empty,
    #[error(transparent)]
    Bincode(#[from] bincode::Error),
}

/// A request or response with the id that pairs them on a connection.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub id: u64,
    pub body: T,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    AppendEntries {
        group: GroupId,
        rpc: AppendEntriesRequest<TypeConfig>,
    },
    Vote {
        group: GroupId,
        rpc: VoteRequest<NodeId>,
    },
    InstallSnapshot {
        group: GroupId,
        rpc: InstallSnapshotRequest<TypeConfig>,
    },
    /// Propose `command` to `group` on the node believed to lead it (admin
    /// forwarding). Only controller commands to the controller group are accepted.
    Propose {
        group: GroupId,
        command: Command,
    },
    /// Has this node ever held Raft state for `group`? Asked before bootstrapping it.
    Probe {
        group: GroupId,
    },
    /// A node's periodic announcement of its address and the groups it leads.
    Announce(Announcement),
    /// Per-partition checksums of the records this node holds.
    Checksums,
    /// Has `group` ever had a leader, as far as this node knows (a log entry
    /// after the initial membership)? Asked by a node whose data dir is new, to
    /// tell a cluster being formed from one it is rejoining.
    Formed {
        group: GroupId,
    },
    /// To `group`'s leader: hand leadership to replica `to` (preferred-leader
    /// election, the leader balancer, a peer's controlled shutdown).
    HandOver {
        group: GroupId,
        to: NodeId,
    },
    /// From `group`'s leader to a caught-up replica it hands leadership to:
    /// campaign now, without waiting for an election timeout.
    Campaign {
        group: GroupId,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Proposed(Result<CommandResponse, ProposeError>),
    Probed {
        has_state: bool,
    },
    Announced,
    Checksums(Vec<PartitionChecksum>),
    /// The group is not running on this node (not created here yet, or dropped).
    GroupNotHere,
    Formed {
        formed: bool,
    },
    HandedOver(Result<(), HandOverError>),
    /// Whether the replica started a campaign (a replica whose vote gate is
    /// closed, or that is shutting down, does not).
    Campaigning {
        started: bool,
    },
}

/// Why leadership of a group was not handed over.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, thiserror::Error)]
pub enum HandOverError {
    #[error("not the leader; the leader is {0:?}")]
    NotLeader(Option<NodeId>),
    #[error("group not running on the node")]
    GroupNotHere,
    #[error("node {0} is not a voter of the group")]
    NotAReplica(NodeId),
    #[error("node {0} is not alive, or is shutting down")]
    TargetNotAlive(NodeId),
    #[error("node {0} did not catch up with the leader's log in time")]
    TargetBehind(NodeId),
    #[error("node {0} refused to campaign")]
    CampaignRefused(NodeId),
    #[error("{0}")]
    Unavailable(String),
}

/// Why a forwarded proposal was not applied.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader; the leader is {0:?}")]
    NotLeader(Option<NodeId>),
    #[error("group not running on the node")]
    GroupNotHere,
    #[error("{0}")]
    Unavailable(String),
    /// Not a proposal a peer may make: only controller commands are forwarded.
    #[error("refused: {0}")]
    Refused(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Announcement {
    pub node: NodeId,
    /// `host:port` Kafka clients use to reach the node.
    pub advertised_listener: String,
    pub leading: Vec<LeaderClaim>,
    /// The node is shutting down: it is handing its leaderships away, so no
    /// leadership is handed to it.
    pub draining: bool,
}

/// "I lead `group` in `term`, with this leader epoch (-1 for groups that
/// keep none), and these replicas are caught up."
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LeaderClaim {
    pub group: GroupId,
    pub term: u64,
    pub leader_epoch: i32,
    pub in_sync: Vec<NodeId>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartitionChecksum {
    pub topic: String,
    pub partition: i32,
    pub group: GroupId,
    pub applied_index: u64,
    /// CRC-32 over the partition's stored batches and producer state, in key order.
    pub checksum: u32,
    pub batches: u64,
}

pub fn frame_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(MAX_FRAME_BYTES)
        .new_codec()
}

pub fn encode<T: Serialize>(id: u64, body: &T) -> Result<Bytes, WireError> {
    let mut out = vec![PEER_FORMAT];
    bincode::serialize_into(&mut out, &Envelope { id, body })?;
    Ok(Bytes::from(out))
}

pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<Envelope<T>, WireError> {
    match frame.split_first() {
        Some((&PEER_FORMAT, envelope)) => Ok(bincode::deserialize(envelope)?),
        Some((&other, _)) => Err(WireError::Format(other)),
        None => Err(WireError::Empty),
    }
}

impl PeerRequest {
    /// What the request is, as the peer request metric counts it.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerRequest::AppendEntries { rpc, .. } if rpc.entries.is_empty() => "heartbeat",
            PeerRequest::AppendEntries { .. } => "append_entries",
            PeerRequest::Vote { .. } => "vote",
            PeerRequest::InstallSnapshot { .. } => "install_snapshot",
            PeerRequest::Propose { .. }
            | PeerRequest::Probe { .. }
            | PeerRequest::Announce(_)
            | PeerRequest::Checksums
            | PeerRequest::Formed { .. } => "other",
            PeerRequest::HandOver { .. } | PeerRequest::Campaign { .. } => "leadership",
        }
    }

    /// Whether the request goes in a connection's control lane, ahead of
    /// queued data: votes, heartbeats (AppendEntries without entries) and the
    /// small node-to-node questions. Entries, snapshots and proposals are data.
    pub fn is_control(&self) -> bool {
        match self {
            PeerRequest::AppendEntries { rpc, .. } => rpc.entries.is_empty(),
            PeerRequest::InstallSnapshot { .. } | PeerRequest::Propose { .. } => false,
            PeerRequest::Vote { .. }
            | PeerRequest::Probe { .. }
            | PeerRequest::Announce(_)
            | PeerRequest::Checksums
            | PeerRequest::Formed { .. }
            | PeerRequest::HandOver { .. }
            | PeerRequest::Campaign { .. } => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip() {
        let request = PeerRequest::Probe { group: 7 };
        let frame = encode(42, &request).unwrap();
        let decoded: Envelope<PeerRequest> = decode(&frame).unwrap();
        assert_eq!(decoded.id, 42);
        assert!(matches!(decoded.body, PeerRequest::Probe { group: 7 }));
    }

    #[test]
    fn hand_over_requests_travel_in_the_control_lane() {
        let frame = encode(3, &PeerRequest::HandOver { group: 4, to: 2 }).unwrap();
        let decoded: Envelope<PeerRequest> = decode(&frame).unwrap();
        assert!(matches!(decoded.body, PeerRequest::HandOver { group: 4, to: 2 }));
        assert!(decoded.body.is_control());
        assert!(PeerRequest::Campaign { group: 4 }.is_control());
        let refused = PeerResponse::HandedOver(Err(HandOverError::TargetBehind(2)));
        let decoded: Envelope<PeerResponse> = decode(&encode(3, &refused).unwrap()).unwrap();
        assert!(matches!(
            decoded.body,
            PeerResponse::HandedOver(Err(HandOverError::TargetBehind(2)))
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode::<PeerRequest>(&[]).is_err());
        assert!(decode::<PeerRequest>(&[PEER_FORMAT, 0xff, 0xff]).is_err());
        assert!(decode::<PeerRequest>(&[PEER_FORMAT; 64]).is_err());
    }

    #[test]
    fn another_format_is_refused_by_its_tag() {
        let mut frame = encode(1, &PeerRequest::Checksums).unwrap().to_vec();
        frame[0] = PEER_FORMAT + 1;
        assert!(matches!(
            decode::<PeerRequest>(&frame),
            Err(WireError::Format(tag)) if tag == PEER_FORMAT + 1
        ));
    }
}
