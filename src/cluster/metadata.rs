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
                Ok(topic.partitions.iter().map(|p| p.group).collect())
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
            Command::Append { .. }
            | Command::AppendRequests { .. }
            | Command::AdvanceLogStart { .. }
            | Command::ExpireProducers { .. }
            | Command::Compact(_)
            | Command::Group(_)
            | Command::AllocateProducerId => Ok(Vec::new()),
        }
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
}
