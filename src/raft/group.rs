//! Starting one Raft group on this node.

use std::collections::BTreeMap;
use std::sync::Arc;

use std::time::Duration;

use futures::future::join_all;
use openraft::{BasicNode, RaftMetrics, SnapshotPolicy};

use super::log_store::GroupLogStore;
use super::network::{GroupNetwork, Peers};
use super::state_machine::{GroupStateMachine, ReplicatedState};
use super::wire::{PeerRequest, PeerResponse};
use super::{GroupId, NodeId, Raft};
use crate::config::BrokerConfig;
use crate::storage::Store;

const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Bounds an AppendEntries request by count; the log store bounds it by bytes
/// (`limited_get_log_entries`), so a follower behind by many small entries
/// still catches up hundreds per round trip.
const MAX_PAYLOAD_ENTRIES: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum GroupStartError {
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("raft: {0}")]
    Raft(String),
}

fn raft_config(
    cfg: &BrokerConfig,
    group: GroupId,
    holds_records: bool,
) -> Result<Arc<openraft::Config>, GroupStartError> {
    let election = cfg.election_timeout().as_millis() as u64;
    let (snapshot_policy, max_in_snapshot_log_to_keep) = if holds_records {
        // The log is the partition's records: it is cut only where retention
        // moved the log start, by a snapshot built on request at that point.
        (SnapshotPolicy::Never, 0)
    } else {
        // Keep a tail of the log after a snapshot so a briefly lagging follower
        // catches up from the log instead of a full snapshot.
        (
            SnapshotPolicy::LogsSinceLast(cfg.snapshot_entries),
            (cfg.snapshot_entries / 10).max(1),
        )
    };
    // openraft 0.9 lets a follower campaign only once its leader's lease
    // (election_timeout_max) and then its own timeout have passed since it
    // last heard from the leader; a narrow range keeps that sum, the gap after
    // a leader dies, at 2.25-2.5 election timeouts.
    let config = openraft::Config {
        cluster_name: format!("group-{group}"),
        heartbeat_interval: cfg.heartbeat_interval().as_millis() as u64,
        election_timeout_min: election,
        election_timeout_max: vote_lease(cfg).as_millis() as u64,
        snapshot_policy,
        max_in_snapshot_log_to_keep,
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        ..Default::default()
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|err| GroupStartError::Raft(err.to_string()))
}

/// openraft's election_timeout_max, which is also its vote lease: a voter
/// refuses votes for this long after its vote last changed or was refreshed.
pub fn vote_lease(cfg: &BrokerConfig) -> Duration {
    cfg.election_timeout() + cfg.election_timeout() / 4
}

/// Starts the group's Raft instance over its opened log. `members` lists the
/// group's voters, the designated founder first. A group whose only voter is
/// this node is founded here, if `may_found`; a group of several voters is
/// founded by its first member through [`found`], when the caller has decided
/// it is safe.
pub async fn start_group(
    cfg: &BrokerConfig,
    store: &Store,
    peers: &Arc<Peers>,
    log_store: GroupLogStore,
    state: Box<dyn ReplicatedState>,
    members: &[(NodeId, String)],
    may_found: bool,
) -> Result<Raft, GroupStartError> {
    let group = log_store.group();
    let holds_records = state.records().is_some();
    let state_machine = GroupStateMachine::open(
        group,
        store.clone(),
        state,
        &cfg.data_dir.join("snapshots"),
        log_store.segments(),
    )?;
    let raft = Raft::new(
        cfg.node_id,
        raft_config(cfg, group, holds_records)?,
        GroupNetwork::new(group, Arc::clone(peers)),
        log_store,
        state_machine,
    )
    .await
    .map_err(raft_error)?;
    let sole_voter = members.len() == 1 && members[0].0 == cfg.node_id;
    if sole_voter {
        match raft.is_initialized().await.map_err(raft_error)? {
            false if may_found => found(&raft, members).await?,
            // Founded elsewhere: its leader adds this node.
            false => {}
            // A sole voter need not wait out an election timeout after a restart.
            true => raft.trigger().elect().await.map_err(raft_error)?,
        }
    }
    Ok(raft)
}

