//! The node's view of the cluster: the controller group, the partition groups it
//! hosts, and routing of reads and writes to them.

pub mod metadata;
pub mod topics;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{watch, Mutex};
use tokio_util::sync::CancellationToken;

use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::group::store::{GroupCommand, SharedGroups};
use crate::raft::command::{Command, CommandResponse};
use crate::raft::group::{start_group, GroupStartError};
use crate::raft::state_machine::GroupRole;
use crate::raft::{GroupId, NodeId, Raft, CONTROLLER_GROUP};
use crate::storage::batch::ValidatedBatch;
use crate::storage::keys::ALL_CFS;
use crate::storage::partition::{PartitionLog, PartitionOffsets};
use crate::storage::{StorageError, Store};
use metadata::{ClusterState, TopicState};

/// The internal topic whose partitions replicate consumer groups' offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// How long admin requests wait for new partitions to elect leaders.
const LEADER_WAIT: Duration = Duration::from_secs(15);

/// A partition group running on this node.
pub struct PartitionHandle {
    pub group: GroupId,
    pub raft: Raft,
    pub log: PartitionLog,
    pub offsets: watch::Receiver<PartitionOffsets>,
    /// Set for `__consumer_offsets` partitions: the consumer groups they store.
    pub consumer_groups: Option<SharedGroups>,
}

impl PartitionHandle {
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    pub fn offsets(&self) -> PartitionOffsets {
        *self.offsets.borrow()
    }
}

