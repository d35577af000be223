//! Record batches (magic v2) on their way in and out of storage.
//!
//! Batches are validated with the `kafka-protocol` decoder (which checks the CRC-32C
//! and every record) and then stored byte for byte as the client sent them, so a
//! compressed batch stays compressed. The base offset, which the CRC does not
//! cover, is filled in when a batch is served.

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use serde::{Deserialize, Serialize};

use super::decompress::decompress;

/// Bytes before the batch length field: the base offset.
const BASE_OFFSET_LEN: usize = 8;
/// Bytes of base offset plus batch length; the batch length counts what follows them.
const LENGTH_PREFIX_LEN: usize = 12;
/// Position of the magic byte.
const MAGIC_POS: usize = 16;
/// The partition leader epoch: after the length, before the CRC-covered part.
const PARTITION_LEADER_EPOCH_POS: usize = 12;
/// The fixed v2 batch header; a batch is never shorter.
pub const BATCH_HEADER_LEN: usize = 61;
/// Position of the CRC-32C, which covers everything after it.
const CRC_POS: usize = 17;
const CRC_COVERED_FROM: usize = 21;
const ATTRIBUTES_POS: usize = 21;
const MAX_TIMESTAMP_POS: usize = 35;
/// The attributes bit that says a batch's timestamps are the broker's (LogAppendTime).
const LOG_APPEND_TIME_FLAG: u16 = 0x08;
const LAST_OFFSET_DELTA_POS: usize = 23;
const PRODUCER_ID_POS: usize = 43;
const PRODUCER_EPOCH_POS: usize = 51;
const BASE_SEQUENCE_POS: usize = 53;
const RECORD_COUNT_POS: usize = 57;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BatchError {
    #[error("corrupt record batch: {0}")]
    Corrupt(String),
    #[error("record batch of {size} bytes exceeds the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("record batch magic {0} is not supported (only v2)")]
    UnsupportedMagic(i8),
    /// Records refused one by one (KIP-467): the partition's whole produce
    /// fails, and the response names each refused record. The message is Kafka's.
    #[error(
        "One or more records have been rejected due to {} record errors in total, and only showing the first three errors at most: {}",
        .0.len(),
        shown_record_errors(.0)
    )]
    InvalidRecords(Vec<RecordError>),
}

/// A record refused by validation: its index in its batch and why.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordError {
    pub index: i32,
    pub message: String,
}

fn shown_record_errors(errors: &[RecordError]) -> String {
    let shown: Vec<String> = errors
        .iter()
        .take(3)
        .map(|e| format!("RecordError(batchIndex={}, message='{}')", e.index, e.message))
        .collect();
    format!("[{}]", shown.join(", "))
}

/// What a topic requires of the batches produced to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProduceRules {
    /// The topic's `max.message.bytes`: the largest batch it takes.
    pub max_batch_bytes: usize,
    /// Compacted topics keep the newest record of each key, so, as in Kafka,
    /// they refuse records without one.
    pub require_keys: bool,
}

/// A batch that passed validation, ready to be proposed to its partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidatedBatch {
    pub bytes: Bytes,
    pub record_count: i64,
    pub max_timestamp: i64,
    /// The idempotent producer that wrote the batch, or -1.
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

/// A record the broker writes on its own behalf: a consumer-group change in
/// `__consumer_offsets`, or a record a compaction restates.
pub struct BrokerRecord {
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: IndexMap<StrBytes, Option<Bytes>>,
}

/// The uncompressed v2 batch of `records`, written by no producer and in no
/// transaction, with create-time timestamps, offsets from 0 and no leader
/// epoch: a read stamps both, as for produced batches.
pub fn broker_batch(records: Vec<BrokerRecord>) -> Result<ValidatedBatch, BatchError> {
    let records: Vec<Record> = records
        .into_iter()
        .enumerate()
        .map(|(index, record)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: index as i64,
            // The encoder keeps records in one batch while offset and
            // sequence advance together; the batch's base sequence stays -1.
            sequence: index as i32 - 1,
            timestamp: record.timestamp,
            key: record.key,
            value: record.value,
            headers: record.headers,
        })
        .collect();
    let mut bytes = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut bytes, &records, &options)
        .map_err(|err| BatchError::Corrupt(format!("cannot encode the broker's records: {err}")))?;
    Ok(ValidatedBatch {
        bytes: bytes.freeze(),
        record_count: records.len() as i64,
        max_timestamp: records.iter().map(|r| r.timestamp).max().unwrap_or(-1),
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
    })
}

