//! The RocksDB key layout, in one place.
//!
//! Every key starts with the Raft group id, big-endian, so that one group's keys
//! are contiguous and sort in numeric order ("big-endian to ensure correct sorting"):
//! a group can be scanned, snapshotted or dropped with one range.

/// Durable replication state (vote, committed, last purged): `group | tag`.
/// The log entries themselves live in segment files (`segments.rs`).
pub const CF_RAFT_STATE: &str = "raft_state";
/// Where each record batch is and what it holds: `group | base_offset`.
pub const CF_BATCH_INDEX: &str = "batch_index";
/// Time index: `group | running max timestamp` -> the base offset of the batch
/// that first reached it.
pub const CF_TIME_INDEX: &str = "time_index";
/// State-machine state (applied log id, membership, partition or cluster state): `group | tag`.
pub const CF_SM_STATE: &str = "sm_state";

pub const ALL_CFS: [&str; 4] = [CF_RAFT_STATE, CF_BATCH_INDEX, CF_TIME_INDEX, CF_SM_STATE];

/// The column families that make up a group's state machine.
pub const STATE_MACHINE_CFS: [&str; 3] = [CF_BATCH_INDEX, CF_TIME_INDEX, CF_SM_STATE];

pub const TAG_VOTE: u8 = 1;
pub const TAG_COMMITTED: u8 = 2;
pub const TAG_LAST_PURGED: u8 = 3;
pub const TAG_APPLIED: u8 = 10;
pub const TAG_PARTITION: u8 = 12;
/// The controller's cluster state as first written: unversioned (read, no longer written).
pub const TAG_CLUSTER: u8 = 13;
/// Followed by the consumer group's name: one key per group, as stored
/// before groups carried their metadata (read, no longer written).
pub const TAG_CONSUMER_GROUP: u8 = 14;
/// Followed by the producer id, big-endian: one key per idempotent producer.
pub const TAG_PRODUCER: u8 = 15;
/// Followed by a log index, big-endian: a partition's state after that entry.
pub const TAG_CHECKPOINT: u8 = 16;
/// A partition's leader epoch history.
pub const TAG_LEADER_EPOCHS: u8 = 17;
/// Followed by the consumer group's name: one key per group, version-tagged.
pub const TAG_GROUP_STATE: u8 = 18;
/// The controller's cluster state, version-tagged.
pub const TAG_CLUSTER_STATE: u8 = 19;
/// Followed by a log index, big-endian: the cleanable end of the compaction
/// step that entry applied (a big-endian i64), so that no snapshot is made
/// from a checkpoint the step would be replayed after without the records
/// it reads.
pub const TAG_COMPACTION_STEP: u8 = 20;

pub fn group_u64_key(group: u64, value: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&group.to_be_bytes());
    key[8..].copy_from_slice(&value.to_be_bytes());
    key
}

pub fn group_tag_key(group: u64, tag: u8) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[..8].copy_from_slice(&group.to_be_bytes());
    key[8] = tag;
    key
}

/// Offsets are never negative once assigned, so their big-endian bytes sort numerically.
pub fn offset_key(group: u64, offset: i64) -> [u8; 16] {
    group_u64_key(group, offset as u64)
}

/// Timestamps may be negative; flipping the sign bit makes their big-endian
/// bytes sort numerically.
pub fn timestamp_key(group: u64, timestamp: i64) -> [u8; 16] {
    group_u64_key(group, (timestamp as u64) ^ (1 << 63))
}

/// `group | tag | value`, big-endian.
pub fn group_tag_u64_key(group: u64, tag: u8, value: u64) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[..9].copy_from_slice(&group_tag_key(group, tag));
    key[9..].copy_from_slice(&value.to_be_bytes());
    key
}

/// The `[start, end)` range holding every key of `group` in any column family.
pub fn group_range(group: u64) -> (Vec<u8>, Vec<u8>) {
    let start = group.to_be_bytes().to_vec();
    let end = match group.checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => vec![0xff; 9],
    };
    (start, end)
}

/// The second half of a `group | u64` key.
pub fn key_suffix_u64(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(8..16)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_group_then_number() {
        assert!(group_u64_key(1, 300) < group_u64_key(1, 301));
        assert!(group_u64_key(1, u64::MAX) < group_u64_key(2, 0));
        assert!(offset_key(7, 255) < offset_key(7, 256));
        let (start, end) = group_range(7);
        assert!(start.as_slice() <= &offset_key(7, 0)[..]);
        assert!(&offset_key(7, i64::MAX)[..] < end.as_slice());
        assert_eq!(key_suffix_u64(&group_u64_key(3, 42)), Some(42));
        assert!(timestamp_key(1, -1) < timestamp_key(1, 0));
        assert!(timestamp_key(1, i64::MIN) < timestamp_key(1, -5));
        assert!(timestamp_key(1, 1_700_000_000_000) < timestamp_key(1, i64::MAX));
        assert!(group_tag_u64_key(1, TAG_CHECKPOINT, 255) < group_tag_u64_key(1, TAG_CHECKPOINT, 256));
    }
}
