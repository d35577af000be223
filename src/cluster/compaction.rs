//! Compacted topics (`cleanup.policy=compact`, or `compact,delete`): the
//! topic configs and the periodic pass in which each partition's leader
//! compacts its log. What is live, and how a step is applied, is in
//! `storage::compaction`.
//!
//! Unlike Kafka, which keeps surviving records at their offsets with gaps
//! between them, a compaction restates them at the head with new offsets and
//! moves the log start up: a consumer from the beginning still reads the
//! newest value of every key, and one whose position fell below the new log
//! start resets as `auto.offset.reset` says.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::retention::Retention;
use super::topic_configs::is_compacted;
use super::{propose_to_partition, unexpected, Cluster, PartitionHandle};
use crate::clock::now_ms;
use crate::error::BrokerError;
use crate::raft::command::{Command, CommandResponse, Compaction};
use crate::raft::GroupId;
use crate::storage::compaction::{restate, scan, CompactionRules, KeyIndex, ScanError};

pub const MIN_CLEANABLE_DIRTY_RATIO: &str = "min.cleanable.dirty.ratio";
pub const DELETE_RETENTION_MS: &str = "delete.retention.ms";
pub const MIN_COMPACTION_LAG_MS: &str = "min.compaction.lag.ms";
pub const MAX_COMPACTION_LAG_MS: &str = "max.compaction.lag.ms";

/// Kafka's defaults.
const DEFAULT_DIRTY_RATIO: f64 = 0.5;
const DEFAULT_DELETE_RETENTION_MS: i64 = 86_400_000;
const DEFAULT_MIN_LAG_MS: i64 = 0;
const DEFAULT_MAX_LAG_MS: i64 = i64::MAX;

/// The most restated bytes one step carries: one Raft entry, as large as
/// the entries that fold produce requests together.
const STEP_BYTES: usize = 4 << 20;

/// The compaction configs DescribeConfigs reports, with Kafka's defaults.
pub fn topic_defaults() -> Vec<(&'static str, String)> {
    vec![
        (MIN_CLEANABLE_DIRTY_RATIO, DEFAULT_DIRTY_RATIO.to_string()),
        (DELETE_RETENTION_MS, DEFAULT_DELETE_RETENTION_MS.to_string()),
        (MIN_COMPACTION_LAG_MS, DEFAULT_MIN_LAG_MS.to_string()),
        (MAX_COMPACTION_LAG_MS, DEFAULT_MAX_LAG_MS.to_string()),
    ]
}

/// The cleanup policies a topic's configs name: (compact, delete).
pub fn policies(configs: &BTreeMap<String, String>) -> (bool, bool) {
    match configs.get("cleanup.policy") {
        Some(policy) => (
            is_compacted(policy),
            policy.split(',').any(|element| element.trim() == "delete"),
        ),
        None => (false, true),
    }
}

/// A compacted topic's rules; `None` for a topic that is not compacted.
pub fn rules_of(cluster: &Cluster, configs: &BTreeMap<String, String>) -> Option<CompactionRules> {
    let (compact, delete) = policies(configs);
    if !compact {
        return None;
    }
    let long = |name: &str, default: i64| configs.get(name).and_then(|v| v.parse().ok()).unwrap_or(default);
    let retention_ms = Retention::of(cluster.config(), configs).ms;
    Some(CompactionRules {
        min_cleanable_dirty_ratio: configs
            .get(MIN_CLEANABLE_DIRTY_RATIO)
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_DIRTY_RATIO),
        delete_retention_ms: long(DELETE_RETENTION_MS, DEFAULT_DELETE_RETENTION_MS),
        min_compaction_lag_ms: long(MIN_COMPACTION_LAG_MS, DEFAULT_MIN_LAG_MS),
        max_compaction_lag_ms: long(MAX_COMPACTION_LAG_MS, DEFAULT_MAX_LAG_MS),
        retention_ms: (delete && retention_ms >= 0).then_some(retention_ms),
    })
}

