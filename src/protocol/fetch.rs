//! Fetch: committed record batches from the partition store, long-polling until
//! `min_bytes` are available or `max_wait_ms` passes.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use kafka_protocol::protocol::VersionRange;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::error::{code_of, BrokerError};
use crate::metrics::METRICS;
use crate::records::legacy;
use crate::storage::partition::PartitionOffsets;

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 12 };

/// Fetch v0-v3 read message sets of magic 0 or 1, converted from the stored v2 batches.
const LAST_LEGACY_VERSION: i16 = 3;

/// Caps a client's wait so that a connection is never parked for long.
const MAX_WAIT_CAP: Duration = Duration::from_secs(30);

pub async fn handle(cluster: &Cluster, version: i16, request: FetchRequest) -> FetchResponse {
    let legacy_magic = (version <= LAST_LEGACY_VERSION).then(|| legacy::fetch_magic(version));
    let wait = Duration::from_millis(request.max_wait_ms.max(0) as u64).min(MAX_WAIT_CAP);
    let deadline = Instant::now() + wait;
    let min_bytes = request.min_bytes.max(0) as usize;
    let max_bytes = if request.max_bytes > 0 {
        request.max_bytes as usize
    } else {
        usize::MAX
    };
    let mut appends = appends_of(cluster, &request.topics);
    let topics = loop {
        // Marked seen before reading, so an append between the read and the wait still wakes us.
        appends.iter_mut().for_each(|partition| {
            partition.borrow_and_update();
        });
        // Reads touch RocksDB and the log files: off the runtime's async workers,
        // which also run the Raft groups.
        let (topics, bytes, failed) =
            tokio::task::block_in_place(|| read_topics(cluster, &request.topics, max_bytes, legacy_magic));
        if bytes >= min_bytes || failed || Instant::now() >= deadline {
            break topics;
        }
        tokio::select! {
            stopped = any_append(&mut appends) => {
                if stopped {
                    break topics;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
    };
    for topic in &topics {
        let bytes = topic
            .partitions
            .iter()
            .map(|p| p.records.as_ref().map_or(0, Bytes::len))
            .sum();
        METRICS.count_topic_bytes(&topic.topic.0, false, bytes);
    }
    // Session id 0: no fetch session is created; the client keeps sending full fetches.
    FetchResponse::default().with_responses(topics)
}

/// The offsets of every requested partition this node leads: a long poll wakes
/// on appends to those, not to every partition of the node.
fn appends_of(cluster: &Cluster, topics: &[FetchTopic]) -> Vec<watch::Receiver<PartitionOffsets>> {
    topics
        .iter()
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .filter_map(|partition| cluster.led_partition(&topic.topic.0, partition.partition).ok())
        })
        .map(|handle| handle.offsets.clone())
        .collect()
}

/// Waits for an append to any of the partitions; true if one of them stopped
/// (its group shut down), when waiting longer is pointless.
async fn any_append(partitions: &mut [watch::Receiver<PartitionOffsets>]) -> bool {
    if partitions.is_empty() {
        return std::future::pending().await;
    }
    let changes = partitions.iter_mut().map(|partition| Box::pin(partition.changed()));
    let (changed, _, _) = futures::future::select_all(changes).await;
    changed.is_err()
}

/// Reads every requested partition; returns the responses, the bytes read and
/// whether any partition failed (errors are answered at once, without waiting).
fn read_topics(
    cluster: &Cluster,
    topics: &[FetchTopic],
    max_bytes: usize,
    legacy_magic: Option<i8>,
) -> (Vec<FetchableTopicResponse>, usize, bool) {
    let mut remaining = max_bytes;
    let mut total = 0;
    let mut failed = false;
    let responses = topics
        .iter()
        .map(|topic| {
            let name = topic.topic.0.as_str();
            let partitions = topic
                .partitions
                .iter()
                .map(|partition| {
                    let budget = remaining.min(partition.partition_max_bytes.max(0) as usize);
                    let result = read_partition(cluster, name, partition, budget, legacy_magic);
                    failed |= result.is_err();
                    if let Ok((_, _, records)) = &result {
                        remaining = remaining.saturating_sub(records.len());
                        total += records.len();
                    }
                    partition_data(partition.partition, result)
                })
                .collect();
            FetchableTopicResponse::default()
                .with_topic(topic.topic.clone())
                .with_partitions(partitions)
        })
        .collect();
    (responses, total, failed)
}

/// `(high watermark, log start offset, records)` of one partition from
/// `fetch_offset`, as message sets of `legacy_magic` when it is given.
fn read_partition(
    cluster: &Cluster,
    topic: &str,
    partition: &FetchPartition,
    max_bytes: usize,
    legacy_magic: Option<i8>,
) -> Result<(i64, i64, Bytes), BrokerError> {
    let handle = cluster.led_partition(topic, partition.partition)?;
    let offsets = handle.offsets();
    let offset = partition.fetch_offset;
    if offset < offsets.log_start_offset || offset > offsets.next_offset {
        return Err(BrokerError::OffsetOutOfRange {
            offset,
            log_start: offsets.log_start_offset,
            high_watermark: offsets.next_offset,
        });
    }
    let records = if max_bytes == 0 || offset == offsets.next_offset {
        Bytes::new()
    } else {
        handle.log.read(offset, offsets.next_offset, max_bytes)?
    };
    let records = match legacy_magic {
        Some(magic) if !records.is_empty() => legacy::down_convert(&records, magic, offset)?,
        _ => records,
    };
    Ok((offsets.next_offset, offsets.log_start_offset, records))
}

fn partition_data(index: i32, result: Result<(i64, i64, Bytes), BrokerError>) -> PartitionData {
    let code = code_of(&result);
    if let Err(err @ BrokerError::Storage(_)) = &result {
        tracing::error!(partition = index, error = %err, "fetch failed on stored data");
    }
    let (high_watermark, log_start, records) = result.unwrap_or((-1, -1, Bytes::new()));
    PartitionData::default()
        .with_partition_index(index)
        .with_error_code(code)
        .with_high_watermark(high_watermark)
        .with_last_stable_offset(high_watermark)
        .with_log_start_offset(log_start)
        .with_preferred_read_replica(kafka_protocol::messages::BrokerId(-1))
        .with_records(Some(records))
}
