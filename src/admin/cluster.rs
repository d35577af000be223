//! `rafka cluster info` and `status`: brokers, the controller, and how many
//! partitions each broker leads and holds, from one Metadata answer;
//! `rafka cluster elect-leaders`: preferred-leader election.

use std::collections::BTreeMap;

use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
use kafka_protocol::messages::{ApiKey, ElectLeadersRequest, RequestKind, ResponseKind};
use serde_json::json;

use super::topic::{metadata, topic_name};
use super::{error_code, print_json, AdminClient};

/// ElectLeaders' election type for the preferred replica.
const PREFERRED_ELECTION: i8 = 0;
const ELECTION_NOT_NEEDED: i16 = 84;
/// How long the brokers may take to move the leaders.
const ELECTION_TIMEOUT_MS: i32 = 30_000;

/// `rafka cluster info`.
pub fn info(bootstrap: &str, json: bool) -> anyhow::Result<()> {
    let mut client = AdminClient::connect(bootstrap)?;
    let metadata = metadata(&mut client, None)?;
    // broker id -> (partitions led, replicas held)
    let mut load: BTreeMap<i32, (usize, usize)> = metadata.brokers.iter().map(|b| (b.node_id.0, (0, 0))).collect();
    let mut partitions = 0;
    for partition in metadata.topics.iter().flat_map(|t| &t.partitions) {
        partitions += 1;
        if partition.leader_id.0 >= 0 {
            load.entry(partition.leader_id.0).or_default().0 += 1;
        }
        for replica in &partition.replica_nodes {
            load.entry(replica.0).or_default().1 += 1;
        }
    }
    let mut brokers = metadata.brokers.clone();
    brokers.sort_by_key(|b| b.node_id.0);
    let cluster_id = metadata.cluster_id.as_ref().map(|id| id.to_string());
    let controller = metadata.controller_id.0;
    if json {
        let rows: Vec<_> = brokers
            .iter()
            .map(|b| {
                let (leaders, replicas) = load.get(&b.node_id.0).copied().unwrap_or_default();
                json!({
                    "id": b.node_id.0,
                    "host": b.host.as_str(),
                    "port": b.port,
                    "leaders": leaders,
                    "replicas": replicas,
                })
            })
            .collect();
        return print_json(&json!({
            "cluster_id": cluster_id,
            "controller": controller,
            "topics": metadata.topics.len(),
            "partitions": partitions,
            "brokers": rows,
        }));
    }
    println!("cluster id: {}", cluster_id.as_deref().unwrap_or("-"));
    println!(
        "controller: {}",
        if controller >= 0 {
            controller.to_string()
        } else {
            "none known".to_string()
        }
    );
    println!("{} topics, {partitions} partitions", metadata.topics.len());
    println!("{:>6} {:<30} {:>8} {:>8}", "BROKER", "ADDRESS", "LEADERS", "REPLICAS");
    for b in &brokers {
        let (leaders, replicas) = load.get(&b.node_id.0).copied().unwrap_or_default();
        println!(
            "{:>6} {:<30} {:>8} {:>8}",
            b.node_id.0,
            format!("{}:{}", b.host.as_str(), b.port),
            leaders,
            replicas
        );
    }
    Ok(())
}

