//! `rafka topic list|describe|create|delete|alter-config`, over Metadata,
//! DescribeConfigs, CreateTopics, DeleteTopics and IncrementalAlterConfigs.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest, IncrementalAlterConfigsRequest,
    MetadataRequest, MetadataResponse, RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use serde_json::json;

use super::{error_code, print_json, AdminClient};

/// How long the broker may take to create or delete topics.
const ADMIN_TIMEOUT_MS: i32 = 30_000;
/// DescribeConfigs resource type of a topic.
const TOPIC_RESOURCE: i8 = 2;
/// IncrementalAlterConfigs operations (Kafka's AlterConfigOp).
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

pub(super) fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// Metadata of `topics` (all topics for `None`), never creating any.
pub(super) fn metadata(client: &mut AdminClient, topics: Option<&[String]>) -> anyhow::Result<MetadataResponse> {
    let version = client.negotiate(ApiKey::Metadata, 1..=12)?;
    let topics = topics.map(|names| {
        names
            .iter()
            .map(|name| MetadataRequestTopic::default().with_name(Some(topic_name(name))))
            .collect()
    });
    let request = MetadataRequest::default()
        .with_topics(topics)
        .with_allow_auto_topic_creation(false);
    match client.request(ApiKey::Metadata, version, RequestKind::Metadata(request))? {
        ResponseKind::Metadata(response) => Ok(response),
        _ => anyhow::bail!("unexpected Metadata answer"),
    }
}

fn name_of(topic: &MetadataResponseTopic) -> String {
    topic.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default()
}

fn replication_factor(topic: &MetadataResponseTopic) -> usize {
    topic.partitions.first().map_or(0, |p| p.replica_nodes.len())
}

/// `rafka topic list`.
pub fn list(bootstrap: &str, json: bool) -> anyhow::Result<()> {
    let mut client = AdminClient::connect(bootstrap)?;
    let mut topics = metadata(&mut client, None)?.topics;
    topics.sort_by_key(name_of);
    if json {
        let rows: Vec<_> = topics
            .iter()
            .map(|t| {
                json!({
                    "topic": name_of(t),
                    "partitions": t.partitions.len(),
                    "replication_factor": replication_factor(t),
                    "internal": t.is_internal,
                })
            })
            .collect();
        return print_json(&rows.into());
    }
    println!(
        "{:<40} {:>10} {:>18} INTERNAL",
        "TOPIC", "PARTITIONS", "REPLICATION-FACTOR"
    );
    for t in &topics {
        println!(
            "{:<40} {:>10} {:>18} {}",
            name_of(t),
            t.partitions.len(),
            replication_factor(t),
            t.is_internal
        );
    }
    Ok(())
}

