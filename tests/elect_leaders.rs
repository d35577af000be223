//! ElectLeaders on a single broker, over the Kafka protocol: every answer a
//! node that needs no election gives (the three-node elections run in
//! compat-tests/cluster, with real admin clients).

mod common;

use common::{topic_name, Broker, Client};
use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
use kafka_protocol::messages::{ApiKey, ElectLeadersRequest, ElectLeadersResponse, RequestKind, ResponseKind};

const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const INVALID_REQUEST: i16 = 42;
const ELECTION_NOT_NEEDED: i16 = 84;

fn elect(
    client: &mut Client,
    version: i16,
    election_type: i8,
    topics: Option<&[(&str, &[i32])]>,
) -> ElectLeadersResponse {
    let topics = topics.map(|topics| {
        topics
            .iter()
            .map(|(name, partitions)| {
                TopicPartitions::default()
                    .with_topic(topic_name(name))
                    .with_partitions(partitions.to_vec())
            })
            .collect()
    });
    let request = ElectLeadersRequest::default()
        .with_election_type(election_type)
        .with_topic_partitions(topics)
        .with_timeout_ms(5000);
    match client.request(ApiKey::ElectLeaders, version, RequestKind::ElectLeaders(request)) {
        ResponseKind::ElectLeaders(response) => response,
        other => panic!("unexpected {other:?}"),
    }
}

/// (topic, partition, error code) of every result, in answer order.
fn codes(response: &ElectLeadersResponse) -> Vec<(String, i32, i16)> {
    response
        .replica_election_results
        .iter()
        .flat_map(|topic| {
            topic
                .partition_result
                .iter()
                .map(|p| (topic.topic.0.to_string(), p.partition_id, p.error_code))
        })
        .collect()
}

#[test]
fn a_single_node_needs_no_election_and_says_so() {
    let broker = Broker::start();
    let mut client = Client::connect(broker.port).unwrap();
    assert_eq!(client.create_topic("elect", 2).error_code, 0);
    for version in 0..=2 {
        let named = elect(&mut client, version, 0, Some(&[("elect", &[0, 1]), ("missing", &[0])]));
        assert_eq!(
            codes(&named),
            vec![
                ("elect".into(), 0, ELECTION_NOT_NEEDED),
                ("elect".into(), 1, ELECTION_NOT_NEEDED),
                ("missing".into(), 0, UNKNOWN_TOPIC_OR_PARTITION),
            ],
            "version {version}"
        );
        let out_of_range = elect(&mut client, version, 0, Some(&[("elect", &[2, -1])]));
        assert_eq!(
            codes(&out_of_range),
            vec![
                ("elect".into(), 2, UNKNOWN_TOPIC_OR_PARTITION),
                ("elect".into(), -1, UNKNOWN_TOPIC_OR_PARTITION),
            ]
        );
        // Every partition, as Kafka answers it: those needing no election are left out.
        assert_eq!(codes(&elect(&mut client, version, 0, None)), vec![]);
    }
    // Raft never needs an unclean election: a partition with a leader needs none.
    let unclean = elect(&mut client, 1, 1, Some(&[("elect", &[0])]));
    assert_eq!(codes(&unclean), vec![("elect".into(), 0, ELECTION_NOT_NEEDED)]);
    let unknown_type = elect(&mut client, 2, 7, Some(&[("elect", &[0])]));
    assert_eq!(codes(&unknown_type), vec![("elect".into(), 0, INVALID_REQUEST)]);
}
