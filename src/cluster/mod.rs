//! The node's view of the cluster: the controller group, the partition groups it
//! hosts, and routing of reads and writes to them.

pub mod appender;
pub mod compaction;
pub mod controller_state;
mod founding;
pub mod handover;
pub mod identity;
pub mod leaders;
pub mod leadership;
pub mod metadata;
pub mod partition_state;
pub mod peer_service;
pub mod quiesce;
#[cfg(test)]
mod raft_conformance;
pub mod reassign;
pub mod rejoin;
pub mod retention;
pub mod topic_configs;
pub mod topics;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, RaftMetrics};
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex};
use tokio_util::sync::CancellationToken;

use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::group::offsets_state::OffsetsState;
use crate::group::store::{encode_groups, GroupCommand, SharedGroups};
use crate::metrics::METRICS;
use crate::raft::command::{Command, CommandResponse, ConfigChange};
use crate::raft::group::{effective_leader, leads_without_quorum, start_group, GroupStartError};
use crate::raft::handshake::PeerCredentials;
use crate::raft::log_store::{has_raft_state, log_dir, EntryBatches, GroupLogStore};
use crate::raft::network::{CallError, Peers};
use crate::raft::snapshot::SnapshotDir;
use crate::raft::state_machine::ReplicatedState;
use crate::raft::wire::{Announcement, LeaderClaim, PartitionChecksum, PeerRequest, PeerResponse, ProposeError};
use crate::raft::{GroupId, NodeId, Raft, CONTROLLER_GROUP};
use crate::storage::batch::{ProduceRules, ValidatedBatch};
use crate::storage::epochs::NO_EPOCH;
use crate::storage::keys::ALL_CFS;
use crate::storage::partition::{PartitionLog, PartitionOffsets};
use crate::storage::segments::{RollPolicy, SegmentLog};
use crate::storage::{StorageError, Store};
use appender::Appender;
use controller_state::ControllerState;
use founding::Founding;
use identity::{Identity, IdentityError};
use leaders::{LeaderBoard, LeaderView, ALIVE_WITHIN, ANNOUNCE_INTERVAL};
use leadership::ElectedAt;
use metadata::{ClusterState, TopicState};
use partition_state::{AppliedPartition, PartitionState};
use quiesce::Quiet;
use rejoin::{LeaderCommit, NodeState, VoteGate};

/// The internal topic whose partitions replicate consumer groups' offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// How long admin requests wait for new partitions to elect leaders.
const LEADER_WAIT: Duration = Duration::from_secs(15);
/// How long a proposal keeps looking for its group's leader (an election may be under way).
const LEADER_SEARCH: Duration = Duration::from_secs(10);
/// How long a forwarded or local controller proposal may take to commit.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// A replica whose log is within this many entries of the leader's counts as in sync.
const ISR_MAX_LAG_ENTRIES: u64 = 1000;
/// How often partition groups that failed to start, or stopped on an error, are started again.
const GROUP_RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// How long a node with a new data dir waits for each peer to say whether the cluster exists.
const FORMED_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const FORMED_RETRY_MIN: Duration = Duration::from_millis(100);
const FORMED_RETRY_MAX: Duration = Duration::from_secs(2);

/// A partition group running on this node.
pub struct PartitionHandle {
    pub group: GroupId,
    pub raft: Raft,
    pub log: PartitionLog,
    pub applied: watch::Receiver<AppliedPartition>,
    /// Set for `__consumer_offsets` partitions: the consumer groups they store.
    pub consumer_groups: Option<SharedGroups>,
    /// How long a leader may go without a majority's acknowledgement and still act as leader.
    lease: Duration,
    /// The group's log files.
    pub segments: Arc<SegmentLog>,
    /// The log start up to which this replica last asked for its log to be freed.
    freed_to: AtomicI64,
    /// Folds concurrent produce requests into shared entries.
    appender: Arc<Appender>,
    /// Heartbeats off while idle.
    pub quiet: Quiet,
    /// Consumer-group changes proposed here hold it shared; a restatement
    /// holds it alone, so that no change overtakes the state it restates.
    group_changes: tokio::sync::RwLock<()>,
    /// Leadership is being handed to another replica: appends are refused
    /// (NOT_LEADER_OR_FOLLOWER, so clients look for the new leader) until it has.
    handing_over: AtomicBool,
}

impl PartitionHandle {
    /// Asks openraft for a snapshot once the log start has moved, so that the
    /// log files below it are purged.
    pub async fn free_below_log_start(&self) {
        let start = self.offsets().log_start_offset;
        if start <= self.freed_to.load(Ordering::Relaxed) {
            return;
        }
        match self.raft.trigger().snapshot().await {
            Ok(()) => self.freed_to.store(start, Ordering::Relaxed),
            Err(err) => tracing::warn!(group = self.group, error = %err, "cannot start freeing the log"),
        }
    }

    pub fn leader(&self) -> Option<NodeId> {
        effective_leader(&self.raft.metrics().borrow(), self.lease, self.quiet.announced_quorum())
    }

    pub fn offsets(&self) -> PartitionOffsets {
        self.applied.borrow().offsets
    }

    /// The offsets and the leader epochs as of the same applied entry.
    pub fn applied(&self) -> AppliedPartition {
        self.applied.borrow().clone()
    }

    /// The epoch this replica has applied: its own once it leads.
    pub fn leader_epoch(&self) -> i32 {
        self.applied.borrow().epochs.current()
    }

    /// A request's `current_leader_epoch` against this replica's epoch, as
    /// Kafka checks it before anything else: -1 asks for no check, an older
    /// epoch is fenced, a newer one is not known here yet (the client's
    /// metadata is ahead of this replica; it retries).
    pub fn check_leader_epoch(&self, requested: i32) -> Result<(), BrokerError> {
        let current = self.leader_epoch();
        match requested {
            NO_EPOCH => Ok(()),
            older if older < current => Err(BrokerError::FencedLeaderEpoch { requested, current }),
            newer if newer > current => Err(BrokerError::UnknownLeaderEpoch { requested, current }),
            _ => Ok(()),
        }
    }

    /// Bytes this replica's log files take on disk (the partition size that
    /// metrics and DescribeLogDirs report).
    pub fn size_bytes(&self) -> u64 {
        self.segments.disk_bytes()
    }
}

