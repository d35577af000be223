//! The admin HTTP listener (`admin_listener`), for Prometheus and orchestrators:
//!
//! - `GET /metrics`: every metric of [`crate::metrics`] in the Prometheus text format;
//! - `GET /health`: 200 while the process runs (liveness);
//! - `GET /ready`: 200 once the broker serves Kafka clients and knows a
//!   controller leader, 503 with the reason otherwise (readiness).
//!
//! It is bound before the Raft groups start, so an orchestrator sees "alive,
//! not ready" during startup instead of a refused connection.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::cluster::OFFSETS_TOPIC;
use crate::metrics::{
    resident_memory_bytes, ColumnFamilyLabels, ConsumerGroupLabels, ConsumerLagLabels, PartitionLabels,
    RaftGroupLabels, ReplicaLabels, CONTENT_TYPE as METRICS_CONTENT_TYPE, METRICS,
};
use crate::protocol::Broker;
use crate::server::next_connection;

/// A scraper or probe that has not sent its request headers by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 64;

/// What the admin endpoints report on; the broker is set once it serves.
#[derive(Default)]
pub struct AdminState {
    broker: OnceLock<Arc<Broker>>,
    /// Refreshing the scraped gauges clears them first: one scrape at a time,
    /// or a concurrent one would encode a half-refreshed set.
    scraping: Mutex<()>,
}

impl AdminState {
    /// The Kafka listener is accepting: readiness now depends on the controller.
    pub fn serving(&self, broker: Arc<Broker>) {
        let _ = self.broker.set(broker);
    }

    /// `Ok` when ready, else why not.
    fn readiness(&self) -> Result<(), &'static str> {
        let broker = self
            .broker
            .get()
            .ok_or("starting: the Kafka listener is not serving yet")?;
        broker
            .cluster
            .controller_leader()
            .map(|_| ())
            .ok_or("no controller leader known (is a majority of the cluster up?)")
    }

    async fn metrics(&self) -> Result<String, std::fmt::Error> {
        let _one_at_a_time = self.scraping.lock().await;
        METRICS.clear_scraped_state();
        if let Some(broker) = self.broker.get() {
            observe_partitions(broker);
            observe_consumer_groups(broker);
            observe_storage(broker);
        }
        if let Some(bytes) = resident_memory_bytes() {
            METRICS.resident_memory_bytes.set(bytes);
        }
        METRICS.encode()
    }
}

/// Serves admin connections until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, shutdown: CancellationToken) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    while let Some((socket, _, permit)) = next_connection(&listener, &limit, &shutdown, "admin").await {
        let state = Arc::clone(&state);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(answer(&request, &state).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(socket), service);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                served = connection => {
                    if let Err(err) = served {
                        tracing::debug!(error = %err, "admin connection failed");
                    }
                }
            }
        });
    }
}

