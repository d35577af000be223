//! The controller group's replicated state: topics, partition assignments and
//! producer ids, published to the rest of the node on every apply.

use std::sync::Arc;

use rocksdb::WriteBatch;
use tokio::sync::watch;

use std::collections::BTreeMap;

use serde::Deserialize;

use super::metadata::{ClusterState, TopicState};
use crate::raft::command::{Command, CommandResponse};
use crate::raft::state_machine::{Applying, ReplicatedState};
use crate::raft::GroupId;
use crate::storage::keys::{self, CF_SM_STATE, TAG_CLUSTER, TAG_CLUSTER_STATE};
use crate::storage::{StorageError, Store};

/// The version of the cluster state this release writes (`TAG_CLUSTER_STATE`).
const FORMAT: u8 = 2;

/// The cluster state before replicas could move, stored without a version
/// tag under `TAG_CLUSTER`.
#[derive(Deserialize)]
struct ClusterStateV1 {
    topics: BTreeMap<String, TopicState>,
    next_group: GroupId,
    last_producer_id: i64,
}

impl From<ClusterStateV1> for ClusterState {
    fn from(old: ClusterStateV1) -> Self {
        ClusterState {
            topics: old.topics,
            next_group: old.next_group,
            last_producer_id: old.last_producer_id,
            ..ClusterState::default()
        }
    }
}

fn decode(group: GroupId, raw: &[u8]) -> Result<ClusterState, StorageError> {
    match raw.split_first() {
        Some((&FORMAT, body)) => Ok(bincode::deserialize(body)?),
        other => Err(StorageError::Corrupt {
            group,
            what: format!(
                "cluster state of unknown format {:?}",
                other.map(|(version, _)| version)
            ),
        }),
    }
}

pub struct ControllerState {
    cluster: ClusterState,
    published: watch::Sender<Arc<ClusterState>>,
}

impl ControllerState {
    pub fn new(published: watch::Sender<Arc<ClusterState>>) -> Self {
        ControllerState {
            cluster: ClusterState::default(),
            published,
        }
    }
}

impl ReplicatedState for ControllerState {
    fn apply(
        &mut self,
        _write: &mut WriteBatch,
        command: &Command,
        entry: &Applying<'_>,
    ) -> Result<CommandResponse, StorageError> {
        Ok(match command {
            Command::AllocateProducerId => CommandResponse::ProducerId(self.cluster.allocate_producer_id()),
            Command::CreateTopic { .. }
            | Command::DeleteTopic { .. }
            | Command::CreatePartitions { .. }
            | Command::AlterTopicConfigs { .. }
            | Command::ReassignPartition { .. }
            | Command::CompleteReassignment { .. } => {
                CommandResponse::Controller(self.cluster.apply(command, &entry.voters()))
            }
            _ => CommandResponse::WrongGroup,
        })
    }

    fn stage(&self, write: &mut WriteBatch, store: &Store, group: GroupId) -> Result<(), StorageError> {
        let mut value = vec![FORMAT];
        bincode::serialize_into(&mut value, &self.cluster)?;
        write.put_cf(
            store.cf(CF_SM_STATE),
            keys::group_tag_key(group, TAG_CLUSTER_STATE),
            value,
        );
        write.delete_cf(store.cf(CF_SM_STATE), keys::group_tag_key(group, TAG_CLUSTER));
        Ok(())
    }

    fn reload(&mut self, store: &Store, group: GroupId) -> Result<(), StorageError> {
        self.cluster = match store.get(CF_SM_STATE, &keys::group_tag_key(group, TAG_CLUSTER_STATE))? {
            Some(raw) => decode(group, &raw)?,
            None => match store.get(CF_SM_STATE, &keys::group_tag_key(group, TAG_CLUSTER))? {
                Some(raw) => bincode::deserialize::<ClusterStateV1>(&raw)?.into(),
                None => ClusterState::default(),
            },
        };
        Ok(())
    }

    fn publish(&self) {
        self.published.send_replace(Arc::new(self.cluster.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::metadata::PartitionAssignment;

    /// What releases before replica moves wrote under `TAG_CLUSTER`.
    #[derive(serde::Serialize)]
    struct WrittenByV1 {
        topics: BTreeMap<String, TopicState>,
        next_group: GroupId,
        last_producer_id: i64,
    }

    #[test]
    fn reads_the_unversioned_state_of_earlier_releases() {
        let topics = BTreeMap::from([(
            "t".to_string(),
            TopicState {
                id: [7; 16],
                partitions: vec![PartitionAssignment {
                    group: 4,
                    replicas: vec![1, 2, 3],
                }],
                configs: BTreeMap::new(),
            },
        )]);
        let old = bincode::serialize(&WrittenByV1 {
            topics: topics.clone(),
            next_group: 4,
            last_producer_id: 9,
        })
        .unwrap();
        let state: ClusterState = bincode::deserialize::<ClusterStateV1>(&old).unwrap().into();
        assert_eq!(state.topics, topics);
        assert_eq!((state.next_group, state.last_producer_id), (4, 9));
        assert!(state.reassignments.is_empty() && state.moved.is_empty());
    }

    #[test]
    fn the_current_state_carries_its_version() {
        let mut raw = vec![FORMAT];
        bincode::serialize_into(&mut raw, &ClusterState::default()).unwrap();
        assert_eq!(decode(0, &raw).unwrap(), ClusterState::default());
        raw[0] = FORMAT + 1;
        assert!(matches!(decode(0, &raw), Err(StorageError::Corrupt { .. })));
    }
}
