//! Broker configuration: one file from `configs/` plus `RAFKA_*` environment overrides.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Prefix of the environment variables that override file keys (`RAFKA_DATA_DIR`, ...).
pub const ENV_PREFIX: &str = "RAFKA";

#[derive(Debug, Clone, Deserialize)]
pub struct BrokerConfig {
    pub node_id: u64,
    pub listener: SocketAddr,
    /// `host:port` announced to clients in Metadata; defaults to `listener`.
    #[serde(default)]
    pub advertised_listener: Option<String>,
    /// HTTP listener for `/metrics`, `/health` and `/ready`; port 0 picks a free port.
    #[serde(default = "default_admin_listener")]
    pub admin_listener: SocketAddr,
    #[serde(default = "default_cluster_id")]
    pub cluster_id: String,
    /// Shared by every node of the cluster: peers prove they know it in the
    /// handshake that opens each Raft connection (`raft/handshake.rs`). Without
    /// it only the cluster id is checked. Usually set as `RAFKA_CLUSTER_SECRET`.
    #[serde(default)]
    pub cluster_secret: Option<String>,
    pub raft_address: String,
    /// Node id -> Raft address of the voters that bootstrap the cluster.
    pub initial_members: BTreeMap<String, String>,
    pub data_dir: PathBuf,
    pub rtt_millis: u64,
    pub election_rtt: u64,
    pub heartbeat_rtt: u64,
    pub snapshot_entries: u64,
    pub auto_create_topics: bool,
    pub default_partitions: i32,
    pub default_replication_factor: i16,
    pub message_max_bytes: usize,
    pub socket_request_max_bytes: usize,
    pub max_connections: usize,
    /// Kafka's `queued.max.request.bytes`: request bytes all connections may
    /// hold at once, from a frame's first bytes until it is answered.
    /// A connection over it stops reading until answers free room.
    #[serde(default = "default_queued_request_bytes")]
    pub queued_max_request_bytes: usize,
    /// Partitions (Raft groups) of the internal `__consumer_offsets` topic.
    #[serde(default = "default_offsets_partitions")]
    pub offsets_topic_partitions: i32,
    /// An offsets partition restates its live records (the newest of each
    /// key) at its end, and moves its log start to them, once at least this
    /// many of its records are superseded and they are over half of the log:
    /// Kafka's compaction, done by copying forward.
    #[serde(default = "default_offsets_compaction_records")]
    pub offsets_compaction_min_records: i64,
    /// How long a new group waits for more members before its first rebalance.
    #[serde(default = "default_initial_rebalance_delay")]
    pub group_initial_rebalance_delay_ms: u64,
    #[serde(default = "default_min_session")]
    pub group_min_session_timeout_ms: i32,
    /// Kafka's `offset.metadata.max.bytes`: the longest metadata string a
    /// committed offset may carry (OFFSET_METADATA_TOO_LARGE beyond it).
    #[serde(default = "default_offset_metadata_max_bytes")]
    pub offset_metadata_max_bytes: usize,
    #[serde(default = "default_max_session")]
    pub group_max_session_timeout_ms: i32,
    /// Kafka's `log.retention.hours`: topics' default `retention.ms`; -1 keeps records forever.
    #[serde(default = "default_retention_hours")]
    pub log_retention_hours: i64,
    /// Kafka's `log.retention.bytes`: topics' default `retention.bytes` per partition; -1 is no limit.
    #[serde(default = "default_retention_bytes")]
    pub log_retention_bytes: i64,
    /// How often leaders apply retention and replicas free what it released.
    #[serde(default = "default_retention_check_interval")]
    pub log_retention_check_interval_ms: u64,
    /// Kafka's `log.segment.bytes`: topics' default `segment.bytes`, the unit retention frees.
    #[serde(default = "default_segment_bytes")]
    pub log_segment_bytes: u64,
    /// Kafka's `log.roll.ms`: topics' default `segment.ms`.
    #[serde(default = "default_segment_ms")]
    pub log_roll_ms: u64,
    /// Kafka's `producer.id.expiration.ms`: an idempotent producer silent this
    /// long is forgotten by the partitions it wrote to.
    #[serde(default = "default_producer_expiration")]
    pub producer_id_expiration_ms: i64,
    /// How long Metadata keeps listing a broker it no longer hears from, and
    /// keeps reporting the last leader a peer claimed for a partition (Kafka's
    /// broker.session.timeout.ms). Clients that still have requests in flight
    /// to a briefly silent broker keep their connection, and a node cut off
    /// from the rest still tells clients where the others are.
    #[serde(default = "default_broker_session_timeout")]
    pub broker_session_timeout_ms: u64,
    /// Kafka's `auto.leader.rebalance.enable`: each node hands the partitions
    /// it leads to their preferred (first) replicas once those are alive and
    /// caught up, so leaders spread again after restarts.
    #[serde(default = "default_true")]
    pub auto_leader_rebalance_enable: bool,
    /// Kafka's `leader.imbalance.check.interval.seconds`: how often the leader
    /// balancer looks. Kafka's default is 300 s; a hand-over here pauses one
    /// partition's writes for a replication round trip, so it looks more often.
    #[serde(default = "default_leader_imbalance_check_interval")]
    pub leader_imbalance_check_interval_seconds: u64,
}

