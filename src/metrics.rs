//! Every metric the broker exports, defined in one place: name, help text,
//! labels and buckets. The admin listener (`admin_http`) serves them in the
//! Prometheus text format.
//!
//! Two kinds of metric live here:
//! - events counted where they happen (requests, bytes, Raft log appends,
//!   leadership changes, snapshots). Hot paths hold handles resolved once
//!   (an atomic add, or a histogram's short lock) and never build a label set
//!   per record;
//! - state read when scraped (partition offsets, Raft terms, consumer-group
//!   members, memory): the admin listener refreshes those gauges from the
//!   broker's own state just before encoding, so nothing on the request path
//!   maintains them.
//!
//! Label names keep the project's words apart: `raft_group` for a Raft group,
//! `consumer_group` for a Kafka consumer group.

use std::sync::LazyLock;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::StrBytes;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The one registry of this process. Tests in the same process share it, so
/// they check differences, never absolute values.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The `Content-Type` of what [`Metrics::encode`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Request latency buckets, seconds: from a cached Metadata answer (~100 µs) to
/// a long-polling Fetch (Kafka clients wait up to 30 s).
const REQUEST_SECONDS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Raft log append (write + fsync) buckets, seconds: a fast NVMe fsync is tens
/// of microseconds, a stalled disk seconds.
const APPEND_SECONDS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Raft commit buckets, seconds: from a single node's fsync (~100 µs) to a
/// commit that waited out a slow follower or an election (seconds).
const COMMIT_SECONDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Kafka API, as its name (`Produce`, `Fetch`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Api(pub ApiKey);

impl EncodeLabelValue for Api {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        std::fmt::Write::write_fmt(encoder, format_args!("{:?}", self.0))
    }
}

/// A Kafka error code, as its name (`NotLeaderOrFollower`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ErrorName(pub i16);

impl EncodeLabelValue for ErrorName {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        match ResponseError::try_from_code(self.0) {
            Some(ResponseError::Unknown(code)) => std::fmt::Write::write_fmt(encoder, format_args!("Unknown{code}")),
            Some(error) => std::fmt::Write::write_fmt(encoder, format_args!("{error}")),
            None => std::fmt::Write::write_str(encoder, "None"),
        }
    }
}

/// A topic name as clients sent it. The label keeps its own copy of the name
/// (see [`Metrics::count_topic_bytes`]), never a slice of a request buffer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Topic(pub StrBytes);

