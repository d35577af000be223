//! AlterConfigs: replaces a topic's config overrides with the ones sent (keys
//! left out go back to their defaults). Broker configs are static here, so a
//! change to one is refused the way Kafka refuses a non-dynamic config.

use std::collections::BTreeSet;

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};
use kafka_protocol::protocol::{StrBytes, VersionRange};

use super::describe_configs::{RESOURCE_BROKER, RESOURCE_TOPIC};
use super::error_message;
use crate::cluster::Cluster;
use crate::error::{code_of, BrokerError};
use crate::raft::command::{ConfigChange, ConfigOp};

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 2 };

pub async fn handle(cluster: &Cluster, request: AlterConfigsRequest) -> AlterConfigsResponse {
    let duplicates = duplicates(request.resources.iter().map(|r| (r.resource_type, &r.resource_name)));
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let changes = resource
            .configs
            .iter()
            .filter_map(|config| {
                // A null value means the key is not set, as in Kafka.
                let value = config.value.as_ref()?;
                Some(ConfigChange {
                    name: config.name.to_string(),
                    op: ConfigOp::Set(value.to_string()),
                })
            })
            .collect();
        let result = if duplicates.contains(&(resource.resource_type, resource.resource_name.to_string())) {
            Err(duplicate_resource())
        } else {
            alter(
                cluster,
                resource.resource_type,
                &resource.resource_name,
                true,
                changes,
                request.validate_only,
            )
            .await
        };
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_error_code(code_of(&result))
                .with_error_message(error_message(&result))
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name),
        );
    }
    AlterConfigsResponse::default().with_responses(responses)
}

/// The resources named more than once in one request; Kafka refuses each of them.
pub(super) fn duplicates<'a>(resources: impl Iterator<Item = (i8, &'a StrBytes)>) -> BTreeSet<(i8, String)> {
    let mut seen = BTreeSet::new();
    resources
        .filter(|(kind, name)| !seen.insert((*kind, name.as_str())))
        .map(|(kind, name)| (kind, name.to_string()))
        .collect()
}

pub(super) fn duplicate_resource() -> BrokerError {
    BrokerError::InvalidRequest("the resource is named more than once in the request".into())
}

/// Applies `changes` to one resource: AlterConfigs (`replace`) and
/// IncrementalAlterConfigs share everything but the starting point.
pub(super) async fn alter(
    cluster: &Cluster,
    resource_type: i8,
    name: &str,
    replace: bool,
    changes: Vec<ConfigChange>,
    validate_only: bool,
) -> Result<(), BrokerError> {
    match resource_type {
        RESOURCE_TOPIC => cluster.alter_topic_configs(name, replace, changes, validate_only).await,
        RESOURCE_BROKER => {
            let names: Vec<&str> = changes.iter().map(|change| change.name.as_str()).collect();
            Err(BrokerError::InvalidRequest(format!(
                "cannot update these configs dynamically: {names:?} (broker configs are static)"
            )))
        }
        other => Err(BrokerError::InvalidRequest(format!(
            "unexpected resource type {other}: only topic configs can be changed"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_repeated_resource_is_found_once() {
        let names: Vec<(i8, StrBytes)> = [(2, "a"), (2, "b"), (2, "a"), (4, "a"), (2, "a")]
            .into_iter()
            .map(|(kind, name)| (kind, StrBytes::from_static_str(name)))
            .collect();
        let found = duplicates(names.iter().map(|(kind, name)| (*kind, name)));
        assert_eq!(found, BTreeSet::from([(2, "a".to_string())]));
    }
}
