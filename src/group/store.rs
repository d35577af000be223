//! The replicated part of consumer groups: committed offsets and the last
//! generation of each group, applied by the `__consumer_offsets` partition
//! groups and stored one RocksDB key per consumer group.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use crate::raft::GroupId;
use crate::storage::keys::{self, CF_SM_STATE, TAG_CONSUMER_GROUP};
use crate::storage::{StorageError, Store};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_timestamp: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredGroup {
    pub generation: i32,
    pub protocol_type: String,
    pub offsets: BTreeMap<(String, i32), CommittedOffset>,
}

/// Changes to consumer groups, replicated by an offsets partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GroupCommand {
    Commit {
        group: String,
        offsets: Vec<(String, i32, CommittedOffset)>,
    },
    Generation {
        group: String,
        generation: i32,
        protocol_type: String,
    },
    DeleteGroup {
        group: String,
    },
    DeleteOffsets {
        group: String,
        partitions: Vec<(String, i32)>,
    },
}

/// Every consumer group stored by one offsets partition, shared with readers.
pub type SharedGroups = Arc<RwLock<BTreeMap<String, StoredGroup>>>;

fn group_key(raft_group: GroupId, name: &str) -> Vec<u8> {
    let mut key = keys::group_tag_key(raft_group, TAG_CONSUMER_GROUP).to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

/// Applies `command` to `groups` and stages the changed group's key in `write`.
pub fn apply(
    groups: &mut BTreeMap<String, StoredGroup>,
    command: &GroupCommand,
    store: &Store,
    raft_group: GroupId,
    write: &mut WriteBatch,
) -> Result<(), StorageError> {
    let name = match command {
        GroupCommand::Commit { group, offsets } => {
            let stored = groups.entry(group.clone()).or_default();
            for (topic, partition, offset) in offsets {
                stored.offsets.insert((topic.clone(), *partition), offset.clone());
            }
            group
        }
        GroupCommand::Generation {
            group,
            generation,
            protocol_type,
        } => {
            let stored = groups.entry(group.clone()).or_default();
            stored.generation = *generation;
            stored.protocol_type = protocol_type.clone();
            group
        }
        GroupCommand::DeleteGroup { group } => {
            groups.remove(group);
            group
        }
        GroupCommand::DeleteOffsets { group, partitions } => {
            if let Some(stored) = groups.get_mut(group) {
                for key in partitions {
                    stored.offsets.remove(key);
                }
            }
            group
        }
    };
    let key = group_key(raft_group, name);
    match groups.get(name) {
        Some(stored) => write.put_cf(store.cf(CF_SM_STATE), key, bincode::serialize(stored)?),
        None => write.delete_cf(store.cf(CF_SM_STATE), key),
    }
    Ok(())
}

/// Loads every consumer group an offsets partition has stored.
pub fn load(store: &Store, raft_group: GroupId) -> Result<BTreeMap<String, StoredGroup>, StorageError> {
    let prefix = keys::group_tag_key(raft_group, TAG_CONSUMER_GROUP);
    let mut groups = BTreeMap::new();
    for item in store.scan_group(CF_SM_STATE, raft_group, &prefix) {
        let (key, value) = item?;
        if !key.starts_with(&prefix) {
            break;
        }
        let name = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
        groups.insert(name, bincode::deserialize(&value)?);
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offset(value: i64) -> CommittedOffset {
        CommittedOffset {
            offset: value,
            leader_epoch: -1,
            metadata: None,
            commit_timestamp: 1,
        }
    }

    #[test]
    fn commits_survive_reload_and_deletes_remove_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut groups = BTreeMap::new();
        let commands = [
            GroupCommand::Commit {
                group: "g".into(),
                offsets: vec![("t".into(), 0, offset(5)), ("t".into(), 1, offset(7))],
            },
            GroupCommand::Generation {
                group: "g".into(),
                generation: 3,
                protocol_type: "consumer".into(),
            },
            GroupCommand::Commit {
                group: "other".into(),
                offsets: vec![("t".into(), 0, offset(1))],
            },
            GroupCommand::DeleteOffsets {
                group: "g".into(),
                partitions: vec![("t".into(), 1)],
            },
            GroupCommand::DeleteGroup { group: "other".into() },
        ];
        for command in &commands {
            let mut write = WriteBatch::default();
            apply(&mut groups, command, &store, 9, &mut write).unwrap();
            store.write_buffered(write).unwrap();
        }
        let loaded = load(&store, 9).unwrap();
        assert_eq!(loaded, groups);
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded["g"].generation, 3);
        assert_eq!(
            loaded["g"].offsets.keys().collect::<Vec<_>>(),
            vec![&("t".to_string(), 0)]
        );
        assert!(load(&store, 10).unwrap().is_empty());
    }
}