/// `rafka topic describe`: partitions with leader, replicas and ISR, and the topic's configs.
pub fn describe(bootstrap: &str, names: &[String], json: bool) -> anyhow::Result<()> {
    let mut client = AdminClient::connect(bootstrap)?;
    let topics = metadata(&mut client, Some(names))?.topics;
    let mut described = Vec::new();
    for topic in &topics {
        let name = name_of(topic);
        error_code(topic.error_code).map_err(|err| anyhow::anyhow!("topic {name}: {err}"))?;
        let configs = configs(&mut client, &name)?;
        let mut partitions = topic.partitions.clone();
        partitions.sort_by_key(|p| p.partition_index);
        described.push((name, topic.topic_id, partitions, configs));
    }
    if json {
        let rows: Vec<_> = described
            .iter()
            .map(|(name, id, partitions, configs)| {
                let partitions: Vec<_> = partitions
                    .iter()
                    .map(|p| {
                        json!({
                            "partition": p.partition_index,
                            "leader": p.leader_id.0,
                            "replicas": p.replica_nodes.iter().map(|b| b.0).collect::<Vec<_>>(),
                            "isr": p.isr_nodes.iter().map(|b| b.0).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                json!({"topic": name, "id": id.to_string(), "partitions": partitions, "configs": configs})
            })
            .collect();
        return print_json(&rows.into());
    }
    for (name, id, partitions, configs) in &described {
        println!("topic {name} (id {id}), {} partitions", partitions.len());
        for (key, value) in configs {
            println!("  config {key}={value}");
        }
        println!("  {:>9} {:>7} {:<20} ISR", "PARTITION", "LEADER", "REPLICAS");
        for p in partitions {
            let ids = |nodes: &[kafka_protocol::messages::BrokerId]| {
                nodes.iter().map(|b| b.0.to_string()).collect::<Vec<_>>().join(",")
            };
            println!(
                "  {:>9} {:>7} {:<20} {}",
                p.partition_index,
                p.leader_id.0,
                ids(&p.replica_nodes),
                ids(&p.isr_nodes)
            );
        }
    }
    Ok(())
}

/// The configs DescribeConfigs reports for `topic` (name -> value).
fn configs(client: &mut AdminClient, topic: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let version = client.negotiate(ApiKey::DescribeConfigs, 1..=4)?;
    let request = DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
        .with_resource_type(TOPIC_RESOURCE)
        .with_resource_name(StrBytes::from_string(topic.to_string()))
        .with_configuration_keys(None)]);
    let ResponseKind::DescribeConfigs(answer) =
        client.request(ApiKey::DescribeConfigs, version, RequestKind::DescribeConfigs(request))?
    else {
        anyhow::bail!("unexpected DescribeConfigs answer");
    };
    let mut configs = BTreeMap::new();
    for result in answer.results {
        error_code(result.error_code).map_err(|err| anyhow::anyhow!("configs of {topic}: {err}"))?;
        for config in result.configs {
            if let Some(value) = config.value {
                configs.insert(config.name.to_string(), value.to_string());
            }
        }
    }
    Ok(configs)
}

/// `key=value` pairs as (key, value).
fn pairs(pairs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("config {pair:?} is not key=value"))?;
            Ok((key.to_string(), value.to_string()))
        })
        .collect()
}

/// `rafka topic alter-config`: sets and deletes single configs of a topic
/// (IncrementalAlterConfigs), leaving the others as they are.
pub fn alter_config(bootstrap: &str, topic: &str, set: &[String], delete: &[String], json: bool) -> anyhow::Result<()> {
    let set = pairs(set)?;
    anyhow::ensure!(
        !set.is_empty() || !delete.is_empty(),
        "nothing to change: give --set or --delete"
    );
    let mut changes: Vec<AlterableConfig> = set
        .iter()
        .map(|(key, value)| {
            AlterableConfig::default()
                .with_name(StrBytes::from_string(key.clone()))
                .with_config_operation(OP_SET)
                .with_value(Some(StrBytes::from_string(value.clone())))
        })
        .collect();
    changes.extend(delete.iter().map(|key| {
        AlterableConfig::default()
            .with_name(StrBytes::from_string(key.clone()))
            .with_config_operation(OP_DELETE)
            .with_value(None)
    }));
    let mut client = AdminClient::connect(bootstrap)?;
    let version = client.negotiate(ApiKey::IncrementalAlterConfigs, 0..=1)?;
    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![AlterConfigsResource::default()
        .with_resource_type(TOPIC_RESOURCE)
        .with_resource_name(StrBytes::from_string(topic.to_string()))
        .with_configs(changes)]);
    let ResponseKind::IncrementalAlterConfigs(answer) = client.request(
        ApiKey::IncrementalAlterConfigs,
        version,
        RequestKind::IncrementalAlterConfigs(request),
    )?
    else {
        anyhow::bail!("unexpected IncrementalAlterConfigs answer");
    };
    for result in &answer.responses {
        error_code(result.error_code).map_err(|err| match &result.error_message {
            Some(message) => anyhow::anyhow!("configs of {topic} not changed: {err}: {message}"),
            None => anyhow::anyhow!("configs of {topic} not changed: {err}"),
        })?;
    }
    if json {
        let set: BTreeMap<&str, &str> = set.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        return print_json(&json!({"topic": topic, "set": set, "deleted": delete}));
    }
    for (key, value) in &set {
        println!("set {key}={value} on topic {topic}");
    }
    for key in delete {
        println!("deleted {key} on topic {topic} (back to its default)");
    }
    Ok(())
}

