//! One partition's state: offsets, idempotent producers, and indexes that find
//! each record batch in the replicated log entry it arrived in. The batch
//! bytes themselves are never copied out of that entry: the log is the
//! partition's only copy of its records.
//!
//! Each batch's leader epoch is assigned at apply and kept in its index entry;
//! it is stamped into the batch header as the batch is read, as its base
//! offset is.
//!
//! Checkpoints of the state (small: offsets, producers and leader epochs, never records) are
//! kept at the points where the log can be freed, so that a snapshot of the
//! partition is one checkpoint and a replica that receives it gets the records
//! after it by ordinary log replication.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{Record, RecordBatchDecoder, TimestampType};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use super::batch::{check_appendable, set_base_offset, set_partition_leader_epoch, ValidatedBatch};
use super::epochs::{LeaderEpochs, NO_EPOCH};
use super::keys::{
    self, CF_BATCH_INDEX, CF_SM_STATE, CF_TIME_INDEX, TAG_CHECKPOINT, TAG_COMPACTION_STEP, TAG_LEADER_EPOCHS,
    TAG_PARTITION, TAG_PRODUCER,
};
use super::producers::{check, expired, record, Producers, SequenceCheck};
use super::{StorageError, Store};
use crate::raft::command::ProduceRefusal;

/// Version tag of batch index values. Version 2 added the leader epoch;
/// version 1 entries are read with none ([`NO_EPOCH`], as Kafka marks batches
/// written before it kept epochs).
const BATCH_INDEX_VERSION: u8 = 2;
const BATCH_INDEX_V1: u8 = 1;
/// Version tag of checkpoints. Version 2 added the leader epochs; version 1
/// checkpoints are read with an empty history. Version 3 added the state
/// machine's own state; older checkpoints are read with none.
const CHECKPOINT_VERSION: u8 = 3;
const CHECKPOINT_V2: u8 = 2;
const CHECKPOINT_V1: u8 = 1;
/// Version tag of the stored leader epoch history.
const EPOCHS_VERSION: u8 = 1;

/// Where a partition stands. Everything below `next_offset` is committed and
/// applied, so `next_offset` is the high watermark Fetch and ListOffsets report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffsets {
    pub log_start_offset: i64,
    pub next_offset: i64,
    /// The largest record timestamp appended so far (-1 before the first).
    pub max_timestamp: i64,
    /// Batch bytes appended since the partition was created.
    pub appended_bytes: u64,
}

impl Default for PartitionOffsets {
    fn default() -> Self {
        PartitionOffsets {
            log_start_offset: 0,
            next_offset: 0,
            max_timestamp: -1,
            appended_bytes: 0,
        }
    }
}

/// Where the bytes of appended batches are read from: the log entries that
/// carried them.
/// Where a request's batches sit in the log: the entry that carries them and
/// the position of the first of them among that entry's batches.
#[derive(Debug, Clone, Copy)]
pub struct BatchPlace {
    pub entry: u64,
    pub first_ordinal: u32,
}

pub trait BatchSource: Send + Sync {
    /// The batches entry `entry` carried, in order; `None` once it was freed.
    fn batches(&self, entry: u64) -> Result<Option<Vec<Bytes>>, StorageError>;
}

/// What the batch index keeps of each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchLocation {
    last_offset: i64,
    max_timestamp: i64,
    /// The log entry that carried the batch, and its position among the entry's batches.
    entry: u64,
    ordinal: u32,
    /// The leader epoch the batch was applied in.
    leader_epoch: i32,
}

impl BatchLocation {
    const V1_LEN: usize = 29;
    const ENCODED_LEN: usize = 33;

    fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[0] = BATCH_INDEX_VERSION;
        out[1..9].copy_from_slice(&self.last_offset.to_be_bytes());
        out[9..17].copy_from_slice(&self.max_timestamp.to_be_bytes());
        out[17..25].copy_from_slice(&self.entry.to_be_bytes());
        out[25..29].copy_from_slice(&self.ordinal.to_be_bytes());
        out[29..33].copy_from_slice(&self.leader_epoch.to_be_bytes());
        out
    }

    fn decode(raw: &[u8]) -> Option<Self> {
        let leader_epoch = match (raw.first()?, raw.len()) {
            (&BATCH_INDEX_VERSION, Self::ENCODED_LEN) => i32::from_be_bytes(raw[29..33].try_into().ok()?),
            (&BATCH_INDEX_V1, Self::V1_LEN) => NO_EPOCH,
            _ => return None,
        };
        Some(BatchLocation {
            last_offset: i64::from_be_bytes(raw[1..9].try_into().ok()?),
            max_timestamp: i64::from_be_bytes(raw[9..17].try_into().ok()?),
            entry: u64::from_be_bytes(raw[17..25].try_into().ok()?),
            ordinal: u32::from_be_bytes(raw[25..29].try_into().ok()?),
            leader_epoch,
        })
    }
}

/// A partition's state after one log entry. `replication` is the replication
/// layer's own record of that point (applied entry, membership), kept opaque here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub offsets: PartitionOffsets,
    pub producers: Producers,
    pub replication: Vec<u8>,
    pub epochs: LeaderEpochs,
    /// What the state machine keeps beyond the partition's own state (the
    /// consumer groups of an offsets partition), opaque here; empty for none.
    pub state: Vec<u8>,
}

/// A checkpoint as version 2 wrote it, before the state machine's own state.
#[derive(Deserialize)]
struct CheckpointV2 {
    offsets: PartitionOffsets,
    producers: Producers,
    replication: Vec<u8>,
    epochs: LeaderEpochs,
}

/// A checkpoint as version 1 wrote it, before leader epochs.
#[derive(Deserialize)]
struct CheckpointV1 {
    offsets: PartitionOffsets,
    producers: Producers,
    replication: Vec<u8>,
}

