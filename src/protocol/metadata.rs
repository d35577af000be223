//! Metadata: brokers, topics and each partition's Raft leader and leader epoch
//! (v7+). From v12 topics may be asked for by id (KIP-516). v13 adds a
//! top-level error code for REBOOTSTRAP_REQUIRED (KIP-1102), which a broker
//! sends when it no longer knows the cluster; a node of this cluster always
//! does, so it stays 0.

use futures::future::join_all;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::VersionRange;
use uuid::Uuid;

use super::str_bytes;
use crate::cluster::metadata::TopicState;
use crate::cluster::topics::validate_topic_name;
use crate::cluster::{Cluster, OFFSETS_TOPIC};
use crate::error::BrokerError;
use crate::raft::NodeId;

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 13 };

/// The first version whose requests may name topics by id: v10 and v11 have
/// the field, but Kafka never served it.
const FIRST_TOPIC_ID_VERSION: i16 = 12;

pub async fn handle(cluster: &Cluster, version: i16, request: MetadataRequest) -> MetadataResponse {
    let brokers = cluster
        .brokers()
        .into_iter()
        .map(|(id, host, port)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(id as i32))
                .with_host(str_bytes(host))
                .with_port(port)
        })
        .collect();
    // Before v4 a request could not opt out of auto-creation.
    let may_create = cluster.config().auto_create_topics && (version < 4 || request.allow_auto_topic_creation);
    let ids = requested_ids(version, &request);
    let names: Vec<String> = match request.topics {
        // As Kafka: a request that names any topic by id is answered by id only.
        Some(_) if !ids.is_empty() => Vec::new(),
        // v0 has no null list: an empty one asks for every topic.
        None => cluster.metadata().topics.keys().cloned().collect(),
        Some(topics) if version == 0 && topics.is_empty() => cluster.metadata().topics.keys().cloned().collect(),
        Some(topics) => topics
            .into_iter()
            .filter_map(|t| t.name.map(|n| n.0.to_string()))
            .collect(),
    };
    // Unknown topics are created concurrently: each creation waits for its
    // partitions' leaders, and one after another they would add up.
    let mut topics = join_all(names.iter().map(|name| describe_topic(cluster, name, may_create))).await;
    for id in ids {
        topics.push(describe_topic_id(cluster, id).await);
    }
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(str_bytes(cluster.config().cluster_id.clone())))
        .with_controller_id(BrokerId(cluster.controller_leader().map_or(-1, |id| id as i32)))
        .with_topics(topics)
}

/// The non-zero topic ids a v12+ request asks for.
fn requested_ids(version: i16, request: &MetadataRequest) -> Vec<Uuid> {
    if version < FIRST_TOPIC_ID_VERSION {
        return Vec::new();
    }
    let mut ids: Vec<Uuid> = request
        .topics
        .iter()
        .flatten()
        .map(|topic| topic.topic_id)
        .filter(|id| !id.is_nil())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// A topic asked for by id: never auto-created; an unknown id gets
/// UNKNOWN_TOPIC_ID with a null name.
async fn describe_topic_id(cluster: &Cluster, id: Uuid) -> MetadataResponseTopic {
    let name = cluster.metadata().topic_name_of(id.as_bytes()).map(str::to_string);
    match name {
        Some(name) => describe_topic(cluster, &name, false).await,
        None => MetadataResponseTopic::default()
            .with_name(None)
            .with_topic_id(id)
            .with_error_code(BrokerError::UnknownTopicId.code()),
    }
}

async fn describe_topic(cluster: &Cluster, name: &str, may_create: bool) -> MetadataResponseTopic {
    let response = MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(name))))
        .with_is_internal(name == OFFSETS_TOPIC);
    if let Err(err) = validate_topic_name(name) {
        return response.with_error_code(err.code());
    }
    if may_create && !cluster.metadata().topics.contains_key(name) {
        if let Err(err) = cluster.ensure_topic(name).await {
            tracing::warn!(topic = name, error = %err, "auto-creation failed");
            return response.with_error_code(err.code());
        }
    }
    let metadata = cluster.metadata();
    let Some(topic) = metadata.topics.get(name) else {
        return response.with_error_code(BrokerError::UnknownTopicOrPartition.code());
    };
    response
        .with_topic_id(Uuid::from_bytes(topic.id))
        .with_partitions(describe_partitions(cluster, topic))
}

fn describe_partitions(cluster: &Cluster, topic: &TopicState) -> Vec<MetadataResponsePartition> {
    topic
        .partitions
        .iter()
        .enumerate()
        .map(|(index, assignment)| {
            let replicas: Vec<BrokerId> = assignment.replicas.iter().map(|id| broker_id(*id)).collect();
            let partition = MetadataResponsePartition::default()
                .with_partition_index(index as i32)
                .with_leader_epoch(-1)
                .with_replica_nodes(replicas);
            match cluster.reported_leader(assignment.group) {
                Some(view) => partition
                    .with_leader_id(broker_id(view.leader))
                    .with_leader_epoch(view.leader_epoch)
                    .with_isr_nodes(view.in_sync.into_iter().map(broker_id).collect()),
                None => partition
                    .with_leader_id(BrokerId(-1))
                    .with_error_code(BrokerError::LeaderNotAvailable(String::new()).code()),
            }
        })
        .collect()
}

fn broker_id(node: NodeId) -> BrokerId {
    BrokerId(node as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;

    #[test]
    fn topics_are_asked_for_by_id_from_v12() {
        let by_id = |id: u128| {
            MetadataRequestTopic::default()
                .with_name(None)
                .with_topic_id(Uuid::from_u128(id))
        };
        let by_name = MetadataRequestTopic::default().with_name(Some(TopicName(str_bytes("t"))));
        let request =
            MetadataRequest::default().with_topics(Some(vec![by_id(2), by_name, by_id(0), by_id(1), by_id(2)]));
        assert_eq!(requested_ids(12, &request), [Uuid::from_u128(1), Uuid::from_u128(2)]);
        assert_eq!(requested_ids(13, &request).len(), 2);
        // Kafka never served ids before v12.
        assert!(requested_ids(11, &request).is_empty());
        assert!(requested_ids(13, &MetadataRequest::default().with_topics(None)).is_empty());
    }
}
