//! Starting one Raft group on this node.

use std::collections::BTreeMap;
use std::sync::Arc;

use openraft::{BasicNode, SnapshotPolicy};

use super::log_store::GroupLogStore;
use super::network::GroupNetwork;
use super::state_machine::{GroupRole, GroupStateMachine};
use super::{GroupId, NodeId, Raft};
use crate::config::BrokerConfig;
use crate::storage::Store;

#[derive(Debug, thiserror::Error)]
pub enum GroupStartError {
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("raft: {0}")]
    Raft(String),
}

fn raft_config(cfg: &BrokerConfig, group: GroupId) -> Result<Arc<openraft::Config>, GroupStartError> {
    let election = cfg.election_timeout().as_millis() as u64;
    let config = openraft::Config {
        cluster_name: format!("group-{group}"),
        heartbeat_interval: cfg.heartbeat_interval().as_millis() as u64,
        election_timeout_min: election,
        election_timeout_max: election * 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_entries),
        // Keep a tail of the log after a snapshot so a briefly lagging follower
        // catches up from the log instead of a full snapshot.
        max_in_snapshot_log_to_keep: (cfg.snapshot_entries / 10).max(1),
        ..Default::default()
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|err| GroupStartError::Raft(err.to_string()))
}

/// Opens the group's storage, starts its Raft instance and, when this node is the
/// designated bootstrapper of a group that has never run, initialises its membership.
pub async fn start_group(
    cfg: &BrokerConfig,
    store: &Store,
    group: GroupId,
    role: GroupRole,
    members: &BTreeMap<NodeId, String>,
) -> Result<Raft, GroupStartError> {
    let log_store = GroupLogStore::new(group, store.clone());
    let state_machine = GroupStateMachine::open(group, store.clone(), role, &cfg.data_dir.join("snapshots"))?;
    let raft = Raft::new(
        cfg.node_id,
        raft_config(cfg, group)?,
        GroupNetwork::new(group),
        log_store,
        state_machine,
    )
    .await
    .map_err(|err| GroupStartError::Raft(err.to_string()))?;
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|err| GroupStartError::Raft(err.to_string()))?;
    let bootstrapper = members.keys().next() == Some(&cfg.node_id);
    if !initialized && bootstrapper {
        let nodes: BTreeMap<NodeId, BasicNode> = members.iter().map(|(id, addr)| (*id, BasicNode::new(addr))).collect();
        raft.initialize(nodes)
            .await
            .map_err(|err| GroupStartError::Raft(err.to_string()))?;
    } else if initialized && members.len() == 1 && bootstrapper {
        // A sole voter need not wait out an election timeout after a restart.
        raft.trigger()
            .elect()
            .await
            .map_err(|err| GroupStartError::Raft(err.to_string()))?;
    }
    Ok(raft)
}
