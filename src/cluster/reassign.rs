//! Moving a partition's replicas (Kafka's AlterPartitionReassignments) by
//! changing its Raft group's membership.
//!
//! The controller records where a partition is going (`metadata::Reassignment`);
//! every node then hosts the group if it is an old or a new replica. The
//! partition's leader carries the move out:
//!
//! 1. each new replica joins as a learner, which votes in nothing and is
//!    caught up by replication (or a snapshot, if the log was cut);
//! 2. once the learners are close behind, the leader hands its leadership to
//!    a replica that stays, if it is itself leaving;
//! 3. the voters become the target through a joint configuration (openraft's
//!    `change_membership`: old and new majorities both commit the change), and
//!    learners the target does not name are removed;
//! 4. the leader reports the new voters to the controller, whose applied
//!    record makes the nodes that left drop their copy.
//!
//! Every step starts from the group's current membership, so a new leader
//! (after a crash in the middle of a move) or a changed target simply takes
//! the move on from where it stands. A node drops its replica only after the
//! membership without it is committed.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::{BasicNode, ChangeMembers};
use tokio_util::sync::CancellationToken;

use super::handover::HAND_OVER_TIMEOUT;
use super::{close_behind, skipping_interval, Cluster};
use crate::error::BrokerError;
use crate::raft::command::Command;
use crate::raft::{GroupId, NodeId, Raft};

/// How often the leaders of moving partitions look at their moves, besides
/// every metadata change.
const REASSIGN_POLL: Duration = Duration::from_millis(500);
/// How long one step of a move (a learner catching up, a membership change)
/// may take before the leader gives up and tries again at the next poll.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a leader checks whether its learners have caught up.
const CATCH_UP_POLL: Duration = Duration::from_millis(50);

/// A replica move under way, as ListPartitionReassignments reports it.
pub struct ReplicaMove {
    pub topic: String,
    pub partition: i32,
    /// The target, then the nodes still to leave.
    pub replicas: Vec<NodeId>,
    pub adding: Vec<NodeId>,
    pub removing: Vec<NodeId>,
}

#[derive(Debug, thiserror::Error)]
enum MoveError {
    #[error("no longer the group's leader")]
    NotLeader,
    #[error("node {0} has no address")]
    UnknownNode(NodeId),
    #[error("learners {0:?} did not catch up in time")]
    Behind(Vec<NodeId>),
    #[error("the move's target changed")]
    TargetChanged,
    #[error("raft: {0}")]
    Raft(String),
    #[error("recording the move: {0}")]
    Controller(#[from] BrokerError),
}

impl Cluster {
    /// Moves a partition's replicas to `target` (or, with none, cancels its
    /// move in progress): recorded by the controller, carried out by the
    /// partition's leader.
    pub async fn reassign_partition(
        &self,
        topic: &str,
        partition: i32,
        target: Option<Vec<NodeId>>,
    ) -> Result<(), BrokerError> {
        let command = Command::ReassignPartition {
            topic: topic.to_string(),
            partition,
            target,
        };
        self.propose_to_controller(command).await.map(|_| ())
    }

    /// How many replicas a partition has, or had before its move began.
    pub fn replication_factor_of(&self, topic: &str, partition: i32) -> Result<usize, BrokerError> {
        let metadata = self.metadata();
        let assignment = metadata
            .assignment(topic, partition)
            .ok_or(BrokerError::UnknownTopicOrPartition)?;
        Ok(match metadata.reassignments.get(&assignment.group) {
            Some(moving) => moving.original.len(),
            None => assignment.replicas.len(),
        })
    }

    /// The replica moves under way.
    pub fn replica_moves(&self) -> Vec<ReplicaMove> {
        let metadata = self.metadata();
        metadata
            .partitions()
            .filter_map(|(topic, partition, assignment)| {
                let moving = metadata.reassignments.get(&assignment.group)?;
                let not_in = |nodes: &[NodeId], of: &[NodeId]| -> Vec<NodeId> {
                    of.iter().filter(|node| !nodes.contains(node)).copied().collect()
                };
                Some(ReplicaMove {
                    topic: topic.to_string(),
                    partition,
                    replicas: assignment.replicas.clone(),
                    adding: not_in(&moving.original, &moving.target),
                    removing: not_in(&moving.target, &assignment.replicas),
                })
            })
            .collect()
    }

    /// Carries out the moves of the partitions this node leads, one task per
    /// partition at a time.
    pub(super) async fn drive_reassignments(self: Arc<Self>, shutdown: CancellationToken) {
        let driving: Arc<Mutex<HashSet<GroupId>>> = Arc::default();
        let mut metadata = self.metadata.clone();
        let mut ticker = skipping_interval(REASSIGN_POLL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = metadata.changed() => if changed.is_err() { return },
                _ = ticker.tick() => {}
            }
            for (group, target) in self.moves_led_here() {
                let fresh = driving.lock().map(|mut set| set.insert(group)).unwrap_or(false);
                if !fresh {
                    continue;
                }
                let cluster = Arc::clone(&self);
                let driving = Arc::clone(&driving);
                tokio::spawn(async move {
                    if let Err(err) = cluster.advance_move(group, &target).await {
                        tracing::info!(group, ?target, error = %err, "replica move not finished; trying again");
                    }
                    if let Ok(mut set) = driving.lock() {
                        set.remove(&group);
                    }
                });
            }
        }
    }