impl ValidatedBatch {
    /// The sequence number of the batch's last record (sequences wrap at i32::MAX).
    pub fn last_sequence(&self) -> i32 {
        let last = i64::from(self.base_sequence) + self.record_count - 1;
        (last % (i64::from(i32::MAX) + 1)) as i32
    }
}

/// Splits a Produce request's `records` into batches and validates each one
/// against the topic's `rules`.
pub fn validate_produce_records(records: &Bytes, rules: &ProduceRules) -> Result<Vec<ValidatedBatch>, BatchError> {
    let mut rest = records.clone();
    let mut batches = Vec::new();
    while rest.has_remaining() {
        let size = next_batch_size(&rest)?;
        if size > rules.max_batch_bytes {
            return Err(BatchError::TooLarge {
                size,
                max: rules.max_batch_bytes,
            });
        }
        batches.push(validate_batch(rest.split_to(size), rules)?);
    }
    if batches.is_empty() {
        return Err(BatchError::Corrupt("no record batch".into()));
    }
    Ok(batches)
}

fn next_batch_size(rest: &Bytes) -> Result<usize, BatchError> {
    if rest.len() < BATCH_HEADER_LEN {
        return Err(BatchError::Corrupt(format!("{} trailing bytes", rest.len())));
    }
    let magic = rest[MAGIC_POS] as i8;
    if magic != 2 {
        return Err(BatchError::UnsupportedMagic(magic));
    }
    let length = (&rest[BASE_OFFSET_LEN..LENGTH_PREFIX_LEN]).get_i32();
    let size = usize::try_from(length)
        .ok()
        .and_then(|len| len.checked_add(LENGTH_PREFIX_LEN))
        .filter(|size| *size >= BATCH_HEADER_LEN)
        .ok_or_else(|| BatchError::Corrupt(format!("batch length {length}")))?;
    if size > rest.len() {
        return Err(BatchError::Corrupt(format!(
            "batch of {size} bytes truncated to {}",
            rest.len()
        )));
    }
    Ok(size)
}

fn validate_batch(bytes: Bytes, rules: &ProduceRules) -> Result<ValidatedBatch, BatchError> {
    let set = RecordBatchDecoder::decode_with_custom_compression(&mut bytes.clone(), Some(&checked_records))
        .map_err(|err| BatchError::Corrupt(err.to_string()))?;
    if set.records.is_empty() {
        return Err(BatchError::Corrupt("batch holds no records".into()));
    }
    let base = set.records[0].offset;
    for (delta, record) in set.records.iter().enumerate() {
        if record.offset - base != delta as i64 {
            return Err(BatchError::Corrupt("record offsets are not sequential".into()));
        }
        if record.control {
            return Err(BatchError::Corrupt("producers cannot write control batches".into()));
        }
    }
    if rules.require_keys {
        let keyless: Vec<RecordError> = (0..)
            .zip(&set.records)
            .filter(|(_, record)| record.key.is_none())
            .map(|(index, _)| RecordError {
                index,
                message: "Compacted topic cannot accept message without key.".into(),
            })
            .collect();
        if !keyless.is_empty() {
            return Err(BatchError::InvalidRecords(keyless));
        }
    }
    let max_timestamp = set.records.iter().map(|r| r.timestamp).max().unwrap_or(-1);
    let first = &set.records[0];
    Ok(ValidatedBatch {
        bytes,
        record_count: set.records.len() as i64,
        max_timestamp,
        producer_id: first.producer_id,
        producer_epoch: first.producer_epoch,
        base_sequence: first.sequence,
    })
}

