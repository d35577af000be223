//! Moving a Raft group's leadership to another replica: preferred-leader
//! election (ElectLeaders), the leader balancer, and controlled shutdown.
//!
//! openraft 0.9 has no leadership transfer, so the leader emulates one. It
//! stops taking writes for the group, waits until every entry it holds is
//! applied (so every produce already in flight is answered) and the target's
//! log matches its own to the last entry, then asks the target to campaign at
//! once. The target's vote request carries a log as long as the leader's,
//! and the leader grants it and steps down. openraft refuses votes while the
//! voter's vote lease (election_timeout_max since its vote last changed or
//! was refreshed) runs: followers refresh theirs on every heartbeat and
//! refuse, but a leader's own vote last changed when it was elected, so a
//! leader elected within the lease first waits it out. The leader's vote and
//! the target's own are a majority of three replicas; a group of five or more
//! replicas gets its other votes only once their leases have run out (a quiet
//! partition's followers), else the hand-over times out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{next_tick, skipping_interval, Cluster, PartitionHandle};
use crate::error::BrokerError;
use crate::raft::group::vote_lease;
use crate::raft::wire::{HandOverError, PeerRequest, PeerResponse};
use crate::raft::{GroupId, NodeId, Raft, CONTROLLER_GROUP};

/// How long one hand-over may take, its wait for the leader's vote lease included.
pub const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a paused group checks whether its target has caught up.
const CATCH_UP_POLL: Duration = Duration::from_millis(2);
/// How often a hand-over checks whether its target is in sync, before any pause.
const IN_SYNC_POLL: Duration = Duration::from_millis(50);

/// Pauses a group's proposals while its leadership is handed over (a
/// partition's `handing_over`, the controller's); resumes them when dropped.
struct WritesPaused<'a>(&'a AtomicBool);

impl<'a> WritesPaused<'a> {
    fn new(flag: &'a AtomicBool) -> Self {
        flag.store(true, Ordering::Release);
        WritesPaused(flag)
    }
}

impl Drop for WritesPaused<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Cluster {
    /// Hands leadership of `group`, which this node leads, to replica `to`.
    /// Returns once `to` leads it, or fails by `deadline`.
    pub async fn hand_over(&self, group: GroupId, to: NodeId, deadline: Instant) -> Result<(), HandOverError> {
        let raft = self.raft_of(group).ok_or(HandOverError::GroupNotHere)?;
        let metrics = raft.metrics().borrow().clone();
        if metrics.current_leader != Some(self.node_id()) {
            return Err(HandOverError::NotLeader(metrics.current_leader));
        }
        if !metrics.membership_config.membership().voter_ids().any(|id| id == to) {
            return Err(HandOverError::NotAReplica(to));
        }
        if to == self.node_id() {
            return Ok(());
        }
        if !self.may_lead(to) {
            return Err(HandOverError::TargetNotAlive(to));
        }
        self.wait_until_in_sync(&raft, to, deadline).await?;
        self.wait_out_vote_lease(group, deadline).await?;
        let handle = self.partition_by_group(group);
        let _paused = match handle.as_deref() {
            Some(handle) => {
                handle.quiet.wake(&handle.raft);
                WritesPaused::new(&handle.handing_over)
            }
            None => WritesPaused::new(&self.controller_handing_over),
        };
        self.wait_until_matched(&raft, handle.as_deref(), to, deadline).await?;
        let started = Instant::now();
        let remaining = deadline.saturating_duration_since(started);
        match self.peers.call(to, &PeerRequest::Campaign { group }, remaining).await {
            Ok(PeerResponse::Campaigning { started: true }) => {}
            Ok(PeerResponse::Campaigning { started: false }) => return Err(HandOverError::CampaignRefused(to)),
            Ok(other) => return Err(HandOverError::Unavailable(format!("unexpected answer {other:?}"))),
            Err(err) => return Err(HandOverError::Unavailable(err.to_string())),
        }
        let mut watch = raft.metrics();
        loop {
            let leader = watch.borrow_and_update().current_leader;
            if leader == Some(to) {
                tracing::info!(group, to, took = ?started.elapsed(), "leadership handed over");
                return Ok(());
            }
            let changed = tokio::time::timeout_at(deadline.into(), watch.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                return Err(HandOverError::Unavailable(format!(
                    "node {to} campaigned but the leader is {leader:?}"
                )));
            }
        }
    }

