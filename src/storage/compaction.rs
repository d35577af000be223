//! Compaction of a partition's log (`cleanup.policy=compact`), the parts
//! that read records: which records are live, the batches that restate them,
//! and the keys a restatement must not overwrite.
//!
//! Every replica must hold the same log, so no replica rewrites its files.
//! The leader scans its log up to a cleanable end, finds the newest record of
//! each key, and proposes the live records below that end as new batches
//! (a [`crate::raft::command::Compaction`]); applying it appends them at the
//! head and moves the log start to the cleanable end, below which whole log
//! files are then freed as retention frees them. Records appended between
//! the scan and the apply may supersede a restated key: the apply reads the
//! keys of that stretch from its own log, identical on every replica, and
//! drops those restated records.
//!
//! A restated record is a batch of its own, so that the apply can drop it
//! alone: a record's key decides, and a batch's bytes come from the log
//! entry that carried them, unchanged.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hasher};

use bytes::{Buf, Bytes};
use kafka_protocol::records::Record;

use super::batch::{broker_batch, decode_stored, BrokerRecord, ValidatedBatch};
use super::partition::PartitionLog;
use super::StorageError;

/// The most keys a leader's scan indexes per partition: about 64 bytes each,
/// so 256 MiB at most. A scan that meets more stops there, and compaction
/// cleans the stretch scanned so far.
pub const MAX_INDEXED_KEYS: usize = 4 << 20;
/// How much a scan reads at a time.
const READ_BYTES: usize = 1 << 20;

/// Why records could not be scanned.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A stored batch does not decode: every replica holds the same bytes,
    /// so every replica refuses alike.
    #[error("a stored batch cannot be decoded: {0}")]
    Undecodable(String),
}

/// A compacted topic's settings, in Kafka's terms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompactionRules {
    /// `min.cleanable.dirty.ratio`: the share of removable records in the
    /// cleanable stretch at which it is compacted.
    pub min_cleanable_dirty_ratio: f64,
    /// `delete.retention.ms`: how long a tombstone (a null value) stays.
    pub delete_retention_ms: i64,
    /// `min.compaction.lag.ms`: records younger than this are not compacted yet.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`: a superseded record older than this makes
    /// the stretch due whatever its dirty share.
    pub max_compaction_lag_ms: i64,
    /// `retention.ms` when `cleanup.policy` also holds `delete`: records
    /// older than it go, even the newest of their key.
    pub retention_ms: Option<i64>,
}

impl CompactionRules {
    /// Whether the newest record of its key goes anyway: an old tombstone,
    /// or (with `delete` too) a record past retention.
    fn expired(&self, newest: &Newest, now_ms: i64) -> bool {
        (newest.tombstone && newest.timestamp < now_ms.saturating_sub(self.delete_retention_ms))
            || self
                .retention_ms
                .is_some_and(|ms| newest.timestamp < now_ms.saturating_sub(ms))
    }

    /// Records with a timestamp above this are too young to compact; `None`
    /// when every record is old enough.
    pub fn cleanable_until(&self, now_ms: i64) -> Option<i64> {
        (self.min_compaction_lag_ms > 0).then(|| now_ms.saturating_sub(self.min_compaction_lag_ms))
    }
}

/// The newest record of one key seen by a scan.
#[derive(Debug, Clone, Copy)]
struct Newest {
    offset: i64,
    timestamp: i64,
    tombstone: bool,
}

/// What a leader's scan learnt of a partition's log from `log_start` up to
/// `scanned_to`: per key (a 128-bit hash, local to this process), its newest
/// record. Extended record by record as the log grows; valid while the log
/// start stays where the scan began.
#[derive(Debug)]
pub struct KeyIndex {
    log_start: i64,
    scanned_to: i64,
    newest: HashMap<u128, Newest>,
    /// Records scanned, with or without a key.
    records: i64,
    /// Timestamp of the oldest record a newer one superseded (or of a
    /// record without a key, which compaction drops as Kafka's cleaner
    /// does); `i64::MAX` for none.
    oldest_removable: i64,
}

