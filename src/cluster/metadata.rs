//! The controller group's state: topics and which Raft group serves each partition.
//! Pure data and deterministic transitions; persisted by the state machine.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::topic_configs;
use super::topics::{validate_topic_name, MAX_PARTITIONS};
use crate::error::BrokerError;
use crate::raft::command::{Command, ControllerRefusal};
use crate::raft::{GroupId, NodeId};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub topics: BTreeMap<String, TopicState>,
    /// The last partition group id handed out (0 is the controller's own group);
    /// ids are never reused, so a deleted topic's data can never be mistaken for a new one's.
    pub next_group: GroupId,
    /// The last idempotent producer id handed out.
    pub last_producer_id: i64,
    /// Partitions whose replicas are moving, by Raft group.
    pub reassignments: BTreeMap<GroupId, Reassignment>,
    /// Groups whose replicas were ever reassigned. None of their replicas
    /// founds them any more: they were founded at creation, and a replica
    /// added later may be the first of the list while holding nothing.
    pub moved: BTreeSet<GroupId>,
}

/// A partition's replicas on their way from `original` to `target` (Kafka's
/// AlterPartitionReassignments). Until the partition's leader has changed its
/// Raft group's voters to `target`, the assignment's `replicas` are `target`
/// followed by every other node that may still hold a replica, so that each of
/// them keeps hosting the group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reassignment {
    pub original: Vec<NodeId>,
    pub target: Vec<NodeId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicState {
    pub id: [u8; 16],
    pub partitions: Vec<PartitionAssignment>,
    pub configs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionAssignment {
    pub group: GroupId,
    pub replicas: Vec<NodeId>,
}

impl ClusterState {
    /// Applies a controller command; returns the partition groups it created.
    /// `voters` are the controller group's voters, the only nodes a partition
    /// may be placed on. Whatever the command holds, a change that could not be
    /// served is refused here, the same way on every replica, and never panics.
    pub fn apply(&mut self, command: &Command, voters: &BTreeSet<NodeId>) -> Result<Vec<GroupId>, ControllerRefusal> {
        match command {
            Command::CreateTopic {
                name,
                topic_id,
                replicas,
                configs,
            } => {
                if self.topics.contains_key(name) {
                    return Err(ControllerRefusal::TopicExists);
                }
                if let Err(err) = validate_topic_name(name) {
                    let reason = match err {
                        BrokerError::InvalidTopic(reason) => reason,
                        other => other.to_string(),
                    };
                    return Err(ControllerRefusal::InvalidTopicName(reason));
                }
                check_assignment(replicas, replicas.len(), voters)?;
                let partitions = self.assign_groups(replicas);
                let groups = partitions.iter().map(|p| p.group).collect();
                self.topics.insert(
                    name.clone(),
                    TopicState {
                        id: *topic_id,
                        partitions,
                        configs: configs.clone(),
                    },
                );
                Ok(groups)
            }
            Command::DeleteTopic { name } => {
                let topic = self.topics.remove(name).ok_or(ControllerRefusal::UnknownTopic)?;
                let groups: Vec<GroupId> = topic.partitions.iter().map(|p| p.group).collect();
                for group in &groups {
                    self.reassignments.remove(group);
                    self.moved.remove(group);
                }
                Ok(groups)
            }
            Command::CreatePartitions { name, replicas } => {
                let current = self
                    .topics
                    .get(name)
                    .ok_or(ControllerRefusal::UnknownTopic)?
                    .partitions
                    .len();
                if replicas.len() <= current {
                    return Err(ControllerRefusal::PartitionsCannotShrink { current });
                }
                check_assignment(&replicas[current..], replicas.len(), voters)?;
                let added = self.assign_groups(&replicas[current..]);
                let groups = added.iter().map(|p| p.group).collect();
                if let Some(topic) = self.topics.get_mut(name) {
                    topic.partitions.extend(added);
                }
                Ok(groups)
            }
            Command::AlterTopicConfigs { name, replace, changes } => {
                let topic = self.topics.get_mut(name).ok_or(ControllerRefusal::UnknownTopic)?;
                topic.configs = topic_configs::apply_changes(&topic.configs, *replace, changes)
                    .map_err(ControllerRefusal::InvalidConfig)?;
                Ok(Vec::new())
            }
            Command::ReassignPartition {
                topic,
                partition,
                target,
            } => self.reassign(topic, *partition, target.as_deref(), voters),
            Command::CompleteReassignment { group, replicas } => self.complete_reassignment(*group, replicas),
            Command::Append { .. }
            | Command::AppendRequests { .. }
            | Command::AdvanceLogStart { .. }
            | Command::ExpireProducers { .. }
            | Command::Compact(_)
            | Command::Group(_)
            | Command::AllocateProducerId => Ok(Vec::new()),
        }
    }

    /// Starts moving a partition's replicas to `target`, replaces the target
    /// of a move in progress, or (no target) cancels it: the replicas go back
    /// to those the move started from. Moving to the replicas a partition
    /// already has is no move at all.
    fn reassign(
        &mut self,
        topic: &str,
        partition: i32,
        target: Option<&[NodeId]>,
        voters: &BTreeSet<NodeId>,
    ) -> Result<Vec<GroupId>, ControllerRefusal> {
        let assignment = self.assignment_mut(topic, partition)?;
        let group = assignment.group;
        let current = assignment.replicas.clone();
        let pending = self.reassignments.get(&group).cloned();
        let target = match target {
            Some(target) => {
                check_assignment(&[target.to_vec()], 1, voters)?;
                target.to_vec()
            }
            None => pending
                .as_ref()
                .ok_or(ControllerRefusal::NoReassignmentInProgress)?
                .original
                .clone(),
        };
        if pending.is_none() && target == current {
            return Ok(Vec::new());
        }
        let original = pending.map_or_else(|| current.clone(), |pending| pending.original);
        let mut hosts = target.clone();
        hosts.extend(current.iter().filter(|node| !target.contains(node)));
        self.assignment_mut(topic, partition)?.replicas = hosts;
        self.reassignments.insert(group, Reassignment { original, target });
        self.moved.insert(group);
        Ok(vec![group])
    }

    /// Records that a partition's Raft group now has exactly `replicas` as
    /// voters, the target of its move; refused if the target changed since.
    fn complete_reassignment(
        &mut self,
        group: GroupId,
        replicas: &[NodeId],
    ) -> Result<Vec<GroupId>, ControllerRefusal> {
        let pending = self
            .reassignments
            .get(&group)
            .ok_or(ControllerRefusal::NoReassignmentInProgress)?;
        if pending.target != replicas {
            return Err(ControllerRefusal::StaleReassignment);
        }
        let assignment = self
            .topics
            .values_mut()
            .flat_map(|topic| topic.partitions.iter_mut())
            .find(|assignment| assignment.group == group)
            .ok_or(ControllerRefusal::UnknownTopic)?;
        assignment.replicas = replicas.to_vec();
        self.reassignments.remove(&group);
        Ok(vec![group])
    }

    fn assignment_mut(&mut self, topic: &str, partition: i32) -> Result<&mut PartitionAssignment, ControllerRefusal> {
        let partitions = &mut self
            .topics
            .get_mut(topic)
            .ok_or(ControllerRefusal::UnknownTopic)?
            .partitions;
        usize::try_from(partition)
            .ok()
            .and_then(|index| partitions.get_mut(index))
            .ok_or(ControllerRefusal::UnknownTopic)
    }

    pub fn allocate_producer_id(&mut self) -> i64 {
        self.last_producer_id += 1;
        self.last_producer_id
    }

    fn assign_groups(&mut self, replicas: &[Vec<NodeId>]) -> Vec<PartitionAssignment> {
        replicas
            .iter()
            .map(|nodes| {
                self.next_group += 1;
                PartitionAssignment {
                    group: self.next_group,
                    replicas: nodes.clone(),
                }
            })
            .collect()
    }

    /// Every partition this cluster has: `(topic, partition index, assignment)`.
    pub fn partitions(&self) -> impl Iterator<Item = (&str, i32, &PartitionAssignment)> {
        self.topics.iter().flat_map(|(name, topic)| {
            topic
                .partitions
                .iter()
                .enumerate()
                .map(move |(index, assignment)| (name.as_str(), index as i32, assignment))
        })
    }

    /// The name of the topic whose id is `id` (requests of Fetch v13+, Produce
    /// v13 and Metadata v10+ may name topics by id alone). The all-zero id is
    /// Kafka's "no id" and names nothing.
    pub fn topic_name_of(&self, id: &[u8; 16]) -> Option<&str> {
        if *id == [0; 16] {
            return None;
        }
        self.topics
            .iter()
            .find(|(_, topic)| topic.id == *id)
            .map(|(name, _)| name.as_str())
    }

    /// The assignment of `topic`'s partition `partition`.
    pub fn assignment(&self, topic: &str, partition: i32) -> Option<&PartitionAssignment> {
        self.topics.get(topic)?.partitions.get(usize::try_from(partition).ok()?)
    }

    /// The partition whose Raft group is `group`: `(topic, partition, assignment)`.
    pub fn partition_of_group(&self, group: GroupId) -> Option<(&str, i32, &PartitionAssignment)> {
        self.partitions().find(|(_, _, assignment)| assignment.group == group)
    }
}

/// New partitions' replica lists: every partition on one or more distinct
/// voters, and a topic of at most [`MAX_PARTITIONS`] partitions in all.
fn check_assignment(new: &[Vec<NodeId>], total: usize, voters: &BTreeSet<NodeId>) -> Result<(), ControllerRefusal> {
    let refuse = |why: String| Err(ControllerRefusal::InvalidAssignment(why));
    if new.is_empty() || total > MAX_PARTITIONS {
        return refuse(format!("{total} partitions (1 to {MAX_PARTITIONS})"));
    }
    for nodes in new {
        let distinct: BTreeSet<NodeId> = nodes.iter().copied().collect();
        if nodes.is_empty() || distinct.len() != nodes.len() {
            return refuse(format!("replicas {nodes:?} are not one or more distinct nodes"));
        }
        if let Some(stranger) = distinct.difference(voters).next() {
            return refuse(format!("node {stranger} is not a member of the cluster"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str, partitions: usize) -> Command {
        Command::CreateTopic {
            name: name.into(),
            topic_id: [1; 16],
            replicas: vec![vec![1]; partitions],
            configs: BTreeMap::new(),
        }
    }

    fn voters() -> BTreeSet<NodeId> {
        BTreeSet::from([1])
    }

    #[test]
    fn topics_are_found_by_id() {
        let mut state = ClusterState::default();
        state.apply(&create("a", 1), &voters()).unwrap();
        assert_eq!(state.topic_name_of(&[1; 16]), Some("a"));
        assert_eq!(state.topic_name_of(&[2; 16]), None);
        assert_eq!(state.topic_name_of(&[0; 16]), None);
        state
            .apply(&Command::DeleteTopic { name: "a".into() }, &voters())
            .unwrap();
        assert_eq!(state.topic_name_of(&[1; 16]), None);
    }

    #[test]
    fn groups_are_unique_and_never_reused() {
        let mut state = ClusterState::default();
        assert_eq!(state.apply(&create("a", 2), &voters()), Ok(vec![1, 2]));
        assert_eq!(
            state.apply(&create("a", 1), &voters()),
            Err(ControllerRefusal::TopicExists)
        );
        assert_eq!(
            state.apply(&Command::DeleteTopic { name: "a".into() }, &voters()),
            Ok(vec![1, 2])
        );
        assert_eq!(state.apply(&create("a", 1), &voters()), Ok(vec![3]));
        let grow = Command::CreatePartitions {
            name: "a".into(),
            replicas: vec![vec![1]; 3],
        };
        assert_eq!(state.apply(&grow, &voters()), Ok(vec![4, 5]));
        let shrink = Command::CreatePartitions {
            name: "a".into(),
            replicas: vec![vec![1]; 2],
        };
        assert_eq!(
            state.apply(&shrink, &voters()),
            Err(ControllerRefusal::PartitionsCannotShrink { current: 3 })
        );
        assert_eq!(state.partitions().count(), 3);
    }

    #[test]
    fn config_changes_apply_to_the_topic_or_are_refused_whole() {
        use crate::raft::command::{ConfigChange, ConfigOp};
        let mut state = ClusterState::default();
        state.apply(&create("t", 1), &voters()).unwrap();
        let alter = |replace, changes: &[(&str, ConfigOp)]| Command::AlterTopicConfigs {
            name: "t".into(),
            replace,
            changes: changes
                .iter()
                .map(|(name, op)| ConfigChange {
                    name: name.to_string(),
                    op: op.clone(),
                })
                .collect(),
        };
        let set = |value: &str| ConfigOp::Set(value.into());
        let changes = [("compression.type", set("lz4")), ("min.insync.replicas", set("2"))];
        assert_eq!(state.apply(&alter(false, &changes), &voters()), Ok(vec![]));
        let before = state.clone();
        let bad = [("compression.type", set("zstd")), ("no.such.config", set("1"))];
        assert!(matches!(
            state.apply(&alter(false, &bad), &voters()),
            Err(ControllerRefusal::InvalidConfig(_))
        ));
        assert_eq!(state, before, "a refused change leaves every key as it was");
        assert_eq!(
            state.apply(&alter(true, &[("compression.type", set("gzip"))]), &voters()),
            Ok(vec![])
        );
        let configs = &state.topics["t"].configs;
        assert_eq!(configs.len(), 1, "AlterConfigs replaces the overrides: {configs:?}");
        assert_eq!(configs["compression.type"], "gzip");
        let missing = Command::AlterTopicConfigs {
            name: "missing".into(),
            replace: false,
            changes: vec![],
        };
        assert_eq!(state.apply(&missing, &voters()), Err(ControllerRefusal::UnknownTopic));
    }

    #[test]
    fn malformed_changes_are_refused_and_change_nothing() {
        let mut state = ClusterState::default();
        state.apply(&create("kept", 1), &voters()).unwrap();
        let before = state.clone();
        let topic = |name: &str, replicas: Vec<Vec<NodeId>>| Command::CreateTopic {
            name: name.into(),
            topic_id: [2; 16],
            replicas,
            configs: BTreeMap::new(),
        };
        let refused = [
            topic("bad name!", vec![vec![1]]),
            topic("", vec![vec![1]]),
            topic("none", vec![]),
            topic("empty", vec![vec![]]),
            topic("twice", vec![vec![1, 1]]),
            topic("stranger", vec![vec![1, 7]]),
            topic("huge", vec![vec![1]; MAX_PARTITIONS + 1]),
            Command::CreatePartitions {
                name: "kept".into(),
                replicas: vec![vec![1], vec![9]],
            },
            Command::CreatePartitions {
                name: "kept".into(),
                replicas: vec![vec![1]; MAX_PARTITIONS + 1],
            },
        ];
        for command in refused {
            let answer = state.apply(&command, &voters());
            assert!(
                matches!(
                    answer,
                    Err(ControllerRefusal::InvalidAssignment(_) | ControllerRefusal::InvalidTopicName(_))
                ),
                "{command:?}: {answer:?}"
            );
            assert_eq!(state, before, "{command:?} changed the state");
        }
    }

    #[test]
    fn a_move_keeps_every_replica_hosted_until_it_completes() {
        let voters = BTreeSet::from([1, 2, 3, 4]);
        let mut state = ClusterState::default();
        let topic = Command::CreateTopic {
            name: "t".into(),
            topic_id: [3; 16],
            replicas: vec![vec![1, 2, 3]],
            configs: BTreeMap::new(),
        };
        state.apply(&topic, &voters).unwrap();
        let reassign = |target: Option<Vec<NodeId>>| Command::ReassignPartition {
            topic: "t".into(),
            partition: 0,
            target,
        };
        assert_eq!(
            state.apply(&reassign(Some(vec![1, 2, 3])), &voters),
            Ok(vec![]),
            "no move"
        );
        assert!(state.reassignments.is_empty() && state.moved.is_empty());
        assert_eq!(
            state.apply(&reassign(None), &voters),
            Err(ControllerRefusal::NoReassignmentInProgress)
        );
        assert_eq!(state.apply(&reassign(Some(vec![4, 2, 3])), &voters), Ok(vec![1]));
        assert_eq!(state.topics["t"].partitions[0].replicas, vec![4, 2, 3, 1]);
        assert!(state.moved.contains(&1));
        // A new target replaces the old one; nodes of either stay hosts.
        state.apply(&reassign(Some(vec![2, 3, 1])), &voters).unwrap();
        assert_eq!(state.topics["t"].partitions[0].replicas, vec![2, 3, 1, 4]);
        assert_eq!(state.reassignments[&1].original, vec![1, 2, 3]);
        let stale = Command::CompleteReassignment {
            group: 1,
            replicas: vec![4, 2, 3],
        };
        assert_eq!(state.apply(&stale, &voters), Err(ControllerRefusal::StaleReassignment));
        // Cancelling goes back to where the move started.
        state.apply(&reassign(None), &voters).unwrap();
        assert_eq!(state.reassignments[&1].target, vec![1, 2, 3]);
        let done = Command::CompleteReassignment {
            group: 1,
            replicas: vec![1, 2, 3],
        };
        assert_eq!(state.apply(&done, &voters), Ok(vec![1]));
        assert_eq!(state.topics["t"].partitions[0].replicas, vec![1, 2, 3]);
        assert!(state.reassignments.is_empty());
        assert!(state.moved.contains(&1), "a moved group is never founded again");
        for bad in [vec![], vec![1, 1, 2], vec![1, 2, 9]] {
            assert!(matches!(
                state.apply(&reassign(Some(bad)), &voters),
                Err(ControllerRefusal::InvalidAssignment(_))
            ));
        }
        let missing = Command::ReassignPartition {
            topic: "t".into(),
            partition: 1,
            target: Some(vec![1]),
        };
        assert_eq!(state.apply(&missing, &voters), Err(ControllerRefusal::UnknownTopic));
        state
            .apply(&Command::DeleteTopic { name: "t".into() }, &voters)
            .unwrap();
        assert!(state.moved.is_empty());
    }
}
