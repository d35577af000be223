//! The newest request versions against real broker processes: topics named
//! by id (Metadata v12+, Produce v13, Fetch v13+), ListOffsets by max
//! timestamp (v7+), group and cluster APIs at their new versions, and the
//! leader's address sent with NOT_LEADER_OR_FOLLOWER (KIP-951, Produce v10+
//! and Fetch v16+) on a three-node cluster.

mod common;

use bytes::{Bytes, BytesMut};
use common::{topic_name, Broker, Client, ClusterNodes, DEADLINE};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ReplicaState};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, DescribeClusterRequest, DescribeGroupsRequest, FetchRequest, FetchResponse,
    FindCoordinatorRequest, GroupId, ListGroupsRequest, ListOffsetsRequest, MetadataRequest, MetadataResponse,
    OffsetCommitRequest, ProduceRequest, ProduceResponse, RequestKind, ResponseKind,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use uuid::Uuid;

const UNKNOWN_TOPIC_ID: i16 = 100;
const NOT_LEADER_OR_FOLLOWER: i16 = 6;

/// A batch whose records carry `timestamps`, values `v0`, `v1`, ...
fn batch_with_timestamps(timestamps: &[i64]) -> Bytes {
    let records: Vec<Record> = timestamps
        .iter()
        .enumerate()
        .map(|(i, timestamp)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32,
            timestamp: *timestamp,
            key: None,
            value: Some(Bytes::from(format!("v{i}"))),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
    buf.freeze()
}

fn metadata(client: &mut Client, version: i16, topics: Vec<MetadataRequestTopic>) -> MetadataResponse {
    let request = MetadataRequest::default().with_topics(Some(topics));
    match client.request(ApiKey::Metadata, version, RequestKind::Metadata(request)) {
        ResponseKind::Metadata(response) => response,
        other => panic!("unexpected {other:?}"),
    }
}

/// As [`metadata`], or `None` while the node does not answer.
fn try_metadata(node: &common::ClusterNode, topics: Vec<MetadataRequestTopic>) -> Option<MetadataResponse> {
    let request = MetadataRequest::default().with_topics(Some(topics));
    match node
        .client()?
        .try_request(ApiKey::Metadata, 13, RequestKind::Metadata(request))
    {
        Ok(ResponseKind::Metadata(response)) => Some(response),
        _ => None,
    }
}

fn by_name(name: &str) -> MetadataRequestTopic {
    MetadataRequestTopic::default().with_name(Some(topic_name(name)))
}

fn by_id(id: Uuid) -> MetadataRequestTopic {
    MetadataRequestTopic::default().with_name(None).with_topic_id(id)
}

fn produce_by_id(client: &mut Client, version: i16, topic_id: Uuid, records: Bytes) -> ProduceResponse {
    let data = PartitionProduceData::default()
        .with_index(0)
        .with_records(Some(records));
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_topic_id(topic_id)
            .with_partition_data(vec![data])]);
    match client.request(ApiKey::Produce, version, RequestKind::Produce(request)) {
        ResponseKind::Produce(response) => response,
        other => panic!("unexpected {other:?}"),
    }
}

/// A Fetch of partition 0 from offset 0 that names the topic both ways; each
/// version sends the one it carries.
fn fetch(client: &mut Client, version: i16, name: &str, topic_id: Uuid) -> FetchResponse {
    let partition = FetchPartition::default()
        .with_partition(0)
        .with_fetch_offset(0)
        .with_partition_max_bytes(1 << 20)
        .with_log_start_offset(-1);
    let request = FetchRequest::default()
        // A consumer: replica id -1, in the body until v14 and in the replica state after.
        .with_replica_id(BrokerId(-1))
        .with_replica_state(ReplicaState::default().with_replica_id(BrokerId(-1)))
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(name))
            .with_topic_id(topic_id)
            .with_partitions(vec![partition])]);
    match client.request(ApiKey::Fetch, version, RequestKind::Fetch(request)) {
        ResponseKind::Fetch(response) => response,
        other => panic!("unexpected {other:?}"),
    }
}

fn values(records: Option<Bytes>) -> Vec<String> {
    let mut records = records.unwrap_or_default();
    RecordBatchDecoder::decode_all(&mut records)
        .unwrap()
        .into_iter()
        .flat_map(|set| set.records)
        .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
        .collect()
}

