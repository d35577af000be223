//! Quiet partitions: a partition whose leader has had nothing to replicate for
//! a while stops sending Raft heartbeats, so a node with thousands of idle
//! partitions spends next to nothing on them. What heartbeats told followers
//! ("the leader is alive, do not campaign") node announcements tell instead:
//! a follower campaigns only when its leader's node stops announcing, stops
//! claiming the partition, or refuses connections. And what heartbeat answers
//! told the leader ("a majority still follows") comes from its peers' own
//! announcements while the partition is quiet. A quiet leader, and a follower
//! that may not campaign, also stop openraft's ticker: its ticks only check
//! those two timers, and thousands of them a second are most of an idle
//! node's work.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use openraft::{BasicNode, RaftMetrics};

use crate::clock::now_ms;
use crate::raft::{NodeId, Raft};

/// How long a leader's partition goes without a proposal before it turns quiet.
pub const QUIET_AFTER: Duration = Duration::from_secs(2);
/// How long after waking up a partition may still count on its peers'
/// announcements for its quorum, while its heartbeats' answers come in again.
const WAKING: Duration = Duration::from_secs(1);

/// One partition's quiet state on this node.
#[derive(Default)]
pub struct Quiet {
    /// Heartbeats are off (this node leads the partition).
    quiet: AtomicBool,
    /// Until when (ms) a majority of live nodes stands in for heartbeat answers.
    announced_quorum_until: AtomicI64,
    /// Whether a majority of the partition's nodes announced themselves lately.
    nodes_alive: AtomicBool,
    /// The voters found alive at the leader's last step.
    alive_voters: Mutex<Vec<NodeId>>,
    last_proposal: AtomicI64,
}

impl Quiet {
    /// Called before every proposal: a quiet partition starts heartbeating again.
    pub fn wake(&self, raft: &Raft) {
        let now = now_ms();
        self.last_proposal.store(now, Ordering::Relaxed);
        if self.quiet.swap(false, Ordering::AcqRel) {
            self.announced_quorum_until
                .store(now + WAKING.as_millis() as i64, Ordering::Relaxed);
            raft.runtime_config().heartbeat(true);
            raft.runtime_config().tick(true);
        }
    }

    /// Whether the partition's leader may count its peers' announcements as
    /// a quorum's acknowledgement: only while quiet, or just woken.
    pub fn announced_quorum(&self) -> bool {
        self.nodes_alive.load(Ordering::Relaxed)
            && (self.quiet.load(Ordering::Relaxed) || now_ms() < self.announced_quorum_until.load(Ordering::Relaxed))
    }

    /// One step of the leader side: turn quiet once idle and fully replicated
    /// (after a last heartbeat carrying the commit index), wake up when a
    /// voter comes back, and track whether a majority of the partition's
    /// nodes is alive.
    pub async fn lead(&self, raft: &Raft, metrics: &RaftMetrics<NodeId, BasicNode>, alive: impl Fn(NodeId) -> bool) {
        let voters: Vec<NodeId> = metrics.membership_config.membership().voter_ids().collect();
        let live: Vec<NodeId> = voters
            .iter()
            .copied()
            .filter(|node| *node == metrics.id || alive(*node))
            .collect();
        self.nodes_alive.store(live.len() > voters.len() / 2, Ordering::Relaxed);
        let returned = {
            let mut before = self
                .alive_voters
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let returned = live.iter().any(|node| !before.contains(node));
            *before = live;
            returned
        };
        if self.quiet.load(Ordering::Relaxed) {
            // A voter back from silence may have restarted behind, or with its
            // data dir wiped, and only a heartbeat's answer tells: the
            // replication metrics still show what its former self had matched.
            if returned {
                self.wake(raft);
            }
            return;
        }
        raft.runtime_config().tick(true);
        let idle = now_ms() - self.last_proposal.load(Ordering::Relaxed) > QUIET_AFTER.as_millis() as i64;
        if !idle || !fully_replicated(metrics) {
            return;
        }
        if raft.trigger().heartbeat().await.is_ok() {
            raft.runtime_config().heartbeat(false);
            raft.runtime_config().tick(false);
            self.quiet.store(true, Ordering::Release);
        }
    }

    /// One step of the follower side (or of a node that lost leadership):
    /// heartbeats on for whenever it leads again, and elections only when
    /// `may_campaign` (no live leader, and this node's vote gate is open).
    pub fn follow(&self, raft: &Raft, may_campaign: bool) {
        if self.quiet.swap(false, Ordering::AcqRel) {
            raft.runtime_config().heartbeat(true);
        }
        self.nodes_alive.store(false, Ordering::Relaxed);
        raft.runtime_config().elect(may_campaign);
        raft.runtime_config().tick(may_campaign);
    }
}

/// Every voter holds every entry and every entry is applied here: a last
/// heartbeat then tells followers all there is to commit.
fn fully_replicated(metrics: &RaftMetrics<NodeId, BasicNode>) -> bool {
    let Some(last) = metrics.last_log_index else {
        return false;
    };
    let applied = metrics.last_applied.is_some_and(|applied| applied.index == last);
    let matched = metrics.replication.as_ref().is_some_and(|replication| {
        replication
            .values()
            .all(|matched| matched.as_ref().is_some_and(|log_id| log_id.index == last))
    });
    applied && matched
}
