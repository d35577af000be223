//! CreatePartitions: grow a topic; new partitions get their own Raft groups.

use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use kafka_protocol::protocol::VersionRange;

use super::error_message;
use crate::cluster::Cluster;
use crate::error::{code_of, BrokerError};

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 3 };

pub async fn handle(cluster: &Cluster, request: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let result = grow(cluster, &topic, request.validate_only).await;
        results.push(
            CreatePartitionsTopicResult::default()
                .with_name(topic.name.clone())
                .with_error_code(code_of(&result))
                .with_error_message(error_message(&result)),
        );
    }
    CreatePartitionsResponse::default().with_results(results)
}

async fn grow(cluster: &Cluster, topic: &CreatePartitionsTopic, validate_only: bool) -> Result<(), BrokerError> {
    if topic.assignments.is_some() {
        return Err(BrokerError::InvalidRequest(
            "manual replica assignment is not supported".into(),
        ));
    }
    let name = topic.name.0.as_str();
    cluster.check_partition_growth(name, topic.count)?;
    if validate_only {
        return Ok(());
    }
    cluster.create_partitions(name, topic.count).await
}