/// ListOffsets at `version` for `timestamp`: (error, timestamp, offset).
fn list_offset(client: &mut Client, version: i16, topic: &str, timestamp: i64) -> (i16, i64, i64) {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_timeout_ms(1000)
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(timestamp)])]);
    match client.request(ApiKey::ListOffsets, version, RequestKind::ListOffsets(request)) {
        ResponseKind::ListOffsets(response) => {
            let p = &response.topics[0].partitions[0];
            (p.error_code, p.timestamp, p.offset)
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// The partition's leader once every replica's node reports one.
fn wait_topic_id(broker: &Broker, topic: &str) -> Uuid {
    let start = std::time::Instant::now();
    loop {
        let mut client = Client::connect(broker.port).unwrap();
        let response = metadata(&mut client, 13, vec![by_name(topic)]);
        let found = &response.topics[0];
        if found.error_code == 0 && found.partitions.first().is_some_and(|p| p.leader_id.0 >= 0) {
            return found.topic_id;
        }
        assert!(start.elapsed() < DEADLINE, "no leader for {topic}: {}", broker.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn topics_are_addressed_by_id() {
    let broker = Broker::start();
    let mut client = Client::connect(broker.port).unwrap();
    assert_eq!(client.create_topic("by-id", 1).error_code, 0);
    let topic_id = wait_topic_id(&broker, "by-id");
    assert!(!topic_id.is_nil());
    let unknown = Uuid::from_u128(0x1234);

    // Metadata v12+ by id: the known id is named, the unknown one is refused.
    let response = metadata(&mut client, 13, vec![by_id(topic_id), by_id(unknown)]);
    assert_eq!(response.error_code, 0);
    let known = response.topics.iter().find(|t| t.topic_id == topic_id).unwrap();
    assert_eq!(
        (known.error_code, known.name.as_ref().map(|n| n.0.as_str())),
        (0, Some("by-id"))
    );
    let refused = response.topics.iter().find(|t| t.topic_id == unknown).unwrap();
    assert_eq!((refused.error_code, refused.name.clone()), (UNKNOWN_TOPIC_ID, None));

    // Produce v13 by id.
    let response = produce_by_id(&mut client, 13, topic_id, batch_with_timestamps(&[1_000, 3_000, 2_000]));
    let topic = &response.responses[0];
    assert_eq!(topic.topic_id, topic_id);
    assert_eq!(topic.partition_responses[0].error_code, 0);
    assert_eq!(topic.partition_responses[0].base_offset, 0);
    let response = produce_by_id(&mut client, 13, unknown, batch_with_timestamps(&[1]));
    assert_eq!(response.responses[0].topic_id, unknown);
    assert_eq!(
        response.responses[0].partition_responses[0].error_code,
        UNKNOWN_TOPIC_ID
    );

    // Fetch v13-v18 by id; v12 still by name.
    for version in 12..=18 {
        let response = fetch(&mut client, version, "by-id", topic_id);
        let topic = &response.responses[0];
        if version >= 13 {
            assert_eq!(topic.topic_id, topic_id, "v{version}");
        } else {
            assert_eq!(topic.topic.0.as_str(), "by-id");
        }
        let partition = &topic.partitions[0];
        assert_eq!(partition.error_code, 0, "v{version}");
        assert_eq!(partition.high_watermark, 3, "v{version}");
        assert_eq!(values(partition.records.clone()), ["v0", "v1", "v2"], "v{version}");
    }
    let response = fetch(&mut client, 18, "by-id", unknown);
    assert_eq!(response.responses[0].topic_id, unknown);
    assert_eq!(response.responses[0].partitions[0].error_code, UNKNOWN_TOPIC_ID);

    // ListOffsets: -3 is the first record with the largest timestamp (v7+),
    // -4 the local log start (v8+), -5 nothing tiered (v9+).
    assert_eq!(list_offset(&mut client, 10, "by-id", -3), (0, 3_000, 1));
    assert_eq!(list_offset(&mut client, 7, "by-id", -3), (0, 3_000, 1));
    assert_eq!(list_offset(&mut client, 10, "by-id", -4), (0, -1, 0));
    assert_eq!(list_offset(&mut client, 10, "by-id", -5), (0, -1, -1));
    assert_eq!(list_offset(&mut client, 10, "by-id", -1), (0, -1, 3));
}

#[test]
fn max_timestamp_of_an_empty_partition_is_none() {
    let broker = Broker::start();
    let mut client = Client::connect(broker.port).unwrap();
    assert_eq!(client.create_topic("empty", 1).error_code, 0);
    wait_topic_id(&broker, "empty");
    assert_eq!(list_offset(&mut client, 10, "empty", -3), (0, -1, -1));
}

#[test]
fn group_and_cluster_apis_at_their_newest_versions() {
    let broker = Broker::start();
    let mut client = Client::connect(broker.port).unwrap();

    // DescribeGroups v6: an unknown group is GROUP_ID_NOT_FOUND; v5 describes it as Dead.
    let request = DescribeGroupsRequest::default().with_groups(vec![GroupId(StrBytes::from_static_str("nobody"))]);
    for (version, code) in [(6, 69), (5, 0)] {
        let group = match client.request(
            ApiKey::DescribeGroups,
            version,
            RequestKind::DescribeGroups(request.clone()),
        ) {
            ResponseKind::DescribeGroups(mut response) => response.groups.remove(0),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(group.error_code, code, "v{version}");
        assert_eq!(group.group_state.as_str(), "Dead", "v{version}");
    }

    // OffsetCommit v9: a generation's commit to a group that does not exist is GROUP_ID_NOT_FOUND.
    assert_eq!(client.create_topic("committed", 1).error_code, 0);
    wait_topic_id(&broker, "committed");
    let partition = OffsetCommitRequestPartition::default()
        .with_partition_index(0)
        .with_committed_offset(1);
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("nobody")))
        .with_generation_id_or_member_epoch(3)
        .with_member_id(StrBytes::from_static_str("m"))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(topic_name("committed"))
            .with_partitions(vec![partition])]);
    match client.request(ApiKey::OffsetCommit, 9, RequestKind::OffsetCommit(request)) {
        ResponseKind::OffsetCommit(response) => assert_eq!(response.topics[0].partitions[0].error_code, 69),
        other => panic!("unexpected {other:?}"),
    }

    // FindCoordinator v6: a share-group key is INVALID_REQUEST, per key.
    let request = FindCoordinatorRequest::default()
        .with_key_type(2)
        .with_coordinator_keys(vec![StrBytes::from_static_str("g:topic:0")]);
    match client.request(ApiKey::FindCoordinator, 6, RequestKind::FindCoordinator(request)) {
        ResponseKind::FindCoordinator(response) => assert_eq!(response.coordinators[0].error_code, 42),
        other => panic!("unexpected {other:?}"),
    }

    // ListGroups v5: only classic groups exist, so a "consumer" filter lists none.
    let request = ListGroupsRequest::default().with_types_filter(vec![StrBytes::from_static_str("consumer")]);
    match client.request(ApiKey::ListGroups, 5, RequestKind::ListGroups(request)) {
        ResponseKind::ListGroups(response) => {
            assert_eq!(response.error_code, 0);
            assert!(response.groups.is_empty());
        }
        other => panic!("unexpected {other:?}"),
    }

    // DescribeCluster v2: brokers are described, controllers' endpoints are not.
    for (endpoint_type, code) in [(1, 0), (2, 114)] {
        let request = DescribeClusterRequest::default()
            .with_endpoint_type(endpoint_type)
            .with_include_fenced_brokers(true);
        match client.request(ApiKey::DescribeCluster, 2, RequestKind::DescribeCluster(request)) {
            ResponseKind::DescribeCluster(response) => {
                assert_eq!(response.error_code, code);
                if code == 0 {
                    assert_eq!(response.brokers.len(), 1);
                    assert!(!response.brokers[0].is_fenced);
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// KIP-951: a produce or fetch sent to a follower names the leader and its
/// address, so the client goes there without asking for metadata first.
#[test]
fn a_follower_names_the_leader_and_its_address() {
    let cluster = ClusterNodes::start(3);
    cluster.wait_for("a controller", || {
        (try_metadata(cluster.node(1), Vec::new())?.controller_id.0 > 0).then_some(())
    });
    let created = cluster.node(1).client().unwrap().create_topic("kip951", 1);
    assert_eq!(created.error_code, 0, "{:?}", created.error_message);
    let (leader, topic_id) = cluster.wait_for("a leader on every node", || {
        let views: Vec<(i32, Uuid)> = (1..=3)
            .map(|node| {
                let topic = try_metadata(cluster.node(node), vec![by_name("kip951")])?
                    .topics
                    .remove(0);
                let leader = topic.partitions.first()?.leader_id.0;
                (leader > 0).then_some((leader, topic.topic_id))
            })
            .collect::<Option<_>>()?;
        views.windows(2).all(|w| w[0] == w[1]).then(|| views[0])
    });
    let follower = (1..=3).find(|n| *n as i32 != leader).unwrap();
    let leader_port = cluster.node(leader as u64).port as i32;
    let mut client = cluster.node(follower).client().unwrap();

    let response = produce_by_id(&mut client, 13, topic_id, batch_with_timestamps(&[1]));
    let partition = &response.responses[0].partition_responses[0];
    assert_eq!(partition.error_code, NOT_LEADER_OR_FOLLOWER);
    assert_eq!(partition.current_leader.leader_id.0, leader);
    let endpoints: Vec<(i32, i32)> = response.node_endpoints.iter().map(|e| (e.node_id.0, e.port)).collect();
    assert_eq!(endpoints, [(leader, leader_port)]);

    let response = fetch(&mut client, 16, "kip951", topic_id);
    let partition = &response.responses[0].partitions[0];
    assert_eq!(partition.error_code, NOT_LEADER_OR_FOLLOWER);
    assert_eq!(partition.current_leader.leader_id.0, leader);
    let endpoints: Vec<(i32, i32)> = response.node_endpoints.iter().map(|e| (e.node_id.0, e.port)).collect();
    assert_eq!(endpoints, [(leader, leader_port)]);

    // The leader takes both, and names no other node.
    let mut client = cluster.node(leader as u64).client().unwrap();
    let response = produce_by_id(&mut client, 13, topic_id, batch_with_timestamps(&[1]));
    assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
    assert!(response.node_endpoints.is_empty());
    let response = fetch(&mut client, 16, "kip951", topic_id);
    assert_eq!(response.responses[0].partitions[0].error_code, 0);
    assert!(response.node_endpoints.is_empty());
}
