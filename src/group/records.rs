//! Kafka's own records of `__consumer_offsets`: the OffsetCommit and
//! GroupMetadata keys and values (the non-flexible versions Kafka's
//! coordinator writes: key 1 / value 3 for offsets, key 2 / value 3 for
//! group metadata), tombstones for deletions, and the record batch a
//! consumer-group change becomes.
//!
//! A change's batch is rendered from the replicated command alone, so the
//! state machine can count its records when it applies the command and a
//! read can render the same bytes again from the log entry: the records are
//! never stored apart from the command that produced them.

use bytes::{BufMut, Bytes, BytesMut};

use super::store::{CommittedOffset, GroupCommand, GroupMetadata, StoredGroup};
use crate::storage::batch::{broker_batch, BrokerRecord, ValidatedBatch};

/// Key version of an offset commit (Kafka's `OffsetCommitKey`).
const OFFSET_COMMIT_KEY_VERSION: i16 = 1;
/// Value version of an offset commit: the one with the leader epoch and no expiry.
const OFFSET_COMMIT_VALUE_VERSION: i16 = 3;
/// Key version of a group's metadata (Kafka's `GroupMetadataKey`).
const GROUP_METADATA_KEY_VERSION: i16 = 2;
/// Value version of a group's metadata: the one with static members.
const GROUP_METADATA_VALUE_VERSION: i16 = 3;

