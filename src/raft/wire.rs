//! The peer protocol: what nodes say to each other over their Raft connections.
//! Sans-io: messages and their framing; sockets live in `network.rs` and in the
//! cluster's peer service.
//!
//! A frame is a 4-byte big-endian length followed by a bincode [`Envelope`].
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

pub fn encode<T: Serialize>(id: u64, body: &T) -> Result<Bytes, bincode::Error> {
    bincode::serialize(&Envelope { id, body }).map(Bytes::from)
}

pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<Envelope<T>, bincode::Error> {
    bincode::deserialize(frame)
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
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode::<PeerRequest>(&[0xff; 3]).is_err());
        assert!(decode::<PeerRequest>(&[0xff; 64]).is_err());
    }
}
