//! ListOffsets: earliest, latest, or the first offset at or after a timestamp.

use kafka_protocol::messages::list_offsets_request::ListOffsetsPartition;
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::protocol::VersionRange;

use crate::cluster::Cluster;
use crate::error::{code_of, BrokerError};

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 6 };

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

pub fn handle(cluster: &Cluster, request: ListOffsetsRequest) -> ListOffsetsResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|partition| {
                    let result = lookup(cluster, topic.name.0.as_str(), partition);
                    let (timestamp, offset) = result.as_ref().map_or((-1, -1), |found| *found);
                    ListOffsetsPartitionResponse::default()
                        .with_partition_index(partition.partition_index)
                        .with_error_code(code_of(&result))
                        .with_timestamp(timestamp)
                        .with_offset(offset)
                        .with_leader_epoch(-1)
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

/// `(timestamp, offset)`; `(-1, -1)` when no record is that recent, as Kafka answers.
fn lookup(cluster: &Cluster, topic: &str, partition: &ListOffsetsPartition) -> Result<(i64, i64), BrokerError> {
    let handle = cluster.led_partition(topic, partition.partition_index)?;
    let offsets = handle.offsets();
    match partition.timestamp {
        LATEST => Ok((-1, offsets.next_offset)),
        EARLIEST => Ok((-1, offsets.log_start_offset)),
        timestamp if timestamp >= 0 => Ok(handle
            .log
            .offset_for_timestamp(timestamp, offsets.log_start_offset)?
            .filter(|(offset, _)| *offset < offsets.next_offset)
            .map_or((-1, -1), |(offset, ts)| (ts, offset))),
        other => Err(BrokerError::InvalidRequest(format!(
            "timestamp {other} is not supported"
        ))),
    }
}
