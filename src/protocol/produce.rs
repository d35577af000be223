//! Produce: validate each partition's batches, replicate them through the
//! partition's Raft group and answer once they are committed. From v10 a
//! partition refused with NOT_LEADER_OR_FOLLOWER names its current leader, and
//! the response carries that leader's address (KIP-951); v11 and v12 differ
//! only in transaction errors (KIP-890), and transactions are refused here; v13
//! names topics by id (KIP-516).

use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{BrokerId, ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::VersionRange;

use super::{error_message, str_bytes};
use crate::cluster::Cluster;
use crate::error::{code_of, BrokerError};
use crate::metrics::METRICS;
use crate::records::legacy;
use crate::storage::batch::{stamp_log_append_time, validate_produce_records, BatchError, RecordError};

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 13 };

/// Produce v0-v2 carry message sets of magic 0 or 1, converted to a v2 batch.
const LAST_LEGACY_VERSION: i16 = 2;

/// The first version that names the leader after NOT_LEADER_OR_FOLLOWER (KIP-951).
const FIRST_CURRENT_LEADER_VERSION: i16 = 10;

/// The first version whose topics are named by id.
const FIRST_TOPIC_ID_VERSION: i16 = 13;

/// Kafka's default `request.timeout.ms`.
const DEFAULT_COMMIT_TIMEOUT_MS: u64 = 30_000;

/// The answer for every partition; for acks=0 the caller sends none (see [`super::Reply`]).
pub async fn handle(cluster: &Cluster, version: i16, request: ProduceRequest) -> ProduceResponse {
    let refusal = if request.transactional_id.is_some() {
        Some(BrokerError::TransactionsUnsupported)
    } else if !matches!(request.acks, -1..=1) {
        Some(BrokerError::InvalidRequiredAcks(request.acks))
    } else {
        None
    };
    if let Some(refusal) = refusal {
        return reject_all(request.topic_data, refusal.code());
    }
    // A negative timeout is the client leaving it to the broker.
    let timeout = Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(DEFAULT_COMMIT_TIMEOUT_MS));
    // Every partition's proposal is started before any is awaited: join_all polls
    // in order, so batches reach each Raft group in request order.
    let topics = join_all(
        request
            .topic_data
            .into_iter()
            .map(|topic| produce_topic(cluster, version, topic, timeout)),
    )
    .await;
    let node_endpoints = if version >= FIRST_CURRENT_LEADER_VERSION {
        node_endpoints(cluster, &topics)
    } else {
        Vec::new()
    };
    ProduceResponse::default()
        .with_responses(topics)
        .with_node_endpoints(node_endpoints)
}

/// The name of a produced topic: v13 names it by id, which must be one of
/// this cluster's (a topic cannot be auto-created from an id).
fn topic_name(cluster: &Cluster, version: i16, topic: &TopicProduceData) -> Result<String, BrokerError> {
    if version < FIRST_TOPIC_ID_VERSION {
        return Ok(topic.name.0.to_string());
    }
    cluster
        .metadata()
        .topic_name_of(topic.topic_id.as_bytes())
        .map(str::to_string)
        .ok_or(BrokerError::UnknownTopicId)
}

/// The address of every leader the partitions' `current_leader` names.
fn node_endpoints(cluster: &Cluster, topics: &[TopicProduceResponse]) -> Vec<NodeEndpoint> {
    let leaders: Vec<i32> = topics
        .iter()
        .flat_map(|topic| &topic.partition_responses)
        .map(|partition| partition.current_leader.leader_id.0)
        .collect();
    super::leader_endpoints(cluster, &leaders)
        .into_iter()
        .map(|(id, host, port)| {
            NodeEndpoint::default()
                .with_node_id(BrokerId(id))
                .with_host(str_bytes(host))
                .with_port(port)
        })
        .collect()
}

/// Where a client refused with NOT_LEADER_OR_FOLLOWER should go: the leader
/// this node knows of, if any (v10+; the default, -1, says none).
fn current_leader(cluster: &Cluster, version: i16, topic: &str, partition: i32, refused: bool) -> LeaderIdAndEpoch {
    if !refused || version < FIRST_CURRENT_LEADER_VERSION {
        return LeaderIdAndEpoch::default();
    }
    cluster
        .partition_leader(topic, partition)
        .filter(|view| view.leader != cluster.node_id())
        .map(|view| {
            LeaderIdAndEpoch::default()
                .with_leader_id(BrokerId(view.leader as i32))
                .with_leader_epoch(view.leader_epoch)
        })
        .unwrap_or_default()
}

/// Whether any partition of the produce failed.
pub fn failed(response: &ProduceResponse) -> bool {
    response
        .responses
        .iter()
        .flat_map(|t| &t.partition_responses)
        .any(|p| p.error_code != 0)
}

