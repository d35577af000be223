//! OffsetForLeaderEpoch: where a leader epoch ended in the partition's log.
//! Consumers ask it after a leader change, with the epoch of the last record
//! they consumed, to learn whether the records they read are still there.

use kafka_protocol::messages::offset_for_leader_epoch_request::OffsetForLeaderPartition;
use kafka_protocol::messages::offset_for_leader_epoch_response::{EpochEndOffset, OffsetForLeaderTopicResult};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use kafka_protocol::protocol::VersionRange;

use crate::cluster::Cluster;
use crate::error::{code_of, BrokerError};
use crate::storage::epochs::{NO_EPOCH, NO_OFFSET};

/// Kafka 3.9 speaks v0-v4; v0-v1 (without the current leader epoch, which
/// replica fetchers of old brokers sent) go through the bridge.
pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 4 };

pub fn handle(cluster: &Cluster, request: OffsetForLeaderEpochRequest) -> OffsetForLeaderEpochResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|partition| {
                    let result = end_offset(cluster, topic.topic.0.as_str(), partition);
                    let (leader_epoch, end_offset) = *result.as_ref().unwrap_or(&(NO_EPOCH, NO_OFFSET));
                    EpochEndOffset::default()
                        .with_partition(partition.partition)
                        .with_error_code(code_of(&result))
                        .with_leader_epoch(leader_epoch)
                        .with_end_offset(end_offset)
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

/// `(largest epoch at most the requested one, where it ended)`, answered by
/// the leader only, after the request's own epoch is checked.
fn end_offset(cluster: &Cluster, topic: &str, partition: &OffsetForLeaderPartition) -> Result<(i32, i64), BrokerError> {
    let handle = cluster.led_partition_at(topic, partition.partition, partition.current_leader_epoch)?;
    let applied = handle.applied();
    Ok(applied
        .epochs
        .end_offset_for(partition.leader_epoch, applied.offsets.next_offset))
}