pub struct Cluster {
    cfg: Arc<BrokerConfig>,
    store: Store,
    members: BTreeMap<NodeId, String>,
    peers: Arc<Peers>,
    board: LeaderBoard,
    controller: Raft,
    metadata: watch::Receiver<Arc<ClusterState>>,
    partitions: RwLock<HashMap<GroupId, Arc<PartitionHandle>>>,
    /// Serialises reconciliation so a group is never started or dropped twice.
    reconciling: Mutex<()>,
    identity: Identity,
    /// Withholds this node's votes while its data dir is new and behind the cluster.
    gate: Arc<VoteGate>,
    /// When this node became leader of each group it leads.
    elected_at: Arc<ElectedAt>,
    /// Shutting down: leadership goes away from this node, never to it.
    draining: AtomicBool,
    /// The controller group's leadership is being handed over: proposals wait.
    controller_handing_over: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Group(#[from] GroupStartError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("cannot listen for peers on {0}: {1}")]
    Bind(String, std::io::Error),
}

impl Cluster {
    /// Opens storage, starts the controller group and every partition group this node hosts.
    pub async fn start(cfg: Arc<BrokerConfig>, shutdown: CancellationToken) -> Result<Arc<Self>, StartError> {
        let peer_listener = TcpListener::bind(&cfg.raft_address)
            .await
            .map_err(|err| StartError::Bind(cfg.raft_address.clone(), err))?;
        // Before the database is opened: whether the dir is new is decided by what it holds.
        let identity = Identity::open(&cfg.data_dir, cfg.node_id)?;
        let gate = Arc::new(VoteGate::new(identity.rejoining));
        let store = Store::open(&cfg.data_dir)?;
        let mut members = BTreeMap::new();
        for (id, addr) in cfg.initial_member_ids()?.into_iter().zip(cfg.initial_members.values()) {
            members.insert(id, addr.clone());
        }
        let credentials = PeerCredentials::new(&cfg.cluster_id, cfg.cluster_secret.as_deref());
        let peers = Peers::new(cfg.node_id, credentials, members.clone());
        let (published, metadata) = watch::channel(Arc::new(ClusterState::default()));
        let state = Box::new(ControllerState::new(published));
        // Ascending ids: the lowest member bootstraps the controller group.
        let voters: Vec<(NodeId, String)> = members.iter().map(|(id, addr)| (*id, addr.clone())).collect();
        let controller_log = GroupLogStore::open(CONTROLLER_GROUP, store.clone(), &cfg.data_dir, state_log_roll())?;
        let controller = start_group(&cfg, &store, &peers, controller_log, state, &voters, true).await?;
        gate.group_started(CONTROLLER_GROUP, &controller, voters.len());
        Founding {
            group: CONTROLLER_GROUP,
            raft: controller.clone(),
            members: voters.clone(),
            me: cfg.node_id,
            gate: Arc::clone(&gate),
            peers: Arc::clone(&peers),
            may_found: true,
        }
        .start();
        let elected_at = Arc::new(ElectedAt::default());
        tokio::spawn(leadership::follow(
            CONTROLLER_GROUP,
            controller.server_metrics(),
            metadata.clone(),
            Arc::clone(&elected_at),
        ));
        let board = LeaderBoard::new(cfg.broker_session_timeout());
        let cluster = Arc::new(Cluster {
            cfg,
            store,
            members,
            peers,
            board,
            controller,
            metadata,
            partitions: RwLock::new(HashMap::new()),
            reconciling: Mutex::new(()),
            identity,
            gate,
            elected_at,
            draining: AtomicBool::new(false),
            controller_handing_over: AtomicBool::new(false),
        });
        tokio::spawn(peer_service::serve_peers(
            peer_listener,
            Arc::clone(&cluster),
            shutdown.clone(),
        ));
        if cluster.gate.node_state() == NodeState::Deciding {
            tokio::spawn(Arc::clone(&cluster).decide_rejoin(shutdown.clone()));
        }
        cluster.reconcile().await?;
        tokio::spawn(Arc::clone(&cluster).follow_metadata(shutdown.clone()));
        tokio::spawn(retention::run(Arc::clone(&cluster), shutdown.clone()));
        tokio::spawn(compaction::run(Arc::clone(&cluster), shutdown.clone()));
        tokio::spawn(Arc::clone(&cluster).watch_quiet_partitions(shutdown.clone()));
        tokio::spawn(Arc::clone(&cluster).balance_leaders(shutdown.clone()));
        tokio::spawn(Arc::clone(&cluster).drive_reassignments(shutdown.clone()));
        tokio::spawn(Arc::clone(&cluster).announce(shutdown));
        Ok(cluster)
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.cfg
    }

    /// The node's database, for its metrics.
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn node_id(&self) -> NodeId {
        self.cfg.node_id
    }

    /// The brokers clients can reach, this one and the peers heard from within
    /// the broker session timeout: `(node id, host, port)`.
    pub fn brokers(&self) -> Vec<(NodeId, String, i32)> {
        let mut listeners = self.board.registered_peers();
        listeners.push((self.cfg.node_id, self.cfg.advertised_listener()));
        listeners.sort();
        listeners
            .into_iter()
            .map(|(id, listener)| {
                let (host, port) = listener.rsplit_once(':').unwrap_or((listener.as_str(), "9092"));
                (id, host.to_string(), port.parse().unwrap_or(9092))
            })
            .collect()
    }

    pub fn controller_leader(&self) -> Option<NodeId> {
        self.leader_view(CONTROLLER_GROUP).map(|view| view.leader)
    }

    fn lease(&self) -> Duration {
        self.cfg.election_timeout()
    }

    fn raft_of(&self, group: GroupId) -> Option<Raft> {
        if group == CONTROLLER_GROUP {
            return Some(self.controller.clone());
        }
        self.partition_by_group(group).map(|handle| handle.raft.clone())
    }

    /// Who leads `group`: this node's own Raft view if it hosts the group,
    /// otherwise the freshest claim its peers announced. A leader this node
    /// cannot connect to while it reaches other peers is presumed dead and not
    /// reported: a client told "no leader" keeps asking and finds the new one
    /// as soon as it is elected, where one told the dead node's name waits for
    /// its next periodic refresh.
    pub fn leader_view(&self, group: GroupId) -> Option<LeaderView> {
        if let Some(raft) = self.raft_of(group) {
            let metrics = raft.metrics().borrow().clone();
            let announced_quorum = self
                .partition_by_group(group)
                .is_some_and(|handle| handle.quiet.announced_quorum());
            match effective_leader(&metrics, self.lease(), announced_quorum) {
                // An effective leader has applied its own first entry, so its
                // applied epoch is its own.
                Some(leader) if leader == self.node_id() => {
                    return Some(LeaderView {
                        leader,
                        term: metrics.current_term,
                        leader_epoch: self.applied_epoch(group),
                        in_sync: self.in_sync(&metrics),
                    })
                }
                Some(leader) if self.presumed_dead(leader) => return None,
                Some(leader) => {
                    let voters = metrics.membership_config.membership().voter_ids().collect();
                    let announced = self.board.leader_of(group).filter(|view| view.leader == leader);
                    // Without the leader's own claim, this replica's epoch is the
                    // leader's only once it has applied an entry of that leader.
                    let applied_from_leader = metrics
                        .last_applied
                        .is_some_and(|applied| applied.leader_id == *metrics.vote.leader_id());
                    return Some(announced.unwrap_or(LeaderView {
                        leader,
                        term: metrics.current_term,
                        leader_epoch: if applied_from_leader {
                            self.applied_epoch(group)
                        } else {
                            NO_EPOCH
                        },
                        in_sync: voters,
                    }));
                }
                None => {}
            }
        }
        self.board
            .leader_of(group)
            .filter(|view| !self.presumed_dead(view.leader))
    }

    /// The leader epoch a partition replica on this node has applied; none for
    /// the controller, consumer-offsets partitions and groups not hosted here.
    fn applied_epoch(&self, group: GroupId) -> i32 {
        self.partition_by_group(group)
            .map_or(NO_EPOCH, |handle| handle.leader_epoch())
    }

