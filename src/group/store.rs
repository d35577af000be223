//! The replicated part of consumer groups: committed offsets and the last
//! generation of each group, applied by the `__consumer_offsets` partition
//! groups and stored one RocksDB key per consumer group. Each change is also
//! Kafka records of that partition ([`super::records`]): the state is what
//! those records say.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use crate::raft::GroupId;
use crate::storage::keys::{self, CF_SM_STATE, TAG_CONSUMER_GROUP, TAG_GROUP_STATE};
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
    /// The group's last GroupMetadata record; none before its first
    /// generation was recorded as one.
    pub metadata: Option<GroupMetadata>,
}

/// A group as stored before its changes were records, under
/// [`TAG_CONSUMER_GROUP`] without a version tag.
#[derive(Deserialize)]
struct StoredGroupV0 {
    generation: i32,
    protocol_type: String,
    offsets: BTreeMap<(String, i32), CommittedOffset>,
}

/// Version tag of groups stored under [`TAG_GROUP_STATE`].
const STORED_GROUP_VERSION: u8 = 1;

/// What Kafka's GroupMetadata record says of a group after a generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupMetadata {
    pub group: String,
    pub protocol_type: String,
    pub generation: i32,
    /// None while the group has no members.
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub current_state_timestamp: i64,
    pub members: Vec<MemberMetadata>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberMetadata {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    /// The member's metadata for the group's protocol.
    pub subscription: Bytes,
    /// Empty until the leader's assignment arrives.
    pub assignment: Bytes,
}

/// Changes to consumer groups, replicated by an offsets partition. Variants
/// are only ever added at the end (a log may hold any of them); the first
/// four were written before the changes became records, and `Generation`,
/// `DeleteGroup` and `DeleteOffsets` are no longer proposed.
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
    /// A generation completed (or the leader's assignment arrived).
    GenerationCompleted(GroupMetadata),
    /// DeleteGroups: the group's metadata and the offsets listed go, with
    /// tombstones stamped `timestamp`. An offset committed after the list
    /// was made stays, in the state and in the records alike.
    RemoveGroup {
        group: String,
        offsets: Vec<(String, i32)>,
        timestamp: i64,
    },
    /// OffsetDelete: the offsets listed go, with tombstones stamped `timestamp`.
    RemoveOffsets {
        group: String,
        partitions: Vec<(String, i32)>,
        timestamp: i64,
    },
    /// Every group of the partition written again as records at its end, so
    /// that the records before them can go (the log start moves to them).
    /// Applied only if `groups` is exactly the partition's state then: the
    /// records are rendered from the command, so they must restate the
    /// current values.
    Restate {
        groups: BTreeMap<String, StoredGroup>,
    },
}

/// Every consumer group stored by one offsets partition, shared with readers.
pub type SharedGroups = Arc<RwLock<BTreeMap<String, StoredGroup>>>;

fn group_key(raft_group: GroupId, tag: u8, name: &str) -> Vec<u8> {
    let mut key = keys::group_tag_key(raft_group, tag).to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

fn encode_group(stored: &StoredGroup) -> Result<Vec<u8>, StorageError> {
    let mut out = vec![STORED_GROUP_VERSION];
    bincode::serialize_into(&mut out, stored)?;
    Ok(out)
}

fn decode_group(raw: &[u8]) -> Result<StoredGroup, StorageError> {
    match raw.split_first() {
        Some((&STORED_GROUP_VERSION, body)) => Ok(bincode::deserialize(body)?),
        _ => Err(StorageError::Encoding("unknown consumer group format".into())),
    }
}

/// Stages `name`'s state (or its removal), and drops the key an earlier
/// version stored it under.
fn stage_group(
    write: &mut WriteBatch,
    store: &Store,
    raft_group: GroupId,
    name: &str,
    stored: Option<&StoredGroup>,
) -> Result<(), StorageError> {
    let cf = store.cf(CF_SM_STATE);
    write.delete_cf(cf, group_key(raft_group, TAG_CONSUMER_GROUP, name));
    let key = group_key(raft_group, TAG_GROUP_STATE, name);
    match stored {
        Some(stored) => write.put_cf(cf, key, encode_group(stored)?),
        None => write.delete_cf(cf, key),
    }
    Ok(())
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
            stored.metadata = None;
            group
        }
        GroupCommand::DeleteGroup { group } => {
            groups.remove(group);
            group
        }
        GroupCommand::DeleteOffsets { group, partitions } | GroupCommand::RemoveOffsets { group, partitions, .. } => {
            if let Some(stored) = groups.get_mut(group) {
                for key in partitions {
                    stored.offsets.remove(key);
                }
            }
            group
        }
        GroupCommand::GenerationCompleted(metadata) => {
            let stored = groups.entry(metadata.group.clone()).or_default();
            stored.generation = metadata.generation;
            stored.protocol_type = metadata.protocol_type.clone();
            stored.metadata = Some(metadata.clone());
            &metadata.group
        }
        // Changes nothing: the state machine checks it and moves the log start.
        GroupCommand::Restate { .. } => return Ok(()),
        GroupCommand::RemoveGroup { group, offsets, .. } => {
            if let Some(stored) = groups.get_mut(group) {
                for key in offsets {
                    stored.offsets.remove(key);
                }
                // Without its metadata record the group is back at Kafka's
                // defaults; only offsets committed meanwhile keep it.
                *stored = StoredGroup {
                    offsets: std::mem::take(&mut stored.offsets),
                    ..StoredGroup::default()
                };
                if stored.offsets.is_empty() {
                    groups.remove(group);
                }
            }
            group
        }
    };
    stage_group(write, store, raft_group, name, groups.get(name))
}

