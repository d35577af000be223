//! The error codes a response carries, for the request metrics. Kafka reports
//! most failures per partition or per resource inside a successful response,
//! so counting only top-level codes would miss nearly all of them.

use kafka_protocol::messages::ResponseKind;

/// Calls `found` with every non-zero error code in `response`, at every level
/// (a Fetch with three failed partitions yields three codes).
pub fn for_each_error_code(response: &ResponseKind, mut found: impl FnMut(i16)) {
    let mut code = |code: i16| {
        if code != 0 {
            found(code);
        }
    };
    match response {
        ResponseKind::Produce(r) => r
            .responses
            .iter()
            .flat_map(|t| &t.partition_responses)
            .for_each(|p| code(p.error_code)),
        ResponseKind::Fetch(r) => {
            code(r.error_code);
            r.responses
                .iter()
                .flat_map(|t| &t.partitions)
                .for_each(|p| code(p.error_code));
        }
        ResponseKind::ListOffsets(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| code(p.error_code)),
        ResponseKind::Metadata(r) => {
            code(r.error_code);
            for topic in &r.topics {
                code(topic.error_code);
                topic.partitions.iter().for_each(|p| code(p.error_code));
            }
        }
        ResponseKind::OffsetCommit(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| code(p.error_code)),
        ResponseKind::OffsetFetch(r) => {
            code(r.error_code);
            r.topics
                .iter()
                .flat_map(|t| &t.partitions)
                .for_each(|p| code(p.error_code));
            for group in &r.groups {
                code(group.error_code);
                group
                    .topics
                    .iter()
                    .flat_map(|t| &t.partitions)
                    .for_each(|p| code(p.error_code));
            }
        }
        ResponseKind::FindCoordinator(r) => {
            code(r.error_code);
            r.coordinators.iter().for_each(|c| code(c.error_code));
        }
        ResponseKind::JoinGroup(r) => code(r.error_code),
        ResponseKind::Heartbeat(r) => code(r.error_code),
        ResponseKind::LeaveGroup(r) => {
            code(r.error_code);
            r.members.iter().for_each(|m| code(m.error_code));
        }
        ResponseKind::SyncGroup(r) => code(r.error_code),
        ResponseKind::DescribeGroups(r) => r.groups.iter().for_each(|g| code(g.error_code)),
        ResponseKind::ListGroups(r) => code(r.error_code),
        ResponseKind::ApiVersions(r) => code(r.error_code),
        ResponseKind::CreateTopics(r) => r.topics.iter().for_each(|t| code(t.error_code)),
        ResponseKind::DeleteTopics(r) => r.responses.iter().for_each(|t| code(t.error_code)),
        ResponseKind::DescribeConfigs(r) => r.results.iter().for_each(|t| code(t.error_code)),
        ResponseKind::AlterConfigs(r) => r.responses.iter().for_each(|t| code(t.error_code)),
        ResponseKind::IncrementalAlterConfigs(r) => r.responses.iter().for_each(|t| code(t.error_code)),
        ResponseKind::CreatePartitions(r) => r.results.iter().for_each(|t| code(t.error_code)),
        ResponseKind::InitProducerId(r) => code(r.error_code),
        ResponseKind::DeleteGroups(r) => r.results.iter().for_each(|g| code(g.error_code)),
        ResponseKind::OffsetDelete(r) => {
            code(r.error_code);
            r.topics
                .iter()
                .flat_map(|t| &t.partitions)
                .for_each(|p| code(p.error_code));
        }
        ResponseKind::DescribeCluster(r) => code(r.error_code),
        ResponseKind::DescribeLogDirs(r) => {
            code(r.error_code);
            r.results.iter().for_each(|d| code(d.error_code));
        }
        ResponseKind::OffsetForLeaderEpoch(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| code(p.error_code)),
        ResponseKind::ElectLeaders(r) => {
            code(r.error_code);
            r.replica_election_results
                .iter()
                .flat_map(|t| &t.partition_result)
                .for_each(|p| code(p.error_code));
        }
        // Every API of SUPPORTED_APIS is listed above; others are never answered.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::{FetchResponse, HeartbeatResponse, ProduceResponse};

    fn codes(response: &ResponseKind) -> Vec<i16> {
        let mut out = Vec::new();
        for_each_error_code(response, |code| out.push(code));
        out
    }

    #[test]
    fn finds_nested_partition_errors_and_skips_successes() {
        let partitions = [0, 6, 3]
            .into_iter()
            .map(|code| PartitionData::default().with_error_code(code))
            .collect();
        let fetch = FetchResponse::default()
            .with_responses(vec![FetchableTopicResponse::default().with_partitions(partitions)]);
        assert_eq!(codes(&ResponseKind::Fetch(fetch)), vec![6, 3]);
        assert_eq!(
            codes(&ResponseKind::Produce(ProduceResponse::default())),
            Vec::<i16>::new()
        );
        assert_eq!(
            codes(&ResponseKind::Heartbeat(
                HeartbeatResponse::default().with_error_code(27)
            )),
            vec![27]
        );
    }
}
