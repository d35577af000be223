//! A `__consumer_offsets` partition's replicated state: the committed offsets
//! and generations of the consumer groups it stores, shared with the
//! coordinator that reads them, and the Kafka records those changes are.
//!
//! Applying a change does both from the same command: its records (rendered
//! by [`records`]) take the partition's next offsets, indexed like a produced
//! batch in the log entry that carried the change, and the groups are updated
//! as those records say. A read renders the records again from the entry.
//!
//! A restatement writes every live key again at the end and moves the log
//! start to it, so the log before it can be freed (Kafka compacts this topic
//! instead; a reader from the log start sees the same state either way).

use rocksdb::WriteBatch;

use super::records;
use super::store::{self, GroupCommand, SharedGroups};
use crate::cluster::partition_state::PartitionState;
use crate::raft::command::{Command, CommandResponse};
use crate::raft::state_machine::{Applying, ReplicatedState};
use crate::raft::GroupId;
use crate::storage::partition::{Checkpoint, PartitionLog};
use crate::storage::{StorageError, Store};

pub struct OffsetsState {
    groups: SharedGroups,
    records: PartitionState,
}

impl OffsetsState {
    pub fn new(groups: SharedGroups, records: PartitionState) -> Self {
        OffsetsState { groups, records }
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
        let restating = matches!(change, GroupCommand::Restate { .. });
        if let GroupCommand::Restate { groups } = change {
            let current = self.groups.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            if *current != *groups {
                return Ok(CommandResponse::GroupChangeRefused(
                    "the groups changed after the restatement was made".into(),
                ));
            }
        }
        let restated_from = self.records.next_offset();
        let batch = match records::batch_of_change(change) {
            Ok(batch) => batch,
            Err(too_long) => return Ok(CommandResponse::GroupChangeRefused(too_long.to_string())),
        };
        if let Some(batch) = batch {
            // One batch per entry, at ordinal 0: where a read renders it again.
            let appended = self.records.append_requests(write, &[vec![batch]], entry.index)?;
            if let CommandResponse::AppendedRequests(answers) = &appended {
                if let Some(Err(refusal)) = answers.first() {
                    return Ok(CommandResponse::GroupChangeRefused(refusal.to_string()));
                }
            }
        }
        if restating {
            // Every live key now has a record from here on: what is before goes.
            self.records.advance_log_start(write, restated_from)?;
            return Ok(CommandResponse::Empty);
        }
        let mut groups = self.groups.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        store::apply(&mut groups, change, entry.store, entry.group, write)?;
        Ok(CommandResponse::Empty)
    }

    fn leader_changed(&mut self, write: &mut WriteBatch, entry: &Applying<'_>) -> Result<(), StorageError> {
        self.records.leader_changed(write, entry)
    }

    fn reload(&mut self, store: &Store, group: GroupId) -> Result<(), StorageError> {
        self.records.reload(store, group)?;
        let loaded = store::load(store, group)?;
        *self.groups.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = loaded;
        Ok(())
    }

    /// The groups are shared with the coordinator as `apply` updates them;
    /// the records' offsets are published like a partition's.
    fn publish(&self) {
        self.records.publish();
    }

    fn records(&self) -> Option<&PartitionLog> {
        self.records.records()
    }

    fn checkpoint(&self, replication: Vec<u8>) -> Option<Checkpoint> {
        let mut checkpoint = self.records.checkpoint(replication)?;
        let groups = self.groups.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        checkpoint.state = store::encode_groups(&groups).ok()?;
        Some(checkpoint)
    }

