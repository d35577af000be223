//! IncrementalAlterConfigs: SET, DELETE, APPEND and SUBTRACT on single topic
//! config keys, keeping the others.

use kafka_protocol::messages::incremental_alter_configs_request::AlterableConfig;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};
use kafka_protocol::protocol::VersionRange;

use super::alter_configs::{alter, duplicate_resource, duplicates};
use super::error_message;
use crate::cluster::Cluster;
use crate::error::{code_of, BrokerError};
use crate::raft::command::{ConfigChange, ConfigOp};

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 1 };

pub async fn handle(cluster: &Cluster, request: IncrementalAlterConfigsRequest) -> IncrementalAlterConfigsResponse {
    let duplicates = duplicates(request.resources.iter().map(|r| (r.resource_type, &r.resource_name)));
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let result = if duplicates.contains(&(resource.resource_type, resource.resource_name.to_string())) {
            Err(duplicate_resource())
        } else {
            match resource.configs.iter().map(change).collect::<Result<Vec<_>, _>>() {
                Ok(changes) => {
                    alter(
                        cluster,
                        resource.resource_type,
                        &resource.resource_name,
                        false,
                        changes,
                        request.validate_only,
                    )
                    .await
                }
                Err(err) => Err(err),
            }
        };
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_error_code(code_of(&result))
                .with_error_message(error_message(&result))
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name),
        );
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// The change one entry asks for; the operation codes are Kafka's AlterConfigOp.
fn change(config: &AlterableConfig) -> Result<ConfigChange, BrokerError> {
    let name = config.name.to_string();
    let value = || {
        config
            .value
            .as_ref()
            .map(|value| value.to_string())
            .ok_or_else(|| BrokerError::InvalidRequest(format!("{name} has no value")))
    };
    let op = match config.config_operation {
        0 => ConfigOp::Set(value()?),
        1 => ConfigOp::Delete,
        2 => ConfigOp::Append(value()?),
        3 => ConfigOp::Subtract(value()?),
        other => return Err(BrokerError::InvalidRequest(format!("unknown config operation {other}"))),
    };
    Ok(ConfigChange { name, op })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::StrBytes;

    fn entry(op: i8, value: Option<&'static str>) -> AlterableConfig {
        AlterableConfig::default()
            .with_name(StrBytes::from_static_str("cleanup.policy"))
            .with_config_operation(op)
            .with_value(value.map(StrBytes::from_static_str))
    }

    #[test]
    fn maps_kafka_operation_codes_and_refuses_the_rest() {
        let op = |op, value| change(&entry(op, value)).map(|change| change.op);
        assert_eq!(op(0, Some("compact")).unwrap(), ConfigOp::Set("compact".into()));
        assert_eq!(op(1, None).unwrap(), ConfigOp::Delete);
        assert_eq!(op(2, Some("compact")).unwrap(), ConfigOp::Append("compact".into()));
        assert_eq!(op(3, Some("delete")).unwrap(), ConfigOp::Subtract("delete".into()));
        assert!(matches!(op(0, None), Err(BrokerError::InvalidRequest(_))));
        assert!(matches!(op(4, Some("x")), Err(BrokerError::InvalidRequest(_))));
    }
}