impl Checkpoint {
    pub fn encode(&self) -> Result<Vec<u8>, StorageError> {
        let mut out = vec![CHECKPOINT_VERSION];
        bincode::serialize_into(&mut out, self)?;
        Ok(out)
    }

    pub fn decode(raw: &[u8]) -> Result<Self, StorageError> {
        match raw.split_first() {
            Some((&CHECKPOINT_VERSION, body)) => Ok(bincode::deserialize(body)?),
            Some((&CHECKPOINT_V2, body)) => Ok(bincode::deserialize::<CheckpointV2>(body)?.into()),
            Some((&CHECKPOINT_V1, body)) => Ok(CheckpointV2::from(bincode::deserialize::<CheckpointV1>(body)?).into()),
            Some((version, _)) => Err(StorageError::Encoding(format!("unknown checkpoint format {version}"))),
            None => Err(StorageError::Encoding("empty checkpoint".into())),
        }
    }
}

/// Version 2 added the leader epochs: a version 1 checkpoint has an empty history.
impl From<CheckpointV1> for CheckpointV2 {
    fn from(old: CheckpointV1) -> Self {
        CheckpointV2 {
            offsets: old.offsets,
            producers: old.producers,
            replication: old.replication,
            epochs: LeaderEpochs::default(),
        }
    }
}

/// Version 3 added the state machine's own state: older checkpoints have none.
impl From<CheckpointV2> for Checkpoint {
    fn from(old: CheckpointV2) -> Self {
        Checkpoint {
            offsets: old.offsets,
            producers: old.producers,
            replication: old.replication,
            epochs: old.epochs,
            state: Vec::new(),
        }
    }
}

/// A log entry's batches, decoded, by entry index.
type DecodedEntry = (u64, Arc<Vec<Bytes>>);

/// A log index and the value stored under it.
type IndexedValue = (u64, Box<[u8]>);

#[derive(Clone)]
pub struct PartitionLog {
    group: u64,
    store: Store,
    source: Arc<dyn BatchSource>,
    /// The entry the last read stopped inside of, decoded: a consumer reading
    /// on from there (the next fetch) does not decode it again. An entry holds
    /// up to a few MiB of batches and a fetch takes about 1 MiB of them. At
    /// most one entry per partition, and only while a reader is inside it.
    resume: Arc<Mutex<Option<DecodedEntry>>>,
}

impl PartitionLog {
    pub fn new(group: u64, store: Store, source: Arc<dyn BatchSource>) -> Self {
        PartitionLog {
            group,
            store,
            source,
            resume: Arc::default(),
        }
    }

    pub fn load_offsets(&self) -> Result<PartitionOffsets, StorageError> {
        match self
            .store
            .get(CF_SM_STATE, &keys::group_tag_key(self.group, TAG_PARTITION))?
        {
            Some(raw) => Ok(bincode::deserialize(&raw)?),
            None => Ok(PartitionOffsets::default()),
        }
    }

