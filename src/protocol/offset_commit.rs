//! OffsetCommit: committed offsets are replicated by the group's offsets partition.
//! v9 lets a KIP-848 consumer commit with its member epoch in the generation
//! field; the request is v8's. Every group here is a classic group, and Kafka
//! checks a commit to a classic group the same way at v8 and v9, except that a
//! v9 commit of a generation (or epoch) to a group that does not exist is
//! GROUP_ID_NOT_FOUND.

use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};
use kafka_protocol::protocol::VersionRange;

use crate::cluster::Cluster;
use crate::error::BrokerError;
use crate::group::coordinator::GroupCoordinator;
use crate::group::store::CommittedOffset;

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 9 };

/// The first version that reports a group that does not exist as such.
const FIRST_GROUP_NOT_FOUND_VERSION: i16 = 9;

pub async fn handle(
    cluster: &Cluster,
    groups: &GroupCoordinator,
    version: i16,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let now = crate::clock::now_ms();
    let metadata = cluster.metadata();
    let max_metadata = cluster.config().offset_metadata_max_bytes;
    // Offsets of partitions that do not exist, or whose metadata is too long,
    // are refused one by one (as Kafka does); the rest commit together.
    let mut codes: Vec<Vec<i16>> = Vec::new();
    let mut offsets = Vec::new();
    for topic in &request.topics {
        let count = metadata
            .topics
            .get(topic.name.0.as_str())
            .map_or(0, |t| t.partitions.len() as i32);
        let topic_codes = topic
            .partitions
            .iter()
            .map(|p| {
                if p.partition_index < 0 || p.partition_index >= count {
                    return BrokerError::UnknownTopicOrPartition.code();
                }
                let metadata_size = p.committed_metadata.as_ref().map_or(0, |m| m.len());
                if metadata_size > max_metadata {
                    return BrokerError::OffsetMetadataTooLarge {
                        size: metadata_size,
                        max: max_metadata,
                    }
                    .code();
                }
                let committed = CommittedOffset {
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                    commit_timestamp: now,
                };
                offsets.push((topic.name.0.to_string(), p.partition_index, committed));
                0
            })
            .collect();
        codes.push(topic_codes);
    }
    let result = if offsets.is_empty() {
        Ok(())
    } else {
        groups
            .commit(
                request.group_id.0.as_str(),
                request.generation_id_or_member_epoch,
                request.member_id.as_str(),
                request.group_instance_id.as_deref(),
                offsets,
            )
            .await
    };
    let result = match result {
        Err(BrokerError::UnknownMemberId)
            if version >= FIRST_GROUP_NOT_FOUND_VERSION
                && request.generation_id_or_member_epoch >= 0
                && group_unknown(groups, request.group_id.0.as_str()).await =>
        {
            Err(BrokerError::GroupIdNotFound)
        }
        other => other,
    };
    if let Err(err) = &result {
        tracing::debug!(group = request.group_id.0.as_str(), error = %err, "offset commit refused");
    }
    let topics = request
        .topics
        .into_iter()
        .zip(codes)
        .map(|(topic, topic_codes)| {
            let partitions = topic
                .partitions
                .iter()
                .zip(topic_codes)
                .map(|(p, code)| {
                    let code = if code != 0 {
                        code
                    } else {
                        result.as_ref().err().map_or(0, BrokerError::code)
                    };
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// Whether the coordinator knows nothing of `group_id`: no members and no
/// committed offsets (DescribeGroups' "Dead").
async fn group_unknown(groups: &GroupCoordinator, group_id: &str) -> bool {
    groups
        .describe(group_id)
        .await
        .is_ok_and(|description| description.state == super::describe_groups::DEAD)
}