    /// The moving partitions whose group this node leads, with their targets.
    fn moves_led_here(&self) -> Vec<(GroupId, Vec<NodeId>)> {
        if self.draining() {
            return Vec::new();
        }
        self.metadata()
            .reassignments
            .iter()
            .filter(|(group, _)| {
                self.partition_by_group(**group)
                    .is_some_and(|handle| handle.leader() == Some(self.node_id()))
            })
            .map(|(group, reassignment)| (*group, reassignment.target.clone()))
            .collect()
    }

    /// Takes one partition's move as far as it can go from here.
    async fn advance_move(&self, group: GroupId, target: &[NodeId]) -> Result<(), MoveError> {
        let handle = self.partition_by_group(group).ok_or(MoveError::NotLeader)?;
        let raft = &handle.raft;
        handle.quiet.wake(raft);
        let goal: BTreeSet<NodeId> = target.iter().copied().collect();
        let deadline = Instant::now() + STEP_TIMEOUT;
        let voters = self.voters_led(raft)?;
        if voters != goal {
            let joining: Vec<NodeId> = goal.difference(&voters).copied().collect();
            self.add_learners(group, raft, &joining).await?;
            self.wait_learners_caught_up(group, raft, target, &joining, deadline)
                .await?;
            if !goal.contains(&self.node_id()) {
                let successor = target
                    .iter()
                    .find(|node| voters.contains(node) && self.may_lead(**node));
                if let Some(successor) = successor {
                    // The successor's own move task takes it on from here.
                    self.hand_over(group, *successor, Instant::now() + HAND_OVER_TIMEOUT)
                        .await
                        .map_err(|err| MoveError::Raft(err.to_string()))?;
                    return Ok(());
                }
            }
            tracing::info!(group, from = ?voters, to = ?goal, "changing the replicas' membership");
            raft.change_membership(goal.clone(), false)
                .await
                .map_err(|err| MoveError::Raft(err.to_string()))?;
        }
        self.remove_stray_learners(raft, &goal).await?;
        self.propose_to_controller(Command::CompleteReassignment {
            group,
            replicas: target.to_vec(),
        })
        .await?;
        tracing::info!(group, replicas = ?target, "replica move complete");
        Ok(())
    }

    /// The group's voters, while this node leads it.
    fn voters_led(&self, raft: &Raft) -> Result<BTreeSet<NodeId>, MoveError> {
        let metrics = raft.metrics().borrow().clone();
        if metrics.current_leader != Some(self.node_id()) {
            return Err(MoveError::NotLeader);
        }
        Ok(metrics.membership_config.membership().voter_ids().collect())
    }

    async fn add_learners(&self, group: GroupId, raft: &Raft, joining: &[NodeId]) -> Result<(), MoveError> {
        let known: BTreeSet<NodeId> = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        for node in joining.iter().filter(|node| !known.contains(node)) {
            let address = self.members.get(node).ok_or(MoveError::UnknownNode(*node))?;
            raft.add_learner(*node, BasicNode::new(address), false)
                .await
                .map_err(|err| MoveError::Raft(err.to_string()))?;
            tracing::info!(group, learner = node, "replica added as a learner");
        }
        Ok(())
    }

    /// Waits until every learner of `joining` is close behind the leader's log
    /// (within the in-sync lag), so that making it a voter does not stall commits. Stops
    /// early when the move gets another target (one that waits for a dead
    /// node can be cancelled).
    async fn wait_learners_caught_up(
        &self,
        group: GroupId,
        raft: &Raft,
        target: &[NodeId],
        joining: &[NodeId],
        deadline: Instant,
    ) -> Result<(), MoveError> {
        loop {
            let retargeted = self
                .metadata()
                .reassignments
                .get(&group)
                .is_none_or(|moving| moving.target != target);
            if retargeted {
                return Err(MoveError::TargetChanged);
            }
            let behind: Vec<NodeId> = {
                let metrics = raft.metrics();
                let metrics = metrics.borrow();
                if metrics.current_leader != Some(self.node_id()) {
                    return Err(MoveError::NotLeader);
                }
                joining
                    .iter()
                    .copied()
                    .filter(|node| !close_behind(&metrics, *node))
                    .collect()
            };
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(MoveError::Behind(behind));
            }
            tokio::time::sleep(CATCH_UP_POLL).await;
        }
    }

    /// Removes the learners outside `goal`: those added for a target that
    /// was since replaced or cancelled.
    async fn remove_stray_learners(&self, raft: &Raft, goal: &BTreeSet<NodeId>) -> Result<(), MoveError> {
        let stray: BTreeSet<NodeId> = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .learner_ids()
            .filter(|node| !goal.contains(node))
            .collect();
        if stray.is_empty() {
            return Ok(());
        }
        raft.change_membership(ChangeMembers::RemoveNodes(stray), false)
            .await
            .map_err(|err| MoveError::Raft(err.to_string()))?;
        Ok(())
    }
}
