//! One partition's records in RocksDB: batches keyed by base offset, plus a
//! small index of (last offset, max timestamp) per batch.

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::RecordBatchDecoder;
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use super::batch::{check_appendable, seal, unseal, with_base_offset, ValidatedBatch};
use super::keys::{self, CF_BATCH_INDEX, CF_RECORDS, CF_SM_STATE, TAG_PARTITION, TAG_PRODUCER};
use super::producers::{check, record, Producers, SequenceCheck};
use super::{StorageError, Store};
use crate::raft::command::ProduceRefusal;

/// Offsets of a partition. Everything below `next_offset` is committed and applied,
/// so `next_offset` is the high watermark Fetch and ListOffsets report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffsets {
    pub log_start_offset: i64,
    pub next_offset: i64,
}

/// What the index keeps of each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchSummary {
    last_offset: i64,
    max_timestamp: i64,
}

impl BatchSummary {
    fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.last_offset.to_be_bytes());
        out[8..].copy_from_slice(&self.max_timestamp.to_be_bytes());
        out
    }

    fn decode(raw: &[u8]) -> Option<Self> {
        Some(BatchSummary {
            last_offset: i64::from_be_bytes(raw.get(..8)?.try_into().ok()?),
            max_timestamp: i64::from_be_bytes(raw.get(8..16)?.try_into().ok()?),
        })
    }
}

#[derive(Clone)]
pub struct PartitionLog {
    group: u64,
    store: Store,
}

impl PartitionLog {
    pub fn new(group: u64, store: Store) -> Self {
        PartitionLog { group, store }
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

    /// Adds `batches` to `write` at the next offsets and returns the base offset
    /// to answer with. Every batch's form and idempotent producers' sequences are
    /// checked first, so a refused batch leaves the whole command unapplied.
    pub fn stage_append(
        &self,
        write: &mut WriteBatch,
        offsets: &mut PartitionOffsets,
        producers: &mut Producers,
        batches: &[ValidatedBatch],
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
        for (batch, duplicate) in batches.iter().zip(duplicates) {
            if duplicate.is_none() {
                self.stage_batch(write, offsets, batch);
            }
        }
        for (id, state) in touched {
            let mut key = keys::group_tag_key(self.group, TAG_PRODUCER).to_vec();
            key.extend_from_slice(&id.to_be_bytes());
            write.put_cf(self.store.cf(CF_SM_STATE), key, bincode::serialize(&state)?);
            producers.insert(id, state);
        }
        write.put_cf(
            self.store.cf(CF_SM_STATE),
            keys::group_tag_key(self.group, TAG_PARTITION),
            bincode::serialize(offsets)?,
        );
        Ok(Ok(answer))
    }

    fn stage_batch(&self, write: &mut WriteBatch, offsets: &mut PartitionOffsets, batch: &ValidatedBatch) {
        let base = offsets.next_offset;
        let key = keys::offset_key(self.group, base);
        write.put_cf(
            self.store.cf(CF_RECORDS),
            key,
            seal(&with_base_offset(&batch.bytes, base)),
        );
        let summary = BatchSummary {
            last_offset: base + batch.record_count - 1,
            max_timestamp: batch.max_timestamp,
        };
        write.put_cf(self.store.cf(CF_BATCH_INDEX), key, summary.encode());
        offsets.next_offset = base + batch.record_count;
    }

    /// Reads whole batches starting with the one that holds `from`, stopping before
    /// `high_watermark` and once `max_bytes` is reached. The first batch is returned
    /// even when it alone is larger than `max_bytes`, so a consumer always progresses.
    pub fn read(&self, from: i64, high_watermark: i64, max_bytes: usize) -> Result<Bytes, StorageError> {
        let mut out = BytesMut::new();
        let start = self.batch_start_for(from)?;
        for item in self
            .store
            .scan_group(CF_RECORDS, self.group, &keys::offset_key(self.group, start))
        {
            let (key, value) = item?;
            let base = keys::key_suffix_u64(&key).unwrap_or(u64::MAX) as i64;
            if base >= high_watermark {
                break;
            }
            let batch =
                unseal(&value).ok_or_else(|| self.corrupt(format!("checksum mismatch in batch at offset {base}")))?;
            if !out.is_empty() && out.len() + batch.len() > max_bytes {
                break;
            }
            out.extend_from_slice(batch);
            if out.len() >= max_bytes {
                break;
            }
        }
        Ok(out.freeze())
    }

    /// The base offset of the batch holding `offset`, or `offset` when no batch does.
    fn batch_start_for(&self, offset: i64) -> Result<i64, StorageError> {
        let mut iter = self.store.db().raw_iterator_cf(self.store.cf(CF_BATCH_INDEX));
        iter.seek_for_prev(keys::offset_key(self.group, offset));
        if let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            if key.starts_with(&self.group.to_be_bytes()) {
                let base = keys::key_suffix_u64(key).unwrap_or(0) as i64;
                let summary =
                    BatchSummary::decode(value).ok_or_else(|| self.corrupt("bad batch index entry".into()))?;
                if summary.last_offset >= offset {
                    return Ok(base);
                }
            }
        }
        iter.status()?;
        Ok(offset)
    }