/// Version tag of the groups a checkpoint carries.
const GROUPS_STATE_VERSION: u8 = 1;

/// Every group of an offsets partition, as a checkpoint carries them.
pub fn encode_groups(groups: &BTreeMap<String, StoredGroup>) -> Result<Vec<u8>, StorageError> {
    let mut out = vec![GROUPS_STATE_VERSION];
    bincode::serialize_into(&mut out, groups)?;
    Ok(out)
}

/// Replaces the stored groups with those a checkpoint carries (none when it
/// carries nothing: a checkpoint of a partition that held no groups).
pub fn stage_restore(
    write: &mut WriteBatch,
    store: &Store,
    raft_group: GroupId,
    raw: &[u8],
) -> Result<(), StorageError> {
    let groups: BTreeMap<String, StoredGroup> = match raw.split_first() {
        None => BTreeMap::new(),
        Some((&GROUPS_STATE_VERSION, body)) => bincode::deserialize(body)?,
        Some((version, _)) => {
            return Err(StorageError::Encoding(format!(
                "unknown consumer groups format {version}"
            )))
        }
    };
    for tag in [TAG_CONSUMER_GROUP, TAG_GROUP_STATE] {
        write.delete_range_cf(
            store.cf(CF_SM_STATE),
            keys::group_tag_key(raft_group, tag).to_vec(),
            keys::group_tag_key(raft_group, tag + 1).to_vec(),
        );
    }
    for (name, stored) in &groups {
        write.put_cf(
            store.cf(CF_SM_STATE),
            group_key(raft_group, TAG_GROUP_STATE, name),
            encode_group(stored)?,
        );
    }
    Ok(())
}

/// Loads every consumer group an offsets partition has stored, also those an
/// earlier version stored (a group is rewritten in the current format at its
/// next change).
pub fn load(store: &Store, raft_group: GroupId) -> Result<BTreeMap<String, StoredGroup>, StorageError> {
    let mut groups = BTreeMap::new();
    for tag in [TAG_CONSUMER_GROUP, TAG_GROUP_STATE] {
        let prefix = keys::group_tag_key(raft_group, tag);
        for item in store.scan_group(CF_SM_STATE, raft_group, &prefix) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            let name = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            let stored = if tag == TAG_CONSUMER_GROUP {
                let old: StoredGroupV0 = bincode::deserialize(&value)?;
                StoredGroup {
                    generation: old.generation,
                    protocol_type: old.protocol_type,
                    offsets: old.offsets,
                    metadata: None,
                }
            } else {
                decode_group(&value)?
            };
            groups.insert(name, stored);
        }
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

    /// Groups stored before they carried metadata (untagged, under the old
    /// key) still load, and the next change moves them to the current key.
    #[test]
    fn groups_stored_by_an_earlier_version_load_and_move_on_change() {
        #[derive(Serialize)]
        struct V0<'a>(i32, &'a str, BTreeMap<(String, i32), CommittedOffset>);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let old_offsets = BTreeMap::from([(("t".to_string(), 0), offset(3))]);
        let raw = bincode::serialize(&V0(2, "consumer", old_offsets.clone())).unwrap();
        store
            .write_buffered({
                let mut write = WriteBatch::default();
                write.put_cf(store.cf(CF_SM_STATE), group_key(4, TAG_CONSUMER_GROUP, "g"), raw);
                write
            })
            .unwrap();
        let mut groups = load(&store, 4).unwrap();
        assert_eq!(
            groups["g"],
            StoredGroup {
                generation: 2,
                protocol_type: "consumer".into(),
                offsets: old_offsets,
                metadata: None,
            }
        );
        let mut write = WriteBatch::default();
        let change = GroupCommand::Commit {
            group: "g".into(),
            offsets: vec![("t".into(), 1, offset(4))],
        };
        apply(&mut groups, &change, &store, 4, &mut write).unwrap();
        store.write_buffered(write).unwrap();
        assert_eq!(load(&store, 4).unwrap(), groups);
        assert!(store
            .get(CF_SM_STATE, &group_key(4, TAG_CONSUMER_GROUP, "g"))
            .unwrap()
            .is_none());
    }
}
