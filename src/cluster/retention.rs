//! Retention: how long and how much of each partition is kept, in Kafka's
//! topic config names, and the periodic pass that applies it.
//!
//! The decision to move a partition's log start is a replicated command
//! proposed by its leader, so every replica agrees on what readers see. Each
//! replica then frees its own log files below the start by building a
//! snapshot at its newest checkpoint there, after which openraft purges the
//! log up to it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{compaction, Cluster, PartitionHandle};
use crate::clock::now_ms;
use crate::config::BrokerConfig;
use crate::group::records::live_record_count;
use crate::storage::partition::{Checkpoint, PartitionOffsets};
use crate::storage::producers::expired;
use crate::storage::segments::RollPolicy;

pub const RETENTION_MS: &str = "retention.ms";
pub const RETENTION_BYTES: &str = "retention.bytes";
pub const SEGMENT_BYTES: &str = "segment.bytes";
pub const SEGMENT_MS: &str = "segment.ms";

/// Log files are never rolled below this size, whatever `segment.bytes` asks
/// (Kafka's topic-level floor is 14 bytes): one page.
const MIN_SEGMENT_BYTES: u64 = 4096;
/// Nor above it: a file that large could not be freed for a long time.
const MAX_SEGMENT_BYTES: u64 = 1 << 30;

fn topic_value(configs: &BTreeMap<String, String>, name: &str) -> Option<i64> {
    configs.get(name).and_then(|value| value.parse().ok())
}

/// A topic's retention limits; -1 means none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    pub ms: i64,
    pub bytes: i64,
}

impl Retention {
    pub fn of(cfg: &BrokerConfig, configs: &BTreeMap<String, String>) -> Self {
        let default_ms = if cfg.log_retention_hours < 0 {
            -1
        } else {
            cfg.log_retention_hours.saturating_mul(3_600_000)
        };
        Retention {
            ms: topic_value(configs, RETENTION_MS).unwrap_or(default_ms),
            bytes: topic_value(configs, RETENTION_BYTES).unwrap_or(cfg.log_retention_bytes),
        }
    }

    /// The log start these limits ask for at `now_ms`, given the partition's
    /// checkpoints (oldest first): records are released a checkpoint's worth
    /// at a time, as Kafka releases whole segments.
    pub fn log_start(&self, offsets: &PartitionOffsets, checkpoints: &[(u64, Checkpoint)], now_ms: i64) -> i64 {
        let mut start = offsets.log_start_offset;
        if self.ms >= 0 {
            let cutoff = now_ms.saturating_sub(self.ms);
            if let Some((_, expired)) = checkpoints
                .iter()
                .rev()
                .find(|(_, checkpoint)| checkpoint.offsets.max_timestamp < cutoff)
            {
                start = start.max(expired.offsets.next_offset);
            }
        }
        if self.bytes >= 0 {
            let limit = self.bytes as u64;
            if let Some((_, kept_from)) = checkpoints.iter().find(|(_, checkpoint)| {
                offsets.appended_bytes.saturating_sub(checkpoint.offsets.appended_bytes) <= limit
            }) {
                start = start.max(kept_from.offsets.next_offset);
            }
        }
        start.min(offsets.next_offset)
    }
}

/// How a topic's partitions roll their log files: Kafka's `segment.bytes` and `segment.ms`.
pub fn roll_policy(cfg: &BrokerConfig, configs: &BTreeMap<String, String>) -> RollPolicy {
    let bytes = topic_value(configs, SEGMENT_BYTES)
        .and_then(|bytes| u64::try_from(bytes).ok())
        .unwrap_or(cfg.log_segment_bytes);
    let ms = topic_value(configs, SEGMENT_MS)
        .and_then(|ms| u64::try_from(ms).ok())
        .unwrap_or(cfg.log_roll_ms);
    RollPolicy {
        max_bytes: bytes.clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES),
        max_age: Duration::from_millis(ms),
    }
}

/// The topic configs retention adds to DescribeConfigs, with their broker defaults.
pub fn topic_defaults(cfg: &BrokerConfig) -> Vec<(&'static str, String)> {
    let retention = Retention::of(cfg, &BTreeMap::new());
    vec![
        (RETENTION_MS, retention.ms.to_string()),
        (RETENTION_BYTES, retention.bytes.to_string()),
        (SEGMENT_BYTES, cfg.log_segment_bytes.to_string()),
        (SEGMENT_MS, cfg.log_roll_ms.to_string()),
    ]
}

