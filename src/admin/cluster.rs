//! `rafka cluster info`: brokers, the controller, and how many partitions each
//! broker leads and holds, from one Metadata answer.

use std::collections::BTreeMap;

use serde_json::json;

use super::topic::metadata;
use super::{print_json, AdminClient};

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