/// `rafka cluster status`: how many partitions each broker leads, how many
/// of those its preferred (first) replica leads, and how far the leaders are
/// from an even spread over the live brokers.
pub fn status(bootstrap: &str, json: bool) -> anyhow::Result<()> {
    let mut client = AdminClient::connect(bootstrap)?;
    let metadata = metadata(&mut client, None)?;
    let mut leaders: BTreeMap<i32, usize> = metadata.brokers.iter().map(|b| (b.node_id.0, 0)).collect();
    let (mut partitions, mut leaderless, mut preferred) = (0, 0, 0);
    for partition in metadata.topics.iter().flat_map(|t| &t.partitions) {
        partitions += 1;
        match partition.leader_id.0 {
            leader if leader < 0 => leaderless += 1,
            leader => {
                *leaders.entry(leader).or_default() += 1;
                if partition.replica_nodes.first().map(|r| r.0) == Some(leader) {
                    preferred += 1;
                }
            }
        }
    }
    let most = leaders.values().copied().max().unwrap_or(0);
    let fewest = leaders.values().copied().min().unwrap_or(0);
    let imbalance = most - fewest;
    if json {
        let rows: Vec<_> = leaders
            .iter()
            .map(|(id, count)| json!({"id": id, "leaders": count}))
            .collect();
        return print_json(&json!({
            "partitions": partitions,
            "leaderless": leaderless,
            "preferred_leaders": preferred,
            "imbalance": imbalance,
            "balanced": imbalance <= 1 && leaderless == 0,
            "brokers": rows,
        }));
    }
    println!("{partitions} partitions, {preferred} led by their preferred replica, {leaderless} without a leader");
    println!("{:>6} {:>8}", "BROKER", "LEADERS");
    for (id, count) in &leaders {
        println!("{id:>6} {count:>8}");
    }
    println!(
        "imbalance: {imbalance} (most minus fewest leaders per broker){}",
        if imbalance <= 1 { ", balanced" } else { "" }
    );
    Ok(())
}

/// `rafka cluster elect-leaders`: preferred-leader election (ElectLeaders) of
/// one partition, every partition of a topic, or every partition.
pub fn elect_leaders(bootstrap: &str, topic: Option<&str>, partition: Option<i32>, json: bool) -> anyhow::Result<()> {
    let mut client = AdminClient::connect(bootstrap)?;
    let version = client.negotiate(ApiKey::ElectLeaders, 0..=2)?;
    let wanted = match (topic, partition) {
        (None, _) => None,
        (Some(topic), Some(partition)) => Some(vec![(topic.to_string(), vec![partition])]),
        (Some(topic), None) => {
            let metadata = metadata(&mut client, Some(&[topic.to_string()][..]))?;
            let found = metadata
                .topics
                .first()
                .ok_or_else(|| anyhow::anyhow!("no answer for topic {topic}"))?;
            error_code(found.error_code)?;
            Some(vec![(
                topic.to_string(),
                found.partitions.iter().map(|p| p.partition_index).collect(),
            )])
        }
    };
    let request = ElectLeadersRequest::default()
        .with_election_type(PREFERRED_ELECTION)
        .with_timeout_ms(ELECTION_TIMEOUT_MS)
        .with_topic_partitions(wanted.map(|topics| {
            topics
                .into_iter()
                .map(|(name, partitions)| {
                    TopicPartitions::default()
                        .with_topic(topic_name(&name))
                        .with_partitions(partitions)
                })
                .collect()
        }));
    let ResponseKind::ElectLeaders(answer) =
        client.request(ApiKey::ElectLeaders, version, RequestKind::ElectLeaders(request))?
    else {
        anyhow::bail!("unexpected ElectLeaders answer");
    };
    error_code(answer.error_code)?;
    let mut rows = Vec::new();
    let mut failures = 0;
    for topic in &answer.replica_election_results {
        for result in &topic.partition_result {
            let outcome = match result.error_code {
                0 => "elected".to_string(),
                ELECTION_NOT_NEEDED => "preferred replica already leads".to_string(),
                code => {
                    failures += 1;
                    let reason = result
                        .error_message
                        .as_ref()
                        .map(|m| format!(": {}", m.as_str()))
                        .unwrap_or_default();
                    format!(
                        "{}{reason}",
                        error_code(code).err().map(|e| e.to_string()).unwrap_or_default()
                    )
                }
            };
            rows.push(json!({
                "topic": topic.topic.0.as_str(),
                "partition": result.partition_id,
                "error_code": result.error_code,
                "outcome": outcome,
            }));
        }
    }
    if json {
        print_json(&rows.clone().into())?;
    } else if rows.is_empty() {
        println!("every partition is led by its preferred replica");
    } else {
        for row in &rows {
            println!(
                "{}/{}: {}",
                row["topic"].as_str().unwrap_or_default(),
                row["partition"],
                row["outcome"].as_str().unwrap_or_default()
            );
        }
    }
    if failures > 0 {
        anyhow::bail!("{failures} partition(s) not elected");
    }
    Ok(())
}