/// Checks, when a command is applied, what storing the batch relies on: one
/// whole v2 batch whose CRC-32C holds and whose header agrees with the fields
/// the command carries. Batches from the produce path always pass, since they
/// were cut from a validated request; this refuses a command that bypassed it
/// instead of panicking on it or storing it. Records are not decoded again:
/// the CRC already ties them to what the producer sent.
pub fn check_appendable(batch: &ValidatedBatch) -> Result<(), BatchError> {
    let corrupt = |what: &str| Err(BatchError::Corrupt(what.to_string()));
    // Also checks the magic byte and that the whole header is there.
    if next_batch_size(&batch.bytes)? != batch.bytes.len() {
        return corrupt("batch length does not match its bytes");
    }
    let bytes = &batch.bytes[..];
    let crc = u32::from_be_bytes([
        bytes[CRC_POS],
        bytes[CRC_POS + 1],
        bytes[CRC_POS + 2],
        bytes[CRC_POS + 3],
    ]);
    if crc32c::crc32c(&bytes[CRC_COVERED_FROM..]) != crc {
        return corrupt("CRC-32C mismatch");
    }
    let i32_at = |pos: usize| i32::from_be_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]]);
    let mut producer_id = [0u8; 8];
    producer_id.copy_from_slice(&bytes[PRODUCER_ID_POS..PRODUCER_ID_POS + 8]);
    let header_agrees = batch.record_count > 0
        && i64::from(i32_at(RECORD_COUNT_POS)) == batch.record_count
        && i64::from(i32_at(LAST_OFFSET_DELTA_POS)) == batch.record_count - 1
        && i64::from_be_bytes(producer_id) == batch.producer_id
        && i16::from_be_bytes([bytes[PRODUCER_EPOCH_POS], bytes[PRODUCER_EPOCH_POS + 1]]) == batch.producer_epoch
        && i32_at(BASE_SEQUENCE_POS) == batch.base_sequence;
    if !header_agrees {
        return corrupt("the batch header disagrees with the command");
    }
    Ok(())
}

/// Decodes one stored batch off the front of `bytes` (a read's output) with
/// the same bounded decompression produced batches were validated with.
pub fn decode_stored(bytes: &mut Bytes) -> Result<kafka_protocol::records::RecordSet, BatchError> {
    RecordBatchDecoder::decode_with_custom_compression(bytes, Some(&checked_records))
        .map_err(|err| BatchError::Corrupt(err.to_string()))
}

/// Decompresses a batch's records (with a cap) and checks their framing before
/// `kafka-protocol` decodes them: its record decoder sizes the header map from
/// the count on the wire, and a 320-byte batch found by fuzzing that declared
/// 2^31 headers made it write gigabytes of hash-table control bytes.
fn checked_records(compressed: &mut Bytes, codec: Compression) -> anyhow::Result<Bytes> {
    let records = decompress(compressed, codec)?;
    let mut rest = &records[..];
    while !rest.is_empty() {
        let length = read_varint(&mut rest)?;
        anyhow::ensure!(
            length >= 0 && length as usize <= rest.len(),
            "record length {length} exceeds the batch"
        );
        let (record, after) = rest.split_at(length as usize);
        check_record(record)?;
        rest = after;
    }
    Ok(records)
}

/// A record's fields: attributes, timestamp delta, offset delta, key, value,
/// then the header count, which must fit in what is left (a header takes at
/// least two bytes).
fn check_record(mut record: &[u8]) -> anyhow::Result<()> {
    anyhow::ensure!(!record.is_empty(), "empty record");
    record = &record[1..];
    read_varint(&mut record)?;
    read_varint(&mut record)?;
    for _ in 0..2 {
        let len = read_varint(&mut record)?;
        anyhow::ensure!(
            len >= -1 && len <= record.len() as i64,
            "key or value length {len} exceeds the record"
        );
        record = &record[len.max(0) as usize..];
    }
    let headers = read_varint(&mut record)?;
    anyhow::ensure!(
        headers >= 0 && headers as usize <= record.len() / 2,
        "{headers} headers cannot fit the record"
    );
    Ok(())
}

/// A zig-zag varint as records encode their fields.
fn read_varint(buf: &mut &[u8]) -> anyhow::Result<i64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first().ok_or_else(|| anyhow::anyhow!("truncated varint"))?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    anyhow::bail!("varint longer than 10 bytes")
}

/// Stamps the broker's append time into a validated batch, as Kafka does for
/// topics with `message.timestamp.type=LogAppendTime`: the timestamp type
/// bit, the max timestamp (which consumers then read as every record's
/// timestamp) and the CRC-32C that covers both.
pub fn stamp_log_append_time(batch: &mut ValidatedBatch, now_ms: i64) {
    let mut bytes = batch.bytes.to_vec();
    if bytes.len() < BATCH_HEADER_LEN {
        return;
    }
    let attributes = u16::from_be_bytes([bytes[ATTRIBUTES_POS], bytes[ATTRIBUTES_POS + 1]]) | LOG_APPEND_TIME_FLAG;
    bytes[ATTRIBUTES_POS..ATTRIBUTES_POS + 2].copy_from_slice(&attributes.to_be_bytes());
    bytes[MAX_TIMESTAMP_POS..MAX_TIMESTAMP_POS + 8].copy_from_slice(&now_ms.to_be_bytes());
    let crc = crc32c::crc32c(&bytes[CRC_COVERED_FROM..]);
    bytes[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
    batch.bytes = Bytes::from(bytes);
    batch.max_timestamp = now_ms;
}

/// Sets the base offset of a batch in place (as served: the client sent 0).
/// The CRC does not cover it, so the batch stays valid.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    if let Some(field) = batch.get_mut(..BASE_OFFSET_LEN) {
        field.copy_from_slice(&base_offset.to_be_bytes());
    }
}