async fn answer(request: &Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match request.uri().path() {
        "/health" => text(StatusCode::OK, "alive\n".into()),
        "/ready" => match state.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
        },
        "/metrics" => match state.metrics().await {
            Ok(body) => {
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
                response
            }
            Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n".into()),
        },
        _ => text(StatusCode::NOT_FOUND, "try /metrics, /health or /ready\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Offsets, leadership, Raft progress and replica lag of every partition replica on this node.
fn observe_partitions(broker: &Broker) {
    let cluster = &broker.cluster;
    let node = cluster.node_id();
    for (topic, partition, assignment) in cluster.metadata().partitions() {
        let Some(handle) = cluster.partition_by_group(assignment.group) else {
            continue;
        };
        let labels = PartitionLabels {
            topic: topic.to_string(),
            partition,
            raft_group: assignment.group,
        };
        let offsets = handle.offsets();
        METRICS
            .partition_high_watermark
            .get_or_create(&labels)
            .set(offsets.next_offset);
        METRICS
            .partition_log_start_offset
            .get_or_create(&labels)
            .set(offsets.log_start_offset);
        METRICS
            .partition_size_bytes
            .get_or_create(&labels)
            .set(i64::try_from(handle.size_bytes()).unwrap_or(i64::MAX));
        let leads = handle.leader() == Some(node);
        METRICS.partition_leader.get_or_create(&labels).set(i64::from(leads));
        let raft = handle.raft.metrics();
        let raft = raft.borrow();
        let group = RaftGroupLabels {
            raft_group: assignment.group,
        };
        let last = raft.last_log_index.unwrap_or(0);
        METRICS.raft_last_log_index.get_or_create(&group).set(last as i64);
        METRICS
            .raft_applied_index
            .get_or_create(&group)
            .set(raft.last_applied.map_or(0, |applied| applied.index) as i64);
        // Only a leader tracks how far each replica has come.
        for (replica, matched) in raft.replication.iter().flatten() {
            if *replica == node {
                continue;
            }
            let lag = last.saturating_sub(matched.as_ref().map_or(0, |matched| matched.index));
            let labels = ReplicaLabels {
                topic: topic.to_string(),
                partition,
                replica: *replica,
            };
            METRICS.partition_replica_lag.get_or_create(&labels).set(lag as i64);
        }
    }
}

/// RocksDB's stall and size gauges and its flush and compaction byte counters.
fn observe_storage(broker: &Broker) {
    let stats = match broker.cluster.store().stats() {
        Ok(stats) => stats,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read RocksDB properties");
            return;
        }
    };
    let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    METRICS.storage_write_stopped.set(i64::from(stats.write_stopped));
    METRICS.storage_delayed_write_rate.set(gauge(stats.delayed_write_rate));
    METRICS
        .storage_pending_compaction_bytes
        .set(gauge(stats.pending_compaction_bytes));
    METRICS.storage_running_flushes.set(gauge(stats.running_flushes));
    METRICS
        .storage_running_compactions
        .set(gauge(stats.running_compactions));
    // RocksDB counts from the node's start; the counters catch up to its totals.
    for (counter, total) in [
        (&METRICS.storage_flush_written, stats.flush_write_bytes),
        (&METRICS.storage_compaction_read, stats.compaction_read_bytes),
        (&METRICS.storage_compaction_written, stats.compaction_write_bytes),
    ] {
        counter.inc_by(total.saturating_sub(counter.get()));
    }
    for (column_family, sst, memtables) in stats.column_families {
        let labels = ColumnFamilyLabels { column_family };
        METRICS.storage_sst_bytes.get_or_create(&labels).set(gauge(sst));
        METRICS
            .storage_memtable_bytes
            .get_or_create(&labels)
            .set(gauge(memtables));
    }
}

/// Members of the consumer groups this node coordinates, and their lag on the
/// partitions this node hosts.
fn observe_consumer_groups(broker: &Broker) {
    for (consumer_group, state, members) in broker.groups.member_counts() {
        let labels = ConsumerGroupLabels { consumer_group, state };
        METRICS
            .consumer_group_members
            .get_or_create(&labels)
            .set(members as i64);
    }
    let cluster = &broker.cluster;
    let metadata = cluster.metadata();
    let offsets_partitions = metadata.topics.get(OFFSETS_TOPIC).map(|t| t.partitions.as_slice());
    for assignment in offsets_partitions.unwrap_or_default() {
        let Some(handle) = cluster.partition_by_group(assignment.group) else {
            continue;
        };
        // The coordinator reports its groups; the other replicas would repeat them.
        let Some(groups) = handle
            .consumer_groups
            .as_ref()
            .filter(|_| handle.leader() == Some(cluster.node_id()))
        else {
            continue;
        };
        let groups = groups.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (name, stored) in groups.iter() {
            for ((topic, partition), committed) in &stored.offsets {
                let Ok(replica) = cluster.partition(topic, *partition) else {
                    continue;
                };
                let lag = (replica.offsets().next_offset - committed.offset).max(0);
                let labels = ConsumerLagLabels {
                    consumer_group: name.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                };
                METRICS.consumer_group_lag.get_or_create(&labels).set(lag);
            }
        }
    }
}
