//! ListOffsets: earliest, latest, or the first offset at or after a timestamp,
//! with the leader epoch of the offset found (v4+). v7 adds the record with
//! the largest timestamp (KIP-734), v8 the earliest local offset and v9 the
//! last tiered offset (KIP-405, KIP-1005); v10 lets a client bound the wait
//! for offsets in remote storage (KIP-1075), which this broker answers at once
//! as it has none: its local log is its whole log.

use kafka_protocol::messages::list_offsets_request::ListOffsetsPartition;
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::protocol::VersionRange;

use crate::cluster::Cluster;
use crate::error::{code_of, BrokerError};
use crate::storage::epochs::NO_EPOCH;

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 10 };

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;
/// The first version whose responses carry the leader epoch.
const FIRST_EPOCH_VERSION: i16 = 4;

/// What one partition's lookup found.
struct Found {
    timestamp: i64,
    offset: i64,
    leader_epoch: i32,
}

impl Found {
    /// Kafka's answer when no record is that recent.
    const NONE: Found = Found {
        timestamp: -1,
        offset: -1,
        leader_epoch: NO_EPOCH,
    };
}

pub fn handle(cluster: &Cluster, version: i16, request: ListOffsetsRequest) -> ListOffsetsResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|partition| {
                    let result = lookup(cluster, topic.name.0.as_str(), partition);
                    let found = result.as_ref().unwrap_or(&Found::NONE);
                    // Older versions cannot carry it, and refuse to encode one.
                    let leader_epoch = if version >= FIRST_EPOCH_VERSION {
                        found.leader_epoch
                    } else {
                        NO_EPOCH
                    };
                    ListOffsetsPartitionResponse::default()
                        .with_partition_index(partition.partition_index)
                        .with_error_code(code_of(&result))
                        .with_timestamp(found.timestamp)
                        .with_offset(found.offset)
                        .with_leader_epoch(leader_epoch)
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

/// The offset asked for and the epoch it was appended in (for the latest
/// offset: the current epoch, as Kafka answers).
fn lookup(cluster: &Cluster, topic: &str, partition: &ListOffsetsPartition) -> Result<Found, BrokerError> {
    let handle = cluster.led_partition_at(topic, partition.partition_index, partition.current_leader_epoch)?;
    let applied = handle.applied();
    let (offsets, epochs) = (applied.offsets, applied.epochs);
    let at = |timestamp, offset| Found {
        timestamp,
        offset,
        leader_epoch: epochs.epoch_at(offset),
    };
    match partition.timestamp {
        LATEST => Ok(at(-1, offsets.next_offset)),
        EARLIEST | EARLIEST_LOCAL => Ok(at(-1, offsets.log_start_offset)),
        // Nothing is tiered: Kafka answers -1 when remote storage is off.
        LATEST_TIERED => Ok(Found::NONE),
        // The first record carrying the largest timestamp, as Kafka picks it.
        // The partition keeps only the largest timestamp ever appended: once
        // that record is gone (retention, DeleteRecords) nothing is found.
        MAX_TIMESTAMP if offsets.max_timestamp < 0 => Ok(Found::NONE),
        MAX_TIMESTAMP => Ok(handle
            .log
            .offset_for_timestamp(offsets.max_timestamp, offsets.log_start_offset)?
            .filter(|(offset, _)| *offset < offsets.next_offset)
            .map_or(Found::NONE, |(offset, ts)| at(ts, offset))),
        timestamp if timestamp >= 0 => Ok(handle
            .log
            .offset_for_timestamp(timestamp, offsets.log_start_offset)?
            .filter(|(offset, _)| *offset < offsets.next_offset)
            .map_or(Found::NONE, |(offset, ts)| at(ts, offset))),
        other => Err(BrokerError::InvalidRequest(format!(
            "timestamp {other} is not supported"
        ))),
    }
}
