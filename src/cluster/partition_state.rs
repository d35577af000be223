//! A partition's replicated state machine: offsets assigned at apply,
//! idempotent producers, leader epochs, the log start retention and
//! DeleteRecords move, and the checkpoints its snapshots are made of. Its
//! records stay in the log entries that carried them (`storage::partition`).

use std::sync::Arc;

use rocksdb::WriteBatch;
use tokio::sync::watch;

use crate::raft::command::{Appended, Command, CommandResponse};
use crate::raft::state_machine::{Applying, ReplicatedState};
use crate::raft::GroupId;
use crate::storage::batch::ValidatedBatch;
use crate::storage::epochs::LeaderEpochs;
use crate::storage::partition::{BatchPlace, Checkpoint, PartitionLog, PartitionOffsets};
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
    /// Wakes long-polling fetches of this partition.
    published: watch::Sender<AppliedPartition>,
}

impl PartitionState {
    pub fn new(log: PartitionLog, published: watch::Sender<AppliedPartition>) -> Self {
        PartitionState {
            log,
            offsets: PartitionOffsets::default(),
            producers: Producers::new(),
            epochs: Arc::default(),
            published,
        }
    }
}

impl PartitionState {
    /// Appends each request's batches on its own, in order: a request refused
    /// (an idempotent producer's sequence) leaves the others appended. A batch's
    /// ordinal counts every batch before it in the entry, refused or not, as
    /// readers find it by its position in the entry.
    pub(crate) fn append_requests(
        &mut self,
        write: &mut WriteBatch,
        requests: &[Vec<ValidatedBatch>],
        entry: u64,
    ) -> Result<CommandResponse, StorageError> {
        let mut answers = Vec::with_capacity(requests.len());
        let mut first_ordinal = 0;
        for batches in requests {
            let placed = BatchPlace { entry, first_ordinal };
            let epoch = self.epochs.current();
            let answer =
                self.log
                    .stage_append(write, &mut self.offsets, &mut self.producers, batches, placed, epoch)?;
            answers.push(answer.map(|base_offset| Appended {
                base_offset,
                log_start_offset: self.offsets.log_start_offset,
            }));
            first_ordinal += batches.len() as u32;
        }
        Ok(CommandResponse::AppendedRequests(answers))
    }
}

impl PartitionState {
    /// The offset the next record appended gets.
    pub(crate) fn next_offset(&self) -> i64 {
        self.offsets.next_offset
    }

    /// Moves the log start forward to `offset` (never back, never past the
    /// end); returns the new log start.
    pub(crate) fn advance_log_start(&mut self, write: &mut WriteBatch, offset: i64) -> Result<i64, StorageError> {
        self.log
            .stage_advance_start(write, &mut self.offsets, Arc::make_mut(&mut self.epochs), offset)
    }
}

impl ReplicatedState for PartitionState {
    fn apply(
        &mut self,
        write: &mut WriteBatch,
        command: &Command,
        entry: &Applying<'_>,
    ) -> Result<CommandResponse, StorageError> {
        Ok(match command {
            Command::Append { batches } => self.append_requests(write, std::slice::from_ref(batches), entry.index)?,
            Command::AppendRequests { requests } => self.append_requests(write, requests, entry.index)?,
            Command::AdvanceLogStart { offset } => CommandResponse::LogStart(self.advance_log_start(write, *offset)?),
            Command::ExpireProducers { before_timestamp } => CommandResponse::ProducersExpired(
                self.log
                    .stage_expire_producers(write, &mut self.producers, *before_timestamp),
            ),
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
            state: Vec::new(),
        })
    }
}
