//! OffsetFetch: committed offsets of one group (v1-7) or several (v8+). v9
//! adds a member id and epoch that Kafka checks only for KIP-848 consumer
//! groups; for a classic group, the only kind here, it ignores them, as this
//! handler does.

use std::collections::BTreeMap;

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{GroupId, OffsetFetchRequest, OffsetFetchResponse, TopicName};
use kafka_protocol::protocol::VersionRange;

use super::str_bytes;
use crate::group::coordinator::GroupCoordinator;
use crate::group::store::CommittedOffset;

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 9 };

const MULTI_GROUP_SINCE: i16 = 8;

/// `(topic, partition, committed offset or None)` for one group.
type Lookup = Vec<(String, i32, Option<CommittedOffset>)>;

pub async fn handle(groups: &GroupCoordinator, version: i16, request: OffsetFetchRequest) -> OffsetFetchResponse {
    if version >= MULTI_GROUP_SINCE {
        let mut responses = Vec::with_capacity(request.groups.len());
        for group in request.groups {
            let wanted = group.topics.map(|topics| {
                topics
                    .into_iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes))
                    .collect()
            });
            responses.push(describe_group(groups, group.group_id, wanted).await);
        }
        return OffsetFetchResponse::default().with_groups(responses);
    }
    let wanted = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    // Versions before 8 carry one group in the top-level fields.
    let group = describe_group(groups, request.group_id, wanted).await;
    let topics = group
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .into_iter()
                .map(|p| {
                    OffsetFetchResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_committed_offset(p.committed_offset)
                        .with_committed_leader_epoch(p.committed_leader_epoch)
                        .with_metadata(p.metadata)
                        .with_error_code(p.error_code)
                })
                .collect();
            OffsetFetchResponseTopic::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetFetchResponse::default()
        .with_error_code(group.error_code)
        .with_topics(topics)
}

async fn describe_group(
    groups: &GroupCoordinator,
    group_id: GroupId,
    wanted: Option<Vec<(String, Vec<i32>)>>,
) -> OffsetFetchResponseGroup {
    let (code, found) = lookup(groups, group_id.0.as_str(), wanted).await;
    let topics = by_topic(found)
        .into_iter()
        .map(|(name, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|(index, committed)| {
                    let (offset, epoch, metadata) = fields(committed);
                    OffsetFetchResponsePartitions::default()
                        .with_partition_index(index)
                        .with_committed_offset(offset)
                        .with_committed_leader_epoch(epoch)
                        .with_metadata(metadata)
                })
                .collect();
            OffsetFetchResponseTopics::default()
                .with_name(TopicName(str_bytes(name)))
                .with_partitions(partitions)
        })
        .collect();
    OffsetFetchResponseGroup::default()
        .with_group_id(group_id)
        .with_error_code(code)
        .with_topics(topics)
}

/// The group's error code and its offsets for `wanted` partitions (all when `None`).
async fn lookup(groups: &GroupCoordinator, group_id: &str, wanted: Option<Vec<(String, Vec<i32>)>>) -> (i16, Lookup) {
    let committed = match groups.fetch_offsets(group_id).await {
        Ok(committed) => committed,
        Err(err) => return (err.code(), Vec::new()),
    };
    let found = match wanted {
        None => committed
            .into_iter()
            .map(|((topic, index), c)| (topic, index, Some(c)))
            .collect(),
        Some(wanted) => wanted
            .into_iter()
            .flat_map(|(topic, indexes)| indexes.into_iter().map(move |index| (topic.clone(), index)))
            .map(|(topic, index)| {
                let found = committed.get(&(topic.clone(), index)).cloned();
                (topic, index, found)
            })
            .collect(),
    };
    (0, found)
}

fn by_topic(found: Lookup) -> BTreeMap<String, Vec<(i32, Option<CommittedOffset>)>> {
    let mut topics: BTreeMap<String, Vec<(i32, Option<CommittedOffset>)>> = BTreeMap::new();
    for (topic, index, committed) in found {
        topics.entry(topic).or_default().push((index, committed));
    }
    topics
}

/// Offset, leader epoch and metadata; -1 and empty metadata when nothing was committed.
fn fields(committed: Option<CommittedOffset>) -> (i64, i32, Option<kafka_protocol::protocol::StrBytes>) {
    match committed {
        Some(c) => (
            c.offset,
            c.leader_epoch,
            Some(str_bytes(c.metadata.unwrap_or_default())),
        ),
        None => (-1, -1, Some(str_bytes(""))),
    }
}
