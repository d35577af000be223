//! What this node hears from its peers: which brokers are alive and where
//! clients reach them, and who leads the groups this node does not host.
//! Every node announces itself a few times a second. A peer not heard from
//! within [`ANNOUNCEMENT_TTL`] no longer counts as live (in sync, or a place for
//! a new partition's first replica), and its leadership claims no longer count
//! as current. Metadata keeps listing it, and its claims as the last known
//! leaders, for the broker session timeout (Kafka's broker.session.timeout.ms):
//! a client whose requests are in flight to a briefly silent broker is not made
//! to drop that connection, and a node cut off from its peers still tells
//! clients where the others are.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::raft::wire::{Announcement, LeaderClaim};
use crate::raft::{GroupId, NodeId};

pub const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(250);
pub const ANNOUNCEMENT_TTL: Duration = Duration::from_secs(2);
/// A peer heard from within this long (three announcements) counts as alive
/// for quiet partitions: their leaders send no heartbeats.
pub const ALIVE_WITHIN: Duration = Duration::from_millis(750);

pub struct LeaderBoard {
    heard: RwLock<BTreeMap<NodeId, Heard>>,
    session_timeout: Duration,
}

struct Heard {
    at: Instant,
    advertised_listener: String,
    leading: HashMap<GroupId, LeaderClaim>,
    draining: bool,
}

/// A group's leader as far as this node knows, and the replicas it sees caught up.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderView {
    pub leader: NodeId,
    pub term: u64,
    /// The partition's leader epoch under this leader; -1 when not known.
    pub leader_epoch: i32,
    pub in_sync: Vec<NodeId>,
}

impl LeaderBoard {
    pub fn new(session_timeout: Duration) -> Self {
        LeaderBoard {
            heard: RwLock::default(),
            session_timeout,
        }
    }

    pub fn record(&self, announcement: Announcement) {
        let heard = Heard {
            at: Instant::now(),
            advertised_listener: announcement.advertised_listener,
            leading: announcement.leading.into_iter().map(|c| (c.group, c)).collect(),
            draining: announcement.draining,
        };
        if let Ok(mut map) = self.heard.write() {
            map.insert(announcement.node, heard);
        }
    }

    /// Peers heard from within the session timeout: `(node, advertised listener)`.
    pub fn registered_peers(&self) -> Vec<(NodeId, String)> {
        let Ok(map) = self.heard.read() else { return Vec::new() };
        map.iter()
            .filter(|(_, heard)| heard.at.elapsed() < self.session_timeout)
            .map(|(node, heard)| (*node, heard.advertised_listener.clone()))
            .collect()
    }

    pub fn is_live(&self, node: NodeId) -> bool {
        self.heard_within(node, ANNOUNCEMENT_TTL)
    }

    pub fn heard_within(&self, node: NodeId, age: Duration) -> bool {
        self.heard
            .read()
            .ok()
            .and_then(|map| map.get(&node).map(|heard| heard.at.elapsed() < age))
            .unwrap_or(false)
    }

    /// Whether `node` last announced that it is shutting down.
    pub fn is_draining(&self, node: NodeId) -> bool {
        self.heard
            .read()
            .ok()
            .and_then(|map| map.get(&node).map(|heard| heard.draining))
            .unwrap_or(false)
    }

    /// The node that claimed to lead `group` within `age` (highest term first).
    pub fn claimant(&self, group: GroupId, age: Duration) -> Option<NodeId> {
        self.claim_within(group, age).map(|view| view.leader)
    }

    /// The freshest claim to lead `group`: the highest term among live peers.
    pub fn leader_of(&self, group: GroupId) -> Option<LeaderView> {
        self.claim_within(group, ANNOUNCEMENT_TTL)
    }

    /// The last claim to lead `group` heard within the session timeout, for
    /// Metadata when no current one is known: the highest term wins.
    pub fn last_known_leader_of(&self, group: GroupId) -> Option<LeaderView> {
        self.claim_within(group, self.session_timeout)
    }

    fn claim_within(&self, group: GroupId, age: Duration) -> Option<LeaderView> {
        let map = self.heard.read().ok()?;
        map.iter()
            .filter(|(_, heard)| heard.at.elapsed() < age)
            .filter_map(|(node, heard)| heard.leading.get(&group).map(|claim| (*node, claim)))
            .max_by_key(|(_, claim)| claim.term)
            .map(|(node, claim)| LeaderView {
                leader: node,
                term: claim.term,
                leader_epoch: claim.leader_epoch,
                in_sync: claim.in_sync.clone(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announcement(node: NodeId, claims: &[(GroupId, u64)]) -> Announcement {
        Announcement {
            node,
            advertised_listener: format!("127.0.0.1:{}", 9000 + node),
            leading: claims
                .iter()
                .map(|(group, term)| LeaderClaim {
                    group: *group,
                    term: *term,
                    leader_epoch: *term as i32,
                    in_sync: vec![node],
                })
                .collect(),
            draining: false,
        }
    }

    #[test]
    fn the_highest_term_wins_a_stale_claim() {
        let board = LeaderBoard::new(Duration::from_secs(9));
        board.record(announcement(2, &[(5, 3), (6, 1)]));
        board.record(announcement(3, &[(5, 4)]));
        assert_eq!(board.leader_of(5).map(|v| v.leader), Some(3));
        assert_eq!(board.leader_of(6).map(|v| (v.leader, v.term)), Some((2, 1)));
        assert_eq!(board.leader_of(7), None);
        assert_eq!(board.registered_peers().len(), 2);
        assert_eq!(board.last_known_leader_of(5), board.leader_of(5));
        assert!(board.is_live(2) && !board.is_live(4));
    }
}
