//! Kafka's message sets of magic 0 and 1 (Kafka 0.8 to 0.10), the record format
//! of Produce v0-v2 and Fetch v0-v3.
//!
//! The partition log holds magic v2 batches only. A legacy Produce is converted
//! up to one uncompressed v2 batch before validation; a legacy Fetch gets the
//! stored batches converted down to uncompressed messages of the magic its
//! version reads (0 for Fetch v0-v1, 1 for v2-v3), as Kafka converts for old
//! consumers.
//!
//! This one format is framed here rather than by `kafka-protocol`: 0.18
//! refuses message sets, and 0.15.1 (which the request bridge uses) writes
//! offset 0 into every message (a Fetch must carry each record's own offset),
//! refuses records with headers, and reads a compressed wrapper's value
//! without decompressing it, recursing once per nesting level of an untrusted
//! request. Here every length is checked
//! against what is left before it is used, wrappers are opened one level deep
//! with the broker's capped decompression, and nothing recurses further.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType, NO_PRODUCER_EPOCH,
    NO_PRODUCER_ID, NO_SEQUENCE, NO_TIMESTAMP,
};

use crate::storage::batch::BatchError;
use crate::storage::decompress::decompress;

/// Offset (8) and message size (4) before each message.
const LOG_OVERHEAD: usize = 12;
/// CRC (4), magic (1), attributes (1).
const MESSAGE_HEADER_LEN: usize = 6;
const MAGIC_POS: usize = LOG_OVERHEAD + 4;
const COMPRESSION_MASK: i8 = 0x07;
const LOG_APPEND_TIME_FLAG: i8 = 0x08;

/// The magic byte of the message or batch at the front of `records`, if it has one.
pub fn magic_of(records: &[u8]) -> Option<i8> {
    records.get(MAGIC_POS).map(|byte| *byte as i8)
}

/// The magic a Fetch of this version can read.
pub fn fetch_magic(fetch_version: i16) -> i8 {
    if fetch_version <= 1 {
        0
    } else {
        1
    }
}

/// One message of a legacy set, with compressed wrappers already opened.
#[derive(Debug, Clone, PartialEq)]
struct Message {
    timestamp: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
}

/// Converts a legacy message set (magic 0 or 1, possibly compressed) into one
/// uncompressed v2 batch at base offset 0, ready for the v2 validation path.
pub fn up_convert(records: &Bytes) -> Result<Bytes, BatchError> {
    let messages = parse_set(records.clone(), true)?;
    if messages.is_empty() {
        return Err(BatchError::Corrupt("no message in the message set".into()));
    }
    let records: Vec<Record> = messages
        .into_iter()
        .enumerate()
        .map(|(delta, message)| plain_record(delta as i64, message.timestamp, message.key, message.value))
        .collect();
    let mut out = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut out, &records, &options).map_err(|err| BatchError::Corrupt(err.to_string()))?;
    Ok(out.freeze())
}

/// A record of no producer and no transaction, as an old-format message becomes.
fn plain_record(offset: i64, timestamp: i64, key: Option<Bytes>, value: Option<Bytes>) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: NO_PRODUCER_ID,
        producer_epoch: NO_PRODUCER_EPOCH,
        timestamp_type: TimestampType::Creation,
        offset,
        sequence: NO_SEQUENCE,
        timestamp,
        key,
        value,
        headers: Default::default(),
    }
}

/// Converts stored v2 batches into uncompressed messages of `magic` (0 or 1),
/// leaving out records before `from_offset` (a batch may start earlier).
pub fn down_convert(batches: &Bytes, magic: i8, from_offset: i64) -> Result<Bytes, BatchError> {
    let mut rest = batches.clone();
    let mut out = BytesMut::with_capacity(batches.len());
    while rest.has_remaining() {
        let set = RecordBatchDecoder::decode_with_custom_compression(&mut rest, Some(&decompress))
            .map_err(|err| BatchError::Corrupt(err.to_string()))?;
        for record in set.records.iter().filter(|r| !r.control && r.offset >= from_offset) {
            put_message(&mut out, magic, record);
        }
    }
    Ok(out.freeze())
}

fn put_message(out: &mut BytesMut, magic: i8, record: &Record) {
    out.put_i64(record.offset);
    let size_pos = out.len();
    out.put_i32(0);
    let crc_pos = out.len();
    out.put_u32(0);
    let body_pos = out.len();
    out.put_i8(magic);
    let log_append_time = magic == 1 && record.timestamp_type == TimestampType::LogAppend;
    out.put_i8(if log_append_time { LOG_APPEND_TIME_FLAG } else { 0 });
    if magic == 1 {
        out.put_i64(record.timestamp);
    }
    put_bytes(out, record.key.as_ref());
    put_bytes(out, record.value.as_ref());
    let crc = crc32fast::hash(&out[body_pos..]);
    out[crc_pos..crc_pos + 4].copy_from_slice(&crc.to_be_bytes());
    let size = (out.len() - crc_pos) as i32;
    out[size_pos..size_pos + 4].copy_from_slice(&size.to_be_bytes());
}

