//! What this node hears from its peers: which brokers are alive and where
//! clients reach them, and who leads the groups this node does not host.
//! Every node announces itself a few times a second; an announcement not
//! renewed within [`ANNOUNCEMENT_TTL`] is forgotten, so a dead or cut-off node
//! drops out of Metadata.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::raft::wire::{Announcement, LeaderClaim};
use crate::raft::{GroupId, NodeId};

pub const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(250);
pub const ANNOUNCEMENT_TTL: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct LeaderBoard {
    heard: RwLock<BTreeMap<NodeId, Heard>>,
}

struct Heard {
    at: Instant,
    advertised_listener: String,
    leading: HashMap<GroupId, LeaderClaim>,
}

/// A group's leader as far as this node knows, and the replicas it sees caught up.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderView {
    pub leader: NodeId,
    pub term: u64,
    pub in_sync: Vec<NodeId>,
}

impl LeaderBoard {
    pub fn record(&self, announcement: Announcement) {
        let heard = Heard {
            at: Instant::now(),
            advertised_listener: announcement.advertised_listener,
            leading: announcement.leading.into_iter().map(|c| (c.group, c)).collect(),
        };
        if let Ok(mut map) = self.heard.write() {
            map.insert(announcement.node, heard);
        }
    }

    /// Peers heard from recently: `(node, advertised listener)`.
    pub fn live_peers(&self) -> Vec<(NodeId, String)> {
        let Ok(map) = self.heard.read() else { return Vec::new() };
        map.iter()
            .filter(|(_, heard)| heard.at.elapsed() < ANNOUNCEMENT_TTL)
            .map(|(node, heard)| (*node, heard.advertised_listener.clone()))
            .collect()
    }

    pub fn is_live(&self, node: NodeId) -> bool {
        self.heard
            .read()
            .ok()
            .and_then(|map| map.get(&node).map(|heard| heard.at.elapsed() < ANNOUNCEMENT_TTL))
            .unwrap_or(false)
    }

    /// The freshest claim to lead `group`: the highest term among live peers.
    pub fn leader_of(&self, group: GroupId) -> Option<LeaderView> {
        let map = self.heard.read().ok()?;
        map.iter()
            .filter(|(_, heard)| heard.at.elapsed() < ANNOUNCEMENT_TTL)
            .filter_map(|(node, heard)| heard.leading.get(&group).map(|claim| (*node, claim)))
            .max_by_key(|(_, claim)| claim.term)
            .map(|(node, claim)| LeaderView {
                leader: node,
                term: claim.term,
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
                    in_sync: vec![node],
                })
                .collect(),
        }
    }

    #[test]
    fn the_highest_term_wins_a_stale_claim() {
        let board = LeaderBoard::default();
        board.record(announcement(2, &[(5, 3), (6, 1)]));
        board.record(announcement(3, &[(5, 4)]));
        assert_eq!(board.leader_of(5).map(|v| v.leader), Some(3));
        assert_eq!(board.leader_of(6).map(|v| (v.leader, v.term)), Some((2, 1)));
        assert_eq!(board.leader_of(7), None);
        assert_eq!(board.live_peers().len(), 2);
        assert!(board.is_live(2) && !board.is_live(4));
    }
}