    pub fn load_producers(&self) -> Result<Producers, StorageError> {
        let prefix = keys::group_tag_key(self.group, TAG_PRODUCER);
        let mut producers = Producers::new();
        for item in self.store.scan_group(CF_SM_STATE, self.group, &prefix) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            let id: [u8; 8] = key[prefix.len()..]
                .try_into()
                .map_err(|_| self.corrupt("bad producer key".into()))?;
            producers.insert(i64::from_be_bytes(id), bincode::deserialize(&value)?);
        }
        Ok(producers)
    }

    pub fn load_epochs(&self) -> Result<LeaderEpochs, StorageError> {
        let key = keys::group_tag_key(self.group, TAG_LEADER_EPOCHS);
        match self.store.get(CF_SM_STATE, &key)? {
            None => Ok(LeaderEpochs::default()),
            Some(raw) => match raw.split_first() {
                Some((&EPOCHS_VERSION, body)) => Ok(bincode::deserialize(body)?),
                _ => Err(self.corrupt("unknown leader epochs format".into())),
            },
        }
    }

    pub fn stage_epochs(&self, write: &mut WriteBatch, epochs: &LeaderEpochs) -> Result<(), StorageError> {
        let mut value = vec![EPOCHS_VERSION];
        bincode::serialize_into(&mut value, epochs)?;
        write.put_cf(
            self.store.cf(CF_SM_STATE),
            keys::group_tag_key(self.group, TAG_LEADER_EPOCHS),
            value,
        );
        Ok(())
    }

    /// Indexes `batches`, carried by the log entry `place` names, at the next
    /// offsets and returns the base offset to answer with. Every batch's form and idempotent
    /// producers' sequences are checked first, so a refused batch leaves the
    /// whole command unapplied.
    pub fn stage_append(
        &self,
        write: &mut WriteBatch,
        offsets: &mut PartitionOffsets,
        producers: &mut Producers,
        batches: &[ValidatedBatch],
        place: BatchPlace,
        leader_epoch: i32,
    ) -> Result<Result<i64, ProduceRefusal>, StorageError> {
        if batches.iter().any(|batch| check_appendable(batch).is_err()) {
            return Ok(Err(ProduceRefusal::InvalidBatch));
        }
        let mut touched = Producers::new();
        let mut duplicates = Vec::with_capacity(batches.len());
        let mut next = offsets.next_offset;
        for batch in batches {
            let id = batch.producer_id;
            let known = touched.get(&id).or_else(|| producers.get(&id));
            match check(known, batch) {
                SequenceCheck::Refused(refusal) => return Ok(Err(refusal)),
                SequenceCheck::Duplicate(base) => duplicates.push(Some(base)),
                SequenceCheck::Append => {
                    if id >= 0 {
                        let mut state = known.cloned().unwrap_or_default();
                        record(&mut state, batch, next);
                        touched.insert(id, state);
                    }
                    duplicates.push(None);
                    // Offsets are i64 keys: a count that would overflow them is refused.
                    next = match next.checked_add(batch.record_count) {
                        Some(next) => next,
                        None => return Ok(Err(ProduceRefusal::InvalidBatch)),
                    };
                }
            }
        }
        let answer = duplicates.first().copied().flatten().unwrap_or(offsets.next_offset);
        for (ordinal, (batch, duplicate)) in batches.iter().zip(duplicates).enumerate() {
            if duplicate.is_none() {
                self.stage_batch(
                    write,
                    offsets,
                    batch,
                    place.entry,
                    place.first_ordinal + ordinal as u32,
                    leader_epoch,
                );
            }
        }
        for (id, state) in touched {
            write.put_cf(
                self.store.cf(CF_SM_STATE),
                self.producer_key(id),
                bincode::serialize(&state)?,
            );
            producers.insert(id, state);
        }
        self.stage_offsets(write, offsets)?;
        Ok(Ok(answer))
    }

    fn producer_key(&self, id: i64) -> Vec<u8> {
        let mut key = keys::group_tag_key(self.group, TAG_PRODUCER).to_vec();
        key.extend_from_slice(&id.to_be_bytes());
        key
    }

    fn stage_offsets(&self, write: &mut WriteBatch, offsets: &PartitionOffsets) -> Result<(), StorageError> {
        write.put_cf(
            self.store.cf(CF_SM_STATE),
            keys::group_tag_key(self.group, TAG_PARTITION),
            bincode::serialize(offsets)?,
        );
        Ok(())
    }

    fn stage_batch(
        &self,
        write: &mut WriteBatch,
        offsets: &mut PartitionOffsets,
        batch: &ValidatedBatch,
        entry: u64,
        ordinal: u32,
        leader_epoch: i32,
    ) {
        let base = offsets.next_offset;
        let location = BatchLocation {
            last_offset: base + batch.record_count - 1,
            max_timestamp: batch.max_timestamp,
            entry,
            ordinal,
            leader_epoch,
        };
        write.put_cf(
            self.store.cf(CF_BATCH_INDEX),
            keys::offset_key(self.group, base),
            location.encode(),
        );
        if batch.max_timestamp > offsets.max_timestamp {
            write.put_cf(
                self.store.cf(CF_TIME_INDEX),
                keys::timestamp_key(self.group, batch.max_timestamp),
                base.to_be_bytes(),
            );
            offsets.max_timestamp = batch.max_timestamp;
        }
        offsets.next_offset = base + batch.record_count;
        offsets.appended_bytes += batch.bytes.len() as u64;
    }

    /// Moves the log start forward to `requested` (never back, never past the
    /// high watermark) and drops the index entries of batches wholly below it,
    /// and the epochs that held only them. Returns the new log start.
    pub fn stage_advance_start(
        &self,
        write: &mut WriteBatch,
        offsets: &mut PartitionOffsets,
        epochs: &mut LeaderEpochs,
        requested: i64,
    ) -> Result<i64, StorageError> {
        let start = requested.clamp(offsets.log_start_offset, offsets.next_offset);
        if start > offsets.log_start_offset {
            offsets.log_start_offset = start;
            epochs.truncate_from_start(start);
            self.stage_epochs(write, epochs)?;
            let first_kept = self.batch_start_for(start)?;
            write.delete_range_cf(
                self.store.cf(CF_BATCH_INDEX),
                keys::offset_key(self.group, 0),
                keys::offset_key(self.group, first_kept),
            );
            self.stage_offsets(write, offsets)?;
        }
        Ok(offsets.log_start_offset)
    }

    /// Forgets the idempotent producers that wrote nothing since `before`;
    /// returns how many.
    pub fn stage_expire_producers(&self, write: &mut WriteBatch, producers: &mut Producers, before: i64) -> u32 {
        let ids = expired(producers, before);
        for id in &ids {
            producers.remove(id);
            write.delete_cf(self.store.cf(CF_SM_STATE), self.producer_key(*id));
        }
        ids.len() as u32
    }

    /// Records the partition's state after log entry `index`.
    pub fn stage_checkpoint(
        &self,
        write: &mut WriteBatch,
        index: u64,
        checkpoint: &Checkpoint,
    ) -> Result<(), StorageError> {
        write.put_cf(
            self.store.cf(CF_SM_STATE),
            keys::group_tag_u64_key(self.group, TAG_CHECKPOINT, index),
            checkpoint.encode()?,
        );
        Ok(())
    }

    /// Every checkpoint, oldest first: `(log index, checkpoint)`.
    pub fn checkpoints(&self) -> Result<Vec<(u64, Checkpoint)>, StorageError> {
        self.indexed_values(TAG_CHECKPOINT, "checkpoint")?
            .into_iter()
            .map(|(index, value)| Ok((index, Checkpoint::decode(&value)?)))
            .collect()
    }

    /// The values stored under `tag` followed by a log index, in index order.
    fn indexed_values(&self, tag: u8, what: &str) -> Result<Vec<IndexedValue>, StorageError> {
        let prefix = keys::group_tag_key(self.group, tag);
        let mut found = Vec::new();
        for item in self.store.scan_group(CF_SM_STATE, self.group, &prefix) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            let index = key[prefix.len()..]
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| self.corrupt(format!("bad {what} key")))?;
            found.push((index, value));
        }
        Ok(found)
    }

    /// Drops the checkpoints, and the records of compaction steps, before
    /// `index`: they are older than the snapshot.
    pub fn stage_forget_checkpoints_before(&self, write: &mut WriteBatch, index: u64) {
        for tag in [TAG_CHECKPOINT, TAG_COMPACTION_STEP] {
            write.delete_range_cf(
                self.store.cf(CF_SM_STATE),
                keys::group_tag_u64_key(self.group, tag, 0).to_vec(),
                keys::group_tag_u64_key(self.group, tag, index).to_vec(),
            );
        }
    }

    /// Records that entry `index` applied a compaction step that reads the
    /// records from `end` on.
    pub fn stage_compaction_step(&self, write: &mut WriteBatch, index: u64, end: i64) {
        write.put_cf(
            self.store.cf(CF_SM_STATE),
            keys::group_tag_u64_key(self.group, TAG_COMPACTION_STEP, index),
            end.to_be_bytes(),
        );
    }

    /// The newest checkpoint a snapshot can be made of with the log start at
    /// `log_start`: no record at or above the log start precedes it, and no
    /// compaction step after it reads a record it precedes (a replica that
    /// installs it replays those steps, and holds no record before it).
    pub fn snapshot_checkpoint(&self, log_start: i64) -> Result<Option<(u64, Checkpoint)>, StorageError> {
        let steps = self
            .indexed_values(TAG_COMPACTION_STEP, "compaction step")?
            .into_iter()
            .map(|(index, value)| {
                let end = decode_offset(&value).ok_or_else(|| self.corrupt("bad compaction step".into()))?;
                Ok((index, end))
            })
            .collect::<Result<Vec<(u64, i64)>, StorageError>>()?;
        Ok(self.checkpoints()?.into_iter().rev().find(|(index, checkpoint)| {
            let next = checkpoint.offsets.next_offset;
            let first_step_after = steps.iter().find(|(step, _)| step > index);
            next <= log_start && first_step_after.is_none_or(|(_, end)| next <= *end)
        }))
    }

    /// Replaces the partition's state with `checkpoint`, taken after entry
    /// `index` on another replica: producers, offsets, and no index entries for
    /// offsets it has not reached. Index entries below are kept: they describe
    /// committed entries, the same on every replica.
    pub fn stage_restore(
        &self,
        write: &mut WriteBatch,
        index: u64,
        checkpoint: &Checkpoint,
    ) -> Result<(), StorageError> {
        let (_, group_end) = keys::group_range(self.group);
        let next = checkpoint.offsets.next_offset;
        write.delete_range_cf(
            self.store.cf(CF_BATCH_INDEX),
            keys::offset_key(self.group, next).to_vec(),
            group_end.clone(),
        );
        for item in self
            .store
            .scan_group(CF_TIME_INDEX, self.group, &self.group.to_be_bytes())
        {
            let (key, value) = item?;
            if decode_offset(&value).is_none_or(|offset| offset >= next) {
                write.delete_cf(self.store.cf(CF_TIME_INDEX), key);
            }
        }
        let producers = keys::group_tag_key(self.group, TAG_PRODUCER);
        write.delete_range_cf(
            self.store.cf(CF_SM_STATE),
            producers.to_vec(),
            keys::group_tag_key(self.group, TAG_PRODUCER + 1).to_vec(),
        );
        for (id, state) in &checkpoint.producers {
            write.put_cf(
                self.store.cf(CF_SM_STATE),
                self.producer_key(*id),
                bincode::serialize(state)?,
            );
        }
        for tag in [TAG_CHECKPOINT, TAG_COMPACTION_STEP] {
            write.delete_range_cf(
                self.store.cf(CF_SM_STATE),
                keys::group_tag_key(self.group, tag).to_vec(),
                keys::group_tag_key(self.group, tag + 1).to_vec(),
            );
        }
        self.stage_checkpoint(write, index, checkpoint)?;
        self.stage_epochs(write, &checkpoint.epochs)?;
        self.stage_offsets(write, &checkpoint.offsets)
    }

    /// Reads whole batches starting with the one that holds `from`, stopping before
    /// `high_watermark` and once `max_bytes` is reached, each with its offset
    /// and leader epoch in its header. The first batch is returned
    /// even when it alone is larger than `max_bytes`, so a consumer always progresses.
    pub fn read(&self, from: i64, high_watermark: i64, max_bytes: usize) -> Result<Bytes, StorageError> {
        let mut out = BytesMut::new();
        let start = self.batch_start_for(from)?;
        let mut entry_batches = self
            .resume
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        // The entry and ordinal of the last batch returned.
        let mut returned: Option<(u64, u32)> = None;
        for item in self
            .store
            .scan_group(CF_BATCH_INDEX, self.group, &keys::offset_key(self.group, start))
        {
            let (key, value) = item?;
            let base = keys::key_suffix_u64(&key).unwrap_or(u64::MAX) as i64;
            if base >= high_watermark {
                break;
            }
            let location = BatchLocation::decode(&value).ok_or_else(|| self.corrupt("bad batch index entry".into()))?;
            let batch = self.batch_at(&mut entry_batches, base, &location)?;
            if !out.is_empty() && out.len() + batch.len() > max_bytes {
                break;
            }
            let at = out.len();
            out.extend_from_slice(&batch);
            set_base_offset(&mut out[at..], base);
            set_partition_leader_epoch(&mut out[at..], location.leader_epoch);
            returned = Some((location.entry, location.ordinal));
            if out.len() >= max_bytes {
                break;
            }
        }
        let unfinished = entry_batches.filter(|(entry, batches)| match returned {
            Some((last_entry, ordinal)) if last_entry == *entry => ordinal as usize + 1 < batches.len(),
            _ => true,
        });
        *self.resume.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = unfinished;
        Ok(out.freeze())
    }

    /// The batch `location` points at, reading its entry unless `cached` holds it.
    fn batch_at(
        &self,
        cached: &mut Option<DecodedEntry>,
        base: i64,
        location: &BatchLocation,
    ) -> Result<Bytes, StorageError> {
        if cached.as_ref().is_none_or(|(entry, _)| *entry != location.entry) {
            let batches = self
                .source
                .batches(location.entry)?
                .ok_or_else(|| self.corrupt(format!("the log no longer holds the batch at offset {base}")))?;
            *cached = Some((location.entry, Arc::new(batches)));
        }
        cached
            .as_ref()
            .and_then(|(_, batches)| batches.get(location.ordinal as usize).cloned())
            .ok_or_else(|| {
                self.corrupt(format!(
                    "log entry {} has no batch {}",
                    location.entry, location.ordinal
                ))
            })
    }

    /// The base offset of the batch holding `offset`, or `offset` when no batch does.
    fn batch_start_for(&self, offset: i64) -> Result<i64, StorageError> {
        let mut iter = self.store.db().raw_iterator_cf(self.store.cf(CF_BATCH_INDEX));
        iter.seek_for_prev(keys::offset_key(self.group, offset));
        if let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            if key.starts_with(&self.group.to_be_bytes()) {
                let base = keys::key_suffix_u64(key).unwrap_or(0) as i64;
                let location =
                    BatchLocation::decode(value).ok_or_else(|| self.corrupt("bad batch index entry".into()))?;
                if location.last_offset >= offset {
                    return Ok(base);
                }
            }
        }
        iter.status()?;
        Ok(offset)
    }

    /// The first record at or after `log_start` whose timestamp is at least
    /// `timestamp`: `(offset, its timestamp)`. The time index names the first
    /// batch that reached it; batches before that one are all older.
    pub fn offset_for_timestamp(&self, timestamp: i64, log_start: i64) -> Result<Option<(i64, i64)>, StorageError> {
        let Some(first) = self.first_batch_reaching(timestamp)? else {
            return Ok(None);
        };
        let from = first.max(self.batch_start_for(log_start)?);
        let mut cached = None;
        for item in self
            .store
            .scan_group(CF_BATCH_INDEX, self.group, &keys::offset_key(self.group, from))
        {
            let (key, value) = item?;
            let base = keys::key_suffix_u64(&key).unwrap_or(u64::MAX) as i64;
            let location = BatchLocation::decode(&value).ok_or_else(|| self.corrupt("bad batch index entry".into()))?;
            if location.max_timestamp < timestamp {
                continue;
            }
            let mut batch = self.batch_at(&mut cached, base, &location)?.to_vec();
            set_base_offset(&mut batch, base);
            let set =
                RecordBatchDecoder::decode(&mut Bytes::from(batch)).map_err(|err| self.corrupt(err.to_string()))?;
            // A LogAppendTime batch's records carry the producer's times; what
            // counts, as clients read them, is the batch's max timestamp: the
            // broker's time of the append.
            let effective = |record: &Record| match record.timestamp_type {
                TimestampType::LogAppend => location.max_timestamp,
                TimestampType::Creation => record.timestamp,
            };
            if let Some(record) = set
                .records
                .iter()
                .find(|r| effective(r) >= timestamp && r.offset >= log_start)
            {
                return Ok(Some((record.offset, effective(record))));
            }
        }
        Ok(None)
    }

    fn first_batch_reaching(&self, timestamp: i64) -> Result<Option<i64>, StorageError> {
        let from = keys::timestamp_key(self.group, timestamp);
        match self.store.scan_group(CF_TIME_INDEX, self.group, &from).next() {
            Some(item) => {
                let (_, value) = item?;
                decode_offset(&value)
                    .map(Some)
                    .ok_or_else(|| self.corrupt("bad time index entry".into()))
            }
            None => Ok(None),
        }
    }

    /// CRC-32 over the partition's batches from `log_start` (their index entries
    /// and bytes), its offsets and its producers, and the number of batches:
    /// equal on replicas that applied the same entries.
    pub fn checksum(&self, log_start: i64) -> Result<(u32, u64), StorageError> {
        let mut hasher = crc32fast::Hasher::new();
        let mut batches = 0;
        let mut cached = None;
        let start = self.batch_start_for(log_start)?;
        for item in self
            .store
            .scan_group(CF_BATCH_INDEX, self.group, &keys::offset_key(self.group, start))
        {
            let (key, value) = item?;
            let base = keys::key_suffix_u64(&key).unwrap_or(u64::MAX) as i64;
            let location = BatchLocation::decode(&value).ok_or_else(|| self.corrupt("bad batch index entry".into()))?;
            hasher.update(&key);
            hasher.update(&value);
            hasher.update(&self.batch_at(&mut cached, base, &location)?);
            batches += 1;
        }
        hasher.update(&bincode::serialize(&self.load_offsets()?)?);
        hasher.update(&bincode::serialize(&self.load_producers()?)?);
        hasher.update(&bincode::serialize(&self.load_epochs()?)?);
        Ok((hasher.finalize(), batches))
    }

    fn corrupt(&self, what: String) -> StorageError {
        StorageError::Corrupt {
            group: self.group,
            what,
        }
    }
}