fn raft_error(err: impl std::fmt::Display) -> GroupStartError {
    GroupStartError::Raft(err.to_string())
}

fn voters(members: &[(NodeId, String)]) -> BTreeMap<NodeId, BasicNode> {
    members.iter().map(|(id, addr)| (*id, BasicNode::new(addr))).collect()
}

/// Writes the group's first membership (log index 0) and campaigns. Only for a
/// group that has never run anywhere: on a node that merely forgot the group,
/// it would start a second history with the same log ids as the first.
pub async fn found(raft: &Raft, members: &[(NodeId, String)]) -> Result<(), GroupStartError> {
    raft.initialize(voters(members)).await.map_err(raft_error)
}

/// Asks the group's other voters whether they ever held Raft state for it:
/// one answer per voter that answered in time.
pub async fn probe_voters(peers: &Peers, group: GroupId, members: &[(NodeId, String)], me: NodeId) -> Vec<bool> {
    let request = PeerRequest::Probe { group };
    let probes = members
        .iter()
        .filter(|(peer, _)| *peer != me)
        .map(|(peer, _)| peers.call(*peer, &request, PROBE_TIMEOUT));
    join_all(probes)
        .await
        .into_iter()
        .filter_map(|answer| match answer {
            Ok(PeerResponse::Probed { has_state }) => Some(has_state),
            _ => None,
        })
        .collect()
}

/// The group's leader as this node sees it. A leader that has not heard from a
/// majority within `lease` may already be deposed on the other side of a
/// network split, so it stops counting itself leader: clients then look for
/// the new leader instead of writing to one that cannot commit. A group whose
/// heartbeats are off while it is idle counts `announced_quorum` (a majority
/// of its nodes announced themselves lately, see `cluster::quiesce`) instead.
/// A new leader also waits until it has applied an entry of its own: before
/// that its state machine may lag what the previous leader served, and a
/// consumer would see its position as out of range; and its state would not
/// yet count it as a new leader (`ReplicatedState::leader_changed`), so it
/// would report the previous leader's epoch as its own.
pub fn effective_leader(
    metrics: &RaftMetrics<NodeId, BasicNode>,
    lease: Duration,
    announced_quorum: bool,
) -> Option<NodeId> {
    // A group whose Raft core stopped on an error keeps its last metrics, leader
    // included: nobody must be sent to it.
    if metrics.running_state.is_err() {
        return None;
    }
    let leader = metrics.current_leader?;
    if leader != metrics.id {
        return Some(leader);
    }
    ((quorum_within(metrics, lease) || announced_quorum) && caught_up(metrics)).then_some(leader)
}

/// Whether this node is the group's Raft leader, caught up with its own term,
/// but has not heard from a majority within `lease`: the one case in which
/// [`effective_leader`] withholds leadership from a leader that could otherwise
/// serve. A produce sent to it is refused as NOT_ENOUGH_REPLICAS.
pub fn leads_without_quorum(metrics: &RaftMetrics<NodeId, BasicNode>, lease: Duration, announced_quorum: bool) -> bool {
    metrics.running_state.is_ok()
        && metrics.current_leader == Some(metrics.id)
        && caught_up(metrics)
        && !quorum_within(metrics, lease)
        && !announced_quorum
}

/// A sole voter is its own quorum; any other leader needs a majority's acknowledgement within `lease`.
fn quorum_within(metrics: &RaftMetrics<NodeId, BasicNode>, lease: Duration) -> bool {
    let sole_voter = metrics.membership_config.membership().voter_ids().count() == 1;
    sole_voter
        || metrics
            .millis_since_quorum_ack
            .is_some_and(|millis| u128::from(millis) < lease.as_millis())
}

/// The whole leader id, not only the term: the state counts leaders by id.
fn caught_up(metrics: &RaftMetrics<NodeId, BasicNode>) -> bool {
    metrics
        .last_applied
        .is_some_and(|applied| applied.leader_id == *metrics.vote.leader_id())
}
