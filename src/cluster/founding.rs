//! Founding a Raft group of several voters: its first member writes the
//! group's initial membership, once, and only where that cannot start a
//! second history of a group that already exists.
//!
//! openraft's `initialize` writes the membership at log index 0 and campaigns.
//! On a node that merely forgot the group (a wiped data dir) while the group
//! has committed entries on other voters, it would found a rival history whose
//! log ids collide with the first one's, and Raft's log matching would no
//! longer hold. So the founder acts on what its data dir can vouch for:
//!
//! - a *settled* node (its dir is not new, the cluster was formed with every
//!   member answering, or it has caught up after a rejoin) holds every group
//!   it ever founded, so a group without state here was never founded: it
//!   founds it at once;
//! - a *rejoining* node may have founded the group in a former life; it founds
//!   it only if every other voter answers that it never held state for it.
//!   A committed entry is on a majority, and every majority includes another
//!   voter, so none was committed, and the node's vote endangers nothing;
//! - a *deciding* node waits until it knows which of the two it is.

use std::sync::Arc;
use std::time::Duration;

use super::rejoin::{NodeState, VoteGate};
use crate::raft::group::{found, probe_voters};
use crate::raft::network::Peers;
use crate::raft::{GroupId, NodeId, Raft};

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// What the founder of one group needs.
pub(super) struct Founding {
    pub group: GroupId,
    pub raft: Raft,
    pub members: Vec<(NodeId, String)>,
    pub me: NodeId,
    pub gate: Arc<VoteGate>,
    pub peers: Arc<Peers>,
    /// False for a group whose replicas were reassigned: it was founded when
    /// created, and its first member now may be one added since.
    pub may_found: bool,
}

impl Founding {
    /// Starts founding the group if this node is the designated founder of a
    /// group of several voters (a sole voter's group is founded as it starts).
    pub fn start(self) {
        let founder =
            self.may_found && self.members.len() > 1 && self.members.first().map(|(id, _)| *id) == Some(self.me);
        if founder {
            tokio::spawn(self.run());
        }
    }

    /// Runs until the group is founded (here, or by its existing leader as
    /// seen by replication) or the group stops.
    async fn run(self) {
        let mut delay = RETRY_MIN;
        loop {
            if !matches!(self.raft.is_initialized().await, Ok(false)) {
                return;
            }
            let state = tokio::select! {
                _ = stopped(&self.raft) => return,
                state = self.gate.decided() => state,
            };
            let verdict = match state {
                NodeState::Settled => Verdict::Found,
                _ => self.verdict_of_voters().await,
            };
            match verdict {
                Verdict::Found => return self.found(state).await,
                Verdict::FormedElsewhere => {
                    tracing::info!(
                        group = self.group,
                        "group already formed on a peer; waiting for its leader"
                    );
                    return;
                }
                Verdict::Unknown => {}
            }
            tokio::select! {
                _ = stopped(&self.raft) => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(RETRY_MAX);
        }
    }

    /// A rejoining founder's question: may the group be founded here?
    async fn verdict_of_voters(&self) -> Verdict {
        let answers = probe_voters(&self.peers, self.group, &self.members, self.me).await;
        if answers.iter().any(|has_state| *has_state) {
            Verdict::FormedElsewhere
        } else if answers.len() + 1 == self.members.len() {
            Verdict::Found
        } else {
            Verdict::Unknown
        }
    }

    async fn found(&self, state: NodeState) {
        match found(&self.raft, &self.members).await {
            Ok(()) => {
                if state != NodeState::Settled {
                    self.gate.founded(self.group, &self.raft);
                }
                tracing::info!(group = self.group, voters = self.members.len(), "group founded")
            }
            Err(err) => tracing::warn!(group = self.group, error = %err, "cannot found group"),
        }
    }
}

enum Verdict {
    Found,
    FormedElsewhere,
    /// Not every voter answered.
    Unknown,
}

/// Completes when the group's Raft core has stopped (it drops its metrics).
async fn stopped(raft: &Raft) {
    let mut server = raft.server_metrics();
    while server.changed().await.is_ok() {}
}