impl KeyIndex {
    pub fn new(log_start: i64) -> Self {
        KeyIndex {
            log_start,
            scanned_to: log_start,
            newest: HashMap::new(),
            records: 0,
            oldest_removable: i64::MAX,
        }
    }

    pub fn log_start(&self) -> i64 {
        self.log_start
    }

    /// The offset after the last record scanned: the cleanable end.
    pub fn scanned_to(&self) -> i64 {
        self.scanned_to
    }

    /// Adds the record that follows the ones scanned; false when the index
    /// is full and the record was left out (the scan stops before it).
    pub fn add(&mut self, record: &Record) -> bool {
        if record.offset < self.scanned_to {
            return true;
        }
        match &record.key {
            None => self.oldest_removable = self.oldest_removable.min(record.timestamp),
            Some(key) => {
                let hash = key_hash(key);
                if self.newest.len() >= MAX_INDEXED_KEYS && !self.newest.contains_key(&hash) {
                    return false;
                }
                let newest = Newest {
                    offset: record.offset,
                    timestamp: record.timestamp,
                    tombstone: record.value.is_none(),
                };
                if let Some(superseded) = self.newest.insert(hash, newest) {
                    self.oldest_removable = self.oldest_removable.min(superseded.timestamp);
                }
            }
        }
        self.records += 1;
        self.scanned_to = record.offset + 1;
        true
    }

    /// Whether compaction keeps `record` (one the scan saw): it is the newest
    /// of its key and has not expired.
    pub fn is_live(&self, record: &Record, rules: &CompactionRules, now_ms: i64) -> bool {
        let Some(key) = &record.key else {
            return false;
        };
        self.newest
            .get(&key_hash(key))
            .is_some_and(|newest| newest.offset == record.offset && !rules.expired(newest, now_ms))
    }

    /// How many scanned records compaction keeps.
    pub fn live(&self, rules: &CompactionRules, now_ms: i64) -> i64 {
        self.newest
            .values()
            .filter(|newest| !rules.expired(newest, now_ms))
            .count() as i64
    }

    /// Records scanned.
    pub fn records(&self) -> i64 {
        self.records
    }

    /// Whether the scanned stretch is due: its removable share reached the
    /// dirty ratio, or a removable record is older than the maximum lag.
    pub fn due(&self, rules: &CompactionRules, now_ms: i64) -> bool {
        let removable = self.records - self.live(rules, now_ms);
        if removable <= 0 {
            return false;
        }
        removable as f64 >= rules.min_cleanable_dirty_ratio * self.records as f64
            || self.oldest_removable < now_ms.saturating_sub(rules.max_compaction_lag_ms)
    }
}

