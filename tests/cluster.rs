//! Three broker processes forming one Raft cluster, driven through the Kafka
//! protocol: brokers discover each other, admin requests sent to any node reach
//! the controller leader, only a partition's Raft leader accepts produce, and
//! every replica ends with the same data. Commands forged on the peer port are
//! refused without harm.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};

use bytes::Bytes;
use common::{record_batch, ClusterNodes};
use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse, RequestKind, ResponseKind};
use kafka_protocol::records::Compression;
use rafka::group::store::GroupCommand;
use rafka::raft::command::{Command, CommandResponse, ControllerRefusal};
use rafka::raft::handshake::{self, Challenge, PeerCredentials};
use rafka::raft::network::PeerClient;
use rafka::raft::wire::{PeerRequest, PeerResponse, ProposeError};
use rafka::raft::{GroupId, CONTROLLER_GROUP};
use rafka::storage::batch::ValidatedBatch;

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

/// What a peer sends on the Raft port, answered by node `node`.
fn ask_peer(cluster: &ClusterNodes, node: u64, request: &PeerRequest) -> PeerResponse {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // The test clusters keep the default cluster id and have no secret.
    let credentials = PeerCredentials::new("rafka", None);
    let client = PeerClient::new(
        0,
        credentials,
        node,
        format!("127.0.0.1:{}", cluster.node(node).raft_port),
    );
    runtime
        .block_on(client.call(request, common::DEADLINE))
        .unwrap_or_else(|err| panic!("node {node} did not answer {request:?}: {err}\n{}", cluster.logs()))
}

fn propose(group: GroupId, command: Command) -> PeerRequest {
    PeerRequest::Propose { group, command }
}

/// The answer of whichever node leads the controller group (the others answer NotLeader).
fn propose_to_controller(cluster: &ClusterNodes, command: Command) -> Result<CommandResponse, ProposeError> {
    cluster.wait_for("the controller leader to answer", || {
        (1..=3).find_map(
            |node| match ask_peer(cluster, node, &propose(CONTROLLER_GROUP, command.clone())) {
                PeerResponse::Proposed(Err(ProposeError::NotLeader(_))) => None,
                PeerResponse::Proposed(answer) => Some(answer),
                other => panic!("unexpected {other:?}"),
            },
        )
    })
}

/// Every replica of `topic` at the same applied index with the same checksum: (index, checksum) per partition.
fn agreed_replicas(cluster: &ClusterNodes, topic: &str) -> Vec<(u64, String)> {
    cluster.wait_for("replicas to agree", || {
        let views: Vec<Vec<(u64, String)>> = (1..=3)
            .map(|node| {
                let mut replicas: Vec<(i64, u64, String)> = cluster
                    .node(node)
                    .checksums()
                    .iter()
                    .filter(|c| c["topic"] == topic)
                    .map(|c| {
                        (
                            c["partition"].as_i64().unwrap(),
                            c["applied_index"].as_u64().unwrap(),
                            c["checksum"].to_string(),
                        )
                    })
                    .collect();
                replicas.sort();
                replicas.into_iter().map(|(_, index, sum)| (index, sum)).collect()
            })
            .collect();
        (!views[0].is_empty() && views.iter().all(|v| *v == views[0])).then(|| views[0].clone())
    })
}