/// What `rafka topic create` asks for.
pub struct NewTopic<'a> {
    pub name: &'a str,
    /// -1: the broker's default.
    pub partitions: i32,
    /// -1: the broker's default.
    pub replication_factor: i16,
    /// `key=value` pairs.
    pub configs: &'a [String],
}

/// `rafka topic create`.
pub fn create(bootstrap: &str, topic: &NewTopic<'_>, json: bool) -> anyhow::Result<()> {
    let configs = pairs(topic.configs)?
        .into_iter()
        .map(|(key, value)| {
            CreatableTopicConfig::default()
                .with_name(StrBytes::from_string(key))
                .with_value(Some(StrBytes::from_string(value)))
        })
        .collect();
    let mut client = AdminClient::connect(bootstrap)?;
    // v4 is the first to accept -1 for the broker's default partitions and replication factor.
    let version = client.negotiate(ApiKey::CreateTopics, 4..=7)?;
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(ADMIN_TIMEOUT_MS)
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name(topic.name))
            .with_num_partitions(topic.partitions)
            .with_replication_factor(topic.replication_factor)
            .with_configs(configs)]);
    let ResponseKind::CreateTopics(answer) =
        client.request(ApiKey::CreateTopics, version, RequestKind::CreateTopics(request))?
    else {
        anyhow::bail!("unexpected CreateTopics answer");
    };
    let result = answer
        .topics
        .first()
        .ok_or_else(|| anyhow::anyhow!("CreateTopics answered for no topic"))?;
    error_code(result.error_code).map_err(|err| anyhow::anyhow!("topic {} not created: {err}", topic.name))?;
    // Before v5 the answer carries no counts: ask Metadata what was created.
    let created = metadata(&mut client, Some(&[topic.name.to_string()]))?;
    let (partitions, factor) = created
        .topics
        .first()
        .map_or((0, 0), |t| (t.partitions.len(), replication_factor(t)));
    if json {
        return print_json(&json!({
            "topic": topic.name,
            "created": true,
            "partitions": partitions,
            "replication_factor": factor,
        }));
    }
    println!(
        "created topic {} ({partitions} partitions, replication factor {factor})",
        topic.name
    );
    Ok(())
}

/// `rafka topic delete`.
pub fn delete(bootstrap: &str, names: &[String], json: bool) -> anyhow::Result<()> {
    let mut client = AdminClient::connect(bootstrap)?;
    let version = client.negotiate(ApiKey::DeleteTopics, 1..=6)?;
    let request = DeleteTopicsRequest::default().with_timeout_ms(ADMIN_TIMEOUT_MS);
    // v6 names topics in `topics` (name or id), earlier versions in `topic_names`.
    let request = if version >= 6 {
        request.with_topics(
            names
                .iter()
                .map(|name| DeleteTopicState::default().with_name(Some(topic_name(name))))
                .collect(),
        )
    } else {
        request.with_topic_names(names.iter().map(|name| topic_name(name)).collect())
    };
    let ResponseKind::DeleteTopics(answer) =
        client.request(ApiKey::DeleteTopics, version, RequestKind::DeleteTopics(request))?
    else {
        anyhow::bail!("unexpected DeleteTopics answer");
    };
    let mut failures = Vec::new();
    let mut rows = Vec::new();
    for result in &answer.responses {
        let name = result.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
        match error_code(result.error_code) {
            Ok(()) => rows.push(json!({"topic": name, "deleted": true})),
            Err(err) => {
                rows.push(json!({"topic": name, "deleted": false, "error": err.to_string()}));
                failures.push(format!("{name}: {err}"));
            }
        }
    }
    if json {
        print_json(&rows.into())?;
    } else {
        for row in &rows {
            if row["deleted"] == true {
                println!("deleted topic {}", row["topic"].as_str().unwrap_or_default());
            }
        }
    }
    anyhow::ensure!(failures.is_empty(), "not deleted: {}", failures.join("; "));
    Ok(())
}
