//! A `__consumer_offsets` partition's replicated state: the committed offsets
//! and generations of the consumer groups it stores, shared with the
//! coordinator that reads them.

use rocksdb::WriteBatch;

use super::store::{self, SharedGroups};
use crate::raft::command::{Command, CommandResponse};
use crate::raft::state_machine::{Applying, ReplicatedState};
use crate::raft::GroupId;
use crate::storage::{StorageError, Store};

pub struct OffsetsState {
    groups: SharedGroups,
}

impl OffsetsState {
    pub fn new(groups: SharedGroups) -> Self {
        OffsetsState { groups }
    }
}

impl ReplicatedState for OffsetsState {
    fn apply(
        &mut self,
        write: &mut WriteBatch,
        command: &Command,
        entry: &Applying<'_>,
    ) -> Result<CommandResponse, StorageError> {
        let Command::Group(change) = command else {
            return Ok(CommandResponse::WrongGroup);
        };
        let mut groups = self.groups.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        store::apply(&mut groups, change, entry.store, entry.group, write)?;
        Ok(CommandResponse::Empty)
    }

    fn reload(&mut self, store: &Store, group: GroupId) -> Result<(), StorageError> {
        let loaded = store::load(store, group)?;
        *self.groups.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = loaded;
        Ok(())
    }

    /// Readers share the map `apply` updates.
    fn publish(&self) {}
}