/// Every retention check interval, each partition leader of a compacted
/// topic extends its scan and compacts when due. A leader keeps its scan
/// between passes and extends it from where it stopped, until the log start
/// moves.
pub async fn run(cluster: Arc<Cluster>, shutdown: CancellationToken) {
    let interval = Duration::from_millis(cluster.config().log_retention_check_interval_ms.max(1));
    let mut scans: HashMap<GroupId, KeyIndex> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let mut kept = HashMap::new();
        for handle in cluster.record_partitions() {
            let Some(rules) = rules_of(&cluster, &cluster.topic_configs(handle.group)) else {
                continue;
            };
            if handle.leader() != Some(cluster.node_id()) {
                continue;
            }
            let index = scans.remove(&handle.group);
            match compact(&handle, rules, index).await {
                Ok(Some(index)) => {
                    kept.insert(handle.group, index);
                }
                Ok(None) => {}
                Err(err) => tracing::warn!(group = handle.group, error = %err, "compaction pass failed"),
            }
        }
        scans = kept;
    }
}

/// One pass over a partition this node leads: extends `index` to the
/// cleanable end and, when due, restates the live records below it. Returns
/// the scan to keep for the next pass (none once the log start moved).
async fn compact(
    handle: &Arc<PartitionHandle>,
    rules: CompactionRules,
    index: Option<KeyIndex>,
) -> Result<Option<KeyIndex>, BrokerError> {
    let started = std::time::Instant::now();
    let offsets = handle.offsets();
    let mut index = index
        .filter(|index| index.log_start() == offsets.log_start_offset)
        .unwrap_or_else(|| KeyIndex::new(offsets.log_start_offset));
    let now = now_ms();
    let log = handle.log.clone();
    let index = blocking(move || {
        scan(&log, &mut index, offsets.next_offset, rules.cleanable_until(now))?;
        Ok(index)
    })
    .await?;
    if !index.due(&rules, now) {
        return Ok(Some(index));
    }
    let (records, live, end) = (index.records(), index.live(&rules, now), index.scanned_to());
    let index = Arc::new(index);
    let mut from = index.log_start();
    let (mut kept, mut dropped, mut steps) = (0, 0, 0);
    loop {
        let (log, scanned) = (handle.log.clone(), Arc::clone(&index));
        let (batches, next) = blocking(move || restate(&log, &scanned, from, &rules, now, STEP_BYTES)).await?;
        let last = next >= end;
        let step = Compaction {
            log_start: index.log_start(),
            end,
            batches,
            last,
        };
        handle.quiet.wake(&handle.raft);
        match propose_to_partition(&handle.raft, Command::Compact(step)).await? {
            CommandResponse::Compacted {
                kept: step_kept,
                dropped: step_dropped,
                ..
            } => {
                kept += step_kept;
                dropped += step_dropped;
            }
            CommandResponse::CompactionRefused(why) => return Err(BrokerError::InvalidRequest(why)),
            other => return Err(unexpected(other)),
        }
        steps += 1;
        if last {
            break;
        }
        from = next;
    }
    tracing::info!(
        group = handle.group,
        log_start = end,
        records,
        live,
        kept,
        dropped,
        steps,
        micros = started.elapsed().as_micros() as u64,
        "compaction restated the live records and moved the log start"
    );
    Ok(None)
}

/// Runs a scan on a blocking thread: it reads and decodes the log.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ScanError> + Send + 'static,
) -> Result<T, BrokerError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(ScanError::Storage(err))) => Err(BrokerError::Storage(err)),
        Ok(Err(err)) => Err(BrokerError::InvalidRequest(format!("compaction scan: {err}"))),
        Err(join) => Err(BrokerError::InvalidRequest(format!("compaction scan stopped: {join}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_policy_list_decides_which_cleanups_apply() {
        assert_eq!(policies(&configs(&[])), (false, true), "delete by default");
        assert_eq!(policies(&configs(&[("cleanup.policy", "compact")])), (true, false));
        assert_eq!(
            policies(&configs(&[("cleanup.policy", "compact, delete")])),
            (true, true)
        );
        assert_eq!(policies(&configs(&[("cleanup.policy", "delete")])), (false, true));
    }
}
