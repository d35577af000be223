//! A partition's replicated state machine: offsets assigned at apply,
//! idempotent producers, leader epochs, the log start retention and
//! DeleteRecords move, and the checkpoints its snapshots are made of. Its
//! records stay in the log entries that carried them (`storage::partition`).

use std::sync::Arc;

use rocksdb::WriteBatch;
use tokio::sync::watch;

use crate::raft::command::{Appended, Command, CommandResponse, Compaction};
use crate::raft::state_machine::{Applying, ReplicatedState};
use crate::raft::GroupId;
use crate::storage::batch::{check_appendable, ValidatedBatch};
use crate::storage::compaction::{keys_in, restated_key, survivors, ScanError};
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

impl PartitionState {
    /// Applies one compaction step: appends the restated records whose key
    /// no record after the scan's end holds, and, at the last step, moves the
    /// log start to that end. The keys after the end are read from this
    /// replica's log, which every replica holds alike, so every replica
    /// keeps the same records.
    fn apply_compaction(
        &mut self,
        write: &mut WriteBatch,
        step: &Compaction,
        entry: u64,
    ) -> Result<CommandResponse, StorageError> {
        let refuse = |why: String| Ok(CommandResponse::CompactionRefused(why));
        if step.log_start != self.offsets.log_start_offset {
            return refuse(format!(
                "the log start moved to {} since the scan from {}",
                self.offsets.log_start_offset, step.log_start
            ));
        }
        if step.end < step.log_start || step.end > self.offsets.next_offset {
            return refuse(format!("cleanable end {} is outside the log", step.end));
        }
        if let Some(bad) = step.batches.iter().find_map(|batch| check_appendable(batch).err()) {
            return refuse(bad.to_string());
        }
        let keys = match step.batches.iter().map(restated_key).collect::<Result<Vec<_>, _>>() {
            Ok(keys) => keys,
            Err(why) => return refuse(why),
        };
        let newer = match keys_in(&self.log, step.end, self.offsets.next_offset) {
            Ok(newer) => newer,
            Err(ScanError::Undecodable(why)) => return refuse(why),
            Err(ScanError::Storage(err)) => return Err(err),
        };
        self.log.stage_compaction_step(write, entry, step.end);
        let (mut kept, mut dropped) = (0, 0);
        for (ordinal, (batch, survives)) in step.batches.iter().zip(survivors(&keys, &newer)).enumerate() {
            if !survives {
                dropped += 1;
                continue;
            }
            let place = BatchPlace {
                entry,
                first_ordinal: ordinal as u32,
            };
            let epoch = self.epochs.current();
            let appended = self.log.stage_append(
                write,
                &mut self.offsets,
                &mut self.producers,
                std::slice::from_ref(batch),
                place,
                epoch,
            )?;
            if let Err(refusal) = appended {
                return refuse(refusal.to_string());
            }
            kept += 1;
        }
        if step.last {
            self.advance_log_start(write, step.end)?;
        }
        Ok(CommandResponse::Compacted {
            kept,
            dropped,
            log_start: self.offsets.log_start_offset,
        })
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
            Command::Compact(step) => self.apply_compaction(write, step, entry.index)?,
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use bytes::{Bytes, BytesMut};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    use super::*;
    use crate::raft::StoredMembership;
    use crate::storage::batch::tests::ANY;
    use crate::storage::batch::validate_produce_records;
    use crate::storage::compaction::{restate, scan, CompactionRules, KeyIndex};
    use crate::storage::partition::BatchSource;

    /// The log entries applied so far, read back the way the log store does.
    #[derive(Default)]
    struct Entries(Mutex<HashMap<u64, Command>>);

    impl BatchSource for Entries {
        fn batches(&self, entry: u64) -> Result<Option<Vec<bytes::Bytes>>, StorageError> {
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
        state: PartitionState,
        log: PartitionLog,
        next_entry: u64,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let entries = Arc::new(Entries::default());
            let log = PartitionLog::new(7, store.clone(), entries.clone());
            let (published, _) = watch::channel(Default::default());
            let state = PartitionState::new(log.clone(), published);
            Fixture {
                _dir: dir,
                store,
                entries,
                state,
                log,
                next_entry: 1,
            }
        }

        /// Applies `command` as the next entry and writes what it staged, as
        /// the state machine does before a command that reads the log.
        fn apply(&mut self, command: Command) -> CommandResponse {
            let index = self.next_entry;
            self.next_entry += 1;
            self.entries.0.lock().unwrap().insert(index, command.clone());
            let membership = StoredMembership::default();
            let mut write = WriteBatch::default();
            let applying = Applying::new(index, &self.store, 7, &membership);
            let response = self.state.apply(&mut write, &command, &applying).unwrap();
            self.store.write_buffered(write).unwrap();
            response
        }

        fn produce(&mut self, pairs: &[(&str, Option<&str>)]) {
            let batches = validate_produce_records(&keyed_batch(pairs), &ANY).unwrap();
            self.apply(Command::AppendRequests {
                requests: vec![batches],
            });
        }

        /// (offset, key, value) of every record from the log start.
        fn records(&self) -> Vec<(i64, String, Option<String>)> {
            let offsets = self.log.load_offsets().unwrap();
            let read = self
                .log
                .read(offsets.log_start_offset, offsets.next_offset, 1 << 20)
                .unwrap();
            let text = |b: Bytes| String::from_utf8(b.to_vec()).unwrap();
            RecordBatchDecoder::decode_all(&mut read.clone())
                .unwrap()
                .into_iter()
                .flat_map(|set| set.records)
                .filter(|r| r.offset >= offsets.log_start_offset)
                .map(|r| (r.offset, text(r.key.unwrap()), r.value.map(text)))
                .collect()
        }
    }

    fn keyed_batch(pairs: &[(&str, Option<&str>)]) -> Bytes {
        let records: Vec<Record> = pairs
            .iter()
            .enumerate()
            .map(|(i, (key, value))| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // Sequences advance with offsets, or the encoder starts a new batch.
                sequence: i as i32 - 1,
                timestamp: 1_700_000_000_000,
                key: Some(Bytes::from(key.to_string())),
                value: value.map(|v| Bytes::from(v.to_string())),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::Gzip,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
        buf.freeze()
    }

    const RULES: CompactionRules = CompactionRules {
        min_cleanable_dirty_ratio: 0.25,
        delete_retention_ms: 86_400_000,
        min_compaction_lag_ms: 0,
        max_compaction_lag_ms: i64::MAX,
        retention_ms: None,
    };

    /// The leader scans up to offset 4; `a` is written again before the step
    /// is applied: the restated `a` would bring its old value back after the
    /// new one, so every replica drops it, and keeps `b` (a tombstone still
    /// within delete.retention.ms) and `c`.
    #[test]
    fn a_compaction_step_drops_restated_keys_written_again_since_the_scan() {
        let mut fixture = Fixture::new();
        fixture.produce(&[("a", Some("1")), ("b", Some("1")), ("a", Some("2"))]);
        fixture.produce(&[("c", Some("1")), ("b", None)]);
        let mut index = KeyIndex::new(0);
        scan(&fixture.log, &mut index, 5, None).unwrap();
        let now = 1_700_000_000_000;
        assert!(index.due(&RULES, now), "2 of 5 superseded, over 0.25");
        let (batches, next) = restate(&fixture.log, &index, 0, &RULES, now, 1 << 20).unwrap();
        assert_eq!((batches.len(), next), (3, 5));
        fixture.produce(&[("a", Some("3"))]);
        let step = Compaction {
            log_start: 0,
            end: 5,
            batches,
            last: true,
        };
        let answer = fixture.apply(Command::Compact(step.clone()));
        assert_eq!(
            answer,
            CommandResponse::Compacted {
                kept: 2,
                dropped: 1,
                log_start: 5
            }
        );
        let own = |s: &str| s.to_string();
        assert_eq!(
            fixture.records(),
            vec![
                (5, own("a"), Some(own("3"))),
                (6, own("c"), Some(own("1"))),
                (7, own("b"), None),
            ]
        );
        assert!(
            matches!(
                fixture.apply(Command::Compact(step)),
                CommandResponse::CompactionRefused(_)
            ),
            "the log start moved since that scan"
        );
    }

    /// A live set larger than one step goes in several; only the last moves
    /// the log start, and a write between two steps still wins.
    #[test]
    fn a_compaction_in_several_steps_moves_the_log_start_at_the_last() {
        let mut fixture = Fixture::new();
        fixture.produce(&[("a", Some("1")), ("b", Some("1")), ("c", Some("1")), ("a", Some("2"))]);
        let mut index = KeyIndex::new(0);
        scan(&fixture.log, &mut index, 4, None).unwrap();
        let now = 1_700_000_000_000;
        let mut from = 0;
        let mut answers = Vec::new();
        loop {
            // One byte per step: every step carries one record.
            let (batches, next) = restate(&fixture.log, &index, from, &RULES, now, 1).unwrap();
            let last = next >= index.scanned_to();
            if from == 2 {
                fixture.produce(&[("c", Some("2"))]);
            }
            let step = Compaction {
                log_start: 0,
                end: 4,
                batches,
                last,
            };
            answers.push(fixture.apply(Command::Compact(step)));
            if last {
                break;
            }
            from = next;
        }
        let log_starts: Vec<i64> = answers
            .iter()
            .map(|answer| match answer {
                CommandResponse::Compacted { log_start, .. } => *log_start,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(log_starts, vec![0, 0, 4]);
        let own = |s: &str| s.to_string();
        assert_eq!(
            fixture.records(),
            vec![
                (4, own("b"), Some(own("1"))),
                (5, own("c"), Some(own("2"))),
                (6, own("a"), Some(own("2"))),
            ],
            "b, then c written between steps, then a; the restated c is dropped"
        );
    }

    #[test]
    fn a_malformed_compaction_step_is_refused_and_changes_nothing() {
        let mut fixture = Fixture::new();
        fixture.produce(&[("a", Some("1")), ("a", Some("2"))]);
        let several = validate_produce_records(&keyed_batch(&[("x", Some("1")), ("y", Some("1"))]), &ANY).unwrap();
        let mut corrupt = several.clone();
        let mut bytes = corrupt[0].bytes.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        corrupt[0].bytes = Bytes::from(bytes);
        let steps = [(0, 2, several), (0, 2, corrupt), (0, 9, Vec::new()), (1, 2, Vec::new())];
        for (log_start, end, batches) in steps {
            let step = Compaction {
                log_start,
                end,
                batches,
                last: true,
            };
            let answer = fixture.apply(Command::Compact(step));
            assert!(matches!(answer, CommandResponse::CompactionRefused(_)), "{answer:?}");
        }
        assert_eq!(fixture.log.load_offsets().unwrap().next_offset, 2);
        assert_eq!(fixture.records().len(), 2);
    }
}
