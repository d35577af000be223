//! AlterPartitionReassignments: move partitions' replicas to other nodes, or
//! cancel a move in progress (no replica list). The controller records the
//! target; the partition's leader carries the move out through Raft
//! membership changes (see `cluster::reassign`), so the answer means "started",
//! as in Kafka, and ListPartitionReassignments shows the moves under way.

use kafka_protocol::messages::alter_partition_reassignments_request::ReassignablePartition;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::{AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse};
use kafka_protocol::protocol::VersionRange;

use super::error_message;
use crate::cluster::Cluster;
use crate::error::{code_of, BrokerError};
use crate::raft::NodeId;

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 1 };

pub async fn handle(
    cluster: &Cluster,
    version: i16,
    request: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    // Version 0 has no such flag: the replication factor may change.
    let allow_factor_change = version == 0 || request.allow_replication_factor_change;
    let mut responses = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in &topic.partitions {
            let result = reassign(cluster, topic.name.0.as_str(), partition, allow_factor_change).await;
            partitions.push(
                ReassignablePartitionResponse::default()
                    .with_partition_index(partition.partition_index)
                    .with_error_code(code_of(&result))
                    .with_error_message(error_message(&result)),
            );
        }
        responses.push(
            ReassignableTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    AlterPartitionReassignmentsResponse::default()
        .with_allow_replication_factor_change(allow_factor_change)
        .with_responses(responses)
}

async fn reassign(
    cluster: &Cluster,
    topic: &str,
    partition: &ReassignablePartition,
    allow_factor_change: bool,
) -> Result<(), BrokerError> {
    let target = partition
        .replicas
        .as_ref()
        .map(|replicas| {
            replicas
                .iter()
                .map(|id| NodeId::try_from(id.0))
                .collect::<Result<Vec<NodeId>, _>>()
                .map_err(|_| BrokerError::InvalidReplicaAssignment(format!("negative broker id in {replicas:?}")))
        })
        .transpose()?;
    if let Some(target) = &target {
        let factor = cluster.replication_factor_of(topic, partition.partition_index)?;
        if !allow_factor_change && target.len() != factor {
            return Err(BrokerError::InvalidReplicationFactor(format!(
                "{} replicas requested, the partition has {factor}, and the request does not allow a change",
                target.len()
            )));
        }
    }
    cluster
        .reassign_partition(topic, partition.partition_index, target)
        .await
}
