//! The group coordinator: members, generations and rebalances of classic
//! consumer groups. Assignment is the clients' business: the leader's
//! assignor output is relayed untouched, so range, roundrobin and
//! cooperative-sticky all work.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::store::{CommittedOffset, GroupCommand, GroupMetadata, MemberMetadata, StoredGroup};
use crate::clock::now_ms;
use crate::cluster::Cluster;
use crate::error::BrokerError;

/// How often session timeouts and rebalance deadlines are checked.
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// v4+ clients must first learn their member id (KIP-394).
    pub require_known_member_id: bool,
}

#[derive(Debug, Clone, Default)]
pub struct JoinResult {
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// Only the leader gets the members and their metadata for the chosen protocol.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

#[derive(Debug, Clone)]
pub struct MemberDescription {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone)]
pub struct GroupDescription {
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

struct Member {
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_heartbeat: Instant,
    /// Rejoined during the current rebalance.
    joined: bool,
}

/// How a JoinGroup is admitted.
enum Admitted {
    /// The member joins (or rejoins) the next generation under this id.
    Member(String),
    /// A static member came back to a stable group with the same protocols:
    /// as in Kafka (KIP-345), it takes over its old entry and assignment in the
    /// current generation, and the other members do not rebalance.
    Current(JoinResult),
}

type JoinReply = oneshot::Sender<Result<JoinResult, BrokerError>>;
type SyncReply = oneshot::Sender<Result<Bytes, BrokerError>>;

struct Group {
    state: GroupState,
    generation: i32,
    protocol_type: String,
    protocol: String,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not yet joined.
    pending_ids: Vec<String>,
    join_waiters: HashMap<String, JoinReply>,
    sync_waiters: HashMap<String, SyncReply>,
    /// The rebalance completes at this instant even if members are missing.
    rebalance_deadline: Instant,
    /// A new group's first rebalance waits this long for more members.
    not_before: Instant,
}

impl Group {
    fn new(generation: i32) -> Self {
        let now = Instant::now();
        Group {
            state: GroupState::Empty,
            generation,
            protocol_type: String::new(),
            protocol: String::new(),
            leader: None,
            members: BTreeMap::new(),
            pending_ids: Vec::new(),
            join_waiters: HashMap::new(),
            sync_waiters: HashMap::new(),
            rebalance_deadline: now,
            not_before: now,
        }
    }

    /// The member id a static member (`group.instance.id`) holds now.
    fn static_member(&self, instance: &str) -> Option<&String> {
        self.members
            .iter()
            .find(|(_, m)| m.group_instance_id.as_deref() == Some(instance))
            .map(|(id, _)| id)
    }

    /// Kafka's check of a request from a member: a static member's instance id
    /// must still belong to the member id it sends, or an older copy of a
    /// restarted member is fenced.
    fn check_identity(&self, member_id: &str, instance: Option<&str>) -> Result<(), BrokerError> {
        if let Some(instance) = instance {
            match self.static_member(instance) {
                None => return Err(BrokerError::UnknownMemberId),
                Some(current) if current != member_id => return Err(BrokerError::FencedInstanceId),
                Some(_) => {}
            }
        }
        if !self.members.contains_key(member_id) {
            return Err(BrokerError::UnknownMemberId);
        }
        Ok(())
    }

    fn check_member(&self, member_id: &str, instance: Option<&str>, generation: i32) -> Result<(), BrokerError> {
        self.check_identity(member_id, instance)?;
        if generation != self.generation {
            return Err(BrokerError::IllegalGeneration(generation));
        }
        Ok(())
    }

    /// The member's current assignment; empty for an unknown member.
    fn assignment_of(&self, member_id: &str) -> Bytes {
        self.members
            .get(member_id)
            .map(|m| m.assignment.clone())
            .unwrap_or_default()
    }

    fn start_rebalance(&mut self, initial_delay: Duration) {
        let now = Instant::now();
        if self.state == GroupState::Empty {
            self.not_before = now + initial_delay;
        }
        let longest = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        self.rebalance_deadline = now + longest.max(initial_delay);
        self.state = GroupState::PreparingRebalance;
        for (id, member) in self.members.iter_mut() {
            member.joined = self.join_waiters.contains_key(id);
        }
        for (_, waiter) in self.sync_waiters.drain() {
            let _ = waiter.send(Err(BrokerError::RebalanceInProgress));
        }
    }