    /// A node leadership may be handed to: alive, reachable, not shutting down.
    pub(super) fn may_lead(&self, node: NodeId) -> bool {
        node != self.node_id() && self.alive(node) && !self.board.is_draining(node)
    }

    /// Waits until this node's vote lease, counted from its election, has run
    /// out, so that it grants the target's vote.
    async fn wait_out_vote_lease(&self, group: GroupId, deadline: Instant) -> Result<(), HandOverError> {
        let elected = self.elected_at.get(group).unwrap_or_else(Instant::now);
        let granting = elected + vote_lease(&self.cfg);
        if granting > deadline {
            return Err(HandOverError::Unavailable(
                "elected too recently to step down before the deadline".into(),
            ));
        }
        tokio::time::sleep_until(granting.into()).await;
        Ok(())
    }

    /// Waits, writes still flowing, until `to` is close behind (in sync): the
    /// pause that follows then lasts a replication round trip, not a catch-up
    /// (a replica that has just restarted may still be catching up).
    async fn wait_until_in_sync(&self, raft: &Raft, to: NodeId, deadline: Instant) -> Result<(), HandOverError> {
        loop {
            let metrics = raft.metrics().borrow().clone();
            if metrics.current_leader != Some(self.node_id()) {
                return Err(HandOverError::NotLeader(metrics.current_leader));
            }
            if self.in_sync(&metrics).contains(&to) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(HandOverError::TargetBehind(to));
            }
            tokio::time::sleep(IN_SYNC_POLL).await;
        }
    }

    /// Waits until this node has applied its whole log, its appender holds no
    /// request, and `to` holds the whole log.
    async fn wait_until_matched(
        &self,
        raft: &Raft,
        handle: Option<&PartitionHandle>,
        to: NodeId,
        deadline: Instant,
    ) -> Result<(), HandOverError> {
        loop {
            let matched = {
                let metrics = raft.metrics();
                let metrics = metrics.borrow();
                let last = metrics.last_log_index;
                let applied = metrics.last_applied.map(|id| id.index);
                let target = metrics
                    .replication
                    .as_ref()
                    .and_then(|replication| replication.get(&to).cloned().flatten())
                    .map(|id| id.index);
                if metrics.current_leader != Some(self.node_id()) {
                    return Err(HandOverError::NotLeader(metrics.current_leader));
                }
                applied == last && target == last
            };
            if matched && handle.is_none_or(|handle| handle.appender.is_idle()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(HandOverError::TargetBehind(to));
            }
            tokio::time::sleep(CATCH_UP_POLL).await;
        }
    }

    /// A leader's request that this node campaign for `group` now. Refused
    /// while this node shuts down or its vote gate holds the group.
    pub(super) async fn campaign(&self, group: GroupId) -> bool {
        if self.draining() || self.gate.holds(group) {
            return false;
        }
        let Some(raft) = self.raft_of(group) else {
            return false;
        };
        // A follower of a partition with a live leader has its ticker off; as
        // leader it needs it for heartbeats.
        raft.runtime_config().heartbeat(true);
        raft.runtime_config().tick(true);
        match raft.trigger().elect().await {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(group, error = %err, "cannot campaign");
                false
            }
        }
    }

    /// Preferred-leader election of one partition group: its first replica
    /// takes over from the current leader, wherever that is.
    pub async fn elect_preferred(
        &self,
        group: GroupId,
        preferred: NodeId,
        deadline: Instant,
    ) -> Result<(), BrokerError> {
        let leader = self
            .leader_view(group)
            .ok_or_else(|| BrokerError::LeaderNotAvailable("an election is under way".into()))?
            .leader;
        if leader == preferred {
            return Err(BrokerError::ElectionNotNeeded);
        }
        if preferred != self.node_id() && !self.may_lead(preferred) {
            return Err(HandOverError::TargetNotAlive(preferred).into());
        }
        if leader == self.node_id() {
            return Ok(self.hand_over(group, preferred, deadline).await?);
        }
        let request = PeerRequest::HandOver { group, to: preferred };
        let remaining = deadline.saturating_duration_since(Instant::now());
        match self.peers.call(leader, &request, remaining).await {
            Ok(PeerResponse::HandedOver(result)) => Ok(result?),
            Ok(other) => Err(BrokerError::LeaderNotAvailable(format!("unexpected answer {other:?}"))),
            Err(err) => Err(BrokerError::LeaderNotAvailable(err.to_string())),
        }
    }

    /// Whether this node is shutting down.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Controlled shutdown, first step: no leadership comes to this node any
    /// more, and every group it leads, the controller group included, is
    /// handed to a caught-up replica within `timeout`. Groups no replica can take stay led here.
    pub async fn hand_over_all(&self, timeout: Duration) {
        self.draining.store(true, Ordering::Release);
        self.announce_once().await;
        let deadline = Instant::now() + timeout;
        let led: Vec<GroupId> = std::iter::once(CONTROLLER_GROUP)
            .chain(self.hosted_partitions().iter().map(|handle| handle.group))
            .filter(|group| {
                self.raft_of(*group)
                    .is_some_and(|raft| raft.metrics().borrow().current_leader == Some(self.node_id()))
            })
            .collect();
        let started = Instant::now();
        let outcomes =
            futures::future::join_all(led.iter().map(|group| self.hand_over_anywhere(*group, deadline))).await;
        let kept = outcomes.iter().filter(|handed| !**handed).count();
        tracing::info!(
            groups = led.len(),
            kept,
            took = ?started.elapsed(),
            "leadership handed over for shutdown"
        );
    }

    /// Hands `group` to the first replica that takes it.
    async fn hand_over_anywhere(&self, group: GroupId, deadline: Instant) -> bool {
        let Some(raft) = self.raft_of(group) else { return false };
        let in_sync = self.in_sync(&raft.metrics().borrow());
        let targets = self.hand_over_targets(group);
        for target in targets
            .into_iter()
            .filter(|node| in_sync.contains(node) && self.may_lead(*node))
        {
            match self.hand_over(group, target, deadline).await {
                Ok(()) => return true,
                Err(err) => tracing::warn!(group, target, error = %err, "cannot hand leadership over"),
            }
        }
        false
    }

    /// The replicas `group` may go to, best first: its preferred (first)
    /// replica, where the balancer would move it anyway; for a group this node
    /// is preferred for, the others in an order that varies by group, so that
    /// its groups spread over its peers. The controller group's replicas are
    /// the members.
    fn hand_over_targets(&self, group: GroupId) -> Vec<NodeId> {
        let replicas: Vec<NodeId> = match group {
            CONTROLLER_GROUP => self.members.keys().copied().collect(),
            _ => self
                .metadata()
                .partition_of_group(group)
                .map(|(_, _, assignment)| assignment.replicas.clone())
                .unwrap_or_default(),
        };
        let mut others: Vec<NodeId> = replicas
            .iter()
            .copied()
            .filter(|node| *node != self.node_id())
            .collect();
        if replicas.first() == Some(&self.node_id()) && !others.is_empty() {
            let turn = (group % others.len() as u64) as usize;
            others.rotate_left(turn);
        }
        others
    }

    /// The leader balancer: every `leader_imbalance_check_interval_seconds`,
    /// each partition this node leads whose first (preferred) replica is
    /// another node that is alive and caught up goes to that replica. Leaders
    /// only ever move to preferred replicas, and a preferred replica never
    /// hands its leadership away, so two nodes' balancers cannot undo each
    /// other's moves; replica lists rotate their first replica at creation,
    /// so preferred leaders are spread evenly.
    pub(super) async fn balance_leaders(self: Arc<Self>, shutdown: CancellationToken) {
        if !self.cfg.auto_leader_rebalance_enable {
            return;
        }
        let mut ticker = skipping_interval(self.cfg.leader_imbalance_check_interval());
        while next_tick(&mut ticker, &shutdown).await {
            for (group, preferred) in self.led_off_preferred() {
                if shutdown.is_cancelled() || self.draining() {
                    return;
                }
                let Some(handle) = self.partition_by_group(group) else {
                    continue;
                };
                let caught_up = self.in_sync(&handle.raft.metrics().borrow()).contains(&preferred);
                if !caught_up || !self.may_lead(preferred) {
                    continue;
                }
                if let Err(err) = self
                    .hand_over(group, preferred, Instant::now() + HAND_OVER_TIMEOUT)
                    .await
                {
                    tracing::info!(group, preferred, error = %err, "leader balancer: hand-over failed");
                }
            }
        }
    }

    /// The partition groups this node leads whose preferred replica is another node.
    fn led_off_preferred(&self) -> Vec<(GroupId, NodeId)> {
        self.metadata()
            .partitions()
            .filter_map(|(_, _, assignment)| {
                let preferred = *assignment.replicas.first()?;
                let handle = self.partition_by_group(assignment.group)?;
                (preferred != self.node_id() && handle.leader() == Some(self.node_id()))
                    .then_some((assignment.group, preferred))
            })
            .collect()
    }
}
