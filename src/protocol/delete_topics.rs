//! DeleteTopics: by name (all versions) or by topic id (v6).

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use kafka_protocol::protocol::VersionRange;

use super::{error_message, str_bytes};
use crate::cluster::Cluster;
use crate::error::{code_of, BrokerError};

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 6 };

pub async fn handle(cluster: &Cluster, request: DeleteTopicsRequest) -> DeleteTopicsResponse {
    // v6 lists topics as (name or id); earlier versions list names.
    let mut targets: Vec<(Option<String>, uuid::Uuid)> = request
        .topic_names
        .iter()
        .map(|name| (Some(name.0.to_string()), uuid::Uuid::nil()))
        .collect();
    targets.extend(
        request
            .topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id)),
    );
    let mut responses = Vec::with_capacity(targets.len());
    for (name, id) in targets {
        let name = name.or_else(|| name_of_id(cluster, id));
        let result = match &name {
            Some(name) => cluster.delete_topic(name).await,
            None => Err(BrokerError::UnknownTopicOrPartition),
        };
        responses.push(
            DeletableTopicResult::default()
                .with_name(name.map(|n| TopicName(str_bytes(n))))
                .with_topic_id(id)
                .with_error_code(code_of(&result))
                .with_error_message(error_message(&result)),
        );
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

fn name_of_id(cluster: &Cluster, id: uuid::Uuid) -> Option<String> {
    cluster
        .metadata()
        .topics
        .iter()
        .find(|(_, topic)| topic.id == *id.as_bytes())
        .map(|(name, _)| name.clone())
}