    /// Ends the join phase once every member rejoined (after a new group's
    /// initial delay), or at the deadline without the members that did not.
    fn maybe_complete_join(&mut self, now: Instant) -> Option<i32> {
        if self.state != GroupState::PreparingRebalance {
            return None;
        }
        let all_joined = !self.members.is_empty() && self.members.values().all(|m| m.joined);
        let waited = now >= self.not_before;
        if !(all_joined && waited) && now < self.rebalance_deadline {
            return None;
        }
        self.members.retain(|_, m| m.joined);
        self.generation += 1;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.leader = None;
            return Some(self.generation);
        }
        self.protocol = self.choose_protocol();
        if !self.leader.as_ref().is_some_and(|l| self.members.contains_key(l)) {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = GroupState::CompletingRebalance;
        let leader = self.leader.clone().unwrap_or_default();
        let everyone: Vec<(String, Option<String>, Bytes)> = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.group_instance_id.clone(), self.metadata_for(m)))
            .collect();
        for (id, waiter) in self.join_waiters.drain() {
            let result = JoinResult {
                generation: self.generation,
                protocol_type: self.protocol_type.clone(),
                protocol: self.protocol.clone(),
                leader: leader.clone(),
                members: if id == leader { everyone.clone() } else { Vec::new() },
                member_id: id,
            };
            let _ = waiter.send(Ok(result));
        }
        let now = Instant::now();
        for member in self.members.values_mut() {
            member.last_heartbeat = now;
        }
        Some(self.generation)
    }

    /// Kafka's rule: each member votes for its most preferred protocol among
    /// those every member supports; the most votes win.
    fn choose_protocol(&self) -> String {
        let supported_by_all = |name: &str| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|(p, _)| p == name))
        };
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for member in self.members.values() {
            if let Some((name, _)) = member.protocols.iter().find(|(p, _)| supported_by_all(p)) {
                *votes.entry(name).or_default() += 1;
            }
        }
        votes
            .into_iter()
            .max_by_key(|(_, count)| *count)
            .map(|(name, _)| name.to_string())
            .unwrap_or_default()
    }

    fn metadata_for(&self, member: &Member) -> Bytes {
        member
            .protocols
            .iter()
            .find(|(name, _)| *name == self.protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }

    /// The last member is gone: as in Kafka, the group moves to a new,
    /// empty generation (which it records).
    fn empty_out(&mut self) {
        self.state = GroupState::Empty;
        self.leader = None;
        self.generation += 1;
    }

    /// What Kafka's GroupMetadata record holds of the group now.
    fn metadata(&self, name: &str) -> GroupMetadata {
        let millis = |timeout: Duration| i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let has_members = !self.members.is_empty();
        GroupMetadata {
            group: name.to_string(),
            protocol_type: self.protocol_type.clone(),
            generation: self.generation,
            protocol: has_members.then(|| self.protocol.clone()),
            leader: self.leader.clone().filter(|_| has_members),
            current_state_timestamp: now_ms(),
            members: self
                .members
                .iter()
                .map(|(id, member)| MemberMetadata {
                    member_id: id.clone(),
                    group_instance_id: member.group_instance_id.clone(),
                    client_id: member.client_id.clone(),
                    client_host: member.client_host.clone(),
                    rebalance_timeout_ms: millis(member.rebalance_timeout),
                    session_timeout_ms: millis(member.session_timeout),
                    subscription: self.metadata_for(member),
                    assignment: member.assignment.clone(),
                })
                .collect(),
        }
    }

    /// Drops members whose session expired; true when any was dropped.
    fn expire_members(&mut self, now: Instant) -> bool {
        let waiting = &self.join_waiters;
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(id, m)| !waiting.contains_key(*id) && now.duration_since(m.last_heartbeat) > m.session_timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            tracing::info!(member = id, "group member session expired");
            self.remove_member(id);
        }
        !expired.is_empty()
    }

    fn remove_member(&mut self, member_id: &str) {
        self.members.remove(member_id);
        self.answer_waiters(member_id, || BrokerError::UnknownMemberId);
    }

    /// Ends the JoinGroup and SyncGroup a member may be waiting in with `error`.
    fn answer_waiters(&mut self, member_id: &str, error: impl Fn() -> BrokerError) {
        if let Some(waiter) = self.join_waiters.remove(member_id) {
            let _ = waiter.send(Err(error()));
        }
        if let Some(waiter) = self.sync_waiters.remove(member_id) {
            let _ = waiter.send(Err(error()));
        }
    }

    /// Moves the static member `old_id` to `new_id` for a restarted member
    /// that joined again with its `group.instance.id` (KIP-345). A request
    /// still pending under the old id is answered FENCED_INSTANCE_ID: it
    /// comes from a copy that has been replaced.
    fn replace_static_member(&mut self, old_id: &str, new_id: &str, request: &JoinRequest) -> Result<(), BrokerError> {
        let mut member = self.members.remove(old_id).ok_or(BrokerError::UnknownMemberId)?;
        self.answer_waiters(old_id, || BrokerError::FencedInstanceId);
        if self.leader.as_deref() == Some(old_id) {
            self.leader = Some(new_id.to_string());
        }
        member.client_id = request.client_id.clone();
        member.client_host = request.client_host.clone();
        member.session_timeout = Duration::from_millis(request.session_timeout_ms as u64);
        member.rebalance_timeout = Duration::from_millis(request.rebalance_timeout_ms.max(0) as u64);
        member.protocols = request.protocols.clone();
        member.last_heartbeat = Instant::now();
        self.members.insert(new_id.to_string(), member);
        tracing::info!(
            instance = request.group_instance_id.as_deref().unwrap_or_default(),
            old_id,
            new_id,
            "static member rejoined"
        );
        Ok(())
    }

    fn describe(&self) -> GroupDescription {
        let members = self
            .members
            .iter()
            .map(|(id, m)| MemberDescription {
                member_id: id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: self.metadata_for(m),
                assignment: m.assignment.clone(),
            })
            .collect();
        GroupDescription {
            state: self.state.name(),
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            members,
        }
    }
}