/// A key's 128-bit hash: two SipHash-1-3 halves. Only a leader's scan uses
/// it, never the apply, so it needs to be stable within one process only.
fn key_hash(key: &[u8]) -> u128 {
    let half = |salt: u8| {
        let mut hasher = DefaultHasher::new();
        hasher.write_u8(salt);
        hasher.write(key);
        hasher.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

/// Calls `visit` with each record at offsets `[from, to)` of `log`, in
/// order, until it returns false.
pub fn visit_records(
    log: &PartitionLog,
    from: i64,
    to: i64,
    mut visit: impl FnMut(&Record) -> bool,
) -> Result<(), ScanError> {
    let mut next = from;
    while next < to {
        let mut read = log.read(next, to, READ_BYTES)?;
        let before = next;
        while read.has_remaining() {
            let set = decode_stored(&mut read).map_err(|err| ScanError::Undecodable(err.to_string()))?;
            for record in &set.records {
                if record.offset < next {
                    continue;
                }
                if record.offset >= to || !visit(record) {
                    return Ok(());
                }
                next = record.offset + 1;
            }
        }
        if next == before {
            // Nothing at or after `next` below `to`.
            break;
        }
    }
    Ok(())
}

/// Extends `index` over the records from where it stopped up to `head`,
/// stopping at the first record younger than `cleanable_until`.
pub fn scan(
    log: &PartitionLog,
    index: &mut KeyIndex,
    head: i64,
    cleanable_until: Option<i64>,
) -> Result<(), ScanError> {
    visit_records(log, index.scanned_to(), head, |record| {
        cleanable_until.is_none_or(|until| record.timestamp <= until) && index.add(record)
    })
}

/// The live records at offsets `[from, index.scanned_to())`, each as a
/// batch of its own, until their bytes reach `max_bytes`; with the offset to
/// go on from (the cleanable end once they are all there).
pub fn restate(
    log: &PartitionLog,
    index: &KeyIndex,
    from: i64,
    rules: &CompactionRules,
    now_ms: i64,
    max_bytes: usize,
) -> Result<(Vec<ValidatedBatch>, i64), ScanError> {
    let end = index.scanned_to();
    let mut batches = Vec::new();
    let mut bytes = 0;
    let mut next = end;
    let mut failed = None;
    visit_records(log, from, end, |record| {
        if bytes >= max_bytes {
            next = record.offset;
            return false;
        }
        if index.is_live(record, rules, now_ms) {
            match restated_batch(record) {
                Ok(batch) => {
                    bytes += batch.bytes.len();
                    batches.push(batch);
                }
                Err(err) => {
                    failed = Some(err);
                    return false;
                }
            }
        }
        true
    })?;
    match failed {
        Some(err) => Err(err),
        None => Ok((batches, next)),
    }
}

/// `record` as a batch of its own, uncompressed, written by no producer:
/// its key, value, headers and timestamp as they were.
pub fn restated_batch(record: &Record) -> Result<ValidatedBatch, ScanError> {
    let restated = BrokerRecord {
        timestamp: record.timestamp,
        key: record.key.clone(),
        value: record.value.clone(),
        headers: record.headers.clone(),
    };
    broker_batch(vec![restated]).map_err(|err| ScanError::Undecodable(format!("cannot restate a record: {err}")))
}

/// The key of a batch a compaction restates, which must hold exactly one
/// record, with a key, written by no producer.
pub fn restated_key(batch: &ValidatedBatch) -> Result<Bytes, String> {
    if batch.producer_id != -1 || batch.record_count != 1 {
        return Err("a restated batch holds one record and no producer".into());
    }
    let set = decode_stored(&mut batch.bytes.clone()).map_err(|err| err.to_string())?;
    match set.records.as_slice() {
        [record] => record
            .key
            .clone()
            .ok_or_else(|| "a restated record has no key".to_string()),
        _ => Err("a restated batch holds one record".into()),
    }
}

/// The keys of the records at offsets `[from, to)`.
pub fn keys_in(log: &PartitionLog, from: i64, to: i64) -> Result<HashSet<Bytes>, ScanError> {
    let mut keys = HashSet::new();
    visit_records(log, from, to, |record| {
        if let Some(key) = &record.key {
            keys.insert(key.clone());
        }
        true
    })?;
    Ok(keys)
}

/// Which restated records the apply keeps: those whose key no record
/// appended since the scan's end holds (that record is newer).
pub fn survivors(keys: &[Bytes], newer: &HashSet<Bytes>) -> Vec<bool> {
    keys.iter().map(|key| !newer.contains(key)).collect()
}

#[cfg(test)]
mod tests {
    use kafka_protocol::records::TimestampType;

    use super::*;

    const NOW: i64 = 1_000_000;

    fn record(offset: i64, key: Option<&str>, value: Option<&str>, timestamp: i64) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: -1,
            timestamp,
            key: key.map(|k| Bytes::from(k.to_string())),
            value: value.map(|v| Bytes::from(v.to_string())),
            headers: Default::default(),
        }
    }

    fn rules() -> CompactionRules {
        CompactionRules {
            min_cleanable_dirty_ratio: 0.5,
            delete_retention_ms: 1_000,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            retention_ms: None,
        }
    }

    fn live_offsets(records: &[Record], rules: &CompactionRules) -> Vec<i64> {
        let mut index = KeyIndex::new(0);
        for record in records {
            assert!(index.add(record));
        }
        records
            .iter()
            .filter(|r| index.is_live(r, rules, NOW))
            .map(|r| r.offset)
            .collect()
    }

    #[test]
    fn the_newest_record_of_each_key_is_live_and_old_tombstones_and_keyless_records_go() {
        let records = [
            record(0, Some("a"), Some("1"), NOW - 50),
            record(1, Some("b"), Some("1"), NOW - 50),
            record(2, Some("a"), Some("2"), NOW - 40),
            record(3, None, Some("x"), NOW - 40),
            record(4, Some("c"), Some("1"), NOW - 5_000),
            record(5, Some("c"), None, NOW - 2_000),
            record(6, Some("d"), Some("1"), NOW - 30),
            record(7, Some("d"), None, NOW - 10),
        ];
        // c's tombstone is older than delete.retention.ms: c goes; d's is recent: it stays, null.
        assert_eq!(live_offsets(&records, &rules()), vec![1, 2, 7]);
        let with_delete = CompactionRules {
            retention_ms: Some(45),
            ..rules()
        };
        assert_eq!(
            live_offsets(&records, &with_delete),
            vec![2, 7],
            "b is past retention.ms"
        );
    }

    #[test]
    fn a_stretch_is_due_at_the_dirty_ratio_or_past_the_maximum_lag() {
        let mut index = KeyIndex::new(10);
        for (offset, key) in (10..).zip(["a", "b", "c", "a"]) {
            index.add(&record(offset, Some(key), Some("v"), NOW - 100));
        }
        assert_eq!((index.records(), index.live(&rules(), NOW)), (4, 3));
        assert!(!index.due(&rules(), NOW), "1 of 4 removable, under 0.5");
        let eager = CompactionRules {
            min_cleanable_dirty_ratio: 0.25,
            ..rules()
        };
        assert!(index.due(&eager, NOW));
        let lagging = CompactionRules {
            max_compaction_lag_ms: 50,
            ..rules()
        };
        assert!(index.due(&lagging, NOW), "a superseded record is 100 ms old");
        assert!(!KeyIndex::new(0).due(&eager, NOW), "nothing scanned, nothing due");
        assert_eq!(index.scanned_to(), 14);
        assert!(
            index.add(&record(12, Some("z"), Some("v"), NOW)),
            "already scanned: ignored"
        );
        assert_eq!(index.records(), 4);
    }

    #[test]
    fn restated_records_keep_key_value_headers_and_timestamp_and_survive_unless_newer() {
        let mut original = record(42, Some("k"), None, 1_234);
        original
            .headers
            .insert("h".to_string().into(), Some(Bytes::from_static(b"hv")));
        let batch = restated_batch(&original).unwrap();
        crate::storage::batch::check_appendable(&batch).unwrap();
        let set = decode_stored(&mut batch.bytes.clone()).unwrap();
        let back = &set.records[0];
        assert_eq!(
            (back.key.clone(), back.value.clone(), back.timestamp),
            (original.key.clone(), None, 1_234)
        );
        assert_eq!(back.headers, original.headers);
        assert_eq!(restated_key(&batch), Ok(Bytes::from_static(b"k")));
        let keyless = restated_batch(&record(1, None, Some("v"), 1)).unwrap();
        assert!(restated_key(&keyless).is_err());

        let keys: Vec<Bytes> = ["a", "b", "c"].iter().map(|k| Bytes::from(k.to_string())).collect();
        let newer: HashSet<Bytes> = [Bytes::from_static(b"b")].into_iter().collect();
        assert_eq!(survivors(&keys, &newer), vec![true, false, true]);
    }
}