impl EncodeLabelValue for Topic {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, &self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ApiLabels {
    pub api: Api,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ErrorLabels {
    pub api: Api,
    pub error: ErrorName,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: Topic,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: i32,
    pub raft_group: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReplicaLabels {
    pub topic: String,
    pub partition: i32,
    pub replica: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RaftGroupLabels {
    pub raft_group: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PeerRequestLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConsumerGroupLabels {
    pub consumer_group: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ColumnFamilyLabels {
    pub column_family: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConsumerLagLabels {
    pub consumer_group: String,
    pub topic: String,
    pub partition: i32,
}

/// Builds the request-latency histogram of each API on first use.
#[derive(Clone, Debug)]
struct RequestSeconds;

impl MetricConstructor<Histogram> for RequestSeconds {
    fn new_metric(&self) -> Histogram {
        Histogram::new(REQUEST_SECONDS)
    }
}

pub struct Metrics {
    registry: Registry,

    requests: Family<ApiLabels, Counter>,
    request_errors: Family<ErrorLabels, Counter>,
    request_seconds: Family<ApiLabels, Histogram, RequestSeconds>,
    topic_bytes_in: Family<TopicLabels, Counter>,
    topic_bytes_out: Family<TopicLabels, Counter>,
    connections: Gauge,
    connections_accepted: Counter,

    /// Refreshed when scraped.
    pub partition_high_watermark: Family<PartitionLabels, Gauge>,
    pub partition_log_start_offset: Family<PartitionLabels, Gauge>,
    pub partition_size_bytes: Family<PartitionLabels, Gauge>,
    pub partition_leader: Family<PartitionLabels, Gauge>,
    pub partition_replica_lag: Family<ReplicaLabels, Gauge>,
    pub raft_last_log_index: Family<RaftGroupLabels, Gauge>,
    pub raft_applied_index: Family<RaftGroupLabels, Gauge>,
    pub consumer_group_members: Family<ConsumerGroupLabels, Gauge>,
    pub consumer_group_lag: Family<ConsumerLagLabels, Gauge>,
    pub resident_memory_bytes: Gauge,
    pub storage_write_stopped: Gauge,
    pub storage_delayed_write_rate: Gauge,
    pub storage_pending_compaction_bytes: Gauge,
    pub storage_running_flushes: Gauge,
    pub storage_running_compactions: Gauge,
    pub storage_sst_bytes: Family<ColumnFamilyLabels, Gauge>,
    pub storage_memtable_bytes: Family<ColumnFamilyLabels, Gauge>,
    pub storage_flush_written: Counter,
    pub storage_compaction_read: Counter,
    pub storage_compaction_written: Counter,

    /// Set by each group's leadership follower.
    raft_term: Family<RaftGroupLabels, Gauge>,
    raft_leader: Family<RaftGroupLabels, Gauge>,
    raft_leader_changes: Family<RaftGroupLabels, Counter>,
    raft_elections: Family<RaftGroupLabels, Counter>,
    raft_append_seconds: Histogram,
    raft_commit_seconds: Histogram,
    raft_append_entries: Histogram,
    raft_append_bytes: Histogram,
    raft_snapshot_builds: Counter,
    raft_snapshot_installs: Counter,
    peer_requests: Family<PeerRequestLabels, Counter>,
}

impl Metrics {
    fn new() -> Self {
        let metrics = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            request_errors: Family::default(),
            request_seconds: Family::new_with_constructor(RequestSeconds),
            topic_bytes_in: Family::default(),
            topic_bytes_out: Family::default(),
            connections: Gauge::default(),
            connections_accepted: Counter::default(),
            partition_high_watermark: Family::default(),
            partition_log_start_offset: Family::default(),
            partition_size_bytes: Family::default(),
            partition_leader: Family::default(),
            partition_replica_lag: Family::default(),
            raft_term: Family::default(),
            raft_leader: Family::default(),
            raft_last_log_index: Family::default(),
            raft_applied_index: Family::default(),
            consumer_group_members: Family::default(),
            consumer_group_lag: Family::default(),
            resident_memory_bytes: Gauge::default(),
            storage_write_stopped: Gauge::default(),
            storage_delayed_write_rate: Gauge::default(),
            storage_pending_compaction_bytes: Gauge::default(),
            storage_running_flushes: Gauge::default(),
            storage_running_compactions: Gauge::default(),
            storage_sst_bytes: Family::default(),
            storage_memtable_bytes: Family::default(),
            storage_flush_written: Counter::default(),
            storage_compaction_read: Counter::default(),
            storage_compaction_written: Counter::default(),
            raft_leader_changes: Family::default(),
            raft_elections: Family::default(),
            raft_append_seconds: Histogram::new(APPEND_SECONDS),
            raft_commit_seconds: Histogram::new(COMMIT_SECONDS),
            raft_append_entries: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            raft_append_bytes: Histogram::new(exponential_buckets(256.0, 4.0, 10)),
            raft_snapshot_builds: Counter::default(),
            raft_snapshot_installs: Counter::default(),
            peer_requests: Family::default(),
        };
        metrics.register()
    }

    fn register(mut self) -> Self {
        let root = &mut self.registry;
        root.register(
            "process_resident_memory_bytes",
            "Resident memory of the broker process",
            self.resident_memory_bytes.clone(),
        );
        let r = root.sub_registry_with_prefix("rafka");
        r.register("requests", "Kafka requests answered, by API", self.requests.clone());
        r.register(
            "request_errors",
            "Error codes in Kafka responses, by API and error (one per partition or resource that failed)",
            self.request_errors.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from a decoded Kafka request to its encoded response, by API",
            self.request_seconds.clone(),
        );
        r.register(
            "topic_bytes_in",
            "Record batch bytes appended by Produce, by topic",
            self.topic_bytes_in.clone(),
        );
        r.register(
            "topic_bytes_out",
            "Record batch bytes returned by Fetch, by topic",
            self.topic_bytes_out.clone(),
        );
        r.register("connections", "Open Kafka client connections", self.connections.clone());
        r.register(
            "connections_accepted",
            "Kafka client connections accepted",
            self.connections_accepted.clone(),
        );
        r.register(
            "partition_high_watermark",
            "Next offset of each partition replica on this node (its committed end)",
            self.partition_high_watermark.clone(),
        );
        r.register(
            "partition_log_start_offset",
            "First offset of each partition replica on this node",
            self.partition_log_start_offset.clone(),
        );
        r.register(
            "partition_size_bytes",
            "Bytes of each partition replica's log files on this node's disk",
            self.partition_size_bytes.clone(),
        );
        r.register(
            "partition_leader",
            "1 if this node leads the partition (and may serve it), else 0",
            self.partition_leader.clone(),
        );
        r.register(
            "partition_replica_lag_entries",
            "On a partition's leader: Raft log entries each other replica is behind",
            self.partition_replica_lag.clone(),
        );
        r.register(
            "raft_term",
            "Current Raft term of each group on this node",
            self.raft_term.clone(),
        );
        r.register(
            "raft_leader",
            "Node id of each group's leader as this node sees it, -1 if none",
            self.raft_leader.clone(),
        );
        r.register(
            "raft_last_log_index",
            "Index of the last Raft log entry of each partition group on this node",
            self.raft_last_log_index.clone(),
        );
        r.register(
            "raft_applied_index",
            "Index of the last Raft log entry applied by each partition group on this node",
            self.raft_applied_index.clone(),
        );
        r.register(
            "raft_leader_changes",
            "Times each group's leader changed, as this node saw it",
            self.raft_leader_changes.clone(),
        );
        r.register(
            "raft_elections",
            "Elections this node started (became a candidate), by group",
            self.raft_elections.clone(),
        );
        r.register(
            "raft_log_append_duration_seconds",
            "Raft log appends: one write and fdatasync of the group's log file, duration",
            self.raft_append_seconds.clone(),
        );
        r.register(
            "raft_commit_duration_seconds",
            "Produce path: time from proposing record batches to their partition's Raft group until they are committed and applied on the leader",
            self.raft_commit_seconds.clone(),
        );
        r.register(
            "raft_log_append_entries",
            "Raft log entries written per append",
            self.raft_append_entries.clone(),
        );
        r.register(
            "raft_log_append_bytes",
            "Raft log bytes written per append",
            self.raft_append_bytes.clone(),
        );
        r.register(
            "peer_requests",
            "Requests this node sent to its peers, by kind (heartbeats are AppendEntries without entries)",
            self.peer_requests.clone(),
        );
        r.register(
            "raft_snapshot_builds",
            "Raft snapshots built on this node",
            self.raft_snapshot_builds.clone(),
        );
        r.register(
            "raft_snapshot_installs",
            "Raft snapshots received from a leader and installed on this node",
            self.raft_snapshot_installs.clone(),
        );
        r.register(
            "storage_write_stopped",
            "1 while RocksDB stops writes (too many memtables or level-0 files), else 0",
            self.storage_write_stopped.clone(),
        );
        r.register(
            "storage_delayed_write_rate_bytes",
            "Bytes per second RocksDB lets writes through while it slows them down; 0 when it does not",
            self.storage_delayed_write_rate.clone(),
        );
        r.register(
            "storage_pending_compaction_bytes",
            "RocksDB's estimate of the bytes compaction still has to rewrite",
            self.storage_pending_compaction_bytes.clone(),
        );
        r.register(
            "storage_running_flushes",
            "RocksDB memtable flushes running",
            self.storage_running_flushes.clone(),
        );
        r.register(
            "storage_running_compactions",
            "RocksDB compactions running",
            self.storage_running_compactions.clone(),
        );
        r.register(
            "storage_sst_bytes",
            "Bytes of SST files of each RocksDB column family",
            self.storage_sst_bytes.clone(),
        );
        r.register(
            "storage_memtable_bytes",
            "Bytes in the memtables of each RocksDB column family",
            self.storage_memtable_bytes.clone(),
        );
        r.register(
            "storage_flush_written_bytes",
            "Bytes RocksDB memtable flushes wrote",
            self.storage_flush_written.clone(),
        );
        r.register(
            "storage_compaction_read_bytes",
            "Bytes RocksDB compactions read",
            self.storage_compaction_read.clone(),
        );
        r.register(
            "storage_compaction_written_bytes",
            "Bytes RocksDB compactions wrote",
            self.storage_compaction_written.clone(),
        );
        r.register(
            "consumer_group_members",
            "Members of each consumer group this node coordinates, with the group's state",
            self.consumer_group_members.clone(),
        );
        r.register(
            "consumer_group_lag",
            "Records between a consumer group's committed offset and the partition's high watermark (partitions hosted here)",
            self.consumer_group_lag.clone(),
        );
        self
    }

    /// Everything registered, in the Prometheus text format (version 0.0.4).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// The handles of one API, resolved once by the listener for every request to come.
    pub fn request_meter(&self, api: ApiKey) -> RequestMeter {
        let labels = ApiLabels { api: Api(api) };
        RequestMeter {
            api,
            requests: self.requests.get_or_create_owned(&labels),
            duration: self.request_seconds.get_or_create_owned(&labels),
        }
    }

    /// Counts a client connection until the returned guard is dropped.
    pub fn connection_opened(&self) -> OpenConnection {
        self.connections_accepted.inc();
        self.connections.inc();
        OpenConnection
    }

    /// Adds record bytes produced to (`inbound`) or fetched from a topic.
    pub fn count_topic_bytes(&self, topic: &StrBytes, inbound: bool, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let family = if inbound {
            &self.topic_bytes_in
        } else {
            &self.topic_bytes_out
        };
        let labels = TopicLabels {
            topic: Topic(topic.clone()),
        };
        if let Some(counter) = family.get(&labels) {
            counter.inc_by(bytes as u64);
            return;
        }
        // The name usually points into a request buffer: the family keeps its
        // own copy so that buffer is not held for the life of the process.
        let owned = TopicLabels {
            topic: Topic(StrBytes::from_string(topic.to_string())),
        };
        family.get_or_create(&owned).inc_by(bytes as u64);
    }

    /// One Raft log append: `entries` entries of `bytes` bytes written and fsynced in `elapsed`.
    pub fn raft_log_appended(&self, entries: usize, bytes: usize, elapsed: Duration) {
        self.raft_append_seconds.observe(elapsed.as_secs_f64());
        self.raft_append_entries.observe(entries as f64);
        self.raft_append_bytes.observe(bytes as f64);
    }

    /// One produce proposal committed (and applied, which assigns its offsets) after `elapsed`.
    pub fn raft_committed(&self, elapsed: Duration) {
        self.raft_commit_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn raft_snapshot_built(&self) {
        self.raft_snapshot_builds.inc();
    }

    pub fn raft_snapshot_installed(&self) {
        self.raft_snapshot_installs.inc();
    }

    /// A group's current term and leader (`None` while it has none).
    pub fn raft_group_observed(&self, raft_group: u64, term: u64, leader: Option<u64>) {
        let labels = RaftGroupLabels { raft_group };
        self.raft_term.get_or_create(&labels).set(term as i64);
        self.raft_leader
            .get_or_create(&labels)
            .set(leader.map_or(-1, |leader| leader as i64));
    }

    pub fn raft_leader_changed(&self, raft_group: u64) {
        self.raft_leader_changes
            .get_or_create(&RaftGroupLabels { raft_group })
            .inc();
    }

    pub fn peer_request_sent(&self, kind: &'static str) {
        self.peer_requests.get_or_create(&PeerRequestLabels { kind }).inc();
    }

    pub fn raft_election_started(&self, raft_group: u64) {
        self.raft_elections.get_or_create(&RaftGroupLabels { raft_group }).inc();
    }

    /// Drops the series of a group that no longer runs on this node.
    pub fn forget_raft_group(&self, raft_group: u64) {
        let labels = RaftGroupLabels { raft_group };
        self.raft_term.remove(&labels);
        self.raft_leader.remove(&labels);
        self.raft_leader_changes.remove(&labels);
        self.raft_elections.remove(&labels);
    }

    /// Empties every gauge refreshed at scrape time, so that partitions, groups
    /// and consumer groups gone since the last scrape disappear from it.
    pub fn clear_scraped_state(&self) {
        self.partition_high_watermark.clear();
        self.partition_log_start_offset.clear();
        self.partition_size_bytes.clear();
        self.partition_leader.clear();
        self.partition_replica_lag.clear();
        self.raft_last_log_index.clear();
        self.raft_applied_index.clear();
        self.consumer_group_members.clear();
        self.consumer_group_lag.clear();
    }
}

/// The counter and latency histogram of one Kafka API.
#[derive(Clone)]
pub struct RequestMeter {
    api: ApiKey,
    requests: Counter,
    duration: Histogram,
}

impl RequestMeter {
    /// Records one answered request and the non-zero error codes of its response.
    pub fn record(&self, elapsed: Duration, error_codes: impl IntoIterator<Item = i16>) {
        self.requests.inc();
        self.duration.observe(elapsed.as_secs_f64());
        for code in error_codes {
            METRICS
                .request_errors
                .get_or_create(&ErrorLabels {
                    api: Api(self.api),
                    error: ErrorName(code),
                })
                .inc();
        }
    }
}

/// An open client connection; dropping it closes it in the gauge.
pub struct OpenConnection;

impl Drop for OpenConnection {
    fn drop(&mut self) {
        METRICS.connections.dec();
    }
}

/// Resident memory of this process, from /proc (Linux); `None` elsewhere.
pub fn resident_memory_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: i64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
    }

    #[test]
    fn encodes_requests_errors_and_bytes_with_readable_labels() {
        let meter = METRICS.request_meter(ApiKey::DescribeCluster);
        let before = METRICS.encode().unwrap();
        let requests = r#"rafka_requests_total{api="DescribeCluster"}"#;
        let errors = r#"rafka_request_errors_total{api="DescribeCluster",error="NotLeaderOrFollower"}"#;
        let count = r#"rafka_request_duration_seconds_count{api="DescribeCluster"}"#;
        meter.record(Duration::from_millis(3), [6, 6]);
        meter.record(Duration::from_micros(50), []);
        let after = METRICS.encode().unwrap();
        let moved = |name: &str| sample(&after, name).unwrap_or(0.0) - sample(&before, name).unwrap_or(0.0);
        assert_eq!(moved(requests), 2.0, "{after}");
        assert_eq!(moved(errors), 2.0, "{after}");
        assert_eq!(moved(count), 2.0, "{after}");
        assert!(after.contains("# TYPE rafka_request_duration_seconds histogram"));

        let topic = StrBytes::from_string("metrics-unit \"quoted\"".to_string());
        METRICS.count_topic_bytes(&topic, true, 100);
        METRICS.count_topic_bytes(&topic, true, 20);
        let text = METRICS.encode().unwrap();
        assert_eq!(
            sample(&text, r#"rafka_topic_bytes_in_total{topic="metrics-unit \"quoted\""}"#),
            Some(120.0),
            "label values are escaped: {text}"
        );
    }

    #[test]
    fn unknown_error_codes_keep_their_number() {
        let meter = METRICS.request_meter(ApiKey::OffsetDelete);
        meter.record(Duration::ZERO, [-12345]);
        let text = METRICS.encode().unwrap();
        assert!(
            text.contains(r#"rafka_request_errors_total{api="OffsetDelete",error="Unknown-12345"}"#),
            "{text}"
        );
    }

    #[test]
    fn reads_this_process_memory() {
        assert!(resident_memory_bytes().is_some_and(|bytes| bytes > 1 << 20));
    }
}