fn decode_offset(raw: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(raw.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::storage::batch::tests::ANY;
    use crate::storage::batch::tests::{encode_batch, encode_producer_batch};
    use crate::storage::batch::validate_produce_records;
    use crate::storage::epochs::EpochStart;
    use kafka_protocol::records::Compression;

    /// Log entries held in memory, as the replication layer would hold them.
    #[derive(Default)]
    struct Entries(Mutex<HashMap<u64, Vec<Bytes>>>);

    impl BatchSource for Entries {
        fn batches(&self, entry: u64) -> Result<Option<Vec<Bytes>>, StorageError> {
            Ok(self.0.lock().unwrap().get(&entry).cloned())
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        entries: Arc<Entries>,
        next_entry: u64,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            Fixture {
                _dir: dir,
                store,
                entries: Arc::default(),
                next_entry: 1,
            }
        }

        fn log(&self, group: u64) -> PartitionLog {
            PartitionLog::new(group, self.store.clone(), self.entries.clone())
        }

        fn append(
            &mut self,
            log: &PartitionLog,
            offsets: &mut PartitionOffsets,
            producers: &mut Producers,
            batches: &[ValidatedBatch],
        ) -> Result<i64, ProduceRefusal> {
            let entry = self.next_entry;
            self.next_entry += 1;
            self.entries
                .0
                .lock()
                .unwrap()
                .insert(entry, batches.iter().map(|b| b.bytes.clone()).collect());
            let mut write = WriteBatch::default();
            let answer = log
                .stage_append(
                    &mut write,
                    offsets,
                    producers,
                    batches,
                    BatchPlace {
                        entry,
                        first_ordinal: 0,
                    },
                    4,
                )
                .unwrap();
            self.store.write_buffered(write).unwrap();
            answer
        }

        fn append_values(&mut self, log: &PartitionLog, offsets: &mut PartitionOffsets, values: &[&str]) -> i64 {
            let batch = validate_produce_records(&encode_batch(values, Compression::None), &ANY).unwrap();
            self.append(log, offsets, &mut Producers::new(), &batch).unwrap()
        }
    }

    fn offsets_in(bytes: Bytes) -> Vec<i64> {
        RecordBatchDecoder::decode_all(&mut bytes.clone())
            .unwrap()
            .iter()
            .flat_map(|s| s.records.iter().map(|r| r.offset))
            .collect()
    }

    #[test]
    fn idempotent_retries_are_answered_with_the_first_offset_and_survive_reload() {
        let mut fixture = Fixture::new();
        let log = fixture.log(3);
        let mut offsets = PartitionOffsets::default();
        let mut producers = Producers::new();
        let idempotent = |base_sequence| {
            let bytes = encode_producer_batch(&["a", "b"], Compression::None, 11, 0, base_sequence);
            validate_produce_records(&bytes, &ANY).unwrap()
        };
        let batch = idempotent(0);
        assert_eq!(fixture.append(&log, &mut offsets, &mut producers, &batch), Ok(0));
        assert_eq!(
            fixture.append(&log, &mut offsets, &mut producers, &batch),
            Ok(0),
            "retry"
        );
        assert_eq!(offsets.next_offset, 2, "the retry appended nothing");
        assert_eq!(
            fixture.append(&log, &mut offsets, &mut producers, &idempotent(5)),
            Err(ProduceRefusal::OutOfOrderSequence)
        );
        assert_eq!(log.load_producers().unwrap(), producers);
        assert_eq!(log.load_offsets().unwrap().next_offset, 2);
    }

    #[test]
    fn a_forged_batch_is_refused_and_appends_nothing() {
        let mut fixture = Fixture::new();
        let log = fixture.log(2);
        let mut offsets = PartitionOffsets::default();
        fixture.append_values(&log, &mut offsets, &["a"]);
        let mut good = validate_produce_records(&encode_batch(&["b"], Compression::None), &ANY).unwrap();
        let mut short = good[0].clone();
        short.bytes = short.bytes.slice(..4);
        let mut huge = good[0].clone();
        huge.record_count = i64::MAX;
        for forged in [short, huge] {
            good.push(forged);
            let mut write = WriteBatch::default();
            let answer = log
                .stage_append(
                    &mut write,
                    &mut offsets,
                    &mut Producers::new(),
                    &good,
                    BatchPlace {
                        entry: 9,
                        first_ordinal: 0,
                    },
                    0,
                )
                .unwrap();
            assert_eq!(answer, Err(ProduceRefusal::InvalidBatch));
            assert!(write.is_empty(), "nothing staged");
            assert_eq!(offsets.next_offset, 1);
            good.pop();
        }
    }

    #[test]
    fn requests_folded_into_one_entry_read_back_by_their_ordinals() {
        let fixture = Fixture::new();
        let log = fixture.log(7);
        let mut offsets = PartitionOffsets::default();
        let requests: Vec<Vec<ValidatedBatch>> = [&["a", "b"][..], &["c"], &["d", "e", "f"]]
            .iter()
            .map(|values| validate_produce_records(&encode_batch(values, Compression::None), &ANY).unwrap())
            .collect();
        let entry = 4;
        let carried = requests.iter().flatten().map(|b| b.bytes.clone()).collect();
        fixture.entries.0.lock().unwrap().insert(entry, carried);
        let mut write = WriteBatch::default();
        let mut first_ordinal = 0;
        let mut bases = Vec::new();
        for batches in &requests {
            let place = BatchPlace { entry, first_ordinal };
            bases.push(
                log.stage_append(&mut write, &mut offsets, &mut Producers::new(), batches, place, 0)
                    .unwrap()
                    .unwrap(),
            );
            first_ordinal += batches.len() as u32;
        }
        fixture.store.write_buffered(write).unwrap();
        assert_eq!(bases, vec![0, 2, 3]);
        assert_eq!(offsets_in(log.read(0, 6, 1 << 20).unwrap()), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(offsets_in(log.read(3, 6, 1 << 20).unwrap()), vec![3, 4, 5]);
        // Reading on in small steps resumes inside the entry the last read stopped in.
        assert_eq!(offsets_in(log.read(0, 6, 1).unwrap()), vec![0, 1]);
        fixture.entries.0.lock().unwrap().remove(&entry);
        assert_eq!(offsets_in(log.read(2, 6, 1).unwrap()), vec![2]);
        assert_eq!(offsets_in(log.read(3, 6, 1).unwrap()), vec![3, 4, 5]);
        assert!(log.read(0, 6, 1).is_err(), "a finished entry is not kept");
    }

    #[test]
    fn appends_assign_dense_offsets_and_read_back_from_the_entries() {
        let mut fixture = Fixture::new();
        let log = fixture.log(5);
        let other = fixture.log(6);
        let mut offsets = PartitionOffsets::default();
        assert_eq!(fixture.append_values(&log, &mut offsets, &["a", "b", "c"]), 0);
        assert_eq!(fixture.append_values(&log, &mut offsets, &["d", "e"]), 3);
        fixture.append_values(&other, &mut PartitionOffsets::default(), &["x"]);
        let loaded = log.load_offsets().unwrap();
        assert_eq!((loaded.log_start_offset, loaded.next_offset), (0, 5));
        assert!(loaded.appended_bytes > 0);

        assert_eq!(offsets_in(log.read(0, 5, 1 << 20).unwrap()), vec![0, 1, 2, 3, 4]);
        // Reading from the middle of a batch returns that whole batch.
        assert_eq!(offsets_in(log.read(4, 5, 1 << 20).unwrap()), vec![3, 4]);
        // The high watermark hides later batches; max_bytes still yields one batch.
        assert_eq!(offsets_in(log.read(0, 3, 1 << 20).unwrap()), vec![0, 1, 2]);
        assert_eq!(offsets_in(log.read(0, 5, 1).unwrap()), vec![0, 1, 2]);
        assert!(log.read(5, 5, 1 << 20).unwrap().is_empty());

        fixture.entries.0.lock().unwrap().remove(&1);
        assert!(
            matches!(log.read(0, 5, 1 << 20), Err(StorageError::Corrupt { .. })),
            "a batch whose entry is gone is an error, not a silent gap"
        );
    }

    #[test]
    fn the_log_start_moves_forward_only_and_drops_whole_batches_below_it() {
        let mut fixture = Fixture::new();
        let log = fixture.log(4);
        let mut offsets = PartitionOffsets::default();
        for values in [["a", "b"], ["c", "d"], ["e", "f"]] {
            fixture.append_values(&log, &mut offsets, &values);
        }
        let mut epochs = LeaderEpochs::default();
        epochs.begin(0);
        epochs.begin(4);
        let mut write = WriteBatch::default();
        assert_eq!(
            log.stage_advance_start(&mut write, &mut offsets, &mut epochs, 3)
                .unwrap(),
            3
        );
        assert_eq!(
            log.stage_advance_start(&mut write, &mut offsets, &mut epochs, 1)
                .unwrap(),
            3,
            "never back"
        );
        fixture.store.write_buffered(write).unwrap();
        assert_eq!(offsets_in(log.read(3, 6, 1 << 20).unwrap()), vec![2, 3, 4, 5]);
        assert_eq!(
            offsets_in(log.read(0, 6, 1 << 20).unwrap()),
            vec![2, 3, 4, 5],
            "the batch holding the start stays whole"
        );
        let mut write = WriteBatch::default();
        assert_eq!(
            log.stage_advance_start(&mut write, &mut offsets, &mut epochs, 99)
                .unwrap(),
            6,
            "not past the end"
        );
        fixture.store.write_buffered(write).unwrap();
        assert!(log.read(0, 6, 1 << 20).unwrap().is_empty());
        assert_eq!(log.load_offsets().unwrap().log_start_offset, 6);
        assert_eq!(
            log.load_epochs().unwrap().entries(),
            &[EpochStart {
                epoch: 1,
                start_offset: 6
            }],
            "the epochs below the log start are forgotten"
        );
    }

    /// Leader epochs of each batch and the history, written as apply writes
    /// them, read back after the database is closed and opened again; the
    /// formats before epochs still read.
    #[test]
    fn leader_epochs_are_stamped_on_read_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Arc<Entries> = Arc::default();
        let mut epochs = LeaderEpochs::default();
        {
            let store = Store::open(dir.path()).unwrap();
            let log = PartitionLog::new(9, store.clone(), entries.clone());
            let mut offsets = PartitionOffsets::default();
            for (entry, (values, leader_offset)) in [(&["a", "b"][..], 0), (&["c"][..], 2), (&["d", "e"][..], 2)]
                .into_iter()
                .enumerate()
            {
                let mut write = WriteBatch::default();
                if entry != 2 {
                    epochs.begin(leader_offset);
                    log.stage_epochs(&mut write, &epochs).unwrap();
                }
                let batch = validate_produce_records(&encode_batch(values, Compression::None), &ANY).unwrap();
                let entry = entry as u64 + 1;
                entries
                    .0
                    .lock()
                    .unwrap()
                    .insert(entry, batch.iter().map(|b| b.bytes.clone()).collect());
                log.stage_append(
                    &mut write,
                    &mut offsets,
                    &mut Producers::new(),
                    &batch,
                    BatchPlace {
                        entry,
                        first_ordinal: 0,
                    },
                    epochs.current(),
                )
                .unwrap()
                .unwrap();
                store.write_durable(write).unwrap();
            }
        }
        let store = Store::open(dir.path()).unwrap();
        let log = PartitionLog::new(9, store, entries);
        assert_eq!(log.load_epochs().unwrap(), epochs);
        assert_eq!(epochs.current(), 1);
        let read = log.read(0, 5, 1 << 20).unwrap();
        let stamped: Vec<(i64, i32)> = RecordBatchDecoder::decode_all(&mut read.clone())
            .unwrap()
            .iter()
            .flat_map(|set| set.records.iter().map(|r| (r.offset, r.partition_leader_epoch)))
            .collect();
        assert_eq!(stamped, vec![(0, 0), (1, 0), (2, 1), (3, 1), (4, 1)]);

        let old_location = &BatchLocation {
            last_offset: 3,
            max_timestamp: 7,
            entry: 2,
            ordinal: 0,
            leader_epoch: 5,
        }
        .encode()[..BatchLocation::V1_LEN];
        let mut old_location = old_location.to_vec();
        old_location[0] = BATCH_INDEX_V1;
        assert_eq!(
            BatchLocation::decode(&old_location).map(|l| (l.last_offset, l.leader_epoch)),
            Some((3, NO_EPOCH))
        );
        #[derive(Serialize)]
        struct V1<'a>(&'a PartitionOffsets, &'a Producers, &'a [u8]);
        let mut old_checkpoint = vec![CHECKPOINT_V1];
        bincode::serialize_into(
            &mut old_checkpoint,
            &V1(&log.load_offsets().unwrap(), &Producers::new(), b"r"),
        )
        .unwrap();
        let decoded = Checkpoint::decode(&old_checkpoint).unwrap();
        assert_eq!(
            (decoded.offsets.next_offset, decoded.epochs),
            (5, LeaderEpochs::default())
        );
        #[derive(Serialize)]
        struct V2<'a>(&'a PartitionOffsets, &'a Producers, &'a [u8], &'a LeaderEpochs);
        let mut v2_checkpoint = vec![CHECKPOINT_V2];
        bincode::serialize_into(
            &mut v2_checkpoint,
            &V2(&log.load_offsets().unwrap(), &Producers::new(), b"r", &epochs),
        )
        .unwrap();
        let decoded = Checkpoint::decode(&v2_checkpoint).unwrap();
        assert_eq!((decoded.epochs, decoded.state), (epochs.clone(), Vec::new()));
        assert!(Checkpoint::decode(&[9, 0]).is_err(), "a future version is refused");
    }

    #[test]
    fn producers_silent_since_the_cutoff_expire_and_stay_gone_after_reload() {
        let mut fixture = Fixture::new();
        let log = fixture.log(8);
        let mut offsets = PartitionOffsets::default();
        let mut producers = Producers::new();
        for id in [21, 22] {
            let batch =
                validate_produce_records(&encode_producer_batch(&["a"], Compression::None, id, 0, 0), &ANY).unwrap();
            fixture.append(&log, &mut offsets, &mut producers, &batch).unwrap();
        }
        producers.get_mut(&22).unwrap().last_timestamp = 1_900_000_000_000;
        let mut write = WriteBatch::default();
        assert_eq!(
            log.stage_expire_producers(&mut write, &mut producers, 1_800_000_000_000),
            1
        );
        fixture.store.write_buffered(write).unwrap();
        assert_eq!(producers.keys().copied().collect::<Vec<_>>(), vec![22]);
        assert!(!log.load_producers().unwrap().contains_key(&21));
    }

    #[test]
    fn finds_offsets_by_timestamp_through_the_time_index() {
        let mut fixture = Fixture::new();
        let log = fixture.log(1);
        let mut offsets = PartitionOffsets::default();
        fixture.append_values(&log, &mut offsets, &["a", "b", "c"]);
        fixture.append_values(&log, &mut offsets, &["d", "e"]);
        assert_eq!(offsets.max_timestamp, 1_700_000_000_002);
        assert_eq!(
            log.offset_for_timestamp(1_700_000_000_001, 0).unwrap(),
            Some((1, 1_700_000_000_001))
        );
        assert_eq!(log.offset_for_timestamp(0, 0).unwrap(), Some((0, 1_700_000_000_000)));
        assert_eq!(
            log.offset_for_timestamp(0, 4).unwrap(),
            Some((4, 1_700_000_000_001)),
            "nothing below the log start"
        );
        assert_eq!(log.offset_for_timestamp(1_800_000_000_000, 0).unwrap(), None);
    }

    #[test]
    fn a_restored_checkpoint_replaces_state_and_forgets_later_offsets() {
        let mut fixture = Fixture::new();
        let log = fixture.log(7);
        let mut offsets = PartitionOffsets::default();
        let mut producers = Producers::new();
        let batch = validate_produce_records(&encode_producer_batch(&["a"], Compression::None, 5, 0, 0), &ANY).unwrap();
        fixture.append(&log, &mut offsets, &mut producers, &batch).unwrap();
        let mut epochs = LeaderEpochs::default();
        epochs.begin(0);
        let checkpoint = Checkpoint {
            offsets,
            producers: producers.clone(),
            replication: b"raft".to_vec(),
            epochs: epochs.clone(),
            state: Vec::new(),
        };
        let mut write = WriteBatch::default();
        log.stage_checkpoint(&mut write, 1, &checkpoint).unwrap();
        fixture.store.write_buffered(write).unwrap();
        fixture.append_values(&log, &mut offsets, &["b", "c"]);
        let (before, _) = log.checksum(0).unwrap();

        let mut write = WriteBatch::default();
        log.stage_restore(&mut write, 1, &checkpoint).unwrap();
        fixture.store.write_buffered(write).unwrap();
        assert_eq!(log.load_offsets().unwrap(), checkpoint.offsets);
        assert_eq!(log.load_producers().unwrap(), producers);
        assert_eq!(offsets_in(log.read(0, 3, 1 << 20).unwrap()), vec![0]);
        assert_eq!(log.load_epochs().unwrap(), epochs);
        assert_eq!(log.checkpoints().unwrap(), vec![(1, checkpoint)]);
        assert_ne!(log.checksum(0).unwrap().0, before);
        assert_eq!(log.checksum(0).unwrap().1, 1);
    }

    /// A snapshot made of a checkpoint taken between a compaction's scan and
    /// its step would make the replica that installs it replay the step
    /// without the records from the scan's end that the step reads.
    #[test]
    fn no_snapshot_is_made_of_a_checkpoint_a_later_compaction_step_reads_before() {
        let fixture = Fixture::new();
        let log = fixture.log(5);
        let at = |next_offset| Checkpoint {
            offsets: PartitionOffsets {
                log_start_offset: 0,
                next_offset,
                max_timestamp: -1,
                appended_bytes: 0,
            },
            producers: Producers::new(),
            replication: Vec::new(),
            epochs: LeaderEpochs::default(),
            state: Vec::new(),
        };
        let mut write = WriteBatch::default();
        log.stage_checkpoint(&mut write, 10, &at(100)).unwrap();
        log.stage_checkpoint(&mut write, 20, &at(200)).unwrap();
        // Entry 25 compacted up to offset 150, scanned before entry 20.
        log.stage_compaction_step(&mut write, 25, 150);
        log.stage_checkpoint(&mut write, 30, &at(300)).unwrap();
        fixture.store.write_buffered(write).unwrap();
        let chosen = |log_start| log.snapshot_checkpoint(log_start).unwrap().map(|(index, _)| index);
        assert_eq!(chosen(250), Some(10), "entry 20's checkpoint precedes offset 150");
        assert_eq!(chosen(300), Some(30), "entry 30 is after the step");
        assert_eq!(chosen(99), None);
        let mut forget = WriteBatch::default();
        log.stage_forget_checkpoints_before(&mut forget, 30);
        fixture.store.write_buffered(forget).unwrap();
        assert_eq!(chosen(300), Some(30));
    }
}
