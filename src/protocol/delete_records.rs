//! DeleteRecords: move partitions' log start forward; the records below it are
//! gone for readers at once and their log files are freed afterwards.

use kafka_protocol::messages::delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsTopicResult};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use kafka_protocol::protocol::VersionRange;

use crate::cluster::Cluster;
use crate::error::code_of;

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 2 };

pub async fn handle(cluster: &Cluster, request: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in topic.partitions {
            let result = cluster
                .delete_records(topic.name.0.as_str(), partition.partition_index, partition.offset)
                .await;
            partitions.push(
                DeleteRecordsPartitionResult::default()
                    .with_partition_index(partition.partition_index)
                    .with_error_code(code_of(&result))
                    .with_low_watermark(*result.as_ref().unwrap_or(&-1)),
            );
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
