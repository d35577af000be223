//! Fetch: committed record batches from the partition store, long-polling until
//! `min_bytes` are available or `max_wait_ms` passes. A request's leader epoch
//! is checked first (v9+); from v12 a fetch whose last fetched epoch ended
//! before its offset is told where its log diverged instead of getting records,
//! and a refused one is told the current leader and epoch (from v16 with the
//! leader's address, KIP-951). From v13 topics are named by id (KIP-516).
//! v15 moves the replica id into `replica_state`, v17 adds the replica's
//! directory id and v18 its high watermark: all three are for follower
//! brokers, which this broker never is (its replicas follow through Raft), and
//! a consumer leaves them at their defaults.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::{
    EpochEndOffset, FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint, PartitionData,
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

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 18 };

/// Fetch v0-v3 read message sets of magic 0 or 1, converted from the stored v2 batches.
const LAST_LEGACY_VERSION: i16 = 3;

/// The first version whose requests carry the last fetched epoch.
const FIRST_DIVERGENCE_VERSION: i16 = 12;

/// The first version whose topics are named by id.
const FIRST_TOPIC_ID_VERSION: i16 = 13;

/// The first version that carries the addresses of the leaders it names (KIP-951).
const FIRST_NODE_ENDPOINTS_VERSION: i16 = 16;

/// The isolation level of a fetch that may read past open transactions.
const READ_UNCOMMITTED: i8 = 0;

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
    let requested = resolve(cluster, version, &request.topics);
    let mut appends = appends_of(cluster, &requested);
    let topics = loop {
        // Marked seen before reading, so an append between the read and the wait still wakes us.
        appends.iter_mut().for_each(|partition| {
            partition.borrow_and_update();
        });
        // Reads touch RocksDB and the log files: off the runtime's async workers,
        // which also run the Raft groups.
        let (topics, bytes, failed) =
            tokio::task::block_in_place(|| read_topics(cluster, version, &requested, max_bytes, legacy_magic));
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
    for (topic, requested) in topics.iter().zip(&requested) {
        let bytes = topic
            .partitions
            .iter()
            .map(|p| p.records.as_ref().map_or(0, Bytes::len))
            .sum();
        if let Some(name) = &requested.name {
            METRICS.count_topic_bytes(&super::str_bytes(name.as_str()), false, bytes);
        }
    }
    let topics = if request.isolation_level == READ_UNCOMMITTED {
        without_aborted_transactions(topics)
    } else {
        topics
    };
    let node_endpoints = if version >= FIRST_NODE_ENDPOINTS_VERSION {
        node_endpoints(cluster, &topics)
    } else {
        Vec::new()
    };
    // Session id 0: no fetch session is created; the client keeps sending full fetches.
    FetchResponse::default()
        .with_responses(topics)
        .with_node_endpoints(node_endpoints)
}

/// As Kafka: only a READ_COMMITTED fetch of a partition read without error
/// gets a list of aborted transactions (empty: there are no transactions
/// here); any other answer carries null.
fn without_aborted_transactions(mut topics: Vec<FetchableTopicResponse>) -> Vec<FetchableTopicResponse> {
    topics
        .iter_mut()
        .flat_map(|topic| topic.partitions.iter_mut())
        .for_each(|partition| partition.aborted_transactions = None);
    topics
}

/// A requested topic and the name it has here: `None` for an id (v13+) that
/// names no topic of this cluster.
struct Requested<'a> {
    topic: &'a FetchTopic,
    name: Option<String>,
}

fn resolve<'a>(cluster: &Cluster, version: i16, topics: &'a [FetchTopic]) -> Vec<Requested<'a>> {
    let metadata = cluster.metadata();
    topics
        .iter()
        .map(|topic| Requested {
            topic,
            name: if version >= FIRST_TOPIC_ID_VERSION {
                metadata.topic_name_of(topic.topic_id.as_bytes()).map(str::to_string)
            } else {
                Some(topic.topic.0.to_string())
            },
        })
        .collect()
}

/// The offsets of every requested partition this node leads: a long poll wakes
/// on appends to those, not to every partition of the node.
fn appends_of(cluster: &Cluster, topics: &[Requested]) -> Vec<watch::Receiver<AppliedPartition>> {
    topics
        .iter()
        .filter_map(|requested| Some((requested.name.as_deref()?, requested.topic)))
        .flat_map(|(name, topic)| {
            topic
                .partitions
                .iter()
                .filter_map(move |partition| cluster.led_partition(name, partition.partition).ok())
        })
        .map(|handle| handle.applied.clone())
        .collect()
}

/// The address of every leader the partitions' `current_leader` names, so a
/// client sent elsewhere needs no metadata request first (KIP-951).
fn node_endpoints(cluster: &Cluster, topics: &[FetchableTopicResponse]) -> Vec<NodeEndpoint> {
    let leaders: Vec<i32> = topics
        .iter()
        .flat_map(|topic| &topic.partitions)
        .map(|partition| partition.current_leader.leader_id.0)
        .collect();
    super::leader_endpoints(cluster, &leaders)
        .into_iter()
        .map(|(id, host, port)| {
            NodeEndpoint::default()
                .with_node_id(BrokerId(id))
                .with_host(super::str_bytes(host))
                .with_port(port)
        })
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
    topics: &[Requested],
    max_bytes: usize,
    legacy_magic: Option<i8>,
) -> (Vec<FetchableTopicResponse>, usize, bool) {
    let mut remaining = max_bytes;
    let mut total = 0;
    let mut failed = false;
    let responses = topics
        .iter()
        .map(|Requested { topic, name }| {
            let name = name.as_deref();
            let partitions = topic
                .partitions
                .iter()
                .map(|partition| {
                    let budget = remaining.min(partition.partition_max_bytes.max(0) as usize);
                    let result = match name {
                        Some(name) => read_partition(cluster, version, name, partition, budget, legacy_magic),
                        None => Err(BrokerError::UnknownTopicId),
                    };
                    // A divergence is answered at once, like an error.
                    failed |= result.as_ref().map_or(true, |read| read.diverging.is_some());
                    if let Ok(read) = &result {
                        remaining = remaining.saturating_sub(read.records.len());
                        total += read.records.len();
                    }
                    partition_data(cluster, name.unwrap_or_default(), partition.partition, result)
                })
                .collect();
            // Each version encodes the one of the two it carries.
            FetchableTopicResponse::default()
                .with_topic(topic.topic.clone())
                .with_topic_id(topic.topic_id)
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
                .with_aborted_transactions(None)
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
