//! DescribeLogDirs: this node's one log dir (its data dir) with the size of
//! each partition replica it holds, for tools that show partition sizes.

use std::collections::BTreeMap;

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};
use kafka_protocol::protocol::VersionRange;

use super::str_bytes;
use crate::cluster::Cluster;
use crate::storage::volume_space;

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 4 };

pub fn handle(cluster: &Cluster, request: DescribeLogDirsRequest) -> DescribeLogDirsResponse {
    // A null topic list asks for every replica; a listed partition this node
    // does not hold is left out, as Kafka does.
    let wanted: Option<BTreeMap<String, Vec<i32>>> = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.topic.0.to_string(), t.partitions))
            .collect()
    });
    let mut topics: BTreeMap<String, Vec<DescribeLogDirsPartition>> = BTreeMap::new();
    for (topic, partition, replica) in cluster.local_replicas() {
        let asked = wanted
            .as_ref()
            .is_none_or(|wanted| wanted.get(&topic).is_some_and(|p| p.contains(&partition)));
        if !asked {
            continue;
        }
        // A replica applies only committed entries and serves them at once:
        // its log ends at its high watermark, so it never lags behind it.
        let described = DescribeLogDirsPartition::default()
            .with_partition_index(partition)
            .with_partition_size(i64::try_from(replica.size_bytes()).unwrap_or(i64::MAX))
            .with_offset_lag(0);
        topics.entry(topic).or_default().push(described);
    }
    let topics = topics
        .into_iter()
        .map(|(name, partitions)| {
            DescribeLogDirsTopic::default()
                .with_name(TopicName(str_bytes(name)))
                .with_partitions(partitions)
        })
        .collect();
    let data_dir = &cluster.config().data_dir;
    // -1 is Kafka's "unknown" when the volume cannot be asked.
    let (total, usable) = volume_space(data_dir).map_or((-1, -1), |space| {
        (
            i64::try_from(space.total_bytes).unwrap_or(i64::MAX),
            i64::try_from(space.usable_bytes).unwrap_or(i64::MAX),
        )
    });
    let log_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.clone());
    let result = DescribeLogDirsResult::default()
        .with_log_dir(str_bytes(log_dir.display().to_string()))
        .with_topics(topics)
        .with_total_bytes(total)
        .with_usable_bytes(usable);
    DescribeLogDirsResponse::default().with_results(vec![result])
}
