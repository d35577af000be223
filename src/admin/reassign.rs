//! `rafka cluster reassign`: move one partition's replicas, or cancel a move
//! (AlterPartitionReassignments), optionally waiting until it is done;
//! `rafka cluster reassignments`: the moves under way (ListPartitionReassignments).

use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_partition_reassignments_request::{ReassignablePartition, ReassignableTopic};
use kafka_protocol::messages::list_partition_reassignments_response::OngoingTopicReassignment;
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, ApiKey, BrokerId, ListPartitionReassignmentsRequest, RequestKind, ResponseKind,
};
use serde_json::json;

use super::topic::topic_name;
use super::{error_code, print_json, AdminClient};

const REQUEST_TIMEOUT_MS: i32 = 30_000;
/// How long to wait before asking again after a retriable error.
const RETRY_BACKOFF: Duration = Duration::from_millis(250);
/// How often `--wait` asks whether the move is done.
const WAIT_POLL: Duration = Duration::from_millis(200);

/// What `rafka cluster reassign` asks for.
pub struct Move<'a> {
    pub topic: &'a str,
    pub partition: i32,
    /// The new replicas, the preferred leader first; none cancels the move in progress.
    pub replicas: Option<Vec<i32>>,
    /// Wait at most this long for the move to finish.
    pub wait: Option<Duration>,
}

/// `rafka cluster reassign`.
pub fn reassign(bootstrap: &str, wanted: &Move<'_>, json: bool) -> anyhow::Result<()> {
    let mut client = AdminClient::connect(bootstrap)?;
    // Asking again for the same target is harmless, so a retriable answer (the
    // controller is being elected) is retried, as Kafka's tools do. A cancel
    // retried after an answer that was lost may find nothing left to cancel.
    let deadline = Instant::now() + Duration::from_millis(REQUEST_TIMEOUT_MS as u64);
    let mut retried = false;
    loop {
        match request_move(&mut client, wanted)? {
            None => break,
            Some(ResponseError::NoReassignmentInProgress) if retried && wanted.replicas.is_none() => break,
            Some(error) if error.is_retriable() && Instant::now() < deadline => {
                retried = true;
                std::thread::sleep(RETRY_BACKOFF);
            }
            Some(error) => anyhow::bail!("{}/{}: {error}", wanted.topic, wanted.partition),
        }
    }
    let what = match &wanted.replicas {
        Some(replicas) => format!("moving to replicas {replicas:?}"),
        None => "cancelling the move".to_string(),
    };
    if let Some(limit) = wanted.wait {
        let deadline = Instant::now() + limit;
        while moving(&mut client, wanted.topic, wanted.partition)? {
            if Instant::now() >= deadline {
                anyhow::bail!("{}/{}: still {what} after {limit:?}", wanted.topic, wanted.partition);
            }
            std::thread::sleep(WAIT_POLL);
        }
    }
    let state = if wanted.wait.is_some() { "done" } else { "started" };
    if json {
        return print_json(&json!({
            "topic": wanted.topic,
            "partition": wanted.partition,
            "replicas": wanted.replicas,
            "state": state,
        }));
    }
    println!("{}/{}: {what}: {state}", wanted.topic, wanted.partition);
    Ok(())
}

/// Sends one AlterPartitionReassignments; the partition's error, if any.
fn request_move(client: &mut AdminClient, wanted: &Move<'_>) -> anyhow::Result<Option<ResponseError>> {
    let version = client.negotiate(ApiKey::AlterPartitionReassignments, 0..=0)?;
    let partition = ReassignablePartition::default()
        .with_partition_index(wanted.partition)
        .with_replicas(
            wanted
                .replicas
                .as_ref()
                .map(|ids| ids.iter().copied().map(BrokerId).collect()),
        );
    let request = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(REQUEST_TIMEOUT_MS)
        .with_topics(vec![ReassignableTopic::default()
            .with_name(topic_name(wanted.topic))
            .with_partitions(vec![partition])]);
    let ResponseKind::AlterPartitionReassignments(answer) = client.request(
        ApiKey::AlterPartitionReassignments,
        version,
        RequestKind::AlterPartitionReassignments(request),
    )?
    else {
        anyhow::bail!("unexpected AlterPartitionReassignments answer");
    };
    error_code(answer.error_code)?;
    let result = answer
        .responses
        .iter()
        .flat_map(|t| &t.partitions)
        .find(|p| p.partition_index == wanted.partition)
        .ok_or_else(|| anyhow::anyhow!("no answer for partition {}", wanted.partition))?;
    Ok(ResponseError::try_from_code(result.error_code))
}

/// `rafka cluster reassignments`.
pub fn list(bootstrap: &str, json: bool) -> anyhow::Result<()> {
    let mut client = AdminClient::connect(bootstrap)?;
    let topics = list_ongoing(&mut client)?;
    let rows: Vec<_> = topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(move |p| {
                let ids = |nodes: &[BrokerId]| nodes.iter().map(|id| id.0).collect::<Vec<i32>>();
                json!({
                    "topic": topic.name.0.as_str(),
                    "partition": p.partition_index,
                    "replicas": ids(&p.replicas),
                    "adding": ids(&p.adding_replicas),
                    "removing": ids(&p.removing_replicas),
                })
            })
        })
        .collect();
    if json {
        return print_json(&rows.into());
    }
    if rows.is_empty() {
        println!("no reassignment in progress");
    }
    for row in &rows {
        println!(
            "{}/{}: replicas {} adding {} removing {}",
            row["topic"].as_str().unwrap_or_default(),
            row["partition"],
            row["replicas"],
            row["adding"],
            row["removing"]
        );
    }
    Ok(())
}

fn list_ongoing(client: &mut AdminClient) -> anyhow::Result<Vec<OngoingTopicReassignment>> {
    let version = client.negotiate(ApiKey::ListPartitionReassignments, 0..=0)?;
    let request = ListPartitionReassignmentsRequest::default().with_timeout_ms(REQUEST_TIMEOUT_MS);
    let ResponseKind::ListPartitionReassignments(answer) = client.request(
        ApiKey::ListPartitionReassignments,
        version,
        RequestKind::ListPartitionReassignments(request),
    )?
    else {
        anyhow::bail!("unexpected ListPartitionReassignments answer");
    };
    error_code(answer.error_code)?;
    Ok(answer.topics)
}

/// Whether `topic`/`partition` is still moving.
fn moving(client: &mut AdminClient, topic: &str, partition: i32) -> anyhow::Result<bool> {
    Ok(list_ongoing(client)?
        .iter()
        .filter(|t| t.name.0.as_str() == topic)
        .any(|t| t.partitions.iter().any(|p| p.partition_index == partition)))
}
