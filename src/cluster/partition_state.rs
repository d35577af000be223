//! A partition's replicated state machine: offsets assigned at apply,
//! idempotent producers, leader epochs, the log start retention and
//! DeleteRecords move, and the checkpoints its snapshots are made of. Its
//! records stay in the log entries that carried them (`storage::partition`).

use std::sync::Arc;

use rocksdb::WriteBatch;
use tokio::sync::watch;

use crate::raft::command::{Command, CommandResponse};
use crate::raft::state_machine::{Applying, ReplicatedState};
use crate::raft::GroupId;
use crate::storage::epochs::LeaderEpochs;
use crate::storage::partition::{Checkpoint, PartitionLog, PartitionOffsets};
use crate::storage::producers::Producers;
use crate::storage::{StorageError, Store};

/// What a partition's readers see of its applied state, published as one
/// value so that an end offset and the epochs that place it always agree.
#[derive(Debug, Clone, Default)]
pub struct AppliedPartition {
    pub offsets: PartitionOffsets,
    pub epochs: Arc<LeaderEpochs>,
}

pub struct PartitionState {
    log: PartitionLog,
    offsets: PartitionOffsets,
    producers: Producers,
    epochs: Arc<LeaderEpochs>,
    published: watch::Sender<AppliedPartition>,
    /// Bumped on every append to any partition; wakes long-polling fetches.
    appends: Arc<watch::Sender<u64>>,
}

impl PartitionState {
    pub fn new(
        log: PartitionLog,
        published: watch::Sender<AppliedPartition>,
        appends: Arc<watch::Sender<u64>>,
    ) -> Self {
        PartitionState {
            log,
            offsets: PartitionOffsets::default(),
            producers: Producers::new(),
            epochs: Arc::default(),
            published,
            appends,
        }
    }
}

impl ReplicatedState for PartitionState {
    fn apply(
        &mut self,
        write: &mut WriteBatch,
        command: &Command,
        entry: &Applying<'_>,
    ) -> Result<CommandResponse, StorageError> {
        let (log, offsets, producers) = (&self.log, &mut self.offsets, &mut self.producers);
        Ok(match command {
            Command::Append { batches } => {
                match log.stage_append(write, offsets, producers, batches, entry.index, self.epochs.current())? {
                    Ok(base_offset) => CommandResponse::Appended {
                        base_offset,
                        log_start_offset: offsets.log_start_offset,
                    },
                    Err(refusal) => CommandResponse::ProduceRefused(refusal),
                }
            }
            Command::AdvanceLogStart { offset } => CommandResponse::LogStart(log.stage_advance_start(
                write,
                offsets,
                Arc::make_mut(&mut self.epochs),
                *offset,
            )?),
            Command::ExpireProducers { before_timestamp } => {
                CommandResponse::ProducersExpired(log.stage_expire_producers(write, producers, *before_timestamp))
            }
            _ => CommandResponse::WrongGroup,
        })
    }

    /// Each new leader's epoch starts where the partition ends before its
    /// first entry (the blank one openraft commits at its election), on every
    /// replica alike: Kafka's leader epoch, derived from the log.
    fn leader_changed(&mut self, write: &mut WriteBatch, _entry: &Applying<'_>) -> Result<(), StorageError> {
        let epochs = Arc::make_mut(&mut self.epochs);
        epochs.begin(self.offsets.next_offset);
        self.log.stage_epochs(write, epochs)
    }

    fn reload(&mut self, _store: &Store, _group: GroupId) -> Result<(), StorageError> {
        self.offsets = self.log.load_offsets()?;
        self.producers = self.log.load_producers()?;
        self.epochs = Arc::new(self.log.load_epochs()?);
        Ok(())
    }

    fn publish(&self) {
        self.published.send_replace(AppliedPartition {
            offsets: self.offsets,
            epochs: Arc::clone(&self.epochs),
        });
        self.appends.send_modify(|count| *count = count.wrapping_add(1));
    }

    fn records(&self) -> Option<&PartitionLog> {
        Some(&self.log)
    }

    fn checkpoint(&self, replication: Vec<u8>) -> Option<Checkpoint> {
        Some(Checkpoint {
            offsets: self.offsets,
            producers: self.producers.clone(),
            replication,
            epochs: (*self.epochs).clone(),
        })
    }
}
