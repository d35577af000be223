//! The vote gate of a node whose data dir was created empty (see `identity.rs`).
//!
//! openraft assumes a voter never forgets: an empty node grants its vote to any
//! candidate, so after a disk wipe a lagging peer can win with its vote and
//! overwrite entries that were committed on the wiped node's old self. So a node
//! with a new data dir first finds out whether the cluster already exists (a
//! peer has a Raft log past the initial membership of the controller group):
//!
//! - no, and a majority of the members (this one included) say so: the cluster
//!   is being formed, nobody can have committed anything, and every group votes
//!   normally;
//! - yes: the node is *rejoining*, and each of its Raft groups refuses every
//!   vote and never campaigns until it has caught up: it has accepted an
//!   AppendEntries from a leader whose commit index is of the leader's own term
//!   (such a commit index covers every entry committed in earlier terms) and has
//!   applied up to that index. From then on the group holds every committed entry
//!   a vote could endanger and has adopted the current term, so its vote is as
//!   safe as any voter's.
//!
//! Until it knows which, the node withholds its votes too. Once every group it
//! hosts has caught up, the rejoin marker is removed and the gate is gone for good.

use std::collections::HashMap;
use std::sync::Mutex;

use openraft::raft::{AppendEntriesResponse, VoteResponse};
use openraft::RaftMetrics;
use tokio::sync::watch;

use crate::raft::{GroupId, LogId, NodeId, Raft};
use openraft::BasicNode;

/// Whether this node's votes may be endangered by a wiped data dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// The data dir is not new, or it has caught up: no group is gated.
    Settled,
    /// The data dir is new; the peers have not yet said whether the cluster exists.
    Deciding,
    /// The data dir is new and the cluster exists: groups open one by one as they catch up.
    Rejoining,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupGate {
    /// Votes refused. `target`: the commit index a current leader reported.
    Closed {
        target: Option<u64>,
    },
    Open,
}

pub struct VoteGate {
    inner: Mutex<Inner>,
    /// The node state, for tasks that wait until it is decided.
    decided: watch::Sender<NodeState>,
}

struct Inner {
    node: NodeState,
    groups: HashMap<GroupId, GroupGate>,
}

/// What answering one AppendEntries taught the gate about a group.
pub struct LeaderCommit {
    /// The leader's term, from the request's vote.
    pub term: u64,
    /// The leader's commit index, from the request.
    pub commit: Option<LogId>,
}