    /// The leader Metadata reports for `group`: the current one if known,
    /// otherwise the last one a peer claimed within the broker session timeout.
    /// A node cut off from its peers so sends clients to the rest of the
    /// cluster, where they learn the current leader, instead of answering
    /// "no leader" until they give up on it.
    pub fn reported_leader(&self, group: GroupId) -> Option<LeaderView> {
        self.leader_view(group).or_else(|| {
            self.board
                .last_known_leader_of(group)
                .filter(|view| !self.presumed_dead(view.leader))
        })
    }

    /// A peer this node cannot connect to while it can connect to another: its
    /// process is gone. A node that reaches none of its peers is the one cut
    /// off, and presumes nothing.
    fn presumed_dead(&self, node: NodeId) -> bool {
        node != self.node_id()
            && self.peers.unreachable(node)
            && self
                .members
                .keys()
                .any(|other| *other != node && *other != self.node_id() && !self.peers.unreachable(*other))
    }

    /// The voters a leader sees caught up: alive, and close to the end of its log.
    fn in_sync(&self, metrics: &RaftMetrics<NodeId, BasicNode>) -> Vec<NodeId> {
        metrics
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id == self.node_id() || (self.board.is_live(*id) && close_behind(metrics, *id)))
            .collect()
    }

    /// Tells every peer, a few times a second, where clients reach this node and which groups it leads.
    async fn announce(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticker = skipping_interval(ANNOUNCE_INTERVAL);
        while next_tick(&mut ticker, &shutdown).await {
            let announcement = self.announcement();
            for peer in self.members.keys().copied().filter(|id| *id != self.node_id()) {
                let peers = Arc::clone(&self.peers);
                let request = PeerRequest::Announce(announcement.clone());
                tokio::spawn(async move {
                    let _ = peers.call(peer, &request, ANNOUNCE_INTERVAL * 2).await;
                });
            }
        }
    }

    /// One announcement to every peer, waiting for their answers (or a timeout):
    /// a change peers must know before this node goes on.
    async fn announce_once(&self) {
        let request = PeerRequest::Announce(self.announcement());
        let calls = self
            .members
            .keys()
            .filter(|id| **id != self.node_id())
            .map(|peer| self.peers.call(*peer, &request, ANNOUNCE_INTERVAL * 2));
        futures::future::join_all(calls).await;
    }

    /// Turns idle partitions this node leads quiet, and lets partitions it
    /// follows campaign only when their leader is gone (see `quiesce`).
    async fn watch_quiet_partitions(self: Arc<Self>, shutdown: CancellationToken) {
        let started = Instant::now();
        let mut ticker = skipping_interval(ANNOUNCE_INTERVAL);
        while next_tick(&mut ticker, &shutdown).await {
            // Right after start, until every peer has announced itself (or for
            // as long as a claim stays fresh), a live leader is not yet known
            // to be one.
            let settling = started.elapsed() < ALIVE_WITHIN && !self.heard_every_peer_since(started);
            for handle in self.hosted_partitions() {
                let leads = handle.raft.metrics().borrow().current_leader == Some(self.node_id());
                if leads {
                    // Cloned: the borrow cannot be held across the final heartbeat's await.
                    let metrics = handle.raft.metrics().borrow().clone();
                    handle.quiet.lead(&handle.raft, &metrics, |node| self.alive(node)).await;
                    continue;
                }
                let leader_alive = self
                    .board
                    .claimant(handle.group, ALIVE_WITHIN)
                    .is_some_and(|leader| leader != self.node_id() && self.alive(leader));
                let may_campaign = !settling && !leader_alive && !self.gate.holds(handle.group);
                handle.quiet.follow(&handle.raft, may_campaign);
            }
        }
    }

    fn heard_every_peer_since(&self, started: Instant) -> bool {
        self.members
            .keys()
            .filter(|peer| **peer != self.node_id())
            .all(|peer| self.board.heard_within(*peer, started.elapsed()))
    }

    /// A peer heard from lately that this node can connect to.
    fn alive(&self, node: NodeId) -> bool {
        self.board.heard_within(node, ALIVE_WITHIN) && !self.peers.unreachable(node)
    }

    fn announcement(&self) -> Announcement {
        let hosted: Vec<GroupId> = self
            .partitions
            .read()
            .map(|map| map.keys().copied().collect())
            .unwrap_or_default();
        let leading = std::iter::once(CONTROLLER_GROUP)
            .chain(hosted)
            .filter_map(|group| {
                let view = self.leader_view(group).filter(|view| view.leader == self.node_id())?;
                Some(LeaderClaim {
                    group,
                    term: view.term,
                    leader_epoch: view.leader_epoch,
                    in_sync: view.in_sync,
                })
            })
            .collect();
        Announcement {
            node: self.node_id(),
            advertised_listener: self.cfg.advertised_listener(),
            leading,
            draining: self.draining(),
        }
    }

    /// Answers one request from a peer.
    pub async fn answer_peer(&self, request: PeerRequest) -> PeerResponse {
        match request {
            PeerRequest::AppendEntries { group, rpc } => match self.raft_of(group) {
                Some(raft) => {
                    let leader = LeaderCommit {
                        term: rpc.vote.leader_id().get_term(),
                        commit: rpc.leader_commit,
                    };
                    let answer = raft.append_entries(rpc).await;
                    if let Ok(response) = &answer {
                        self.gate.leader_seen(group, leader, response);
                    }
                    self.gate_progress(group, &raft);
                    PeerResponse::AppendEntries(answer)
                }
                None => PeerResponse::GroupNotHere,
            },
            PeerRequest::Vote { group, rpc } => match self.raft_of(group) {
                Some(raft) => {
                    self.gate_progress(group, &raft);
                    let refusal = self.gate.refusal(group, &rpc.vote, &raft.metrics().borrow());
                    match refusal {
                        Some(refusal) => PeerResponse::Vote(Ok(refusal)),
                        None => PeerResponse::Vote(raft.vote(rpc).await),
                    }
                }
                None => PeerResponse::GroupNotHere,
            },
            PeerRequest::InstallSnapshot { group, rpc } => match self.raft_of(group) {
                Some(raft) => {
                    let answer = raft.install_snapshot(rpc).await;
                    self.gate_progress(group, &raft);
                    PeerResponse::InstallSnapshot(answer)
                }
                None => PeerResponse::GroupNotHere,
            },
            PeerRequest::Propose { group, command } => {
                PeerResponse::Proposed(self.propose_for_peer(group, command).await)
            }
            PeerRequest::Probe { group } => PeerResponse::Probed {
                // An unreadable store must not look like a blank one.
                has_state: has_raft_state(&self.store, &self.cfg.data_dir, group).unwrap_or(true),
            },
            PeerRequest::Announce(announcement) => {
                self.board.record(announcement);
                PeerResponse::Announced
            }
            PeerRequest::Checksums => PeerResponse::Checksums(self.checksums()),
            PeerRequest::Formed { group } => PeerResponse::Formed {
                formed: self.formed(group),
            },
            PeerRequest::HandOver { group, to } => PeerResponse::HandedOver(
                self.hand_over(group, to, Instant::now() + handover::HAND_OVER_TIMEOUT)
                    .await,
            ),
            PeerRequest::Campaign { group } => PeerResponse::Campaigning {
                started: self.campaign(group).await,
            },
        }
    }

