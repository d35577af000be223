//! `rafka group delete|reset-offsets`, sent to the group's coordinator (found
//! with FindCoordinator): DeleteGroups, and DescribeGroups + ListOffsets +
//! OffsetCommit for a reset.

use std::time::{Duration, Instant};

use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::{
    ApiKey, DeleteGroupsRequest, DescribeGroupsRequest, FindCoordinatorRequest, OffsetCommitRequest, RequestKind,
    ResponseKind,
};
use kafka_protocol::protocol::StrBytes;
use serde_json::json;

use super::topic::{metadata, topic_name};
use super::{error_code, group_id, print_json, AdminClient, Leaders};

/// How long a coordinator may stay unavailable (the offsets topic is being created, or elects a leader).
const COORDINATOR_WAIT: Duration = Duration::from_secs(15);
/// FindCoordinator's key type of a consumer group.
const GROUP_KEY: i8 = 0;
/// ListOffsets' timestamps that ask for the log start and the log end.
const EARLIEST: i64 = -2;
const LATEST: i64 = -1;

/// A connection to `group`'s coordinator, asked of `bootstrap`; retried while
/// the broker answers with a retriable error.
pub(super) fn coordinator(bootstrap: &str, group: &str) -> anyhow::Result<AdminClient> {
    let mut client = AdminClient::connect(bootstrap)?;
    let version = client.negotiate(ApiKey::FindCoordinator, 1..=4)?;
    let deadline = Instant::now() + COORDINATOR_WAIT;
    loop {
        let key = StrBytes::from_string(group.to_string());
        // v4 batches keys in `coordinator_keys` and answers in `coordinators`.
        let request = if version >= 4 {
            FindCoordinatorRequest::default().with_coordinator_keys(vec![key])
        } else {
            FindCoordinatorRequest::default().with_key(key)
        }
        .with_key_type(GROUP_KEY);
        let ResponseKind::FindCoordinator(found) =
            client.request(ApiKey::FindCoordinator, version, RequestKind::FindCoordinator(request))?
        else {
            anyhow::bail!("unexpected FindCoordinator answer");
        };
        let (code, host, port) = match found.coordinators.first() {
            Some(c) if version >= 4 => (c.error_code, c.host.to_string(), c.port),
            _ => (found.error_code, found.host.to_string(), found.port),
        };
        let retriable = kafka_protocol::error::ResponseError::try_from_code(code).is_some_and(|e| e.is_retriable());
        if retriable && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        error_code(code).map_err(|err| anyhow::anyhow!("no coordinator for group {group}: {err}"))?;
        return AdminClient::connect(&format!("{host}:{port}"));
    }
}

/// `rafka group delete`.
pub fn delete(bootstrap: &str, groups: &[String], json: bool) -> anyhow::Result<()> {
    let results: Vec<(&String, anyhow::Result<()>)> = groups
        .iter()
        .map(|group| (group, delete_one(bootstrap, group)))
        .collect();
    if json {
        let rows: Vec<_> = results
            .iter()
            .map(|(group, result)| match result {
                Ok(()) => json!({"group": group, "deleted": true}),
                Err(err) => json!({"group": group, "deleted": false, "error": err.to_string()}),
            })
            .collect();
        print_json(&rows.into())?;
    } else {
        for (group, _) in results.iter().filter(|(_, result)| result.is_ok()) {
            println!("deleted group {group}");
        }
    }
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(group, result)| result.as_ref().err().map(|err| format!("{group}: {err}")))
        .collect();
    anyhow::ensure!(failures.is_empty(), "not deleted: {}", failures.join("; "));
    Ok(())
}

fn delete_one(bootstrap: &str, group: &str) -> anyhow::Result<()> {
    let mut client = coordinator(bootstrap, group)?;
    let version = client.negotiate(ApiKey::DeleteGroups, 0..=2)?;
    let request = DeleteGroupsRequest::default().with_groups_names(vec![group_id(group)]);
    let ResponseKind::DeleteGroups(answer) =
        client.request(ApiKey::DeleteGroups, version, RequestKind::DeleteGroups(request))?
    else {
        anyhow::bail!("unexpected DeleteGroups answer");
    };
    let result = answer
        .results
        .first()
        .ok_or_else(|| anyhow::anyhow!("DeleteGroups answered for no group"))?;
    error_code(result.error_code)
}