/// Commands sent straight to the peer port, as any process that reaches it
/// can: partition appends (malformed or not), consumer-group changes, and
/// controller commands no admin path would build. Each is refused in its
/// answer, nothing is applied, no node or group stops, and the partition keeps
/// taking produce requests on every replica.
#[test]
fn commands_forged_on_the_peer_port_are_refused_and_nobody_crashes() {
    let mut cluster = ClusterNodes::start(3);
    cluster.wait_for("a controller", || {
        (metadata(&cluster, 1, Some(&[]))?.controller_id.0 > 0).then_some(())
    });
    let created = cluster.node(1).client().unwrap().create_topic("guarded", 1);
    assert_eq!(created.error_code, 0, "{:?}", created.error_message);
    let leader = cluster.wait_for("a partition leader", || leaders(&cluster, 1, "guarded"))[0] as u64;
    let produce = |cluster: &ClusterNodes, values: &[String]| {
        let mut client = cluster.node(leader).client().unwrap();
        let answer = client
            .produce("guarded", 0, record_batch(values, Compression::None), -1)
            .unwrap();
        assert_eq!(answer.error_code, 0, "{:?}", answer.error_message);
    };
    produce(&cluster, &["before".to_string()]);
    let before = agreed_replicas(&cluster, "guarded");
    let group = cluster.node(1).checksums()[0]["group"].as_u64().unwrap();

    // Partition appends and consumer-group changes never come from a peer.
    let valid = record_batch(&["forged".to_string()], Compression::None);
    let batch = |bytes: Bytes, record_count: i64| ValidatedBatch {
        bytes,
        record_count,
        max_timestamp: 0,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
    };
    let not_controller_commands = [
        (
            group,
            Command::Append {
                batches: vec![batch(Bytes::from_static(b"junk"), 1)],
            },
        ),
        (
            group,
            Command::Append {
                batches: vec![batch(valid.clone(), 1)],
            },
        ),
        (
            group,
            Command::Append {
                batches: vec![batch(valid, i64::MAX)],
            },
        ),
        (group, Command::Group(GroupCommand::DeleteGroup { group: "g".into() })),
        (
            CONTROLLER_GROUP,
            Command::Append {
                batches: vec![batch(Bytes::new(), 0)],
            },
        ),
        (
            CONTROLLER_GROUP,
            Command::Group(GroupCommand::DeleteGroup { group: "g".into() }),
        ),
        (group, Command::AllocateProducerId),
    ];
    for node in 1..=3 {
        for (target, command) in &not_controller_commands {
            match ask_peer(&cluster, node, &propose(*target, command.clone())) {
                PeerResponse::Proposed(Err(ProposeError::Refused(_))) => {}
                other => panic!("node {node} answered {other:?} to {command:?} for group {target}"),
            }
        }
    }

    // Controller commands that no admin path builds are refused when applied.
    let topic = |name: &str, replicas: Vec<Vec<u64>>| Command::CreateTopic {
        name: name.into(),
        topic_id: [7; 16],
        replicas,
        configs: BTreeMap::new(),
    };
    for command in [
        topic("stranger", vec![vec![1, 99]]),
        topic("twice", vec![vec![2, 2, 3]]),
        topic("nobody", vec![vec![]]),
        topic("none", vec![]),
        topic("bad name!", vec![vec![1, 2, 3]]),
        Command::CreatePartitions {
            name: "guarded".into(),
            replicas: vec![vec![1, 2, 3], vec![4]],
        },
    ] {
        match propose_to_controller(&cluster, command.clone()) {
            Ok(CommandResponse::Controller(Err(
                ControllerRefusal::InvalidAssignment(_) | ControllerRefusal::InvalidTopicName(_),
            ))) => {}
            other => panic!("{command:?} answered {other:?}"),
        }
    }

    // A frame that does not decode, sent instead of the handshake's answer,
    // closes that connection, nothing more: all the node ever sent was its
    // challenge (a 4-byte length and the message).
    for node in 1..=3 {
        let mut raw = std::net::TcpStream::connect(("127.0.0.1", cluster.node(node).raft_port)).unwrap();
        raw.set_read_timeout(Some(common::DEADLINE)).unwrap();
        raw.write_all(&[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff]).unwrap();
        let mut sent = Vec::new();
        let _ = raw.read_to_end(&mut sent);
        let challenge = sent.get(4..).map(handshake::decode::<Challenge>);
        assert!(
            matches!(challenge, Some(Ok(_))),
            "node {node} answered garbage with {sent:?}"
        );
    }

    // Nothing was applied: the same replicas, topics and partitions as before.
    assert_eq!(agreed_replicas(&cluster, "guarded"), before);
    let response = metadata(&cluster, 1, None).unwrap();
    let names: BTreeSet<String> = response
        .topics
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
        .collect();
    assert_eq!(names, BTreeSet::from(["guarded".to_string()]));
    assert_eq!(response.topics[0].partitions.len(), 1);

    // Every node and every replica of the partition still works.
    produce(&cluster, &["after".to_string()]);
    let after = agreed_replicas(&cluster, "guarded");
    assert!(
        after[0].0 > before[0].0,
        "the append after the forged commands was applied everywhere"
    );
    let values: Vec<String> = cluster
        .node(leader)
        .client()
        .unwrap()
        .read_all("guarded", 0)
        .into_iter()
        .map(|(_, value)| value)
        .collect();
    assert_eq!(values, vec!["before".to_string(), "after".to_string()]);
    assert_eq!(cluster.exited(), Vec::<u64>::new(), "{}", cluster.logs());
    let logs = cluster.logs();
    for fatal in ["panicked", "quit RaftCore::main on error"] {
        assert!(!logs.contains(fatal), "a node logged {fatal:?}:\n{logs}");
    }
}