/// Every check interval: leaders move their partitions' log start as retention
/// asks and expire silent idempotent producers, and every replica frees the
/// log below its partition's log start.
pub async fn run(cluster: Arc<Cluster>, shutdown: CancellationToken) {
    let interval = Duration::from_millis(cluster.config().log_retention_check_interval_ms.max(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        for handle in cluster.record_partitions() {
            if let Err(err) = apply(&cluster, &handle).await {
                tracing::warn!(group = handle.group, error = %err, "retention pass failed");
            }
        }
        for handle in cluster.offsets_partitions() {
            if let Err(err) = compact_offsets(&cluster, &handle).await {
                tracing::warn!(group = handle.group, error = %err, "offsets compaction pass failed");
            }
        }
    }
}

/// Whether an offsets partition with `live` live records is due for a
/// restatement: at least `min_superseded` of its records, and more than
/// half, are superseded.
pub fn restatement_due(offsets: &PartitionOffsets, live: i64, min_superseded: i64) -> bool {
    let superseded = offsets.next_offset - offsets.log_start_offset - live;
    superseded >= min_superseded.max(1) && superseded > live
}

/// An offsets partition's leader restates its groups when due; every replica
/// frees the log below its log start.
async fn compact_offsets(cluster: &Cluster, handle: &PartitionHandle) -> Result<(), crate::error::BrokerError> {
    if handle.leader() == Some(cluster.node_id()) {
        let live = handle.consumer_groups.as_ref().map_or(0, |groups| {
            let groups = groups.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            groups.values().map(live_record_count).sum::<usize>() as i64
        });
        let min_superseded = cluster.config().offsets_compaction_min_records;
        if restatement_due(&handle.offsets(), live, min_superseded) {
            let log_start = cluster.restate_groups(handle).await?;
            tracing::info!(
                group = handle.group,
                log_start,
                live,
                "offsets partition restated its groups"
            );
        }
    }
    handle.free_below_log_start().await;
    Ok(())
}

async fn apply(cluster: &Cluster, handle: &PartitionHandle) -> Result<(), crate::error::BrokerError> {
    if handle.leader() == Some(cluster.node_id()) {
        let now = now_ms();
        let configs = cluster.topic_configs(handle.group);
        // `compact` alone keeps every key's newest record however old: only
        // compaction moves its log start.
        let (_, delete) = compaction::policies(&configs);
        if delete {
            let retention = Retention::of(cluster.config(), &configs);
            let offsets = handle.offsets();
            let checkpoints = handle.log.checkpoints()?;
            let start = retention.log_start(&offsets, &checkpoints, now);
            if start > offsets.log_start_offset {
                let moved = cluster.advance_log_start(handle, start).await?;
                tracing::info!(group = handle.group, log_start = moved, "retention moved the log start");
            }
        }
        let before = now.saturating_sub(cluster.config().producer_id_expiration_ms);
        if !expired(&handle.log.load_producers()?, before).is_empty() {
            let forgotten = cluster.expire_producers(handle, before).await?;
            tracing::info!(group = handle.group, forgotten, "idempotent producers expired");
        }
    }
    handle.free_below_log_start().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(next_offset: i64, max_timestamp: i64, appended_bytes: u64) -> (u64, Checkpoint) {
        let offsets = PartitionOffsets {
            log_start_offset: 0,
            next_offset,
            max_timestamp,
            appended_bytes,
        };
        let checkpoint = Checkpoint {
            offsets,
            producers: Default::default(),
            replication: Vec::new(),
            epochs: Default::default(),
            state: Vec::new(),
        };
        (next_offset as u64, checkpoint)
    }

    #[test]
    fn retention_releases_whole_checkpoints_by_time_and_by_size() {
        let offsets = PartitionOffsets {
            log_start_offset: 0,
            next_offset: 400,
            max_timestamp: 4_000,
            appended_bytes: 4_000,
        };
        let checkpoints = [
            checkpoint(100, 1_000, 1_000),
            checkpoint(200, 2_000, 2_000),
            checkpoint(300, 3_000, 3_000),
        ];
        let none = Retention { ms: -1, bytes: -1 };
        assert_eq!(none.log_start(&offsets, &checkpoints, 10_000), 0);
        let by_time = Retention { ms: 7_500, bytes: -1 };
        assert_eq!(
            by_time.log_start(&offsets, &checkpoints, 10_000),
            200,
            "records up to 2000 ms expired"
        );
        let by_size = Retention { ms: -1, bytes: 2_500 };
        assert_eq!(
            by_size.log_start(&offsets, &checkpoints, 10_000),
            200,
            "2000 bytes after the second checkpoint fit"
        );
        let already = PartitionOffsets {
            log_start_offset: 250,
            ..offsets
        };
        assert_eq!(by_size.log_start(&already, &checkpoints, 10_000), 250, "never back");
        let everything = Retention { ms: 0, bytes: -1 };
        assert_eq!(everything.log_start(&offsets, &checkpoints, 10_000), 300);
    }
}