pub struct Cluster {
    cfg: Arc<BrokerConfig>,
    store: Store,
    members: BTreeMap<NodeId, String>,
    controller: Raft,
    metadata: watch::Receiver<Arc<ClusterState>>,
    partitions: RwLock<HashMap<GroupId, Arc<PartitionHandle>>>,
    appends: Arc<watch::Sender<u64>>,
    /// Serialises reconciliation so a group is never started or dropped twice.
    reconciling: Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Group(#[from] GroupStartError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

impl Cluster {
    /// Opens storage, starts the controller group and every partition group this node hosts.
    pub async fn start(cfg: Arc<BrokerConfig>, shutdown: CancellationToken) -> Result<Arc<Self>, StartError> {
        let store = Store::open(&cfg.data_dir)?;
        let mut members = BTreeMap::new();
        for (id, addr) in cfg.initial_member_ids()?.into_iter().zip(cfg.initial_members.values()) {
            members.insert(id, addr.clone());
        }
        let (published, metadata) = watch::channel(Arc::new(ClusterState::default()));
        let role = GroupRole::Controller {
            cluster: ClusterState::default(),
            published,
        };
        let controller = start_group(&cfg, &store, CONTROLLER_GROUP, role, &members).await?;
        let cluster = Arc::new(Cluster {
            cfg,
            store,
            members,
            controller,
            metadata,
            partitions: RwLock::new(HashMap::new()),
            appends: Arc::new(watch::channel(0).0),
            reconciling: Mutex::new(()),
        });
        cluster.reconcile().await?;
        tokio::spawn(Arc::clone(&cluster).follow_metadata(shutdown));
        Ok(cluster)
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.cfg
    }

    pub fn node_id(&self) -> NodeId {
        self.cfg.node_id
    }

    /// The brokers clients can reach: `(node id, host, port)`.
    pub fn brokers(&self) -> Vec<(NodeId, String, i32)> {
        let advertised = self.cfg.advertised_listener();
        let (host, port) = advertised.rsplit_once(':').unwrap_or((advertised.as_str(), "9092"));
        vec![(self.cfg.node_id, host.to_string(), port.parse().unwrap_or(9092))]
    }

    pub fn controller_leader(&self) -> Option<NodeId> {
        self.controller.metrics().borrow().current_leader
    }

    pub fn metadata(&self) -> Arc<ClusterState> {
        self.metadata.borrow().clone()
    }

    /// A receiver that changes whenever any partition on this node appends.
    pub fn appends(&self) -> watch::Receiver<u64> {
        self.appends.subscribe()
    }

    pub fn partition_by_group(&self, group: GroupId) -> Option<Arc<PartitionHandle>> {
        self.partitions.read().ok()?.get(&group).cloned()
    }

    /// The local handle of `topic`'s partition `index`.
    pub fn partition(&self, topic: &str, index: i32) -> Result<Arc<PartitionHandle>, BrokerError> {
        let metadata = self.metadata();
        let assignment = usize::try_from(index)
            .ok()
            .and_then(|i| metadata.topics.get(topic)?.partitions.get(i))
            .ok_or(BrokerError::UnknownTopicOrPartition)?;
        self.partition_by_group(assignment.group).ok_or(BrokerError::NotLeader)
    }

    /// The local handle of a partition this node leads; reads and writes go only to leaders.
    pub fn led_partition(&self, topic: &str, index: i32) -> Result<Arc<PartitionHandle>, BrokerError> {
        let handle = self.partition(topic, index)?;
        if handle.leader() != Some(self.cfg.node_id) {
            return Err(BrokerError::NotLeader);
        }
        Ok(handle)
    }

    /// Stops every Raft group.
    pub async fn shutdown(&self) {
        let handles: Vec<_> = self
            .partitions
            .write()
            .map(|mut map| map.drain().collect())
            .unwrap_or_default();
        for (_, handle) in handles {
            let _ = handle.raft.shutdown().await;
        }
        let _ = self.controller.shutdown().await;
    }

    async fn follow_metadata(self: Arc<Self>, shutdown: CancellationToken) {
        let mut metadata = self.metadata.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = metadata.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            if let Err(err) = self.reconcile().await {
                tracing::error!(error = %err, "cannot start or stop partition groups");
            }
        }
    }

    /// Starts the partition groups the metadata assigns to this node and drops the ones it no longer does.
    async fn reconcile(&self) -> Result<(), StartError> {
        let _guard = self.reconciling.lock().await;
        let metadata = self.metadata();
        let wanted: BTreeMap<GroupId, (Vec<NodeId>, bool)> = metadata
            .partitions()
            .filter(|(_, _, a)| a.replicas.contains(&self.cfg.node_id))
            .map(|(topic, _, a)| (a.group, (a.replicas.clone(), topic == OFFSETS_TOPIC)))
            .collect();
        let running: Vec<GroupId> = self
            .partitions
            .read()
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default();
        for group in running.iter().filter(|g| !wanted.contains_key(g)) {
            self.drop_group(*group).await?;
        }
        for (group, (replicas, stores_offsets)) in wanted.iter().filter(|(g, _)| !running.contains(g)) {
            let handle = self.start_partition(*group, replicas, *stores_offsets).await?;
            if let Ok(mut map) = self.partitions.write() {
                map.insert(*group, Arc::new(handle));
            }
        }
        Ok(())
    }

    async fn start_partition(
        &self,
        group: GroupId,
        replicas: &[NodeId],
        stores_offsets: bool,
    ) -> Result<PartitionHandle, StartError> {
        let log = PartitionLog::new(group, self.store.clone());
        let (published, offsets) = watch::channel(PartitionOffsets::default());
        let consumer_groups = stores_offsets.then(SharedGroups::default);
        let role = match &consumer_groups {
            Some(groups) => GroupRole::Offsets { groups: groups.clone() },
            None => GroupRole::Partition {
                log: log.clone(),
                offsets: PartitionOffsets::default(),
                producers: Default::default(),
                published,
                appends: self.appends.clone(),
            },
        };
        let members = replicas
            .iter()
            .map(|id| (*id, self.members.get(id).cloned().unwrap_or_default()))
            .collect();
        let raft = start_group(&self.cfg, &self.store, group, role, &members).await?;
        tracing::info!(group, stores_offsets, "partition group started");
        Ok(PartitionHandle {
            group,
            raft,
            log,
            offsets,
            consumer_groups,
        })
    }

    async fn drop_group(&self, group: GroupId) -> Result<(), StartError> {
        let handle = self.partitions.write().ok().and_then(|mut map| map.remove(&group));
        if let Some(handle) = handle {
            let _ = handle.raft.shutdown().await;
        }
        let mut write = rocksdb::WriteBatch::default();
        self.store.delete_group_in(&mut write, group, &ALL_CFS);
        self.store.write_durable(write)?;
        let snapshots = self.cfg.data_dir.join("snapshots").join(format!("group-{group}"));
        if snapshots.exists() {
            std::fs::remove_dir_all(snapshots).map_err(StorageError::from)?;
        }
        tracing::info!(group, "partition group dropped");
        Ok(())
    }

    /// Proposes a metadata change; returns the partition groups it touched.
    async fn propose_to_controller(&self, command: Command) -> Result<Vec<GroupId>, BrokerError> {
        match self.controller.client_write(command).await {
            Ok(response) => match response.data {
                CommandResponse::Controller(result) => result.map_err(BrokerError::from),
                other => Err(BrokerError::InvalidRequest(format!(
                    "unexpected controller answer {other:?}"
                ))),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(BrokerError::NotController),
            Err(err) => Err(BrokerError::LeaderNotAvailable(err.to_string())),
        }
    }

    fn replication_factor(&self, requested: i16) -> Result<usize, BrokerError> {
        let factor = if requested == -1 {
            self.cfg.default_replication_factor
        } else {
            requested
        };
        if factor < 1 || factor as usize > self.members.len() {
            return Err(BrokerError::InvalidReplicationFactor(format!(
                "replication factor {factor} with {} nodes",
                self.members.len()
            )));
        }
        Ok(factor as usize)
    }

    fn partition_count(&self, requested: i32) -> Result<usize, BrokerError> {
        let count = if requested == -1 {
            self.cfg.default_partitions
        } else {
            requested
        };
        if count < 1 {
            return Err(BrokerError::InvalidPartitions(format!("{count} partitions")));
        }
        Ok(count as usize)
    }

    /// Checks a CreateTopics entry without changing anything.
    pub fn check_new_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
    ) -> Result<(usize, usize), BrokerError> {
        topics::validate_topic_name(name)?;
        if self.metadata().topics.contains_key(name) {
            return Err(BrokerError::TopicAlreadyExists);
        }
        Ok((
            self.partition_count(partitions)?,
            self.replication_factor(replication_factor)?,
        ))
    }

    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
    ) -> Result<(), BrokerError> {
        let (count, factor) = self.check_new_topic(name, partitions, replication_factor)?;
        let nodes: Vec<NodeId> = self.members.keys().copied().collect();
        let command = Command::CreateTopic {
            name: name.to_string(),
            topic_id: *uuid::Uuid::new_v4().as_bytes(),
            replicas: topics::place_replicas(&nodes, 0, count, factor),
            configs,
        };
        let groups = self.propose_to_controller(command).await?;
        tracing::info!(topic = name, partitions = count, "topic created");
        self.await_leaders(&groups).await
    }

