//! OffsetDelete: removes committed offsets of partitions from an empty group.

use kafka_protocol::messages::offset_delete_response::{OffsetDeleteResponsePartition, OffsetDeleteResponseTopic};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};
use kafka_protocol::protocol::VersionRange;

use crate::group::coordinator::GroupCoordinator;

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 0 };

pub async fn handle(groups: &GroupCoordinator, request: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let partitions = request
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.name.0.to_string(), p.partition_index)))
        .collect();
    if let Err(err) = groups.delete_offsets(request.group_id.0.as_str(), partitions).await {
        return OffsetDeleteResponse::default().with_error_code(err.code());
    }
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| OffsetDeleteResponsePartition::default().with_partition_index(p.partition_index))
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetDeleteResponse::default().with_topics(topics)
}