/// Where `rafka group reset-offsets` moves a group's offsets.
#[derive(Debug, Clone, Copy)]
pub enum ResetTo {
    Earliest,
    Latest,
    /// This offset, moved into the partition's range as Kafka's tool does.
    Offset(i64),
}

/// `rafka group reset-offsets`: commits a new offset for every partition of
/// `topic`. Kafka accepts a commit without member id and generation only while
/// the group has no members, so a group with members is refused here with a
/// clear message instead of the broker's UNKNOWN_MEMBER_ID.
pub fn reset_offsets(bootstrap: &str, group: &str, topic: &str, to: ResetTo, json: bool) -> anyhow::Result<()> {
    let mut coordinator = coordinator(bootstrap, group)?;
    let version = coordinator.negotiate(ApiKey::DescribeGroups, 0..=5)?;
    let request = DescribeGroupsRequest::default().with_groups(vec![group_id(group)]);
    let ResponseKind::DescribeGroups(described) =
        coordinator.request(ApiKey::DescribeGroups, version, RequestKind::DescribeGroups(request))?
    else {
        anyhow::bail!("unexpected DescribeGroups answer");
    };
    if let Some(described) = described.groups.first() {
        error_code(described.error_code).map_err(|err| anyhow::anyhow!("group {group}: {err}"))?;
        anyhow::ensure!(
            described.members.is_empty(),
            "group {group} has {} active member(s) (state {}): stop its consumers before resetting its offsets",
            described.members.len(),
            described.group_state.as_str()
        );
    }

    let mut bootstrap_client = AdminClient::connect(bootstrap)?;
    let topics = metadata(&mut bootstrap_client, Some(&[topic.to_string()]))?;
    let mut leaders = Leaders::new(&topics);
    let found = topics
        .topics
        .first()
        .ok_or_else(|| anyhow::anyhow!("no metadata for topic {topic}"))?;
    error_code(found.error_code).map_err(|err| anyhow::anyhow!("topic {topic}: {err}"))?;
    let mut partitions: Vec<i32> = found.partitions.iter().map(|p| p.partition_index).collect();
    partitions.sort();
    let mut offsets = Vec::with_capacity(partitions.len());
    for partition in &partitions {
        let earliest = leaders.list_offset(topic, *partition, EARLIEST)?;
        let latest = leaders.list_offset(topic, *partition, LATEST)?;
        offsets.push(match to {
            ResetTo::Earliest => earliest,
            ResetTo::Latest => latest,
            ResetTo::Offset(offset) => offset.clamp(earliest, latest),
        });
    }

    let version = coordinator.negotiate(ApiKey::OffsetCommit, 2..=8)?;
    let commits = partitions
        .iter()
        .zip(&offsets)
        .map(|(partition, offset)| {
            OffsetCommitRequestPartition::default()
                .with_partition_index(*partition)
                .with_committed_offset(*offset)
        })
        .collect();
    let request = OffsetCommitRequest::default()
        .with_group_id(group_id(group))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(StrBytes::default())
        .with_retention_time_ms(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(commits)]);
    let ResponseKind::OffsetCommit(committed) =
        coordinator.request(ApiKey::OffsetCommit, version, RequestKind::OffsetCommit(request))?
    else {
        anyhow::bail!("unexpected OffsetCommit answer");
    };
    for partition in committed.topics.iter().flat_map(|t| &t.partitions) {
        error_code(partition.error_code)
            .map_err(|err| anyhow::anyhow!("partition {}: offset not committed: {err}", partition.partition_index))?;
    }

    if json {
        let rows: Vec<_> = partitions
            .iter()
            .zip(&offsets)
            .map(
                |(partition, offset)| json!({"group": group, "topic": topic, "partition": partition, "offset": offset}),
            )
            .collect();
        return print_json(&rows.into());
    }
    println!("{:<28} NEW-OFFSET", "TOPIC-PARTITION");
    for (partition, offset) in partitions.iter().zip(&offsets) {
        println!("{:<28} {offset}", format!("{topic}-{partition}"));
    }
    Ok(())
}