    /// Creates `name` with the defaults if it does not exist yet (auto-creation).
    pub async fn ensure_topic(&self, name: &str) -> Result<(), BrokerError> {
        match self.create_topic(name, -1, -1, BTreeMap::new()).await {
            Ok(()) | Err(BrokerError::TopicAlreadyExists) => Ok(()),
            Err(err) => Err(err),
        }
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), BrokerError> {
        self.propose_to_controller(Command::DeleteTopic { name: name.to_string() })
            .await?;
        tracing::info!(topic = name, "topic deleted");
        self.reconcile()
            .await
            .map_err(|err| BrokerError::LeaderNotAvailable(err.to_string()))
    }

    /// A new idempotent producer id, unique in the cluster.
    pub async fn allocate_producer_id(&self) -> Result<i64, BrokerError> {
        match self.controller.client_write(Command::AllocateProducerId).await {
            Ok(response) => match response.data {
                CommandResponse::ProducerId(id) => Ok(id),
                other => Err(BrokerError::InvalidRequest(format!(
                    "unexpected controller answer {other:?}"
                ))),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(BrokerError::NotController),
            Err(err) => Err(BrokerError::LeaderNotAvailable(err.to_string())),
        }
    }

    /// Checks that `name` exists and has fewer than `total` partitions; returns the topic.
    pub fn check_partition_growth(&self, name: &str, total: i32) -> Result<TopicState, BrokerError> {
        let topic = self
            .metadata()
            .topics
            .get(name)
            .cloned()
            .ok_or(BrokerError::UnknownTopicOrPartition)?;
        if usize::try_from(total).unwrap_or(0) <= topic.partitions.len() {
            return Err(BrokerError::InvalidPartitions(format!(
                "topic has {} partitions; the new count {total} must be larger",
                topic.partitions.len()
            )));
        }
        Ok(topic)
    }

    pub async fn create_partitions(&self, name: &str, total: i32) -> Result<(), BrokerError> {
        let topic = self.check_partition_growth(name, total)?;
        let current = topic.partitions.len();
        let factor = topic.partitions.first().map_or(1, |p| p.replicas.len());
        let nodes: Vec<NodeId> = self.members.keys().copied().collect();
        let mut replicas: Vec<Vec<NodeId>> = topic.partitions.iter().map(|p| p.replicas.clone()).collect();
        replicas.extend(topics::place_replicas(
            &nodes,
            current,
            total as usize - current,
            factor,
        ));
        let groups = self
            .propose_to_controller(Command::CreatePartitions {
                name: name.to_string(),
                replicas,
            })
            .await?;
        self.await_leaders(&groups).await
    }

    /// Waits until every group in `groups` hosted here runs and knows its leader.
    async fn await_leaders(&self, groups: &[GroupId]) -> Result<(), BrokerError> {
        self.reconcile()
            .await
            .map_err(|err| BrokerError::LeaderNotAvailable(err.to_string()))?;
        for group in groups {
            let Some(handle) = self.partition_by_group(*group) else {
                continue;
            };
            handle
                .raft
                .wait(Some(LEADER_WAIT))
                .metrics(|m| m.current_leader.is_some(), "partition leader elected")
                .await
                .map_err(|err| BrokerError::Timeout(err.to_string()))?;
        }
        Ok(())
    }

    /// The `__consumer_offsets` partition that stores `group_id`, created on first use.
    /// Like Kafka, the partition is the group id's Java string hash modulo the partition count.
    pub async fn offsets_partition(&self, group_id: &str) -> Result<Arc<PartitionHandle>, BrokerError> {
        if !self.metadata().topics.contains_key(OFFSETS_TOPIC) {
            let mut configs = BTreeMap::new();
            configs.insert("cleanup.policy".to_string(), "compact".to_string());
            match self
                .create_topic(OFFSETS_TOPIC, self.cfg.offsets_topic_partitions, -1, configs)
                .await
            {
                Ok(()) | Err(BrokerError::TopicAlreadyExists) => {}
                Err(err) => return Err(err),
            }
        }
        let count = self
            .metadata()
            .topics
            .get(OFFSETS_TOPIC)
            .map_or(1, |t| t.partitions.len().max(1));
        let hash = group_id
            .encode_utf16()
            .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32));
        let index = (hash.unsigned_abs() as usize % count) as i32;
        self.partition(OFFSETS_TOPIC, index)
    }

    /// Replicates a consumer-group change through its offsets partition.
    pub async fn propose_group_change(
        &self,
        handle: &PartitionHandle,
        change: GroupCommand,
    ) -> Result<(), BrokerError> {
        match handle.raft.client_write(Command::Group(change)).await {
            Ok(response) => match response.data {
                CommandResponse::Empty => Ok(()),
                other => Err(BrokerError::InvalidRequest(format!(
                    "unexpected offsets answer {other:?}"
                ))),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(BrokerError::NotCoordinator),
            Err(err) => Err(BrokerError::LeaderNotAvailable(err.to_string())),
        }
    }

    /// Replicates `batches` through the partition's Raft group; returns (base offset, log start offset).
    pub async fn append(
        &self,
        handle: &PartitionHandle,
        batches: Vec<ValidatedBatch>,
    ) -> Result<(i64, i64), BrokerError> {
        match handle.raft.client_write(Command::Append { batches }).await {
            Ok(response) => match response.data {
                CommandResponse::Appended {
                    base_offset,
                    log_start_offset,
                } => Ok((base_offset, log_start_offset)),
                CommandResponse::ProduceRefused(refusal) => Err(BrokerError::from(refusal)),
                other => Err(BrokerError::InvalidRequest(format!(
                    "unexpected partition answer {other:?}"
                ))),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(BrokerError::NotLeader),
            Err(err) => Err(BrokerError::LeaderNotAvailable(err.to_string())),
        }
    }
}