async fn produce_topic(
    cluster: &Cluster,
    version: i16,
    topic: TopicProduceData,
    timeout: Duration,
) -> TopicProduceResponse {
    let name = match topic_name(cluster, version, &topic) {
        Ok(name) => name,
        Err(refusal) => return reject_topic(topic, refusal.code()),
    };
    let results = join_all(
        topic
            .partition_data
            .into_iter()
            .map(|data| produce_partition(cluster, version, &name, data, timeout)),
    )
    .await;
    let mut appended = 0;
    let partitions = results
        .into_iter()
        .map(|(response, bytes)| {
            appended += bytes;
            response
        })
        .collect();
    METRICS.count_topic_bytes(&str_bytes(name.as_str()), true, appended);
    // Each version encodes the one of the two it carries.
    TopicProduceResponse::default()
        .with_name(topic.name)
        .with_topic_id(topic.topic_id)
        .with_partition_responses(partitions)
}

/// The partition's answer and the record bytes it appended (0 if refused).
async fn produce_partition(
    cluster: &Cluster,
    version: i16,
    topic: &str,
    data: PartitionProduceData,
    timeout: Duration,
) -> (PartitionProduceResponse, usize) {
    let records = data.records.unwrap_or_default();
    let size = records.len();
    let result = match legacy_to_batch(version, records) {
        Ok(records) => append(cluster, topic, data.index, records, timeout).await,
        Err(err) => Err(err.into()),
    };
    if let Err(err) = &result {
        tracing::debug!(topic, partition = data.index, error = %err, "produce refused");
    }
    let (base_offset, log_start_offset, log_append_time) = result.as_ref().map_or((-1, -1, -1), |appended| *appended);
    let not_leader = matches!(result, Err(BrokerError::NotLeader));
    let response = PartitionProduceResponse::default()
        .with_current_leader(current_leader(cluster, version, topic, data.index, not_leader))
        .with_index(data.index)
        .with_error_code(code_of(&result))
        .with_error_message(error_message(&result))
        .with_record_errors(record_errors(&result))
        .with_base_offset(base_offset)
        .with_log_append_time_ms(log_append_time)
        .with_log_start_offset(log_start_offset);
    (response, if result.is_ok() { size } else { 0 })
}

async fn append(
    cluster: &Cluster,
    topic: &str,
    partition: i32,
    records: Bytes,
    timeout: Duration,
) -> Result<(i64, i64, i64), BrokerError> {
    let handle = match cluster.writable_partition(topic, partition) {
        Err(BrokerError::UnknownTopicOrPartition) if cluster.config().auto_create_topics => {
            cluster.ensure_topic(topic).await?;
            cluster.writable_partition(topic, partition)?
        }
        other => other?,
    };
    let mut batches = validate_produce_records(&records, &cluster.produce_rules(topic))?;
    // The leader's clock goes into the batches before they are proposed, so
    // every replica stores the same bytes; -1 answers "not LogAppendTime".
    let log_append_time = match cluster.uses_log_append_time(topic) {
        true => {
            let now = crate::clock::now_ms();
            batches.iter_mut().for_each(|batch| stamp_log_append_time(batch, now));
            now
        }
        false => -1,
    };
    let (base_offset, log_start_offset) = cluster.append(&handle, batches, timeout).await?;
    Ok((base_offset, log_start_offset, log_append_time))
}

/// The records a failed produce refused one by one (KIP-467, v8+; older
/// versions carry the error code only).
fn record_errors<T>(result: &Result<T, BrokerError>) -> Vec<BatchIndexAndErrorMessage> {
    let Err(BrokerError::Batch(BatchError::InvalidRecords(errors))) = result else {
        return Vec::new();
    };
    errors
        .iter()
        .map(|RecordError { index, message }| {
            BatchIndexAndErrorMessage::default()
                .with_batch_index(*index)
                .with_batch_index_error_message(Some(str_bytes(message.clone())))
        })
        .collect()
}

/// The records of a Produce v0-v2 as one v2 batch; later versions carry v2
/// batches already, and anything else is refused by batch validation.
fn legacy_to_batch(version: i16, records: Bytes) -> Result<Bytes, BatchError> {
    match legacy::magic_of(&records) {
        Some(0 | 1) if version <= LAST_LEGACY_VERSION => legacy::up_convert(&records),
        _ => Ok(records),
    }
}

fn reject_all(topics: Vec<TopicProduceData>, code: i16) -> ProduceResponse {
    let responses = topics.into_iter().map(|topic| reject_topic(topic, code)).collect();
    ProduceResponse::default().with_responses(responses)
}

fn reject_topic(topic: TopicProduceData, code: i16) -> TopicProduceResponse {
    let partitions = topic
        .partition_data
        .iter()
        .map(|p| {
            PartitionProduceResponse::default()
                .with_index(p.index)
                .with_error_code(code)
                .with_base_offset(-1)
        })
        .collect();
    TopicProduceResponse::default()
        .with_name(topic.name)
        .with_topic_id(topic.topic_id)
        .with_partition_responses(partitions)
}