    fn stage_restore(
        &self,
        write: &mut WriteBatch,
        store: &Store,
        group: GroupId,
        checkpoint: &Checkpoint,
    ) -> Result<(), StorageError> {
        store::stage_restore(write, store, group, &checkpoint.state)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use kafka_protocol::records::RecordBatchDecoder;
    use tokio::sync::watch;

    use super::*;
    use crate::group::records::{group_metadata_key, offset_commit_key, offset_commit_value};
    use crate::group::store::{CommittedOffset, GroupMetadata, StoredGroup};
    use crate::raft::StoredMembership;
    use crate::storage::partition::BatchSource;

    /// The log entries applied so far, read back the way the log store does.
    #[derive(Default)]
    struct Entries(Mutex<HashMap<u64, Command>>);

    impl BatchSource for Entries {
        fn batches(&self, entry: u64) -> Result<Option<Vec<Bytes>>, StorageError> {
            let entries = self.0.lock().unwrap();
            Ok(entries
                .get(&entry)
                .map(|command| command.clone().into_appended_batches().map(|b| b.bytes).collect()))
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        entries: Arc<Entries>,
        state: OffsetsState,
        log: PartitionLog,
        groups: SharedGroups,
        next_entry: u64,
    }

    const RAFT_GROUP: GroupId = 3;

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let entries = Arc::new(Entries::default());
            let log = PartitionLog::new(RAFT_GROUP, store.clone(), entries.clone());
            let groups = SharedGroups::default();
            let (published, _) = watch::channel(Default::default());
            let state = OffsetsState::new(groups.clone(), PartitionState::new(log.clone(), published));
            Fixture {
                _dir: dir,
                store,
                entries,
                state,
                log,
                groups,
                next_entry: 1,
            }
        }

        fn apply(&mut self, change: GroupCommand) -> CommandResponse {
            let index = self.next_entry;
            self.next_entry += 1;
            let command = Command::Group(change);
            self.entries.0.lock().unwrap().insert(index, command.clone());
            let membership = StoredMembership::default();
            let mut write = WriteBatch::default();
            let applying = Applying::new(index, &self.store, RAFT_GROUP, &membership);
            let response = self.state.apply(&mut write, &command, &applying).unwrap();
            self.store.write_buffered(write).unwrap();
            response
        }

        /// (offset, key, value) of every record from the log start.
        fn records(&self) -> Vec<(i64, Bytes, Option<Bytes>)> {
            let offsets = self.log.load_offsets().unwrap();
            let read = self
                .log
                .read(offsets.log_start_offset, offsets.next_offset, 1 << 20)
                .unwrap();
            RecordBatchDecoder::decode_all(&mut read.clone())
                .unwrap()
                .into_iter()
                .flat_map(|set| set.records)
                .map(|r| (r.offset, r.key.unwrap(), r.value))
                .collect()
        }

        fn groups(&self) -> std::collections::BTreeMap<String, StoredGroup> {
            self.groups.read().unwrap().clone()
        }
    }

    fn committed(offset: i64) -> CommittedOffset {
        CommittedOffset {
            offset,
            leader_epoch: -1,
            metadata: None,
            commit_timestamp: 1_700_000_000_000 + offset,
        }
    }

    fn commit(group: &str, partition: i32, offset: i64) -> GroupCommand {
        GroupCommand::Commit {
            group: group.into(),
            offsets: vec![("t".into(), partition, committed(offset))],
        }
    }

    fn metadata(group: &str, generation: i32) -> GroupMetadata {
        GroupMetadata {
            group: group.into(),
            protocol_type: "consumer".into(),
            generation,
            protocol: None,
            leader: None,
            current_state_timestamp: 5,
            members: Vec::new(),
        }
    }

