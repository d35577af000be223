//! DescribeConfigs: topic overrides over their defaults, and broker settings.

use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::VersionRange;

use super::{error_message, str_bytes};
use crate::cluster::{topic_configs, Cluster};
use crate::config::BrokerConfig;
use crate::error::{code_of, BrokerError};

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 4 };

pub(crate) const RESOURCE_TOPIC: i8 = 2;
pub(crate) const RESOURCE_BROKER: i8 = 4;
const SOURCE_TOPIC_OVERRIDE: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

/// One config entry: name, value, source, and whether clients may change it.
struct Entry {
    name: String,
    value: String,
    source: i8,
    read_only: bool,
}

pub fn handle(cluster: &Cluster, request: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let result = describe(cluster, &resource);
            let configs = result
                .as_ref()
                .map(|entries| {
                    entries
                        .iter()
                        .filter(|entry| wanted(&resource, &entry.name))
                        .map(|entry| {
                            DescribeConfigsResourceResult::default()
                                .with_name(str_bytes(entry.name.clone()))
                                .with_value(Some(str_bytes(entry.value.clone())))
                                .with_config_source(entry.source)
                                .with_read_only(entry.read_only)
                        })
                        .collect()
                })
                .unwrap_or_default();
            DescribeConfigsResult::default()
                .with_error_code(code_of(&result))
                .with_error_message(error_message(&result))
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name)
                .with_configs(configs)
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn wanted(resource: &DescribeConfigsResource, name: &str) -> bool {
    resource
        .configuration_keys
        .as_ref()
        .is_none_or(|keys| keys.iter().any(|key| key.as_str() == name))
}

fn describe(cluster: &Cluster, resource: &DescribeConfigsResource) -> Result<Vec<Entry>, BrokerError> {
    let name = resource.resource_name.as_str();
    match resource.resource_type {
        RESOURCE_TOPIC => {
            let metadata = cluster.metadata();
            let topic = metadata.topics.get(name).ok_or(BrokerError::UnknownTopicOrPartition)?;
            let defaults = topic_configs::defaults(cluster.config())
                .into_iter()
                .filter(|(name, _)| !topic.configs.contains_key(*name))
                .map(|(name, value)| (name.to_string(), value, SOURCE_DEFAULT));
            let overrides = topic
                .configs
                .iter()
                .map(|(name, value)| (name.clone(), value.clone(), SOURCE_TOPIC_OVERRIDE));
            let mut entries: Vec<Entry> = defaults
                .chain(overrides)
                .map(|(name, value, source)| Entry {
                    // Overrides CreateTopics accepted for configs this broker
                    // does not know can only be deleted, not changed.
                    read_only: !topic_configs::is_alterable(&name),
                    name,
                    value,
                    source,
                })
                .collect();
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(entries)
        }
        RESOURCE_BROKER if name.is_empty() || name == cluster.node_id().to_string() => {
            Ok(broker_configs(cluster.config()))
        }
        RESOURCE_BROKER => Err(BrokerError::InvalidRequest(format!("broker {name} is not this node"))),
        other => Err(BrokerError::InvalidRequest(format!(
            "resource type {other} is not supported"
        ))),
    }
}

fn broker_configs(cfg: &BrokerConfig) -> Vec<Entry> {
    [
        ("auto.create.topics.enable", cfg.auto_create_topics.to_string()),
        ("broker.id", cfg.node_id.to_string()),
        ("default.replication.factor", cfg.default_replication_factor.to_string()),
        ("log.retention.bytes", cfg.log_retention_bytes.to_string()),
        (
            "log.retention.check.interval.ms",
            cfg.log_retention_check_interval_ms.to_string(),
        ),
        ("log.retention.hours", cfg.log_retention_hours.to_string()),
        ("log.roll.ms", cfg.log_roll_ms.to_string()),
        ("log.segment.bytes", cfg.log_segment_bytes.to_string()),
        ("message.max.bytes", cfg.message_max_bytes.to_string()),
        ("num.partitions", cfg.default_partitions.to_string()),
        ("socket.request.max.bytes", cfg.socket_request_max_bytes.to_string()),
    ]
    .into_iter()
    .map(|(name, value)| Entry {
        name: name.to_string(),
        value,
        source: SOURCE_STATIC_BROKER,
        // Broker configs come from the node's file and cannot be changed by clients.
        read_only: true,
    })
    .collect()
}
