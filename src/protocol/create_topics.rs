//! CreateTopics: proposals to the controller group.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::protocol::VersionRange;

use super::error_message;
use crate::cluster::Cluster;
use crate::error::{code_of, BrokerError};

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 7 };

pub async fn handle(cluster: &Cluster, request: CreateTopicsRequest) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let result = create(cluster, &topic, request.validate_only).await;
        if let Err(err) = &result {
            tracing::info!(topic = topic.name.0.as_str(), error = %err, "topic not created");
        }
        let created = cluster.metadata().topics.get(topic.name.0.as_str()).cloned();
        let (partitions, factor) = match (&result, &created) {
            (Ok(_), Some(state)) if !request.validate_only => (
                state.partitions.len() as i32,
                state.partitions.first().map_or(0, |p| p.replicas.len() as i16),
            ),
            // validate_only answers what the topic would have been created with.
            (Ok((count, factor)), _) => (*count as i32, *factor as i16),
            _ => (topic.num_partitions, topic.replication_factor),
        };
        results.push(
            CreatableTopicResult::default()
                .with_name(topic.name.clone())
                .with_topic_id(match (&result, created) {
                    (Ok(_), Some(state)) if !request.validate_only => uuid::Uuid::from_bytes(state.id),
                    _ => uuid::Uuid::nil(),
                })
                .with_error_code(code_of(&result))
                .with_error_message(error_message(&result))
                .with_num_partitions(partitions)
                .with_replication_factor(factor),
        );
    }
    CreateTopicsResponse::default().with_topics(results)
}

/// Creates the topic (or, with `validate_only`, only checks it, configs
/// included); returns its partition count and replication factor.
async fn create(cluster: &Cluster, topic: &CreatableTopic, validate_only: bool) -> Result<(usize, usize), BrokerError> {
    if !topic.assignments.is_empty() {
        return Err(BrokerError::InvalidRequest(
            "manual replica assignment is not supported".into(),
        ));
    }
    let name = topic.name.0.as_str();
    let mut configs = BTreeMap::new();
    for config in &topic.configs {
        let value = config
            .value
            .as_ref()
            .ok_or_else(|| BrokerError::InvalidConfig(format!("{} has no value", config.name.as_str())))?;
        configs.insert(config.name.to_string(), value.to_string());
    }
    if validate_only {
        return cluster.check_new_topic(name, topic.num_partitions, topic.replication_factor, &configs);
    }
    cluster
        .create_topic(name, topic.num_partitions, topic.replication_factor, configs)
        .await
}
