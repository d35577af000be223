//! ListPartitionReassignments: the replica moves under way, with each
//! partition's replicas (the target first, then those still leaving), the
//! replicas being added and those being removed.

use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    BrokerId, ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};
use kafka_protocol::protocol::VersionRange;

use super::str_bytes;
use crate::cluster::Cluster;
use crate::raft::NodeId;

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 0 };

pub fn handle(cluster: &Cluster, request: ListPartitionReassignmentsRequest) -> ListPartitionReassignmentsResponse {
    let wanted = |topic: &str, partition: i32| match &request.topics {
        None => true,
        Some(topics) => topics
            .iter()
            .any(|t| t.name.0.as_str() == topic && t.partition_indexes.contains(&partition)),
    };
    let mut topics: Vec<OngoingTopicReassignment> = Vec::new();
    for moving in cluster.replica_moves() {
        if !wanted(&moving.topic, moving.partition) {
            continue;
        }
        let ongoing = OngoingPartitionReassignment::default()
            .with_partition_index(moving.partition)
            .with_replicas(broker_ids(&moving.replicas))
            .with_adding_replicas(broker_ids(&moving.adding))
            .with_removing_replicas(broker_ids(&moving.removing));
        match topics.iter_mut().find(|t| t.name.0.as_str() == moving.topic) {
            Some(topic) => topic.partitions.push(ongoing),
            None => topics.push(
                OngoingTopicReassignment::default()
                    .with_name(TopicName(str_bytes(moving.topic)))
                    .with_partitions(vec![ongoing]),
            ),
        }
    }
    ListPartitionReassignmentsResponse::default().with_topics(topics)
}

fn broker_ids(nodes: &[NodeId]) -> Vec<BrokerId> {
    nodes.iter().map(|node| BrokerId(*node as i32)).collect()
}