fn default_true() -> bool {
    true
}

fn default_leader_imbalance_check_interval() -> u64 {
    5
}

fn default_producer_expiration() -> i64 {
    86_400_000
}

fn default_offsets_compaction_records() -> i64 {
    10_000
}

fn default_retention_hours() -> i64 {
    168
}

fn default_retention_bytes() -> i64 {
    -1
}

fn default_retention_check_interval() -> u64 {
    300_000
}

fn default_segment_bytes() -> u64 {
    1 << 30
}

fn default_segment_ms() -> u64 {
    7 * 24 * 3_600_000
}

fn default_queued_request_bytes() -> usize {
    256 << 20
}

fn default_admin_listener() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9644))
}

fn default_offsets_partitions() -> i32 {
    1
}

fn default_initial_rebalance_delay() -> u64 {
    3000
}

fn default_offset_metadata_max_bytes() -> usize {
    4096
}

fn default_min_session() -> i32 {
    6000
}

fn default_max_session() -> i32 {
    1_800_000
}

fn default_broker_session_timeout() -> u64 {
    9_000
}

fn default_cluster_id() -> String {
    "rafka".to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl BrokerConfig {
    /// Reads `path`, then applies `RAFKA_<KEY>` environment overrides.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let loaded: BrokerConfig = config::Config::builder()
            .add_source(config::File::from(path))
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("_")
                    .try_parsing(true),
            )
            .build()?
            .try_deserialize()?;
        loaded.validate()?;
        Ok(loaded)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.default_partitions < 1 {
            return Err(ConfigError::Invalid("default_partitions must be >= 1".into()));
        }
        if self.queued_max_request_bytes == 0 {
            return Err(ConfigError::Invalid("queued_max_request_bytes must be >= 1".into()));
        }
        if self.heartbeat_rtt == 0 || self.election_rtt <= self.heartbeat_rtt {
            return Err(ConfigError::Invalid(
                "election_rtt must be greater than heartbeat_rtt (>= 1)".into(),
            ));
        }
        if !self.initial_member_ids()?.contains(&self.node_id) {
            return Err(ConfigError::Invalid(format!(
                "node_id {} is not one of initial_members",
                self.node_id
            )));
        }
        Ok(())
    }

    pub fn initial_member_ids(&self) -> Result<Vec<u64>, ConfigError> {
        self.initial_members
            .keys()
            .map(|id| {
                id.parse::<u64>()
                    .map_err(|_| ConfigError::Invalid(format!("initial_members key {id:?} is not a node id")))
            })
            .collect()
    }

    pub fn advertised_listener(&self) -> String {
        self.advertised_listener
            .clone()
            .unwrap_or_else(|| self.listener.to_string())
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.rtt_millis * self.heartbeat_rtt)
    }

    pub fn broker_session_timeout(&self) -> Duration {
        Duration::from_millis(self.broker_session_timeout_ms)
    }

    pub fn leader_imbalance_check_interval(&self) -> Duration {
        Duration::from_secs(self.leader_imbalance_check_interval_seconds.max(1))
    }

    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.rtt_millis * self.election_rtt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_single_node_config_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/single-node.toml");
        let cfg = BrokerConfig::load(&path).expect("shipped config must load");
        assert_eq!(cfg.node_id, 1);
        assert_eq!(cfg.initial_member_ids().unwrap(), vec![1]);
        assert!(cfg.election_timeout() > cfg.heartbeat_interval());
        assert_eq!(cfg.admin_listener, default_admin_listener());
    }

    #[test]
    fn shipped_cluster_configs_describe_one_three_node_cluster() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut admin_ports = std::collections::BTreeSet::new();
        for node in 1..=3u64 {
            let path = root.join(format!("configs/broker-cluster-node{node}.json"));
            let cfg = BrokerConfig::load(&path).expect("shipped config must load");
            assert_eq!(cfg.node_id, node);
            assert_eq!(cfg.initial_member_ids().unwrap(), vec![1, 2, 3]);
            assert_eq!(cfg.initial_members[&node.to_string()], cfg.raft_address);
            assert_eq!(cfg.default_replication_factor, 3);
            admin_ports.insert(cfg.admin_listener.port());
        }
        assert_eq!(
            admin_ports.len(),
            3,
            "each node of one machine needs its own admin port"
        );
    }
}