/// A string, array or bytes field too long for its Kafka length prefix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0} is too long for a __consumer_offsets record")]
pub struct TooLong(pub &'static str);

/// One record of `__consumer_offsets`: a key and a value, or a tombstone.
#[derive(Debug, Clone, PartialEq)]
pub struct OffsetsRecord {
    pub key: Bytes,
    pub value: Option<Bytes>,
    pub timestamp: i64,
}

fn put_string(out: &mut BytesMut, value: &str, what: &'static str) -> Result<(), TooLong> {
    let len = i16::try_from(value.len()).map_err(|_| TooLong(what))?;
    out.put_i16(len);
    out.put_slice(value.as_bytes());
    Ok(())
}

fn put_nullable_string(out: &mut BytesMut, value: Option<&str>, what: &'static str) -> Result<(), TooLong> {
    match value {
        Some(value) => put_string(out, value, what),
        None => {
            out.put_i16(-1);
            Ok(())
        }
    }
}

fn put_bytes(out: &mut BytesMut, value: &[u8], what: &'static str) -> Result<(), TooLong> {
    out.put_i32(i32::try_from(value.len()).map_err(|_| TooLong(what))?);
    out.put_slice(value);
    Ok(())
}

pub fn offset_commit_key(group: &str, topic: &str, partition: i32) -> Result<Bytes, TooLong> {
    let mut out = BytesMut::new();
    out.put_i16(OFFSET_COMMIT_KEY_VERSION);
    put_string(&mut out, group, "group id")?;
    put_string(&mut out, topic, "topic name")?;
    out.put_i32(partition);
    Ok(out.freeze())
}

/// Kafka stores a commit without metadata as the empty string.
pub fn offset_commit_value(committed: &CommittedOffset) -> Result<Bytes, TooLong> {
    let mut out = BytesMut::new();
    out.put_i16(OFFSET_COMMIT_VALUE_VERSION);
    out.put_i64(committed.offset);
    out.put_i32(committed.leader_epoch);
    put_string(&mut out, committed.metadata.as_deref().unwrap_or(""), "offset metadata")?;
    out.put_i64(committed.commit_timestamp);
    Ok(out.freeze())
}

pub fn group_metadata_key(group: &str) -> Result<Bytes, TooLong> {
    let mut out = BytesMut::new();
    out.put_i16(GROUP_METADATA_KEY_VERSION);
    put_string(&mut out, group, "group id")?;
    Ok(out.freeze())
}

pub fn group_metadata_value(metadata: &GroupMetadata) -> Result<Bytes, TooLong> {
    let mut out = BytesMut::new();
    out.put_i16(GROUP_METADATA_VALUE_VERSION);
    put_string(&mut out, &metadata.protocol_type, "protocol type")?;
    out.put_i32(metadata.generation);
    put_nullable_string(&mut out, metadata.protocol.as_deref(), "protocol")?;
    put_nullable_string(&mut out, metadata.leader.as_deref(), "leader")?;
    out.put_i64(metadata.current_state_timestamp);
    out.put_i32(i32::try_from(metadata.members.len()).map_err(|_| TooLong("member list"))?);
    for member in &metadata.members {
        put_string(&mut out, &member.member_id, "member id")?;
        put_nullable_string(&mut out, member.group_instance_id.as_deref(), "group instance id")?;
        put_string(&mut out, &member.client_id, "client id")?;
        put_string(&mut out, &member.client_host, "client host")?;
        out.put_i32(member.rebalance_timeout_ms);
        out.put_i32(member.session_timeout_ms);
        put_bytes(&mut out, &member.subscription, "subscription")?;
        put_bytes(&mut out, &member.assignment, "assignment")?;
    }
    Ok(out.freeze())
}

fn tombstone(key: Bytes, timestamp: i64) -> OffsetsRecord {
    OffsetsRecord {
        key,
        value: None,
        timestamp,
    }
}

/// The records a change writes, in Kafka's order. Changes replicated before
/// records existed (`Generation`, `DeleteGroup`, `DeleteOffsets`) lack the
/// fields their records need and write none.
pub fn records_of(change: &GroupCommand) -> Result<Vec<OffsetsRecord>, TooLong> {
    match change {
        GroupCommand::Commit { group, offsets } => offsets
            .iter()
            .map(|(topic, partition, committed)| {
                Ok(OffsetsRecord {
                    key: offset_commit_key(group, topic, *partition)?,
                    value: Some(offset_commit_value(committed)?),
                    timestamp: committed.commit_timestamp,
                })
            })
            .collect(),
        GroupCommand::GenerationCompleted(metadata) => Ok(vec![OffsetsRecord {
            key: group_metadata_key(&metadata.group)?,
            value: Some(group_metadata_value(metadata)?),
            timestamp: metadata.current_state_timestamp,
        }]),
        GroupCommand::RemoveGroup {
            group,
            offsets,
            timestamp,
        } => {
            let mut records = offsets
                .iter()
                .map(|(topic, partition)| Ok(tombstone(offset_commit_key(group, topic, *partition)?, *timestamp)))
                .collect::<Result<Vec<_>, TooLong>>()?;
            records.push(tombstone(group_metadata_key(group)?, *timestamp));
            Ok(records)
        }
        GroupCommand::RemoveOffsets {
            group,
            partitions,
            timestamp,
        } => partitions
            .iter()
            .map(|(topic, partition)| Ok(tombstone(offset_commit_key(group, topic, *partition)?, *timestamp)))
            .collect(),
        GroupCommand::Restate { groups } => {
            let mut records = Vec::new();
            for (name, stored) in groups {
                records.extend(live_records(name, stored)?);
            }
            Ok(records)
        }
        GroupCommand::Generation { .. } | GroupCommand::DeleteGroup { .. } | GroupCommand::DeleteOffsets { .. } => {
            Ok(Vec::new())
        }
    }
}

/// The records that say what `stored` holds: its metadata, then its offsets.
fn live_records(name: &str, stored: &StoredGroup) -> Result<Vec<OffsetsRecord>, TooLong> {
    let mut records = Vec::with_capacity(live_record_count(stored));
    if let Some(metadata) = &stored.metadata {
        records.push(OffsetsRecord {
            key: group_metadata_key(name)?,
            value: Some(group_metadata_value(metadata)?),
            timestamp: metadata.current_state_timestamp,
        });
    }
    for ((topic, partition), committed) in &stored.offsets {
        records.push(OffsetsRecord {
            key: offset_commit_key(name, topic, *partition)?,
            value: Some(offset_commit_value(committed)?),
            timestamp: committed.commit_timestamp,
        });
    }
    Ok(records)
}

/// How many records restating `stored` writes.
pub fn live_record_count(stored: &StoredGroup) -> usize {
    stored.offsets.len() + usize::from(stored.metadata.is_some())
}

/// The v2 record batch of `records` (uncompressed, no producer), offsets
/// from 0 and no leader epoch: a read stamps both, as for produced batches.
/// `None` for no records.
pub fn batch_of(records: &[OffsetsRecord]) -> Option<ValidatedBatch> {
    if records.is_empty() {
        return None;
    }
    let records = records
        .iter()
        .map(|record| BrokerRecord {
            timestamp: record.timestamp,
            key: Some(record.key.clone()),
            value: record.value.clone(),
            headers: Default::default(),
        })
        .collect();
    // Encoding uncompressed records into memory cannot fail.
    broker_batch(records).ok()
}

/// The batch `change` writes to its offsets partition, if any.
pub fn batch_of_change(change: &GroupCommand) -> Result<Option<ValidatedBatch>, TooLong> {
    Ok(batch_of(&records_of(change)?))
}

#[cfg(test)]
mod tests {
    use kafka_protocol::records::RecordBatchDecoder;

    use super::*;
    use crate::group::store::MemberMetadata;
    use crate::storage::batch::check_appendable;

    /// Golden bytes written out field by field from Kafka's
    /// `OffsetCommitKey` (v1 prefix) and `OffsetCommitValue` v3 schemas.
    #[test]
    fn offset_commit_key_and_value_match_kafkas_schema() {
        let key = offset_commit_key("g1", "t", 3).unwrap();
        #[rustfmt::skip]
        let expected_key: &[u8] = &[
            0, 1,             // version 1
            0, 2, b'g', b'1', // group
            0, 1, b't',       // topic
            0, 0, 0, 3,       // partition
        ];
        assert_eq!(&key[..], expected_key);

        let value = offset_commit_value(&CommittedOffset {
            offset: 258,
            leader_epoch: 7,
            metadata: Some("m".into()),
            commit_timestamp: 0x0102_0304_0506,
        })
        .unwrap();
        #[rustfmt::skip]
        let expected_value: &[u8] = &[
            0, 3,                            // version 3
            0, 0, 0, 0, 0, 0, 1, 2,          // offset 258
            0, 0, 0, 7,                      // leader epoch
            0, 1, b'm',                      // metadata
            0, 0, 1, 2, 3, 4, 5, 6,          // commit timestamp
        ];
        assert_eq!(&value[..], expected_value);

        let no_metadata = offset_commit_value(&CommittedOffset {
            offset: 1,
            leader_epoch: -1,
            metadata: None,
            commit_timestamp: 2,
        })
        .unwrap();
        assert_eq!(
            &no_metadata[10..16],
            &[0xFF, 0xFF, 0xFF, 0xFF, 0, 0],
            "epoch -1, then an empty string"
        );
    }

    /// Golden bytes from Kafka's `GroupMetadataKey` (v2 prefix) and
    /// `GroupMetadataValue` v3 schemas.
    #[test]
    fn group_metadata_key_and_value_match_kafkas_schema() {
        assert_eq!(&group_metadata_key("g").unwrap()[..], &[0, 2, 0, 1, b'g']);
        let metadata = GroupMetadata {
            group: "g".into(),
            protocol_type: "consumer".into(),
            generation: 5,
            protocol: Some("range".into()),
            leader: Some("m1".into()),
            current_state_timestamp: 9,
            members: vec![MemberMetadata {
                member_id: "m1".into(),
                group_instance_id: None,
                client_id: "c".into(),
                client_host: "/h".into(),
                rebalance_timeout_ms: 300,
                session_timeout_ms: 45,
                subscription: Bytes::from_static(&[1, 2]),
                assignment: Bytes::new(),
            }],
        };
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0, 3,                                        // version 3
            0, 8, b'c', b'o', b'n', b's', b'u', b'm', b'e', b'r', // protocol type
            0, 0, 0, 5,                                  // generation
            0, 5, b'r', b'a', b'n', b'g', b'e',          // protocol
            0, 2, b'm', b'1',                            // leader
            0, 0, 0, 0, 0, 0, 0, 9,                      // current state timestamp
            0, 0, 0, 1,                                  // one member
            0, 2, b'm', b'1',                            //   member id
            0xFF, 0xFF,                                  //   no group instance id
            0, 1, b'c',                                  //   client id
            0, 2, b'/', b'h',                            //   client host
            0, 0, 1, 44,                                 //   rebalance timeout 300
            0, 0, 0, 45,                                 //   session timeout
            0, 0, 0, 2, 1, 2,                            //   subscription
            0, 0, 0, 0,                                  //   assignment
        ];
        assert_eq!(&group_metadata_value(&metadata).unwrap()[..], expected);
        let empty = GroupMetadata {
            protocol: None,
            leader: None,
            members: Vec::new(),
            ..metadata
        };
        let value = group_metadata_value(&empty).unwrap();
        assert_eq!(&value[16..20], &[0xFF, 0xFF, 0xFF, 0xFF], "null protocol and leader");
    }

    #[test]
    fn a_removed_group_writes_tombstones_for_its_offsets_and_its_metadata() {
        let change = GroupCommand::RemoveGroup {
            group: "g".into(),
            offsets: vec![("t".into(), 0), ("t".into(), 1)],
            timestamp: 77,
        };
        let batch = batch_of_change(&change).unwrap().unwrap();
        check_appendable(&batch).unwrap();
        assert_eq!((batch.record_count, batch.max_timestamp), (3, 77));
        let decoded = RecordBatchDecoder::decode(&mut batch.bytes.clone()).unwrap();
        let keys: Vec<Bytes> = decoded.records.iter().map(|r| r.key.clone().unwrap()).collect();
        assert_eq!(
            keys,
            vec![
                offset_commit_key("g", "t", 0).unwrap(),
                offset_commit_key("g", "t", 1).unwrap(),
                group_metadata_key("g").unwrap()
            ]
        );
        assert!(decoded.records.iter().all(|r| r.value.is_none() && r.timestamp == 77));
    }

    #[test]
    fn a_commit_renders_the_same_batch_every_time_and_old_changes_render_none() {
        let change = GroupCommand::Commit {
            group: "g".into(),
            offsets: vec![(
                "t".into(),
                2,
                CommittedOffset {
                    offset: 10,
                    leader_epoch: -1,
                    metadata: None,
                    commit_timestamp: 1_700_000_000_000,
                },
            )],
        };
        let first = batch_of_change(&change).unwrap().unwrap();
        assert_eq!(first, batch_of_change(&change).unwrap().unwrap());
        check_appendable(&first).unwrap();
        let old = GroupCommand::DeleteGroup { group: "g".into() };
        assert_eq!(batch_of_change(&old).unwrap(), None);
        let long = "x".repeat(40_000);
        assert_eq!(offset_commit_key(&long, "t", 0), Err(TooLong("group id")));
    }
}