fn put_bytes(out: &mut BytesMut, bytes: Option<&Bytes>) {
    match bytes {
        Some(bytes) => {
            out.put_i32(bytes.len() as i32);
            out.put_slice(bytes);
        }
        None => out.put_i32(-1),
    }
}

/// Every message of a set, opening compressed wrappers (one level deep, as
/// Kafka allows). A partial message at the end is an error: producers send
/// whole messages.
fn parse_set(mut rest: Bytes, outer: bool) -> Result<Vec<Message>, BatchError> {
    let mut messages = Vec::new();
    while rest.has_remaining() {
        if rest.len() < LOG_OVERHEAD {
            return Err(corrupt(format!("{} trailing bytes", rest.len())));
        }
        rest.advance(8); // the offset: assigned by the broker, ignored
        let size = rest.get_i32();
        let size = usize::try_from(size)
            .ok()
            .filter(|size| *size <= rest.len())
            .ok_or_else(|| corrupt(format!("message size {size} exceeds the {} bytes left", rest.len())))?;
        let message = rest.split_to(size);
        parse_message(message, outer, &mut messages)?;
    }
    Ok(messages)
}

fn parse_message(mut message: Bytes, outer: bool, into: &mut Vec<Message>) -> Result<(), BatchError> {
    if message.len() < MESSAGE_HEADER_LEN {
        return Err(corrupt("message shorter than its header".into()));
    }
    let crc = message.get_u32();
    if crc32fast::hash(&message) != crc {
        return Err(corrupt("message CRC mismatch".into()));
    }
    let magic = message.get_i8();
    let attributes = message.get_i8();
    let timestamp = match magic {
        0 => NO_TIMESTAMP,
        1 => take_i64(&mut message)?,
        other => return Err(BatchError::UnsupportedMagic(other)),
    };
    let key = take_bytes(&mut message)?;
    let value = take_bytes(&mut message)?;
    if message.has_remaining() {
        return Err(corrupt(format!("{} bytes after the message value", message.len())));
    }
    let codec = match attributes & COMPRESSION_MASK {
        0 => None,
        1 => Some(Compression::Gzip),
        2 => Some(Compression::Snappy),
        3 => Some(Compression::Lz4),
        other => return Err(corrupt(format!("compression codec {other} in a message set"))),
    };
    match codec {
        None => into.push(Message { timestamp, key, value }),
        Some(_) if !outer => return Err(corrupt("compressed message inside a compressed message".into())),
        Some(codec) => {
            let mut compressed = value.ok_or_else(|| corrupt("compressed message without a value".into()))?;
            let inner = decompress(&mut compressed, codec).map_err(|err| corrupt(err.to_string()))?;
            into.extend(parse_set(inner, false)?);
        }
    }
    Ok(())
}

fn take_i64(message: &mut Bytes) -> Result<i64, BatchError> {
    if message.len() < 8 {
        return Err(corrupt("message truncated in its timestamp".into()));
    }
    Ok(message.get_i64())
}

fn take_bytes(message: &mut Bytes) -> Result<Option<Bytes>, BatchError> {
    if message.len() < 4 {
        return Err(corrupt("message truncated in a length".into()));
    }
    let len = message.get_i32();
    if len == -1 {
        return Ok(None);
    }
    let len = usize::try_from(len)
        .ok()
        .filter(|len| *len <= message.len())
        .ok_or_else(|| corrupt(format!("field length {len} exceeds the {} bytes left", message.len())))?;
    Ok(Some(message.split_to(len)))
}