impl VoteGate {
    pub fn new(rejoining: bool) -> Self {
        let node = if rejoining {
            NodeState::Deciding
        } else {
            NodeState::Settled
        };
        VoteGate {
            inner: Mutex::new(Inner {
                node,
                groups: HashMap::new(),
            }),
            decided: watch::channel(node).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn node_state(&self) -> NodeState {
        self.lock().node
    }

    /// The node state once it is no longer `Deciding`.
    pub async fn decided(&self) -> NodeState {
        let mut states = self.decided.subscribe();
        let decided = states.wait_for(|state| *state != NodeState::Deciding).await;
        // The sender lives as long as the gate, so the wait cannot end unanswered.
        decided.map_or(NodeState::Deciding, |state| *state)
    }

    /// A group started on this node. While the node is not settled a group with
    /// other voters starts gated and does not campaign. A group this node alone
    /// votes in has nobody to mislead.
    pub fn group_started(&self, group: GroupId, raft: &Raft, voters: usize) {
        let mut inner = self.lock();
        if inner.node == NodeState::Settled || voters <= 1 {
            inner.groups.remove(&group);
            return;
        }
        raft.runtime_config().elect(false);
        inner.groups.insert(group, GroupGate::Closed { target: None });
    }

    /// Whether the group's gate is closed: it must not campaign.
    pub fn holds(&self, group: GroupId) -> bool {
        matches!(self.lock().groups.get(&group), Some(GroupGate::Closed { .. }))
    }

    pub fn group_stopped(&self, group: GroupId) {
        self.lock().groups.remove(&group);
    }

    /// The answer to a vote request if `group` must refuse it: a rejection that
    /// carries the group's current vote and changes no stored state.
    pub fn refusal(
        &self,
        group: GroupId,
        candidate: &openraft::Vote<NodeId>,
        metrics: &RaftMetrics<NodeId, BasicNode>,
    ) -> Option<VoteResponse<NodeId>> {
        let gate = *self.lock().groups.get(&group)?;
        let GroupGate::Closed { target } = gate else {
            return None;
        };
        tracing::info!(
            group,
            candidate = %candidate,
            applied = ?metrics.last_applied.map(|id| id.index),
            target,
            "refused a vote: this node's data dir is new and the group has not caught up"
        );
        Some(VoteResponse::new(metrics.vote, None, false))
    }

    /// Records the leader's commit index from an AppendEntries this node accepted
    /// (a response other than "higher vote": the sender is a leader of the
    /// current term as far as this node knows). Only a commit of the leader's own
    /// term counts: a new leader's commit index may lag entries committed by its
    /// predecessors until it commits an entry of its term.
    pub fn leader_seen(&self, group: GroupId, leader: LeaderCommit, response: &AppendEntriesResponse<NodeId>) {
        if matches!(response, AppendEntriesResponse::HigherVote(_)) {
            return;
        }
        let Some(commit) = leader
            .commit
            .filter(|commit| commit.leader_id.get_term() == leader.term)
        else {
            return;
        };
        let mut inner = self.lock();
        if let Some(GroupGate::Closed { target: target @ None }) = inner.groups.get_mut(&group) {
            *target = Some(commit.index);
        }
    }

    /// Opens the group's gate if it has applied up to its target. Returns true if
    /// it opened now.
    pub fn try_open(&self, group: GroupId, raft: &Raft) -> bool {
        let mut inner = self.lock();
        let Some(GroupGate::Closed { target: Some(target) }) = inner.groups.get(&group).copied() else {
            return false;
        };
        let applied = raft.metrics().borrow().last_applied.map(|id| id.index);
        if applied.is_none_or(|applied| applied < target) {
            return false;
        }
        inner.groups.insert(group, GroupGate::Open);
        raft.runtime_config().elect(true);
        tracing::info!(
            group,
            target,
            applied,
            "vote gate open: the group caught up with its leader's commit index; it votes and campaigns again"
        );
        true
    }

    /// The peers say the cluster exists: keep the gates closed until each group catches up.
    pub fn rejoin(&self) {
        let mut inner = self.lock();
        if inner.node == NodeState::Deciding {
            inner.node = NodeState::Rejoining;
            self.decided.send_replace(NodeState::Rejoining);
        }
    }

    /// This node founded `group` after every other voter said it never held
    /// state for it: nothing was committed that its vote could endanger.
    pub fn founded(&self, group: GroupId, raft: &Raft) {
        let mut inner = self.lock();
        if let Some(gate) = inner.groups.get_mut(&group) {
            *gate = GroupGate::Open;
            raft.runtime_config().elect(true);
        }
    }

    /// Every gate opens: the cluster is new, or every group has caught up.
    /// Returns the groups whose election must be enabled again.
    pub fn settle(&self) -> Vec<GroupId> {
        let mut inner = self.lock();
        inner.node = NodeState::Settled;
        self.decided.send_replace(NodeState::Settled);
        inner
            .groups
            .drain()
            .filter(|(_, gate)| matches!(gate, GroupGate::Closed { .. }))
            .map(|(group, _)| group)
            .collect()
    }

    /// Whether `group` is running here with its gate open (or ungated).
    pub fn is_open(&self, group: GroupId) -> bool {
        !matches!(self.lock().groups.get(&group), Some(GroupGate::Closed { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId as RaftLogId};

    fn commit(term: u64, index: u64) -> Option<LogId> {
        Some(RaftLogId::new(CommittedLeaderId::new(term, 1), index))
    }

    #[test]
    fn only_a_commit_of_the_leaders_own_term_sets_the_target() {
        let gate = VoteGate::new(true);
        gate.lock().groups.insert(5, GroupGate::Closed { target: None });
        let stale = LeaderCommit {
            term: 4,
            commit: commit(3, 10),
        };
        gate.leader_seen(5, stale, &AppendEntriesResponse::Success);
        assert_eq!(gate.lock().groups[&5], GroupGate::Closed { target: None });
        let higher = LeaderCommit {
            term: 4,
            commit: commit(4, 12),
        };
        gate.leader_seen(5, higher, &AppendEntriesResponse::HigherVote(Default::default()));
        assert_eq!(gate.lock().groups[&5], GroupGate::Closed { target: None });
        for index in [12, 20] {
            let current = LeaderCommit {
                term: 4,
                commit: commit(4, index),
            };
            gate.leader_seen(5, current, &AppendEntriesResponse::Conflict);
        }
        // The first target stays: catching up to it is enough, and a moving target could starve.
        assert_eq!(gate.lock().groups[&5], GroupGate::Closed { target: Some(12) });
        assert!(!gate.is_open(5));
        assert!(gate.is_open(6));
    }

    #[test]
    fn settling_opens_every_closed_gate() {
        let gate = VoteGate::new(true);
        assert_eq!(gate.node_state(), NodeState::Deciding);
        gate.rejoin();
        assert_eq!(gate.node_state(), NodeState::Rejoining);
        gate.lock().groups.insert(1, GroupGate::Closed { target: Some(3) });
        gate.lock().groups.insert(2, GroupGate::Open);
        assert_eq!(gate.settle(), vec![1]);
        assert_eq!(gate.node_state(), NodeState::Settled);
        assert!(gate.is_open(1) && gate.is_open(2));
    }
}
