//! Three broker processes forming one Raft cluster, driven through the Kafka
//! protocol: brokers discover each other, admin requests sent to any node reach
//! the controller leader, only a partition's Raft leader accepts produce, and
//! every replica ends with the same data.

mod common;

use std::collections::BTreeSet;

use common::{record_batch, ClusterNodes};
use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse, RequestKind, ResponseKind};
use kafka_protocol::records::Compression;

const NOT_LEADER_OR_FOLLOWER: i16 = 6;

fn metadata(cluster: &ClusterNodes, node: u64, topics: Option<&[&str]>) -> Option<MetadataResponse> {
    let mut client = cluster.node(node).client()?;
    let topics = topics.map(|names| {
        names
            .iter()
            .map(|name| {
                kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(common::topic_name(name)))
            })
            .collect()
    });
    let request = MetadataRequest::default()
        .with_topics(topics)
        .with_allow_auto_topic_creation(false);
    match client
        .try_request(ApiKey::Metadata, 12, RequestKind::Metadata(request))
        .ok()?
    {
        ResponseKind::Metadata(response) => Some(response),
        _ => None,
    }
}

/// The leader of every partition of `topic` as `node` reports it, once all are known.
fn leaders(cluster: &ClusterNodes, node: u64, topic: &str) -> Option<Vec<i32>> {
    let response = metadata(cluster, node, Some(&[topic]))?;
    let partitions = &response.topics.first()?.partitions;
    let leaders: Vec<i32> = partitions.iter().map(|p| p.leader_id.0).collect();
    (!leaders.is_empty() && leaders.iter().all(|l| *l > 0)).then_some(leaders)
}

#[test]
fn three_nodes_replicate_partitions_through_raft() {
    let cluster = ClusterNodes::start(3);

    // Every node lists all three brokers and agrees on the controller.
    for node in 1..=3 {
        cluster.wait_for("three brokers and a controller", || {
            let response = metadata(&cluster, node, Some(&[]))?;
            (response.brokers.len() == 3 && response.controller_id.0 > 0).then_some(())
        });
    }

    // CreateTopics sent to a node that does not lead the controller is forwarded.
    let controller = metadata(&cluster, 1, Some(&[])).unwrap().controller_id.0 as u64;
    let follower = (1..=3).find(|n| *n != controller).unwrap();
    let created = cluster.node(follower).client().unwrap().create_topic("replicated", 3);
    assert_eq!(created.error_code, 0, "{:?}\n{}", created.error_message, cluster.logs());

    // Leaders are spread across the nodes, and every node reports the same ones.
    let leaders_seen = cluster.wait_for("partition leaders", || leaders(&cluster, 1, "replicated"));
    assert_eq!(
        leaders_seen.iter().collect::<BTreeSet<_>>().len(),
        3,
        "leaders {leaders_seen:?}"
    );
    for node in 2..=3 {
        cluster.wait_for("the same leaders on every node", || {
            (leaders(&cluster, node, "replicated")? == leaders_seen).then_some(())
        });
    }
    let response = metadata(&cluster, 1, Some(&["replicated"])).unwrap();
    for partition in &response.topics[0].partitions {
        assert_eq!(partition.replica_nodes.len(), 3);
    }

    // Only the leader accepts produce; the others answer NOT_LEADER_OR_FOLLOWER.
    for (index, leader) in leaders_seen.iter().enumerate() {
        let partition = index as i32;
        for node in 1..=3u64 {
            let values: Vec<String> = (0..10).map(|i| format!("p{partition}-n{node}-{i}")).collect();
            let mut client = cluster.node(node).client().unwrap();
            let answer = client
                .produce("replicated", partition, record_batch(&values, Compression::None), -1)
                .unwrap();
            if node as i32 == *leader {
                assert_eq!(answer.error_code, 0, "leader refused: {:?}", answer.error_message);
            } else {
                assert_eq!(answer.error_code, NOT_LEADER_OR_FOLLOWER);
            }
        }
        let mut client = cluster.node(*leader as u64).client().unwrap();
        let read: Vec<String> = client
            .read_all("replicated", partition)
            .into_iter()
            .map(|(_, value)| value)
            .collect();
        let expected: Vec<String> = (0..10).map(|i| format!("p{partition}-n{leader}-{i}")).collect();
        assert_eq!(read, expected);
    }

    // Every replica holds byte-identical data once it has applied the same entries.
    cluster.wait_for("replicas to agree", || {
        let views: Vec<Vec<(String, u64, String)>> = (1..=3)
            .map(|node| {
                let mut replicas: Vec<(String, u64, String)> = cluster
                    .node(node)
                    .checksums()
                    .iter()
                    .filter(|c| c["topic"] == "replicated")
                    .map(|c| {
                        (
                            format!("{}", c["partition"]),
                            c["applied_index"].as_u64().unwrap(),
                            c["checksum"].to_string(),
                        )
                    })
                    .collect();
                replicas.sort();
                replicas
            })
            .collect();
        (views[0].len() == 3 && views.iter().all(|v| *v == views[0])).then_some(())
    });
}