    /// Every change is records at dense offsets, read back from the entries
    /// that carried them, and the groups hold what the records say.
    #[test]
    fn changes_become_records_at_dense_offsets_and_the_state_follows_them() {
        let mut fixture = Fixture::new();
        assert_eq!(fixture.apply(commit("g", 0, 10)), CommandResponse::Empty);
        fixture.apply(GroupCommand::GenerationCompleted(metadata("g", 1)));
        fixture.apply(commit("g", 1, 20));
        fixture.apply(GroupCommand::DeleteGroup { group: "old".into() });
        fixture.apply(GroupCommand::RemoveOffsets {
            group: "g".into(),
            partitions: vec![("t".into(), 0)],
            timestamp: 9,
        });
        let records = fixture.records();
        let key = |p| offset_commit_key("g", "t", p).unwrap();
        assert_eq!(
            records,
            vec![
                (0, key(0), Some(offset_commit_value(&committed(10)).unwrap())),
                (1, group_metadata_key("g").unwrap(), records[1].2.clone()),
                (2, key(1), Some(offset_commit_value(&committed(20)).unwrap())),
                (3, key(0), None),
            ],
            "the old DeleteGroup wrote nothing"
        );
        let groups = fixture.groups();
        assert_eq!(
            groups["g"].offsets.keys().collect::<Vec<_>>(),
            vec![&("t".to_string(), 1)]
        );
        assert_eq!(groups["g"].metadata, Some(metadata("g", 1)));
        assert_eq!(fixture.log.load_offsets().unwrap().next_offset, 4);

        fixture.apply(GroupCommand::RemoveGroup {
            group: "g".into(),
            offsets: vec![("t".into(), 1)],
            timestamp: 10,
        });
        assert!(fixture.groups().is_empty());
        let tail: Vec<_> = fixture.records().into_iter().skip(4).collect();
        assert_eq!(
            tail,
            vec![(4, key(1), None), (5, group_metadata_key("g").unwrap(), None)]
        );
    }

    /// A restatement of the current groups moves the log start to records
    /// that say all of them; a stale one is refused and writes nothing.
    #[test]
    fn a_restatement_keeps_every_live_key_and_a_stale_one_is_refused() {
        let mut fixture = Fixture::new();
        for offset in 0..5 {
            fixture.apply(commit("g", 0, offset));
        }
        fixture.apply(GroupCommand::GenerationCompleted(metadata("g", 2)));
        fixture.apply(commit("h", 3, 7));
        let stale = fixture.groups();
        fixture.apply(commit("g", 0, 5));
        assert!(matches!(
            fixture.apply(GroupCommand::Restate { groups: stale }),
            CommandResponse::GroupChangeRefused(_)
        ));
        assert_eq!(fixture.log.load_offsets().unwrap().log_start_offset, 0);
        assert_eq!(fixture.log.load_offsets().unwrap().next_offset, 8);

        let current = fixture.groups();
        assert_eq!(
            fixture.apply(GroupCommand::Restate {
                groups: current.clone()
            }),
            CommandResponse::Empty
        );
        let offsets = fixture.log.load_offsets().unwrap();
        assert_eq!((offsets.log_start_offset, offsets.next_offset), (8, 11));
        let restated = fixture.records();
        assert_eq!(
            restated
                .iter()
                .map(|(offset, key, _)| (*offset, key.clone()))
                .collect::<Vec<_>>(),
            vec![
                (8, group_metadata_key("g").unwrap()),
                (9, offset_commit_key("g", "t", 0).unwrap()),
                (10, offset_commit_key("h", "t", 3).unwrap()),
            ]
        );
        assert_eq!(restated[1].2, Some(offset_commit_value(&committed(5)).unwrap()));
        assert_eq!(fixture.groups(), current, "a restatement changes no group");
    }

    /// A checkpoint carries the groups; restoring it elsewhere gives the same groups.
    #[test]
    fn a_checkpoint_carries_the_groups_to_another_replica() {
        let mut fixture = Fixture::new();
        fixture.apply(commit("g", 0, 1));
        fixture.apply(GroupCommand::GenerationCompleted(metadata("g", 4)));
        let checkpoint = fixture.state.checkpoint(b"raft".to_vec()).unwrap();
        assert_eq!(checkpoint.offsets.next_offset, 2);

        let other = Fixture::new();
        let mut write = WriteBatch::default();
        other
            .state
            .stage_restore(&mut write, &other.store, RAFT_GROUP, &checkpoint)
            .unwrap();
        other.store.write_buffered(write).unwrap();
        assert_eq!(store::load(&other.store, RAFT_GROUP).unwrap(), fixture.groups());
    }
}