pub struct GroupCoordinator {
    cluster: Arc<Cluster>,
    groups: Mutex<HashMap<String, Group>>,
    /// The latest generation record still being replicated, per group: later
    /// changes of the group wait for it so they reach Raft in order.
    recording: Mutex<HashMap<String, JoinHandle<()>>>,
}

impl GroupCoordinator {
    /// Creates the coordinator and its timer task, which lives until `shutdown`.
    pub fn start(cluster: Arc<Cluster>, shutdown: CancellationToken) -> Arc<Self> {
        let coordinator = Arc::new(GroupCoordinator {
            cluster,
            groups: Mutex::new(HashMap::new()),
            recording: Mutex::new(HashMap::new()),
        });
        let ticking = Arc::clone(&coordinator);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = interval.tick() => ticking.tick(),
                }
            }
        });
        coordinator
    }

    fn initial_delay(&self) -> Duration {
        Duration::from_millis(self.cluster.config().group_initial_rebalance_delay_ms)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn tick(self: &Arc<Self>) {
        let now = Instant::now();
        let initial_delay = self.initial_delay();
        let mut finished = Vec::new();
        let mut groups = self.lock();
        // Members follow a moved coordinator and rejoin there; a copy left here
        // would be stale if the coordinator ever came back.
        groups.retain(|name, _| self.cluster.coordinates(name));
        for (name, group) in groups.iter_mut() {
            if group.expire_members(now) && group.state != GroupState::PreparingRebalance {
                if group.members.is_empty() {
                    group.empty_out();
                    finished.push(group.metadata(name));
                } else {
                    group.start_rebalance(initial_delay);
                }
            }
            if group.maybe_complete_join(now).is_some() {
                finished.push(group.metadata(name));
            }
        }
        drop(groups);
        self.recording
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .retain(|_, record| !record.is_finished());
        for metadata in finished {
            self.persist_generation(metadata);
        }
    }

    /// Records the group's metadata through Raft (Kafka's GroupMetadata
    /// record) when a generation completes and again when its leader's
    /// assignment arrives, so that generations stay monotonic across
    /// restarts; membership itself is rebuilt by rejoins. Records of one
    /// group are proposed in order.
    fn persist_generation(self: &Arc<Self>, metadata: GroupMetadata) {
        let coordinator = Arc::clone(self);
        let mut recording = self.recording.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let group = metadata.group.clone();
        let generation = metadata.generation;
        let previous = recording.remove(&group);
        let name = group.clone();
        let record = tokio::spawn(async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            let change = GroupCommand::GenerationCompleted(metadata);
            let result = async {
                let handle = coordinator.cluster.offsets_partition(&group).await?;
                coordinator.cluster.propose_group_change(&handle, change).await
            };
            if let Err(err) = result.await {
                tracing::warn!(group, generation, error = %err, "cannot record group generation");
            }
        });
        recording.insert(name, record);
    }

    /// Waits until the generations recorded so far for `group_id` are replicated,
    /// so that a deletion cannot be overtaken by an older generation record.
    async fn generations_recorded(&self, group_id: &str) {
        let pending = self
            .recording
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(group_id);
        if let Some(pending) = pending {
            let _ = pending.await;
        }
    }

    /// The stored state of `group_id`, read from its offsets partition.
    async fn stored(&self, group_id: &str) -> Result<Option<StoredGroup>, BrokerError> {
        let handle = self.cluster.offsets_partition(group_id).await?;
        let groups = handle.consumer_groups.as_ref().ok_or(BrokerError::NotCoordinator)?;
        let groups = groups.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(groups.get(group_id).cloned())
    }

    /// Fails unless this node leads the group's offsets partition.
    pub async fn ensure_coordinator(&self, group_id: &str) -> Result<(), BrokerError> {
        if group_id.is_empty() {
            return Err(BrokerError::InvalidGroupId);
        }
        let handle = self
            .cluster
            .offsets_partition(group_id)
            .await
            .map_err(|err| match err {
                // The offsets partition is not running here (yet): clients look the coordinator up again.
                BrokerError::NotLeader => BrokerError::NotCoordinator,
                other => other,
            })?;
        if handle.leader() != Some(self.cluster.node_id()) {
            return Err(BrokerError::NotCoordinator);
        }
        Ok(())
    }

    pub async fn join(self: &Arc<Self>, request: JoinRequest) -> Result<JoinResult, BrokerError> {
        self.ensure_coordinator(&request.group_id).await?;
        let cfg = self.cluster.config();
        if request.session_timeout_ms < cfg.group_min_session_timeout_ms
            || request.session_timeout_ms > cfg.group_max_session_timeout_ms
        {
            return Err(BrokerError::InvalidSessionTimeout(request.session_timeout_ms));
        }
        if request.protocols.is_empty() || request.protocol_type.is_empty() {
            return Err(BrokerError::InconsistentGroupProtocol);
        }
        let generation = self.stored(&request.group_id).await?.map_or(0, |g| g.generation);
        let receiver = {
            let mut groups = self.lock();
            let group = groups
                .entry(request.group_id.clone())
                .or_insert_with(|| Group::new(generation));
            let member_id = match self.admit(group, &request)? {
                Admitted::Member(member_id) => member_id,
                Admitted::Current(joined) => return Ok(joined),
            };
            let (reply, receiver) = oneshot::channel();
            group.join_waiters.insert(member_id.clone(), reply);
            let member = Member {
                group_instance_id: request.group_instance_id.clone(),
                client_id: request.client_id.clone(),
                client_host: request.client_host.clone(),
                session_timeout: Duration::from_millis(request.session_timeout_ms as u64),
                rebalance_timeout: Duration::from_millis(request.rebalance_timeout_ms.max(0) as u64),
                protocols: request.protocols.clone(),
                assignment: group.assignment_of(&member_id),
                last_heartbeat: Instant::now(),
                joined: true,
            };
            group.members.insert(member_id, member);
            group.protocol_type = request.protocol_type.clone();
            if group.state != GroupState::PreparingRebalance {
                group.start_rebalance(self.initial_delay());
            }
            receiver
        };
        self.tick();
        receiver.await.unwrap_or(Err(BrokerError::RebalanceInProgress))
    }

    /// Checks that the joining member may join and returns how it joins.
    fn admit(&self, group: &mut Group, request: &JoinRequest) -> Result<Admitted, BrokerError> {
        if !group.members.is_empty() && group.protocol_type != request.protocol_type {
            return Err(BrokerError::InconsistentGroupProtocol);
        }
        let new_id = || format!("{}-{}", request.client_id, uuid::Uuid::new_v4());
        if let Some(instance) = &request.group_instance_id {
            // Static members skip MEMBER_ID_REQUIRED (KIP-394 excludes them):
            // their instance id already identifies them.
            let current = group.static_member(instance).cloned();
            return match current {
                Some(current) if request.member_id.is_empty() => {
                    let member_id = new_id();
                    let leader = group.leader.clone().unwrap_or_default();
                    group.replace_static_member(&current, &member_id, request)?;
                    if group.state != GroupState::Stable || group.choose_protocol() != group.protocol {
                        return Ok(Admitted::Member(member_id));
                    }
                    // The leader is named as it was before the replacement: a
                    // restarted leader must not run an assignment that a stable
                    // group would never hand out.
                    Ok(Admitted::Current(JoinResult {
                        generation: group.generation,
                        protocol_type: group.protocol_type.clone(),
                        protocol: group.protocol.clone(),
                        leader,
                        member_id,
                        members: Vec::new(),
                    }))
                }
                Some(current) if current != request.member_id => Err(BrokerError::FencedInstanceId),
                Some(current) => Ok(Admitted::Member(current)),
                None if request.member_id.is_empty() => Ok(Admitted::Member(new_id())),
                None => Err(BrokerError::UnknownMemberId),
            };
        }
        if request.member_id.is_empty() {
            let member_id = new_id();
            if request.require_known_member_id {
                group.pending_ids.push(member_id.clone());
                return Err(BrokerError::MemberIdRequired(member_id));
            }
            return Ok(Admitted::Member(member_id));
        }
        if let Some(position) = group.pending_ids.iter().position(|id| *id == request.member_id) {
            group.pending_ids.remove(position);
            return Ok(Admitted::Member(request.member_id.clone()));
        }
        if group.members.contains_key(&request.member_id) {
            return Ok(Admitted::Member(request.member_id.clone()));
        }
        Err(BrokerError::UnknownMemberId)
    }

    pub async fn sync(
        self: &Arc<Self>,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<(String, String, Bytes), BrokerError> {
        self.ensure_coordinator(group_id).await?;
        let receiver = {
            let mut groups = self.lock();
            let group = groups.get_mut(group_id).ok_or(BrokerError::UnknownMemberId)?;
            group.check_member(member_id, instance, generation)?;
            let answer =
                |group: &Group, assignment: Bytes| (group.protocol_type.clone(), group.protocol.clone(), assignment);
            match group.state {
                GroupState::Empty => return Err(BrokerError::UnknownMemberId),
                GroupState::PreparingRebalance => return Err(BrokerError::RebalanceInProgress),
                GroupState::Stable => {
                    let assignment = group.assignment_of(member_id);
                    return Ok(answer(group, assignment));
                }
                GroupState::CompletingRebalance => {}
            }
            if group.leader.as_deref() == Some(member_id) {
                let mut assignments: HashMap<String, Bytes> = assignments.into_iter().collect();
                for (id, member) in group.members.iter_mut() {
                    member.assignment = assignments.remove(id).unwrap_or_default();
                }
                group.state = GroupState::Stable;
                for (id, waiter) in std::mem::take(&mut group.sync_waiters) {
                    let assignment = group.assignment_of(&id);
                    let _ = waiter.send(Ok(assignment));
                }
                let own = group.assignment_of(member_id);
                let answered = answer(group, own);
                let metadata = group.metadata(group_id);
                drop(groups);
                self.persist_generation(metadata);
                return Ok(answered);
            }
            let (reply, receiver) = oneshot::channel();
            group.sync_waiters.insert(member_id.to_string(), reply);
            receiver
        };
        let assignment = receiver.await.unwrap_or(Err(BrokerError::RebalanceInProgress))?;
        let groups = self.lock();
        let group = groups.get(group_id).ok_or(BrokerError::UnknownMemberId)?;
        Ok((group.protocol_type.clone(), group.protocol.clone(), assignment))
    }

    pub async fn heartbeat(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance: Option<&str>,
    ) -> Result<(), BrokerError> {
        self.ensure_coordinator(group_id).await?;
        let mut groups = self.lock();
        let group = groups.get_mut(group_id).ok_or(BrokerError::UnknownMemberId)?;
        group.check_member(member_id, instance, generation)?;
        if let Some(member) = group.members.get_mut(member_id) {
            member.last_heartbeat = Instant::now();
        }
        match group.state {
            GroupState::PreparingRebalance => Err(BrokerError::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    /// Removes members, each named by member id, or by instance id alone (an
    /// admin removing a static member, KIP-345); returns one result per
    /// member, in order.
    pub async fn leave(
        self: &Arc<Self>,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Result<Vec<Result<(), BrokerError>>, BrokerError> {
        self.ensure_coordinator(group_id).await?;
        let mut groups = self.lock();
        let group = groups.get_mut(group_id).ok_or(BrokerError::UnknownMemberId)?;
        let mut left = false;
        let mut leave_one = |id: &String, instance: &Option<String>| -> Result<(), BrokerError> {
            // A member that only holds an id from MEMBER_ID_REQUIRED is not in
            // the group yet: forgetting it changes nothing for the others.
            if let Some(position) = group.pending_ids.iter().position(|pending| pending == id) {
                group.pending_ids.remove(position);
                return Ok(());
            }
            let current = if id.is_empty() {
                let instance = instance.as_deref().ok_or(BrokerError::UnknownMemberId)?;
                group
                    .static_member(instance)
                    .cloned()
                    .ok_or(BrokerError::UnknownMemberId)?
            } else {
                group.check_identity(id, instance.as_deref())?;
                id.clone()
            };
            group.remove_member(&current);
            left = true;
            Ok(())
        };
        let results: Vec<Result<(), BrokerError>> =
            members.iter().map(|(id, instance)| leave_one(id, instance)).collect();
        if left {
            tracing::info!(group = group_id, "member left; rebalancing");
            if group.members.is_empty() {
                group.empty_out();
                let metadata = group.metadata(group_id);
                drop(groups);
                self.persist_generation(metadata);
            } else if group.state != GroupState::PreparingRebalance {
                group.start_rebalance(self.initial_delay());
            }
        }
        Ok(results)
    }

    /// Commits offsets for a group member, or for a standalone consumer
    /// (generation -1 and no member id, as `assign()` users commit).
    pub async fn commit(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance: Option<&str>,
        offsets: Vec<(String, i32, CommittedOffset)>,
    ) -> Result<(), BrokerError> {
        self.ensure_coordinator(group_id).await?;
        {
            let groups = self.lock();
            let standalone = generation < 0 && member_id.is_empty();
            match groups.get(group_id) {
                Some(group) if !standalone => {
                    group.check_member(member_id, instance, generation)?;
                    // As in Kafka: members still on the current generation may commit
                    // while the group prepares a rebalance (the commit on revocation),
                    // but not between the join and the sync of a new generation.
                    if group.state == GroupState::CompletingRebalance {
                        return Err(BrokerError::RebalanceInProgress);
                    }
                }
                Some(group) if !group.members.is_empty() => return Err(BrokerError::UnknownMemberId),
                None if !standalone => return Err(BrokerError::UnknownMemberId),
                _ => {}
            }
        }
        // Nothing to record: Kafka writes no record, and a group without
        // records must not appear in the state either.
        if offsets.is_empty() {
            return Ok(());
        }
        let handle = self.cluster.offsets_partition(group_id).await?;
        let change = GroupCommand::Commit {
            group: group_id.to_string(),
            offsets,
        };
        self.cluster.propose_group_change(&handle, change).await
    }

    /// Every committed offset of `group_id`.
    pub async fn fetch_offsets(&self, group_id: &str) -> Result<BTreeMap<(String, i32), CommittedOffset>, BrokerError> {
        self.ensure_coordinator(group_id).await?;
        Ok(self.stored(group_id).await?.map(|g| g.offsets).unwrap_or_default())
    }

    pub async fn describe(&self, group_id: &str) -> Result<GroupDescription, BrokerError> {
        self.ensure_coordinator(group_id).await?;
        if let Some(group) = self.lock().get(group_id) {
            return Ok(group.describe());
        }
        let stored = self.stored(group_id).await?;
        Ok(GroupDescription {
            state: if stored.is_some() {
                GroupState::Empty.name()
            } else {
                "Dead"
            },
            protocol_type: stored.map(|g| g.protocol_type).unwrap_or_default(),
            protocol: String::new(),
            members: Vec::new(),
        })
    }

    /// The groups with members in memory here: `(group id, state, members)`.
    pub fn member_counts(&self) -> Vec<(String, &'static str, usize)> {
        self.lock()
            .iter()
            .map(|(name, group)| (name.clone(), group.state.name(), group.members.len()))
            .collect()
    }

    /// Every group known here: `(group id, protocol type, state)`.
    pub async fn list(&self) -> Result<Vec<(String, String, &'static str)>, BrokerError> {
        let mut listed: BTreeMap<String, (String, &'static str)> = BTreeMap::new();
        let offsets_topic = self
            .cluster
            .metadata()
            .topics
            .get(crate::cluster::OFFSETS_TOPIC)
            .cloned();
        for assignment in offsets_topic.iter().flat_map(|t| t.partitions.iter()) {
            let Some(handle) = self.cluster.partition_by_group(assignment.group) else {
                continue;
            };
            if handle.leader() != Some(self.cluster.node_id()) {
                continue;
            }
            if let Some(groups) = &handle.consumer_groups {
                let groups = groups.read().unwrap_or_else(|poisoned| poisoned.into_inner());
                for (name, stored) in groups.iter() {
                    listed.insert(name.clone(), (stored.protocol_type.clone(), GroupState::Empty.name()));
                }
            }
        }
        for (name, group) in self.lock().iter() {
            listed.insert(name.clone(), (group.protocol_type.clone(), group.state.name()));
        }
        Ok(listed
            .into_iter()
            .map(|(name, (protocol_type, state))| (name, protocol_type, state))
            .collect())
    }

    pub async fn delete_group(&self, group_id: &str) -> Result<(), BrokerError> {
        self.ensure_coordinator(group_id).await?;
        let in_memory = self.lock().get(group_id).map(|g| g.members.is_empty());
        if in_memory == Some(false) {
            return Err(BrokerError::NonEmptyGroup);
        }
        if in_memory.is_none() && self.stored(group_id).await?.is_none() {
            return Err(BrokerError::GroupIdNotFound);
        }
        self.generations_recorded(group_id).await;
        // The offsets as applied by now: the generation records above are.
        let offsets = self
            .stored(group_id)
            .await?
            .map(|stored| stored.offsets.into_keys().collect())
            .unwrap_or_default();
        let handle = self.cluster.offsets_partition(group_id).await?;
        self.cluster
            .propose_group_change(
                &handle,
                GroupCommand::RemoveGroup {
                    group: group_id.to_string(),
                    offsets,
                    timestamp: now_ms(),
                },
            )
            .await?;
        self.lock().remove(group_id);
        Ok(())
    }

    /// Deletes committed offsets of an empty group.
    pub async fn delete_offsets(&self, group_id: &str, partitions: Vec<(String, i32)>) -> Result<(), BrokerError> {
        self.ensure_coordinator(group_id).await?;
        if self.lock().get(group_id).is_some_and(|g| !g.members.is_empty()) {
            return Err(BrokerError::GroupSubscribedToTopic);
        }
        let Some(stored) = self.stored(group_id).await? else {
            return Err(BrokerError::GroupIdNotFound);
        };
        // As Kafka: tombstones only for offsets the group has.
        let partitions = partitions
            .into_iter()
            .filter(|key| stored.offsets.contains_key(key))
            .collect();
        let handle = self.cluster.offsets_partition(group_id).await?;
        let change = GroupCommand::RemoveOffsets {
            group: group_id.to_string(),
            partitions,
            timestamp: now_ms(),
        };
        self.cluster.propose_group_change(&handle, change).await
    }
}