    /// The first record whose timestamp is at least `timestamp`: `(offset, its timestamp)`.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>, StorageError> {
        for item in self
            .store
            .scan_group(CF_BATCH_INDEX, self.group, &keys::offset_key(self.group, 0))
        {
            let (key, value) = item?;
            let summary = BatchSummary::decode(&value).ok_or_else(|| self.corrupt("bad batch index entry".into()))?;
            if summary.max_timestamp < timestamp {
                continue;
            }
            let raw = self
                .store
                .get(CF_RECORDS, &key)?
                .ok_or_else(|| self.corrupt("batch index points at a missing batch".into()))?;
            let batch = unseal(&raw).ok_or_else(|| self.corrupt("checksum mismatch".into()))?;
            let set = RecordBatchDecoder::decode(&mut Bytes::copy_from_slice(batch))
                .map_err(|err| self.corrupt(err.to_string()))?;
            if let Some(record) = set.records.iter().find(|r| r.timestamp >= timestamp) {
                return Ok(Some((record.offset, record.timestamp)));
            }
        }
        Ok(None)
    }

    fn corrupt(&self, what: String) -> StorageError {
        StorageError::Corrupt {
            group: self.group,
            what,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::tests::{encode_batch, encode_producer_batch};
    use kafka_protocol::records::Compression;

    fn append(log: &PartitionLog, offsets: &mut PartitionOffsets, values: &[&str]) -> i64 {
        let bytes = encode_batch(values, Compression::None);
        let batch = crate::storage::batch::validate_produce_records(&bytes, 1 << 20).unwrap();
        let mut write = WriteBatch::default();
        let base = log
            .stage_append(&mut write, offsets, &mut Producers::new(), &batch)
            .unwrap()
            .unwrap();
        log.store.write_buffered(write).unwrap();
        base
    }

    #[test]
    fn idempotent_retries_are_answered_with_the_first_offset_and_survive_reload() {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::new(3, Store::open(dir.path()).unwrap());
        let mut offsets = PartitionOffsets::default();
        let mut producers = Producers::new();
        let idempotent = |base_sequence| {
            let bytes = encode_producer_batch(&["a", "b"], Compression::None, 11, 0, base_sequence);
            crate::storage::batch::validate_produce_records(&bytes, 1 << 20).unwrap()
        };
        let batch = idempotent(0);
        let mut write = WriteBatch::default();
        assert_eq!(
            log.stage_append(&mut write, &mut offsets, &mut producers, &batch)
                .unwrap(),
            Ok(0)
        );
        assert_eq!(
            log.stage_append(&mut write, &mut offsets, &mut producers, &batch)
                .unwrap(),
            Ok(0),
            "retry"
        );
        assert_eq!(offsets.next_offset, 2, "the retry appended nothing");
        assert_eq!(
            log.stage_append(&mut write, &mut offsets, &mut producers, &idempotent(5))
                .unwrap(),
            Err(ProduceRefusal::OutOfOrderSequence)
        );
        log.store.write_buffered(write).unwrap();
        assert_eq!(log.load_producers().unwrap(), producers);
        assert_eq!(log.load_offsets().unwrap().next_offset, 2);
    }

    #[test]
    fn a_forged_batch_is_refused_and_appends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::new(2, Store::open(dir.path()).unwrap());
        let mut offsets = PartitionOffsets::default();
        append(&log, &mut offsets, &["a"]);
        let mut good =
            crate::storage::batch::validate_produce_records(&encode_batch(&["b"], Compression::None), 1 << 20).unwrap();
        let mut short = good[0].clone();
        short.bytes = short.bytes.slice(..4);
        let mut huge = good[0].clone();
        huge.record_count = i64::MAX;
        for forged in [short, huge] {
            good.push(forged);
            let mut write = WriteBatch::default();
            let answer = log
                .stage_append(&mut write, &mut offsets, &mut Producers::new(), &good)
                .unwrap();
            assert_eq!(answer, Err(ProduceRefusal::InvalidBatch));
            assert!(write.is_empty(), "nothing staged");
            assert_eq!(offsets.next_offset, 1);
            good.pop();
        }
    }

    #[test]
    fn appends_assign_dense_offsets_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let log = PartitionLog::new(5, store.clone());
        let other = PartitionLog::new(6, store);
        let mut offsets = PartitionOffsets::default();
        assert_eq!(append(&log, &mut offsets, &["a", "b", "c"]), 0);
        assert_eq!(append(&log, &mut offsets, &["d", "e"]), 3);
        append(&other, &mut PartitionOffsets::default(), &["x"]);
        assert_eq!(
            log.load_offsets().unwrap(),
            PartitionOffsets {
                log_start_offset: 0,
                next_offset: 5
            }
        );

        let all = log.read(0, 5, 1 << 20).unwrap();
        let sets = RecordBatchDecoder::decode_all(&mut all.clone()).unwrap();
        let offsets_read: Vec<i64> = sets.iter().flat_map(|s| s.records.iter().map(|r| r.offset)).collect();
        assert_eq!(offsets_read, vec![0, 1, 2, 3, 4]);

        // Reading from the middle of a batch returns that whole batch.
        let from_middle = log.read(4, 5, 1 << 20).unwrap();
        let sets = RecordBatchDecoder::decode_all(&mut from_middle.clone()).unwrap();
        assert_eq!(sets[0].records[0].offset, 3);
        // The high watermark hides later batches; max_bytes still yields one batch.
        assert_eq!(
            RecordBatchDecoder::decode_all(&mut log.read(0, 3, 1 << 20).unwrap())
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            RecordBatchDecoder::decode_all(&mut log.read(0, 5, 1).unwrap())
                .unwrap()
                .len(),
            1
        );
        assert!(log.read(5, 5, 1 << 20).unwrap().is_empty());
    }

    #[test]
    fn finds_offsets_by_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::new(1, Store::open(dir.path()).unwrap());
        let mut offsets = PartitionOffsets::default();
        append(&log, &mut offsets, &["a", "b", "c"]);
        assert_eq!(
            log.offset_for_timestamp(1_700_000_000_001).unwrap(),
            Some((1, 1_700_000_000_001))
        );
        assert_eq!(log.offset_for_timestamp(1_800_000_000_000).unwrap(), None);
    }

    #[test]
    fn corruption_on_disk_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let log = PartitionLog::new(1, store.clone());
        append(&log, &mut PartitionOffsets::default(), &["a"]);
        let key = keys::offset_key(1, 0);
        let mut value = store.get(CF_RECORDS, &key).unwrap().unwrap();
        let last = value.len() - 1;
        value[last] ^= 0x40;
        store.db().put_cf(store.cf(CF_RECORDS), key, value).unwrap();
        assert!(matches!(log.read(0, 1, 1 << 20), Err(StorageError::Corrupt { .. })));
    }
}
