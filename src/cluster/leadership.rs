//! Leadership of the Raft groups this node runs: one INFO line per new leader
//! of a group, the term and leader gauges, and the leader-change and election
//! counters. Follows openraft's server metrics, which change on votes, roles
//! and membership only, so appends never wake it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use openraft::metrics::RaftServerMetrics;
use openraft::{BasicNode, ServerState};
use tokio::sync::watch;

use super::metadata::ClusterState;
use crate::metrics::METRICS;
use crate::raft::{GroupId, NodeId, CONTROLLER_GROUP};

type ServerMetrics = watch::Receiver<RaftServerMetrics<NodeId, BasicNode>>;

/// When this node saw itself become leader of each group it leads. A leader
/// grants a vote, and so can hand its leadership over, only once openraft's
/// vote lease, counted from its election, has passed (see `handover`).
#[derive(Default)]
pub struct ElectedAt(RwLock<HashMap<GroupId, Instant>>);

impl ElectedAt {
    pub fn get(&self, group: GroupId) -> Option<Instant> {
        self.0.read().ok()?.get(&group).copied()
    }

    fn set(&self, group: GroupId, elected: Option<Instant>) {
        if let Ok(mut map) = self.0.write() {
            match elected {
                Some(at) => map.insert(group, at),
                None => map.remove(&group),
            };
        }
    }
}

/// Runs until the group shuts down (openraft then drops the metrics sender),
/// and takes the group's series with it.
pub(super) async fn follow(
    group: GroupId,
    mut server: ServerMetrics,
    metadata: watch::Receiver<Arc<ClusterState>>,
    elected_at: Arc<ElectedAt>,
) {
    let mut known: Option<(NodeId, u64)> = None;
    let mut was_candidate = false;
    loop {
        let (leader, term, candidate, me) = {
            let now = server.borrow_and_update();
            (
                now.current_leader,
                now.vote.leader_id().get_term(),
                now.state == ServerState::Candidate,
                now.id,
            )
        };
        METRICS.raft_group_observed(group, term, leader);
        if candidate && !was_candidate {
            METRICS.raft_election_started(group);
        }
        was_candidate = candidate;
        // A leader is new when its (node, term) is: the same node re-elected
        // in a later term is a change of leadership too.
        if let Some(leader) = leader.filter(|leader| known != Some((*leader, term))) {
            let previous = known.map(|(node, _)| node);
            known = Some((leader, term));
            METRICS.raft_leader_changed(group);
            elected_at.set(group, (leader == me).then(Instant::now));
            announce(group, leader, previous, term, &metadata.borrow());
        }
        if leader != Some(me) {
            elected_at.set(group, None);
        }
        if server.changed().await.is_err() {
            elected_at.set(group, None);
            METRICS.forget_raft_group(group);
            return;
        }
    }
}

fn announce(group: GroupId, leader: NodeId, previous: Option<NodeId>, term: u64, metadata: &ClusterState) {
    if group == CONTROLLER_GROUP {
        tracing::info!(group, leader, ?previous, term, "controller leader changed");
        return;
    }
    match metadata.partition_of_group(group) {
        Some((topic, partition, _)) => {
            tracing::info!(
                topic,
                partition,
                group,
                leader,
                ?previous,
                term,
                "partition leader changed"
            )
        }
        None => tracing::info!(group, leader, ?previous, term, "partition leader changed"),
    }
}
