//! ListOffsets: earliest, latest, or the first offset at or after a timestamp,
//! with the leader epoch of the offset found (v4+).

use kafka_protocol::messages::list_offsets_request::ListOffsetsPartition;
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::protocol::VersionRange;

use crate::cluster::Cluster;
use crate::error::{code_of, BrokerError};
use crate::storage::epochs::NO_EPOCH;

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 6 };

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
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
        EARLIEST => Ok(at(-1, offsets.log_start_offset)),
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
