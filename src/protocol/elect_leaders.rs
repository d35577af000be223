//! ElectLeaders: move partitions' leadership to their preferred (first)
//! replicas, which Raft does by handing leadership over from the current
//! leader (see `cluster::handover`). Any node answers: each partition's
//! current leader is asked to hand over, here or on a peer.
//!
//! As in Kafka: a partition its preferred replica already leads answers
//! ELECTION_NOT_NEEDED, and with a null topic list every partition is
//! elected and those are left out of the answer. An UNCLEAN election is
//! never needed with Raft: a partition with a leader answers
//! ELECTION_NOT_NEEDED, one without answers ELIGIBLE_LEADERS_NOT_AVAILABLE,
//! since electing a replica outside a majority would lose committed records.

use std::time::{Duration, Instant};

use futures::future::join_all;
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, TopicName};
use kafka_protocol::protocol::VersionRange;

use super::{error_message, str_bytes};
use crate::cluster::Cluster;
use crate::error::{code_of, BrokerError};

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 2 };

const PREFERRED: i8 = 0;
const UNCLEAN: i8 = 1;
/// Bounds a request's `timeout_ms`, so that a client cannot hold a handler for long.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn handle(cluster: &Cluster, version: i16, request: ElectLeadersRequest) -> ElectLeadersResponse {
    // Version 0 has no election type: it is always a preferred election.
    let election_type = if version == 0 { PREFERRED } else { request.election_type };
    let all_partitions = request.topic_partitions.is_none();
    let wanted: Vec<(TopicName, i32)> = match request.topic_partitions {
        Some(topics) => topics
            .into_iter()
            .flat_map(|topic| {
                let name = topic.topic;
                topic.partitions.into_iter().map(move |p| (name.clone(), p))
            })
            .collect(),
        None => cluster
            .metadata()
            .partitions()
            .map(|(topic, partition, _)| (TopicName(str_bytes(topic)), partition))
            .collect(),
    };
    let timeout = Duration::from_millis(request.timeout_ms.max(0) as u64).min(MAX_TIMEOUT);
    let deadline = Instant::now() + timeout;
    let elections = wanted
        .iter()
        .map(|(topic, partition)| elect(cluster, election_type, topic.0.as_str(), *partition, deadline));
    let outcomes = join_all(elections).await;
    let mut results: Vec<ReplicaElectionResult> = Vec::new();
    for ((topic, partition), outcome) in wanted.into_iter().zip(outcomes) {
        if all_partitions && matches!(outcome, Err(BrokerError::ElectionNotNeeded)) {
            continue;
        }
        let result = PartitionResult::default()
            .with_partition_id(partition)
            .with_error_code(code_of(&outcome))
            .with_error_message(error_message(&outcome));
        match results.iter_mut().find(|entry| entry.topic == topic) {
            Some(entry) => entry.partition_result.push(result),
            None => results.push(
                ReplicaElectionResult::default()
                    .with_topic(topic)
                    .with_partition_result(vec![result]),
            ),
        }
    }
    ElectLeadersResponse::default().with_replica_election_results(results)
}

async fn elect(
    cluster: &Cluster,
    election_type: i8,
    topic: &str,
    partition: i32,
    deadline: Instant,
) -> Result<(), BrokerError> {
    let metadata = cluster.metadata();
    let assignment = metadata
        .assignment(topic, partition)
        .ok_or(BrokerError::UnknownTopicOrPartition)?;
    match election_type {
        PREFERRED => {
            let preferred = *assignment
                .replicas
                .first()
                .ok_or_else(|| BrokerError::PreferredLeaderNotAvailable("the partition has no replicas".into()))?;
            cluster.elect_preferred(assignment.group, preferred, deadline).await
        }
        UNCLEAN => match cluster.partition_leader(topic, partition) {
            Some(_) => Err(BrokerError::ElectionNotNeeded),
            None => Err(BrokerError::EligibleLeadersNotAvailable(
                "Raft elects a leader only with a majority of replicas; an unclean election would lose committed records"
                    .into(),
            )),
        },
        other => Err(BrokerError::InvalidRequest(format!("unknown election type {other}"))),
    }
}
