//! The controller group's replicated state: topics, partition assignments and
//! producer ids, published to the rest of the node on every apply.

use std::sync::Arc;

use rocksdb::WriteBatch;
use tokio::sync::watch;

use super::metadata::ClusterState;
use crate::raft::command::{Command, CommandResponse};
use crate::raft::state_machine::{Applying, ReplicatedState};
use crate::raft::GroupId;
use crate::storage::keys::{self, CF_SM_STATE, TAG_CLUSTER};
use crate::storage::{StorageError, Store};

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
            | Command::AlterTopicConfigs { .. } => {
                CommandResponse::Controller(self.cluster.apply(command, &entry.voters()))
            }
            _ => CommandResponse::WrongGroup,
        })
    }

    fn stage(&self, write: &mut WriteBatch, store: &Store, group: GroupId) -> Result<(), StorageError> {
        write.put_cf(
            store.cf(CF_SM_STATE),
            keys::group_tag_key(group, TAG_CLUSTER),
            bincode::serialize(&self.cluster)?,
        );
        Ok(())
    }

    fn reload(&mut self, store: &Store, group: GroupId) -> Result<(), StorageError> {
        self.cluster = match store.get(CF_SM_STATE, &keys::group_tag_key(group, TAG_CLUSTER))? {
            Some(raw) => bincode::deserialize(&raw)?,
            None => ClusterState::default(),
        };
        Ok(())
    }

    fn publish(&self) {
        self.published.send_replace(Arc::new(self.cluster.clone()));
    }
}