/// Sets the partition leader epoch of a batch in place (as served: the epoch
/// its records were applied in). The CRC does not cover it either.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    if let Some(field) = batch.get_mut(PARTITION_LEADER_EPOCH_POS..PARTITION_LEADER_EPOCH_POS + 4) {
        field.copy_from_slice(&epoch.to_be_bytes());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

    /// Rules that take any batch the tests build.
    pub const ANY: ProduceRules = ProduceRules {
        max_batch_bytes: 1 << 20,
        require_keys: false,
    };

    pub fn encode_batch(values: &[&str], compression: Compression) -> Bytes {
        encode_producer_batch(values, compression, -1, -1, 0)
    }

    /// A batch as an idempotent producer (`producer_id` >= 0) writes it.
    pub fn encode_producer_batch(
        values: &[&str],
        compression: Compression,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    ) -> Bytes {
        let records: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(i, value)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id,
                producer_epoch,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: base_sequence + i as i32,
                timestamp: 1_700_000_000_000 + i as i64,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(value.to_string())),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
        buf.freeze()
    }

    #[test]
    fn accepts_batches_of_every_codec() {
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let batch = encode_batch(&["a", "b", "c"], codec);
            let validated = validate_produce_records(&batch, &ANY).unwrap();
            assert_eq!(validated.len(), 1);
            assert_eq!(validated[0].record_count, 3);
            assert_eq!(validated[0].max_timestamp, 1_700_000_000_002);
            assert_eq!(validated[0].bytes, batch, "stored as sent");
        }
    }

    #[test]
    fn splits_concatenated_batches() {
        let mut both = BytesMut::new();
        both.extend_from_slice(&encode_batch(&["a"], Compression::None));
        both.extend_from_slice(&encode_batch(&["b", "c"], Compression::Gzip));
        let validated = validate_produce_records(&both.freeze(), &ANY).unwrap();
        assert_eq!(validated.iter().map(|b| b.record_count).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn rejects_wrong_crc() {
        let mut batch = BytesMut::from(&encode_batch(&["a", "b"], Compression::None)[..]);
        let last = batch.len() - 1;
        batch[last] ^= 0xff;
        assert!(matches!(
            validate_produce_records(&batch.freeze(), &ANY),
            Err(BatchError::Corrupt(_))
        ));
    }

    #[test]
    fn rejects_oversized_truncated_and_old_batches() {
        let batch = encode_batch(&["a", "b"], Compression::None);
        assert!(matches!(
            validate_produce_records(
                &batch,
                &ProduceRules {
                    max_batch_bytes: 10,
                    ..ANY
                }
            ),
            Err(BatchError::TooLarge { .. })
        ));
        let truncated = batch.slice(..batch.len() - 3);
        assert!(matches!(
            validate_produce_records(&truncated, &ANY),
            Err(BatchError::Corrupt(_))
        ));
        let mut old = BytesMut::from(&batch[..]);
        old[MAGIC_POS] = 1;
        assert_eq!(
            validate_produce_records(&old.freeze(), &ANY),
            Err(BatchError::UnsupportedMagic(1))
        );
        assert!(validate_produce_records(&Bytes::new(), &ANY).is_err());
    }

    #[test]
    fn records_without_keys_are_refused_by_index_where_keys_are_required() {
        let records: Vec<Record> = [Some("k0"), None, Some("k2"), None]
            .iter()
            .enumerate()
            .map(|(i, key)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // Consecutive sequences keep the encoder to one batch.
                sequence: i as i32,
                timestamp: 1_700_000_000_000,
                key: key.map(|k| Bytes::from_static(k.as_bytes())),
                value: Some(Bytes::from_static(b"v")),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::Lz4,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
        let batch = buf.freeze();
        assert!(
            validate_produce_records(&batch, &ANY).is_ok(),
            "keys are optional elsewhere"
        );
        let compacted = ProduceRules {
            require_keys: true,
            ..ANY
        };
        let Err(BatchError::InvalidRecords(errors)) = validate_produce_records(&batch, &compacted) else {
            panic!("keyless records accepted");
        };
        assert_eq!(errors.iter().map(|e| e.index).collect::<Vec<_>>(), vec![1, 3]);
        let message = BatchError::InvalidRecords(errors).to_string();
        assert!(
            message.starts_with("One or more records have been rejected due to 2 record errors"),
            "{message}"
        );
    }

    #[test]
    fn a_log_append_time_stamp_keeps_the_batch_valid() {
        let mut batch = validate_produce_records(&encode_batch(&["a", "b"], Compression::Gzip), &ANY)
            .unwrap()
            .remove(0);
        stamp_log_append_time(&mut batch, 1_800_000_000_123);
        assert_eq!(check_appendable(&batch), Ok(()), "the CRC was recomputed");
        assert_eq!(batch.max_timestamp, 1_800_000_000_123);
        // The decoder checks the CRC too. (It reports each record's own timestamp;
        // clients read a LogAppendTime batch's max timestamp instead, which the
        // confluent suite checks.)
        let set = RecordBatchDecoder::decode(&mut batch.bytes.clone()).unwrap();
        assert!(set.records.iter().all(|r| r.timestamp_type == TimestampType::LogAppend));
    }

    #[test]
    fn base_offset_rewrite_keeps_the_batch_valid() {
        let batch = encode_batch(&["a", "b"], Compression::Lz4);
        let mut stored = batch.to_vec();
        set_base_offset(&mut stored, 4242);
        let stored = Bytes::from(stored);
        let set = RecordBatchDecoder::decode(&mut stored.clone()).unwrap();
        assert_eq!(set.records[0].offset, 4242);
        assert_eq!(set.records[1].offset, 4243);
    }

    #[test]
    fn leader_epoch_rewrite_keeps_the_batch_valid() {
        let mut stored = encode_batch(&["a", "b"], Compression::Gzip).to_vec();
        set_partition_leader_epoch(&mut stored, 7);
        assert_eq!(&stored[12..16], &7i32.to_be_bytes());
        let set = RecordBatchDecoder::decode(&mut Bytes::from(stored)).unwrap();
        assert_eq!(set.records.len(), 2, "the CRC still matches");
        assert!(set.records.iter().all(|r| r.partition_leader_epoch == 7));
    }

    #[test]
    fn validated_batches_are_appendable_and_forged_ones_are_refused() {
        let batch = encode_batch(&["a", "b", "c"], Compression::Gzip);
        let good = validate_produce_records(&batch, &ANY).unwrap().remove(0);
        assert_eq!(check_appendable(&good), Ok(()));

        let forged = |change: &dyn Fn(&mut ValidatedBatch)| {
            let mut batch = good.clone();
            change(&mut batch);
            check_appendable(&batch)
        };
        let flip = |pos: usize| {
            move |batch: &mut ValidatedBatch| {
                let mut bytes = BytesMut::from(&batch.bytes[..]);
                bytes[pos] ^= 0x01;
                batch.bytes = bytes.freeze();
            }
        };
        assert!(forged(&|b| b.bytes = Bytes::new()).is_err(), "empty");
        assert!(
            forged(&|b| b.bytes = Bytes::from_static(&[0u8; 7])).is_err(),
            "shorter than a base offset"
        );
        assert!(
            forged(&|b| b.bytes = b.bytes.slice(..b.bytes.len() - 1)).is_err(),
            "truncated"
        );
        assert!(forged(&flip(batch.len() - 1)).is_err(), "a record byte (CRC)");
        assert!(forged(&flip(MAGIC_POS)).is_err(), "magic");
        assert!(forged(&flip(RECORD_COUNT_POS + 3)).is_err(), "record count (CRC)");
        assert!(forged(&|b| b.record_count = 0).is_err(), "no records");
        assert!(forged(&|b| b.record_count = -3).is_err(), "negative count");
        assert!(
            forged(&|b| b.record_count = i64::MAX).is_err(),
            "count the header does not hold"
        );
        assert!(forged(&|b| b.producer_id = 42).is_err(), "another producer");
        assert!(forged(&|b| b.base_sequence = 9).is_err(), "another sequence");
        // The base offset and partition leader epoch are outside the CRC and rewritten by the broker.
        assert_eq!(forged(&flip(3)), Ok(()));

        // Arbitrary bytes are refused, never a panic.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..200usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            assert!(forged(&|b| b.bytes = Bytes::from(bytes.clone())).is_err());
        }
    }
}