    /// Whether `group` has ever had a leader as far as this node knows: its log
    /// goes past the initial membership entry (index 0), which only a leader
    /// appends to. A group not running here counts as formed if it has any
    /// stored state: an unreadable or stopped group must not look like a blank one.
    fn formed(&self, group: GroupId) -> bool {
        match self.raft_of(group) {
            Some(raft) => raft.metrics().borrow().last_log_index.is_some_and(|index| index >= 1),
            None => has_raft_state(&self.store, &self.cfg.data_dir, group).unwrap_or(true),
        }
    }

    /// Opens `group`'s vote gate if it has caught up, and ends the rejoin once every gate is open.
    fn gate_progress(&self, group: GroupId, raft: &Raft) {
        if self.gate.try_open(group, raft) {
            self.finish_rejoin();
        }
    }

    /// A node whose data dir is new asks its peers whether the cluster exists,
    /// until one says it does (rejoin: groups stay gated until they catch up)
    /// or every other member says it does not (the cluster is being formed).
    /// Every other member, not a majority: a node cannot tell a new dir from a
    /// wiped one, and a majority of blank answers can hide the voters that
    /// hold what the node's former self helped commit (five nodes: the
    /// cluster formed on 1, 2 and 3; 1 is wiped while 2 and 3 are down; 4 and
    /// 5 never saw the controller log). So a new cluster forms only once all
    /// its initial members are up, as Redpanda's seed-driven bootstrap does.
    /// Until then every group withholds its vote.
    async fn decide_rejoin(self: Arc<Self>, shutdown: CancellationToken) {
        let mut delay = FORMED_RETRY_MIN;
        loop {
            let probes = self.members.keys().filter(|id| **id != self.node_id()).map(|peer| {
                let peers = Arc::clone(&self.peers);
                let request = PeerRequest::Formed {
                    group: CONTROLLER_GROUP,
                };
                async move { peers.call(*peer, &request, FORMED_PROBE_TIMEOUT).await }
            });
            let answers: Vec<bool> = futures::future::join_all(probes)
                .await
                .into_iter()
                .filter_map(|answer| match answer {
                    Ok(PeerResponse::Formed { formed }) => Some(formed),
                    _ => None,
                })
                .collect();
            if self.formed(CONTROLLER_GROUP) || answers.iter().any(|formed| *formed) {
                tracing::info!(
                    incarnation = %self.identity.incarnation,
                    "data dir is new and the cluster exists: rejoining; each Raft group refuses votes until it has caught up"
                );
                self.gate.rejoin();
                self.finish_rejoin();
                return;
            }
            if answers.len() + 1 == self.members.len() {
                tracing::info!(
                    incarnation = %self.identity.incarnation,
                    "data dir is new and so is the cluster: voting normally"
                );
                self.settle();
                return;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(FORMED_RETRY_MAX);
        }
    }

    /// Ends a rejoin once the controller group and every partition group the
    /// metadata assigns to this node run here with their gates open.
    fn finish_rejoin(&self) {
        if self.gate.node_state() != NodeState::Rejoining || !self.gate.is_open(CONTROLLER_GROUP) {
            return;
        }
        let metadata = self.metadata();
        let all_open = metadata
            .partitions()
            .filter(|(_, _, assignment)| assignment.replicas.contains(&self.node_id()))
            .all(|(_, _, assignment)| {
                self.partition_by_group(assignment.group).is_some() && self.gate.is_open(assignment.group)
            });
        if all_open {
            tracing::info!(
                incarnation = %self.identity.incarnation,
                "rejoin complete: every Raft group on this node has caught up"
            );
            self.settle();
        }
    }

    /// Removes the rejoin marker, then opens every gate. The marker goes first:
    /// if the node voted and then restarted with the marker still there, it
    /// would merely withhold votes again, but the order keeps disk and memory
    /// telling the same story. If the removal fails the gates stay as they are
    /// and the next caught-up group (or the next reconciliation) tries again.
    fn settle(&self) {
        if let Err(err) = self.identity.caught_up() {
            tracing::error!(error = %err, "cannot remove the rejoin marker; votes stay withheld");
            return;
        }
        for group in self.gate.settle() {
            if let Some(raft) = self.raft_of(group) {
                raft.runtime_config().elect(true);
            }
        }
    }

    /// A checksum of every partition replica this node holds, with the index it has applied.
    pub fn checksums(&self) -> Vec<PartitionChecksum> {
        let metadata = self.metadata();
        metadata
            .partitions()
            .filter_map(|(topic, partition, assignment)| {
                let handle = self.partition_by_group(assignment.group)?;
                let applied_index = handle.raft.metrics().borrow().last_applied.map_or(0, |id| id.index);
                let (mut checksum, batches) = handle.log.checksum(handle.offsets().log_start_offset).ok()?;
                if let Some(groups) = &handle.consumer_groups {
                    let groups = groups.read().unwrap_or_else(|poisoned| poisoned.into_inner());
                    let mut hasher = crc32fast::Hasher::new_with_initial(checksum);
                    hasher.update(&encode_groups(&groups).ok()?);
                    checksum = hasher.finalize();
                }
                Some(PartitionChecksum {
                    topic: topic.to_string(),
                    partition,
                    group: assignment.group,
                    applied_index,
                    checksum,
                    batches,
                })
            })
            .collect()
    }

    /// A proposal forwarded by a peer. Peers forward admin changes only: a
    /// partition append or a consumer-group change is proposed by the group's
    /// leader itself, after its request path validated it, so the peer port
    /// refuses them rather than replicate what no one checked.
    async fn propose_for_peer(&self, group: GroupId, command: Command) -> Result<CommandResponse, ProposeError> {
        if group != CONTROLLER_GROUP || !command.is_controller_command() {
            tracing::warn!(group, "refused a forwarded proposal that is not a controller command");
            return Err(ProposeError::Refused(format!(
                "peers may only forward controller commands to group {CONTROLLER_GROUP}"
            )));
        }
        self.propose_here(group, command).await
    }

    /// Proposes `command` to this node's replica of `group`.
    async fn propose_here(&self, group: GroupId, command: Command) -> Result<CommandResponse, ProposeError> {
        let raft = self.raft_of(group).ok_or(ProposeError::GroupNotHere)?;
        // Refused unproposed, so the proposer retries with the next leader.
        if group == CONTROLLER_GROUP && self.controller_handing_over.load(Ordering::Acquire) {
            return Err(ProposeError::NotLeader(None));
        }
        match tokio::time::timeout(PROPOSE_TIMEOUT, raft.client_write(command)).await {
            Ok(Ok(response)) => Ok(response.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
                Err(ProposeError::NotLeader(forward.leader_id))
            }
            Ok(Err(err)) => Err(ProposeError::Unavailable(err.to_string())),
            Err(_) => Err(ProposeError::Unavailable(format!(
                "not committed within {PROPOSE_TIMEOUT:?}"
            ))),
        }
    }

    /// Proposes `command` to `group` wherever its leader is, here or on a peer,
    /// waiting out an election. Only a proposal refused for want of leadership is
    /// retried: that one was certainly not applied.
    async fn propose_to_leader(&self, group: GroupId, command: Command) -> Result<CommandResponse, ProposeError> {
        let deadline = Instant::now() + LEADER_SEARCH;
        loop {
            let outcome = match self.propose_here(group, command.clone()).await {
                Err(ProposeError::NotLeader(Some(leader))) if leader != self.node_id() => {
                    let request = PeerRequest::Propose {
                        group,
                        command: command.clone(),
                    };
                    match self.peers.call(leader, &request, PROPOSE_TIMEOUT).await {
                        Ok(PeerResponse::Proposed(result)) => result,
                        Ok(other) => Err(ProposeError::Unavailable(format!("unexpected answer {other:?}"))),
                        // Never delivered, so safe to retry once a leader is found.
                        Err(CallError::Unreachable(..)) => Err(ProposeError::NotLeader(None)),
                        Err(err) => Err(ProposeError::Unavailable(err.to_string())),
                    }
                }
                other => other,
            };
            match outcome {
                Err(ProposeError::NotLeader(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    pub fn metadata(&self) -> Arc<ClusterState> {
        self.metadata.borrow().clone()
    }

    pub fn partition_by_group(&self, group: GroupId) -> Option<Arc<PartitionHandle>> {
        self.partitions.read().ok()?.get(&group).cloned()
    }

    /// The local handle of `topic`'s partition `index`.
    pub fn partition(&self, topic: &str, index: i32) -> Result<Arc<PartitionHandle>, BrokerError> {
        let group = self
            .metadata()
            .assignment(topic, index)
            .ok_or(BrokerError::UnknownTopicOrPartition)?
            .group;
        self.partition_by_group(group).ok_or(BrokerError::NotLeader)
    }

    /// The local handle of a partition this node leads; reads and writes go only to leaders.
    pub fn led_partition(&self, topic: &str, index: i32) -> Result<Arc<PartitionHandle>, BrokerError> {
        self.led_partition_at(topic, index, NO_EPOCH)
    }

    /// As [`Self::led_partition`], for a request that names the leader epoch
    /// it expects (-1: any), checked first as Kafka does.
    pub fn led_partition_at(
        &self,
        topic: &str,
        index: i32,
        current_leader_epoch: i32,
    ) -> Result<Arc<PartitionHandle>, BrokerError> {
        let handle = self.partition(topic, index)?;
        handle.check_leader_epoch(current_leader_epoch)?;
        if handle.leader() != Some(self.cfg.node_id) {
            return Err(BrokerError::NotLeader);
        }
        Ok(handle)
    }

    /// The leader and epoch Metadata would report for `topic`'s partition `index`.
    pub fn partition_leader(&self, topic: &str, index: i32) -> Option<LeaderView> {
        let metadata = self.metadata();
        let assignment = metadata
            .topics
            .get(topic)?
            .partitions
            .get(usize::try_from(index).ok()?)?;
        self.reported_leader(assignment.group)
    }

    /// The local handle of a partition to append to: as [`Self::led_partition`],
    /// except that a node Raft still has leading, but which has not heard from a
    /// majority within the lease, refuses with NOT_ENOUGH_REPLICAS (retriable)
    /// rather than "not the leader". Either way nothing is proposed: an entry
    /// that cannot commit before the client gives up would stay in the log and
    /// commit once the peers are back, after the client had resent it under a
    /// new producer epoch (a duplicate).
    ///
    /// `__consumer_offsets` is refused first, as Kafka refuses appends to its
    /// internal topics before looking at the records: its groups apply
    /// consumer-group commands only, so an append would be replicated and
    /// then refused.
    pub fn writable_partition(&self, topic: &str, index: i32) -> Result<Arc<PartitionHandle>, BrokerError> {
        refuse_internal(topic, "appended to")?;
        let handle = self.partition(topic, index)?;
        if handle.leader() == Some(self.cfg.node_id) {
            return Ok(handle);
        }
        if leads_without_quorum(
            &handle.raft.metrics().borrow(),
            handle.lease,
            handle.quiet.announced_quorum(),
        ) {
            return Err(BrokerError::NotEnoughReplicas);
        }
        Err(BrokerError::NotLeader)
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

    /// Reconciles the hosted groups with the metadata whenever it changes, and
    /// every [`GROUP_RETRY_INTERVAL`] so that a group that could not start, or
    /// whose Raft core stopped on an error, is tried again.
    async fn follow_metadata(self: Arc<Self>, shutdown: CancellationToken) {
        let mut metadata = self.metadata.clone();
        let mut retry = skipping_interval(GROUP_RETRY_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = metadata.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = retry.tick() => self.forget_failed_groups(),
            }
            if let Err(err) = self.reconcile().await {
                tracing::error!(error = %err, "cannot start or stop partition groups");
            }
        }
    }

    /// Forgets the partition groups whose Raft core stopped on an error (it keeps
    /// its last metrics but answers nothing), so that the next reconciliation
    /// starts them again from their durable state, as a restart of the node would.
    fn forget_failed_groups(&self) {
        let Ok(mut map) = self.partitions.write() else { return };
        map.retain(|group, handle| {
            let stopped = handle.raft.metrics().borrow().running_state.clone().err();
            if let Some(err) = &stopped {
                tracing::error!(group, error = %err, "partition group stopped on an error; starting it again");
            }
            stopped.is_none()
        });
    }

    /// Starts the partition groups the metadata assigns to this node and drops the
    /// ones it no longer does. A group that cannot start (its storage is damaged or
    /// inconsistent) is logged and left out: the node keeps serving the others, and
    /// the next reconciliation tries it again.
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
            let may_found = !metadata.moved.contains(group);
            match self.start_partition(*group, replicas, *stores_offsets, may_found).await {
                Ok(handle) => {
                    if let Ok(mut map) = self.partitions.write() {
                        map.insert(*group, Arc::new(handle));
                    }
                }
                Err(err) => tracing::error!(
                    group,
                    error = %err,
                    "cannot start partition group; serving the others without it"
                ),
            }
        }
        // A dropped group may have been the last one still catching up.
        self.finish_rejoin();
        Ok(())
    }

    async fn start_partition(
        &self,
        group: GroupId,
        replicas: &[NodeId],
        stores_offsets: bool,
        may_found: bool,
    ) -> Result<PartitionHandle, StartError> {
        let roll = match stores_offsets {
            true => offsets_log_roll(&self.cfg),
            false => retention::roll_policy(&self.cfg, &self.topic_configs(group)),
        };
        let log_store = GroupLogStore::open(group, self.store.clone(), &self.cfg.data_dir, roll)?;
        let segments = log_store.segments();
        let log = PartitionLog::new(group, self.store.clone(), Arc::new(EntryBatches(Arc::clone(&segments))));
        let (published, applied) = watch::channel(AppliedPartition::default());
        let consumer_groups = stores_offsets.then(SharedGroups::default);
        let records = PartitionState::new(log.clone(), published);
        let state: Box<dyn ReplicatedState> = match &consumer_groups {
            Some(groups) => Box::new(OffsetsState::new(groups.clone(), records)),
            None => Box::new(records),
        };
        let members: Vec<(NodeId, String)> = replicas
            .iter()
            .map(|id| (*id, self.members.get(id).cloned().unwrap_or_default()))
            .collect();
        let raft = start_group(
            &self.cfg,
            &self.store,
            &self.peers,
            log_store,
            state,
            &members,
            may_found,
        )
        .await?;
        // Campaigns wait for the quiescence watch to find no live leader (a
        // quiet leader sends no heartbeats to keep a restarted follower still).
        raft.runtime_config().elect(false);
        self.gate.group_started(group, &raft, members.len());
        Founding {
            group,
            raft: raft.clone(),
            members,
            me: self.node_id(),
            gate: Arc::clone(&self.gate),
            peers: Arc::clone(&self.peers),
            may_found,
        }
        .start();
        tokio::spawn(leadership::follow(
            group,
            raft.server_metrics(),
            self.metadata.clone(),
            Arc::clone(&self.elected_at),
        ));
        tracing::info!(group, stores_offsets, "partition group started");
        Ok(PartitionHandle {
            group,
            raft,
            log,
            applied,
            consumer_groups,
            lease: self.lease(),
            segments,
            freed_to: AtomicI64::new(0),
            appender: Arc::default(),
            quiet: Quiet::default(),
            group_changes: tokio::sync::RwLock::new(()),
            handing_over: AtomicBool::new(false),
        })
    }

    async fn drop_group(&self, group: GroupId) -> Result<(), StartError> {
        let handle = self.partitions.write().ok().and_then(|mut map| map.remove(&group));
        self.gate.group_stopped(group);
        if let Some(handle) = handle {
            let _ = handle.raft.shutdown().await;
        }
        let mut write = rocksdb::WriteBatch::default();
        self.store.delete_group_in(&mut write, group, &ALL_CFS);
        self.store.write_durable(write)?;
        SnapshotDir::new(&self.cfg.data_dir.join("snapshots"), group).remove()?;
        SegmentLog::remove(&log_dir(&self.cfg.data_dir, group))?;
        tracing::info!(group, "partition group dropped");
        Ok(())
    }

    /// Proposes a metadata change; returns the partition groups it touched.
    async fn propose_to_controller(&self, command: Command) -> Result<Vec<GroupId>, BrokerError> {
        match self.propose_to_leader(CONTROLLER_GROUP, command).await {
            Ok(CommandResponse::Controller(result)) => result.map_err(BrokerError::from),
            Ok(other) => Err(BrokerError::InvalidRequest(format!(
                "unexpected controller answer {other:?}"
            ))),
            Err(err) => Err(controller_error(err)),
        }
    }

    fn replication_factor(&self, requested: i16) -> Result<usize, BrokerError> {
        // The default never asks for more replicas than there are nodes, so one
        // configuration serves clusters of any size (Kafka's min(3, brokers)).
        let nodes = i16::try_from(self.members.len()).unwrap_or(i16::MAX);
        let factor = if requested == -1 {
            self.cfg.default_replication_factor.min(nodes)
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
        if count < 1 || count as usize > topics::MAX_PARTITIONS {
            return Err(BrokerError::InvalidPartitions(format!(
                "{count} partitions (at most {})",
                topics::MAX_PARTITIONS
            )));
        }
        Ok(count as usize)
    }

    /// Checks a CreateTopics entry without changing anything; returns the
    /// partition count and replication factor it would be created with.
    /// Configs are checked here, on the request path, and not when the
    /// controller applies the command: topics created before this check
    /// existed may hold configs it refuses, and replaying their creation must
    /// keep giving the same state.
    pub fn check_new_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &BTreeMap<String, String>,
    ) -> Result<(usize, usize), BrokerError> {
        topics::validate_topic_name(name)?;
        if self.metadata().topics.contains_key(name) {
            return Err(BrokerError::TopicAlreadyExists);
        }
        topic_configs::validate_new(configs).map_err(BrokerError::InvalidConfig)?;
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
    ) -> Result<(usize, usize), BrokerError> {
        let (count, factor) = self.check_new_topic(name, partitions, replication_factor, &configs)?;
        let command = Command::CreateTopic {
            name: name.to_string(),
            topic_id: *uuid::Uuid::new_v4().as_bytes(),
            replicas: self.place_replicas(0, count, factor),
            configs,
        };
        let groups = self.propose_to_controller(command).await?;
        tracing::info!(topic = name, partitions = count, "topic created");
        self.await_leaders(&groups).await?;
        Ok((count, factor))
    }

    /// Creates `name` with the defaults if it does not exist yet (auto-creation).
    /// `__consumer_offsets` gets its own partition count and compaction, whichever
    /// path creates it first: a group lookup, or a client's Metadata or Produce.
    pub async fn ensure_topic(&self, name: &str) -> Result<(), BrokerError> {
        let created = if name == OFFSETS_TOPIC {
            let mut configs = BTreeMap::new();
            configs.insert("cleanup.policy".to_string(), "compact".to_string());
            self.create_topic(OFFSETS_TOPIC, self.cfg.offsets_topic_partitions, -1, configs)
                .await
        } else {
            self.create_topic(name, -1, -1, BTreeMap::new()).await
        };
        match created {
            Ok(_) | Err(BrokerError::TopicAlreadyExists) => Ok(()),
            Err(err) => Err(err),
        }
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), BrokerError> {
        refuse_internal(name, "deleted")?;
        self.propose_to_controller(Command::DeleteTopic { name: name.to_string() })
            .await?;
        tracing::info!(topic = name, "topic deleted");
        self.reconcile()
            .await
            .map_err(|err| BrokerError::LeaderNotAvailable(err.to_string()))
    }

    /// Changes a topic's config overrides (AlterConfigs with `replace`,
    /// IncrementalAlterConfigs without). The change is checked against this
    /// node's metadata first, so that a bad change gets its error without a
    /// proposal and `validate_only` proposes nothing; the controller checks it
    /// again when it applies it, against the state it then holds.
    pub async fn alter_topic_configs(
        &self,
        name: &str,
        replace: bool,
        changes: Vec<ConfigChange>,
        validate_only: bool,
    ) -> Result<(), BrokerError> {
        let metadata = self.metadata();
        let topic = metadata.topics.get(name).ok_or(BrokerError::UnknownTopicOrPartition)?;
        topic_configs::apply_changes(&topic.configs, replace, &changes).map_err(BrokerError::InvalidConfig)?;
        if validate_only {
            return Ok(());
        }
        self.propose_to_controller(Command::AlterTopicConfigs {
            name: name.to_string(),
            replace,
            changes,
        })
        .await?;
        tracing::info!(topic = name, "topic configs changed");
        Ok(())
    }

    /// A new idempotent producer id, unique in the cluster.
    pub async fn allocate_producer_id(&self) -> Result<i64, BrokerError> {
        match self
            .propose_to_leader(CONTROLLER_GROUP, Command::AllocateProducerId)
            .await
        {
            Ok(CommandResponse::ProducerId(id)) => Ok(id),
            Ok(other) => Err(BrokerError::InvalidRequest(format!(
                "unexpected controller answer {other:?}"
            ))),
            Err(err) => Err(controller_error(err)),
        }
    }

    /// Checks that `name` exists and has fewer than `total` partitions; returns the topic.
    pub fn check_partition_growth(&self, name: &str, total: i32) -> Result<TopicState, BrokerError> {
        refuse_internal(name, "grown")?;
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
        if usize::try_from(total).unwrap_or(usize::MAX) > topics::MAX_PARTITIONS {
            return Err(BrokerError::InvalidPartitions(format!(
                "{total} partitions (at most {})",
                topics::MAX_PARTITIONS
            )));
        }
        Ok(topic)
    }

    pub async fn create_partitions(&self, name: &str, total: i32) -> Result<(), BrokerError> {
        let topic = self.check_partition_growth(name, total)?;
        let current = topic.partitions.len();
        let factor = topic.partitions.first().map_or(1, |p| p.replicas.len());
        let mut replicas: Vec<Vec<NodeId>> = topic.partitions.iter().map(|p| p.replicas.clone()).collect();
        replicas.extend(self.place_replicas(current, total as usize - current, factor));
        let groups = self
            .propose_to_controller(Command::CreatePartitions {
                name: name.to_string(),
                replicas,
            })
            .await?;
        self.await_leaders(&groups).await
    }

    /// Replica lists for new partitions. The first replica bootstraps the group
    /// and so usually leads it: it is chosen among the nodes known to be alive,
    /// or a partition created while a node is down would wait for that node.
    fn place_replicas(&self, first: usize, count: usize, factor: usize) -> Vec<Vec<NodeId>> {
        let nodes: Vec<NodeId> = self.members.keys().copied().collect();
        let alive = |id: &NodeId| *id == self.node_id() || self.board.is_live(*id);
        topics::place_replicas(&nodes, first, count, factor)
            .into_iter()
            .map(|mut replicas| {
                if let Some(live) = replicas.iter().position(alive) {
                    replicas.rotate_left(live);
                }
                replicas
            })
            .collect()
    }

    /// Waits until this node's metadata holds `groups` and each of them has a known leader.
    async fn await_leaders(&self, groups: &[GroupId]) -> Result<(), BrokerError> {
        let deadline = Instant::now() + LEADER_WAIT;
        let newest = groups.iter().copied().max().unwrap_or(0);
        let mut metadata = self.metadata.clone();
        while self.metadata().next_group < newest {
            if tokio::time::timeout_at(deadline.into(), metadata.changed())
                .await
                .is_err()
            {
                return Err(BrokerError::Timeout("metadata did not reach this node".into()));
            }
        }
        self.reconcile()
            .await
            .map_err(|err| BrokerError::LeaderNotAvailable(err.to_string()))?;
        for group in groups {
            while self.leader_view(*group).is_none() {
                if Instant::now() >= deadline {
                    return Err(BrokerError::Timeout(format!(
                        "partition group {group} elected no leader"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// The local replica of the `__consumer_offsets` partition that stores `group_id`.
    pub async fn offsets_partition(&self, group_id: &str) -> Result<Arc<PartitionHandle>, BrokerError> {
        let (index, _) = self.locate_offsets_partition(group_id).await?;
        self.partition(OFFSETS_TOPIC, index)
    }

    /// Which node coordinates `group_id`: the leader of its offsets partition, wherever it is.
    pub async fn coordinator_of(&self, group_id: &str) -> Result<NodeId, BrokerError> {
        let (_, group) = self.locate_offsets_partition(group_id).await?;
        self.leader_view(group)
            .map(|view| view.leader)
            .ok_or_else(|| BrokerError::CoordinatorNotAvailable("offsets partition has no leader".into()))
    }

    /// The `__consumer_offsets` partition of `group_id` (index and Raft group),
    /// creating the topic on first use.
    async fn locate_offsets_partition(&self, group_id: &str) -> Result<(i32, GroupId), BrokerError> {
        if !self.metadata().topics.contains_key(OFFSETS_TOPIC) {
            self.ensure_topic(OFFSETS_TOPIC).await?;
        }
        // Created by another node a moment ago: this node has not applied it yet.
        self.offsets_partition_of(group_id)
            .ok_or_else(|| BrokerError::CoordinatorNotAvailable("the offsets topic is being created".into()))
    }

    /// The offsets partition of `group_id` (index and Raft group), if the topic exists.
    /// Like Kafka, the index is the group id's Java string hash modulo the partition count.
    fn offsets_partition_of(&self, group_id: &str) -> Option<(i32, GroupId)> {
        let metadata = self.metadata();
        let partitions = &metadata.topics.get(OFFSETS_TOPIC)?.partitions;
        let hash = group_id
            .encode_utf16()
            .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32));
        let index = hash.unsigned_abs() as usize % partitions.len().max(1);
        Some((index as i32, partitions.get(index)?.group))
    }

    /// Whether Raft has this node leading the offsets partition of `group_id`.
    /// Deliberately not lease-checked: a short stall must not discard live groups.
    pub fn coordinates(&self, group_id: &str) -> bool {
        self.offsets_partition_of(group_id)
            .and_then(|(_, group)| self.partition_by_group(group))
            .is_some_and(|handle| handle.raft.metrics().borrow().current_leader == Some(self.node_id()))
    }

    /// Replicates a consumer-group change through its offsets partition.
    pub async fn propose_group_change(
        &self,
        handle: &PartitionHandle,
        change: GroupCommand,
    ) -> Result<(), BrokerError> {
        if handle.handing_over.load(Ordering::Acquire) {
            return Err(BrokerError::NotCoordinator);
        }
        let _shared = handle.group_changes.read().await;
        handle.quiet.wake(&handle.raft);
        match handle.raft.client_write(Command::Group(change)).await {
            Ok(response) => match response.data {
                CommandResponse::Empty => Ok(()),
                CommandResponse::GroupChangeRefused(why) => Err(BrokerError::InvalidRequest(why)),
                other => Err(BrokerError::InvalidRequest(format!(
                    "unexpected offsets answer {other:?}"
                ))),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(BrokerError::NotCoordinator),
            Err(err) => Err(BrokerError::LeaderNotAvailable(err.to_string())),
        }
    }

    /// Every partition group running on this node, `__consumer_offsets` included.
    fn hosted_partitions(&self) -> Vec<Arc<PartitionHandle>> {
        self.partitions
            .read()
            .map(|map| map.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Restates every group of an offsets partition this node leads as
    /// records at its end, which moves its log start there. The groups are
    /// read with no change of this node in flight; should one from elsewhere
    /// land first (an earlier leader's), the partition refuses the
    /// restatement and a later pass tries again.
    pub async fn restate_groups(&self, handle: &PartitionHandle) -> Result<i64, BrokerError> {
        let groups = handle.consumer_groups.as_ref().ok_or(BrokerError::NotLeader)?;
        let _alone = handle.group_changes.write().await;
        let restated = groups.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        handle.quiet.wake(&handle.raft);
        let command = Command::Group(GroupCommand::Restate { groups: restated });
        match propose_to_partition(&handle.raft, command).await? {
            CommandResponse::Empty => Ok(handle.offsets().log_start_offset),
            CommandResponse::GroupChangeRefused(why) => Err(BrokerError::InvalidRequest(why)),
            other => Err(unexpected(other)),
        }
    }

    /// This node's `__consumer_offsets` partitions.
    pub fn offsets_partitions(&self) -> Vec<Arc<PartitionHandle>> {
        self.partitions
            .read()
            .map(|map| map.values().filter(|h| h.consumer_groups.is_some()).cloned().collect())
            .unwrap_or_default()
    }

    pub fn record_partitions(&self) -> Vec<Arc<PartitionHandle>> {
        self.partitions
            .read()
            .map(|map| map.values().filter(|h| h.consumer_groups.is_none()).cloned().collect())
            .unwrap_or_default()
    }

    /// The partition replicas running on this node: topic, partition index, replica.
    pub fn local_replicas(&self) -> Vec<(String, i32, Arc<PartitionHandle>)> {
        self.metadata()
            .partitions()
            .filter_map(|(topic, partition, assignment)| {
                let handle = self.partition_by_group(assignment.group)?;
                Some((topic.to_string(), partition, handle))
            })
            .collect()
    }

    /// Whether `topic` stamps the broker's time into appended batches
    /// (`message.timestamp.type=LogAppendTime`).
    pub fn uses_log_append_time(&self, topic: &str) -> bool {
        self.metadata()
            .topics
            .get(topic)
            .and_then(|state| state.configs.get("message.timestamp.type"))
            .is_some_and(|kind| kind == "LogAppendTime")
    }

    /// What `topic` requires of produced batches: its `max.message.bytes`
    /// (the broker's `message_max_bytes` unless overridden) and, when
    /// `cleanup.policy` includes `compact`, a key on every record.
    pub fn produce_rules(&self, topic: &str) -> ProduceRules {
        let metadata = self.metadata();
        let configs = metadata.topics.get(topic).map(|state| &state.configs);
        let config = |name: &str| configs.and_then(|configs| configs.get(name));
        ProduceRules {
            max_batch_bytes: config("max.message.bytes")
                .and_then(|value| value.parse().ok())
                .unwrap_or(self.cfg.message_max_bytes),
            require_keys: config("cleanup.policy").is_some_and(|policy| topic_configs::is_compacted(policy)),
        }
    }

    /// The configs of the topic `group` is a partition of.
    pub fn topic_configs(&self, group: GroupId) -> BTreeMap<String, String> {
        let metadata = self.metadata();
        metadata
            .topics
            .values()
            .find(|topic| topic.partitions.iter().any(|a| a.group == group))
            .map(|topic| topic.configs.clone())
            .unwrap_or_default()
    }

    /// Moves a partition's log start forward through its leader (this node);
    /// returns the new log start.
    pub async fn advance_log_start(&self, handle: &PartitionHandle, offset: i64) -> Result<i64, BrokerError> {
        handle.quiet.wake(&handle.raft);
        match propose_to_partition(&handle.raft, Command::AdvanceLogStart { offset }).await? {
            CommandResponse::LogStart(start) => Ok(start),
            other => Err(unexpected(other)),
        }
    }

    /// Forgets a partition's idempotent producers silent since `before`
    /// through its leader (this node); returns how many.
    pub async fn expire_producers(&self, handle: &PartitionHandle, before: i64) -> Result<u32, BrokerError> {
        let command = Command::ExpireProducers {
            before_timestamp: before,
        };
        handle.quiet.wake(&handle.raft);
        match propose_to_partition(&handle.raft, command).await? {
            CommandResponse::ProducersExpired(count) => Ok(count),
            other => Err(unexpected(other)),
        }
    }

    /// DeleteRecords for one partition: everything below `offset` (-1: the high
    /// watermark) goes. Returns the new low watermark.
    pub async fn delete_records(&self, topic: &str, partition: i32, offset: i64) -> Result<i64, BrokerError> {
        let handle = self.led_partition(topic, partition)?;
        let offsets = handle.offsets();
        let target = if offset == -1 { offsets.next_offset } else { offset };
        if target < 0 || target > offsets.next_offset {
            return Err(BrokerError::OffsetOutOfRange {
                offset,
                log_start: offsets.log_start_offset,
                high_watermark: offsets.next_offset,
            });
        }
        let start = self.advance_log_start(&handle, target).await?;
        handle.free_below_log_start().await;
        Ok(start)
    }

    pub async fn append(
        &self,
        handle: &PartitionHandle,
        batches: Vec<ValidatedBatch>,
        timeout: Duration,
    ) -> Result<(i64, i64), BrokerError> {
        if handle.handing_over.load(Ordering::Acquire) {
            return Err(BrokerError::NotLeader);
        }
        let proposed = Instant::now();
        handle.quiet.wake(&handle.raft);
        let answered = handle.appender.submit(&handle.raft, batches);
        let Ok(answer) = tokio::time::timeout(timeout, answered).await else {
            return Err(BrokerError::Timeout(format!("not committed within {timeout:?}")));
        };
        let appended = answer.map_err(|_| BrokerError::LeaderNotAvailable("the partition stopped".into()))??;
        METRICS.raft_committed(proposed.elapsed());
        Ok((appended.base_offset, appended.log_start_offset))
    }
}

/// A ticker for periodic node work: a tick missed while the runtime was busy is skipped, not made up.
/// Whether the leader whose metrics these are has replicated to `node` up to
/// within [`ISR_MAX_LAG_ENTRIES`] of the end of its log.
fn close_behind(metrics: &RaftMetrics<NodeId, BasicNode>, node: NodeId) -> bool {
    let last = metrics.last_log_index.unwrap_or(0);
    metrics
        .replication
        .as_ref()
        .and_then(|replication| replication.get(&node).cloned().flatten())
        .is_some_and(|matched| matched.index + ISR_MAX_LAG_ENTRIES >= last)
}

fn skipping_interval(period: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    ticker
}

/// Waits for the next tick; false once `shutdown` fires.
async fn next_tick(ticker: &mut tokio::time::Interval, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = ticker.tick() => true,
    }
}

/// Proposes a command to a partition this node leads: appends and housekeeping.
async fn propose_to_partition(raft: &Raft, command: Command) -> Result<CommandResponse, BrokerError> {
    match raft.client_write(command).await {
        Ok(response) => Ok(response.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(BrokerError::NotLeader),
        Err(err) => Err(BrokerError::LeaderNotAvailable(err.to_string())),
    }
}

fn unexpected(answer: CommandResponse) -> BrokerError {
    BrokerError::InvalidRequest(format!("unexpected partition answer {answer:?}"))
}

/// How the controller's log rolls: it holds state only and is cut by
/// snapshots, so the size matters little.
fn state_log_roll() -> RollPolicy {
    RollPolicy {
        max_bytes: 64 << 20,
        max_age: Duration::from_secs(24 * 3600),
    }
}

/// How the logs of `__consumer_offsets` partitions roll: as the controller's,
/// or sooner if the broker's `log_segment_bytes` / `log_roll_ms` ask. Their
/// log is freed a file at a time once compaction moved the log start past it.
fn offsets_log_roll(cfg: &BrokerConfig) -> RollPolicy {
    let state = state_log_roll();
    let broker = retention::roll_policy(cfg, &BTreeMap::new());
    RollPolicy {
        max_bytes: state.max_bytes.min(broker.max_bytes),
        max_age: state.max_age.min(broker.max_age),
    }
}

/// Clients may not delete, grow or append to `__consumer_offsets`: deleting it
/// would drop every group's committed offsets, more partitions would move groups
/// to partitions that do not hold their offsets, and its Raft groups replicate
/// consumer-group commands, not records. Kafka refuses appends to its internal
/// topics (and DeleteRecords on them) with INVALID_TOPIC_EXCEPTION, so all of
/// these are refused the same way.
fn refuse_internal(name: &str, change: &str) -> Result<(), BrokerError> {
    if name == OFFSETS_TOPIC {
        return Err(BrokerError::InvalidTopic(format!(
            "{name} is an internal topic and cannot be {change} by clients"
        )));
    }
    Ok(())
}

fn controller_error(err: ProposeError) -> BrokerError {
    match err {
        ProposeError::NotLeader(_) | ProposeError::GroupNotHere => BrokerError::NotController,
        ProposeError::Unavailable(reason) => BrokerError::LeaderNotAvailable(reason),
        ProposeError::Refused(reason) => BrokerError::InvalidRequest(reason),
    }
}
