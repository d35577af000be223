//! Fetch: committed record batches from the partition store, long-polling until
//! `min_bytes` are available or `max_wait_ms` passes. A request's leader epoch
//! is checked first (v9+); from v12 a fetch whose last fetched epoch ended
//! before its offset is told where its log diverged instead of getting records,
//! and a refused one is told the current leader and epoch.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::{
    EpochEndOffset, FetchableTopicResponse, LeaderIdAndEpoch, PartitionData,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};
use kafka_protocol::protocol::VersionRange;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cluster::partition_state::AppliedPartition;
use crate::cluster::Cluster;
use crate::error::{code_of, BrokerError};
use crate::metrics::METRICS;
use crate::records::legacy;
use crate::storage::epochs::{NO_EPOCH, NO_OFFSET};

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 12 };

/// Fetch v0-v3 read message sets of magic 0 or 1, converted from the stored v2 batches.
const LAST_LEGACY_VERSION: i16 = 3;

/// The first version whose requests carry the last fetched epoch.
const FIRST_DIVERGENCE_VERSION: i16 = 12;

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
            tokio::task::block_in_place(|| read_topics(cluster, version, &request.topics, max_bytes, legacy_magic));
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
fn appends_of(cluster: &Cluster, topics: &[FetchTopic]) -> Vec<watch::Receiver<AppliedPartition>> {
    topics
        .iter()
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .filter_map(|partition| cluster.led_partition(&topic.topic.0, partition.partition).ok())
        })
        .map(|handle| handle.applied.clone())
        .collect()
}

/// Waits for an append to any of the partitions; true if one of them stopped
/// (its group shut down), when waiting longer is pointless.
async fn any_append(partitions: &mut [watch::Receiver<AppliedPartition>]) -> bool {
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
    version: i16,
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
                    let result = read_partition(cluster, version, name, partition, budget, legacy_magic);
                    // A divergence is answered at once, like an error.
                    failed |= result.as_ref().map_or(true, |read| read.diverging.is_some());
                    if let Ok(read) = &result {
                        remaining = remaining.saturating_sub(read.records.len());
                        total += read.records.len();
                    }
                    partition_data(cluster, name, partition.partition, result)
                })
                .collect();
            FetchableTopicResponse::default()
                .with_topic(topic.topic.clone())
                .with_partitions(partitions)
        })
        .collect();
    (responses, total, failed)
}

/// What a fetch read from one partition.
struct PartitionRead {
    high_watermark: i64,
    log_start: i64,
    records: Bytes,
    /// Where the fetcher's log diverged from this one: `(epoch, end offset)`.
    diverging: Option<(i32, i64)>,
}

/// One partition from `fetch_offset`, as message sets of `legacy_magic` when
/// it is given.
fn read_partition(
    cluster: &Cluster,
    version: i16,
    topic: &str,
    partition: &FetchPartition,
    max_bytes: usize,
    legacy_magic: Option<i8>,
) -> Result<PartitionRead, BrokerError> {
    let handle = cluster.led_partition_at(topic, partition.partition, partition.current_leader_epoch)?;
    let applied = handle.applied();
    let offsets = applied.offsets;
    let offset = partition.fetch_offset;
    let out_of_range = || BrokerError::OffsetOutOfRange {
        offset,
        log_start: offsets.log_start_offset,
        high_watermark: offsets.next_offset,
    };
    if offset < offsets.log_start_offset || offset > offsets.next_offset {
        return Err(out_of_range());
    }
    let mut read = PartitionRead {
        high_watermark: offsets.next_offset,
        log_start: offsets.log_start_offset,
        records: Bytes::new(),
        diverging: None,
    };
    // As Kafka's leader checks a fetcher's log: the last epoch it fetched must
    // still end at or after its offset here.
    if version >= FIRST_DIVERGENCE_VERSION && partition.last_fetched_epoch >= 0 {
        let (epoch, end_offset) = applied
            .epochs
            .end_offset_for(partition.last_fetched_epoch, offsets.next_offset);
        if epoch == NO_EPOCH || end_offset == NO_OFFSET {
            return Err(out_of_range());
        }
        if epoch < partition.last_fetched_epoch || end_offset < offset {
            read.diverging = Some((epoch, end_offset));
            return Ok(read);
        }
    }
    if max_bytes > 0 && offset < offsets.next_offset {
        let records = handle.log.read(offset, offsets.next_offset, max_bytes)?;
        read.records = match legacy_magic {
            Some(magic) if !records.is_empty() => legacy::down_convert(&records, magic, offset)?,
            _ => records,
        };
    }
    Ok(read)
}

fn partition_data(
    cluster: &Cluster,
    topic: &str,
    index: i32,
    result: Result<PartitionRead, BrokerError>,
) -> PartitionData {
    let code = code_of(&result);
    let data = PartitionData::default()
        .with_partition_index(index)
        .with_error_code(code)
        .with_preferred_read_replica(BrokerId(-1));
    let read = match result {
        Ok(read) => read,
        Err(err) => {
            if let BrokerError::Storage(_) = &err {
                tracing::error!(partition = index, error = %err, "fetch failed on stored data");
            }
            // Tells a client sent to the wrong replica, or with a stale epoch,
            // where to go (a tagged field: v12+ only).
            let current_leader = match err {
                BrokerError::NotLeader | BrokerError::FencedLeaderEpoch { .. } => cluster
                    .partition_leader(topic, index)
                    .map(|view| {
                        LeaderIdAndEpoch::default()
                            .with_leader_id(BrokerId(view.leader as i32))
                            .with_leader_epoch(view.leader_epoch)
                    })
                    .unwrap_or_default(),
                _ => LeaderIdAndEpoch::default(),
            };
            return data
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1)
                .with_current_leader(current_leader)
                .with_records(Some(Bytes::new()));
        }
    };
    let diverging = read
        .diverging
        .map_or_else(EpochEndOffset::default, |(epoch, end_offset)| {
            EpochEndOffset::default().with_epoch(epoch).with_end_offset(end_offset)
        });
    data.with_high_watermark(read.high_watermark)
        .with_last_stable_offset(read.high_watermark)
        .with_log_start_offset(read.log_start)
        .with_diverging_epoch(diverging)
        .with_records(Some(read.records))
}