fn corrupt(reason: String) -> BatchError {
    BatchError::Corrupt(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    // An independent message-set codec: kafka-protocol 0.15.1 (its encoder
    // writes offset 0 into every message, which the tests take into account).
    use kafka_protocol_legacy::records as old;

    fn record(offset: i64, timestamp: i64, key: Option<&'static [u8]>, value: &'static [u8]) -> Record {
        plain_record(
            offset,
            timestamp,
            key.map(Bytes::from_static),
            Some(Bytes::from_static(value)),
        )
    }

    fn old_record(r: &Record) -> old::Record {
        old::Record {
            transactional: false,
            control: false,
            partition_leader_epoch: -1,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            timestamp_type: old::TimestampType::Creation,
            offset: r.offset,
            sequence: NO_SEQUENCE,
            timestamp: r.timestamp,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: Default::default(),
        }
    }

    /// A message set as the independent encoder writes it.
    fn legacy_set(magic: i8, compression: old::Compression, records: &[Record]) -> Bytes {
        let records: Vec<old::Record> = records.iter().map(old_record).collect();
        let mut out = BytesMut::new();
        let options = old::RecordEncodeOptions {
            version: magic,
            compression,
        };
        old::RecordBatchEncoder::encode(&mut out, &records, &options).unwrap();
        out.freeze()
    }

    /// `(offset, timestamp, key, value)` of each message of a set or batch.
    fn decoded(set: &Bytes) -> Vec<(i64, i64, Option<Bytes>, Option<Bytes>)> {
        let mut rest = set.clone();
        let mut out = Vec::new();
        while rest.has_remaining() {
            for r in old::RecordBatchDecoder::decode(&mut rest).unwrap().records {
                out.push((r.offset, r.timestamp, r.key, r.value));
            }
        }
        out
    }

    fn v2_batch(records: &[Record]) -> Bytes {
        let mut out = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::Lz4,
        };
        RecordBatchEncoder::encode(&mut out, records, &options).unwrap();
        out.freeze()
    }

    #[test]
    fn both_magics_convert_up_to_one_v2_batch() {
        let sent = [
            record(0, 1_700_000_000_000, Some(b"k"), b"one"),
            record(1, 1_700_000_000_001, None, b"two"),
        ];
        for (magic, timestamps) in [(0, [NO_TIMESTAMP; 2]), (1, [1_700_000_000_000, 1_700_000_000_001])] {
            for compression in [old::Compression::None, old::Compression::Gzip, old::Compression::Snappy] {
                let batch = up_convert(&legacy_set(magic, compression, &sent)).unwrap();
                assert_eq!(magic_of(&batch), Some(2));
                let got = decoded(&batch);
                let want = vec![
                    (
                        0,
                        timestamps[0],
                        Some(Bytes::from_static(b"k")),
                        Some(Bytes::from_static(b"one")),
                    ),
                    (1, timestamps[1], None, Some(Bytes::from_static(b"two"))),
                ];
                assert_eq!(got, want, "magic {magic} {compression:?}");
            }
        }
    }

    #[test]
    fn stored_batches_convert_down_with_their_offsets() {
        let mut first = [record(10, 5, Some(b"a"), b"x"), record(11, 6, None, b"y")];
        first[1]
            .headers
            .insert("h".to_string().into(), Some(Bytes::from_static(b"dropped")));
        let second = [record(12, 7, None, b"z")];
        let mut stored = BytesMut::from(&v2_batch(&first)[..]);
        stored.extend_from_slice(&v2_batch(&second));
        let stored = stored.freeze();
        for magic in [0, 1] {
            let set = down_convert(&stored, magic, 11).unwrap();
            assert_eq!(magic_of(&set), Some(magic));
            let ts = |t| if magic == 0 { NO_TIMESTAMP } else { t };
            let want = vec![
                (11, ts(6), None, Some(Bytes::from_static(b"y"))),
                (12, ts(7), None, Some(Bytes::from_static(b"z"))),
            ];
            assert_eq!(decoded(&set), want, "magic {magic}");
        }
    }

    #[test]
    fn damaged_sets_are_refused_never_panic() {
        let good = legacy_set(1, old::Compression::None, &[record(0, 1, Some(b"key"), b"value")]);
        let mut flipped = BytesMut::from(&good[..]);
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(up_convert(&flipped.freeze()), Err(BatchError::Corrupt(_))));
        for cut in 0..good.len() {
            assert!(up_convert(&good.slice(..cut)).is_err(), "cut at {cut}");
        }
        // magic, attributes and timestamp come before the key's length
        let mut huge_key = BytesMut::from(&good[..]);
        huge_key[MAGIC_POS + 10..MAGIC_POS + 14].copy_from_slice(&i32::MAX.to_be_bytes());
        let crc = crc32fast::hash(&huge_key[MAGIC_POS..]);
        huge_key[LOG_OVERHEAD..MAGIC_POS].copy_from_slice(&crc.to_be_bytes());
        let refused = up_convert(&huge_key.freeze());
        assert!(matches!(refused, Err(BatchError::Corrupt(reason)) if reason.contains("field length")));
    }

    #[test]
    fn a_compressed_message_inside_a_compressed_message_is_refused() {
        use std::io::Write;
        // A gzip wrapper whose compressed value is itself a set holding a gzip wrapper.
        let inner = legacy_set(1, old::Compression::Gzip, &[record(0, 1, None, b"a")]);
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gzip.write_all(&inner).unwrap();
        let mut outer = record(0, 1, None, b"");
        outer.value = Some(Bytes::from(gzip.finish().unwrap()));
        let mut nested = BytesMut::new();
        put_message(&mut nested, 1, &outer);
        nested[MAGIC_POS + 1] = 1; // the gzip attribute
        let crc = crc32fast::hash(&nested[MAGIC_POS..]);
        nested[LOG_OVERHEAD..MAGIC_POS].copy_from_slice(&crc.to_be_bytes());
        let refused = up_convert(&nested.freeze());
        assert!(matches!(refused, Err(BatchError::Corrupt(reason)) if reason.contains("inside")));
    }
}
