//! Raft glue: the type configuration shared by every group, the command that
//! groups replicate, and the openraft storage / network implementations.
//!
//! A node runs many Raft groups over one RocksDB: group [`CONTROLLER_GROUP`]
//! holds cluster metadata, every other group is one topic partition.

pub mod command;
pub mod group;
pub mod handshake;
pub mod log_store;
pub mod network;
pub mod snapshot;
pub mod state_machine;
pub mod wire;

use openraft::BasicNode;

pub use command::{Command, CommandResponse};

pub type NodeId = u64;
pub type GroupId = u64;

/// The controller group; partition groups are numbered from 1 by the controller.
pub const CONTROLLER_GROUP: GroupId = 0;

openraft::declare_raft_types!(
    /// Types shared by the controller group and every partition group.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, BasicNode>;
pub type RaftStorageError = openraft::StorageError<NodeId>;
