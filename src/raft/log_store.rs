//! openraft log storage for one group: entries in the group's segment files
//! (the only place a produced record's bytes are written), votes and the
//! purge point in the node's RocksDB.
//!
//! Durability is enforced here: votes and appended entries are fsynced before
//! openraft is told they are stored, so an acknowledged write survives kill -9.
//! Recording the purge point syncs RocksDB's write-ahead log, which also makes
//! the state machine's earlier unsynced writes durable: the state the purged
//! entries built can no longer be lost.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError, Vote};
use rocksdb::WriteBatch;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{GroupId, LogId, NodeId, RaftStorageError, TypeConfig};
use crate::metrics::METRICS;
use crate::storage::keys::{self, CF_RAFT_STATE};
use crate::storage::partition::BatchSource;
use crate::storage::segments::{RollPolicy, SegmentLog};
use crate::storage::{StorageError, Store};

type Entry = openraft::Entry<TypeConfig>;

/// Version tag of an entry's encoding inside its log record.
const ENTRY_FORMAT: u8 = 1;
/// The entry bytes one AppendEntries carries (at least one entry, whatever its size).
const REPLICATION_FRAME_BYTES: usize = 2 << 20;

pub fn encode_entry(entry: &Entry) -> Result<Vec<u8>, StorageError> {
    let mut out = vec![ENTRY_FORMAT];
    bincode::serialize_into(&mut out, entry)?;
    Ok(out)
}

pub fn decode_entry(raw: &[u8]) -> Result<Entry, StorageError> {
    match raw.split_first() {
        Some((&ENTRY_FORMAT, body)) => Ok(bincode::deserialize(body)?),
        Some((version, _)) => Err(StorageError::Encoding(format!("unknown entry format {version}"))),
        None => Err(StorageError::Encoding("empty log entry".into())),
    }
}

/// Where a group's log files live under the node's data dir.
pub fn log_dir(data_dir: &Path, group: GroupId) -> PathBuf {
    data_dir.join("log").join(format!("group-{group}"))
}

/// Whether this node ever held Raft state (a vote or a log entry) for `group`.
pub fn has_raft_state(store: &Store, data_dir: &Path, group: GroupId) -> Result<bool, StorageError> {
    Ok(store.has_group_keys(CF_RAFT_STATE, group)? || SegmentLog::exists(&log_dir(data_dir, group)))
}

/// Reads a partition's record batches out of the log entries that carried them.
pub struct EntryBatches(pub Arc<SegmentLog>);

impl BatchSource for EntryBatches {
    fn batches(&self, entry: u64) -> Result<Option<Vec<Bytes>>, StorageError> {
        let Some(raw) = self.0.read(entry)? else {
            return Ok(None);
        };
        Ok(Some(match decode_entry(&raw)?.payload {
            EntryPayload::Normal(command) => command.into_appended_batches().map(|batch| batch.bytes).collect(),
            _ => Vec::new(),
        }))
    }
}

#[derive(Clone)]
pub struct GroupLogStore {
    group: GroupId,
    store: Store,
    log: Arc<SegmentLog>,
}

pub(crate) fn io_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    err: impl std::error::Error + 'static,
) -> RaftStorageError {
    StorageIOError::new(subject, verb, openraft::AnyError::new(&err)).into()
}

/// Why a range of the log cannot be served.
#[derive(Debug, thiserror::Error)]
enum LogReadError {
    /// Serving what is left after the purge point would hand out entries as if
    /// they followed the requested start: a leader would then send an empty
    /// follower the tail of its log instead of a snapshot.
    #[error("group {group}: log entries up to {purged} were purged; entries from {from} are no longer held")]
    Purged { group: GroupId, purged: u64, from: u64 },
    #[error("group {group}: the log has no entry {missing} but holds entry {found}")]
    Hole { group: GroupId, missing: u64, found: u64 },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Runs blocking RocksDB work without stalling the other tasks of this worker thread.
pub(crate) fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

impl GroupLogStore {
    pub fn open(group: GroupId, store: Store, data_dir: &Path, roll: RollPolicy) -> Result<Self, StorageError> {
        let log = SegmentLog::open(&log_dir(data_dir, group), roll).map_err(|err| match err {
            StorageError::Corrupt { what, .. } => StorageError::Corrupt { group, what },
            other => other,
        })?;
        Ok(GroupLogStore {
            group,
            store,
            log: Arc::new(log),
        })
    }

    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The group's log files, for readers of committed entries.
    pub fn segments(&self) -> Arc<SegmentLog> {
        Arc::clone(&self.log)
    }

    fn read_state<T: DeserializeOwned>(&self, tag: u8) -> Result<Option<T>, StorageError> {
        self.store
            .get(CF_RAFT_STATE, &keys::group_tag_key(self.group, tag))?
            .map(|raw| bincode::deserialize(&raw).map_err(StorageError::from))
            .transpose()
    }

    fn state_write<T: Serialize>(&self, tag: u8, value: &T) -> Result<WriteBatch, StorageError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.store.cf(CF_RAFT_STATE),
            keys::group_tag_key(self.group, tag),
            bincode::serialize(value)?,
        );
        Ok(batch)
    }

    fn last_entry(&self) -> Result<Option<Entry>, StorageError> {
        let Some((_, last)) = self.log.bounds() else {
            return Ok(None);
        };
        self.log.read(last)?.map(|raw| decode_entry(&raw)).transpose()
    }

    /// The consecutive entries `from..until` this store holds, which may end early
    /// (past the last entry, or once `budget` bytes are read, though never
    /// before the first entry) but never start late: a range that begins at or
    /// below the purge point, or runs into a hole, is refused.
    fn entries_in(&self, from: u64, until: Option<u64>, budget: usize) -> Result<Vec<Entry>, LogReadError> {
        if until.is_some_and(|until| until <= from) {
            return Ok(Vec::new());
        }
        let purged: Option<LogId> = self.read_state(keys::TAG_LAST_PURGED)?;
        if let Some(purged) = purged.filter(|purged| from <= purged.index) {
            return Err(LogReadError::Purged {
                group: self.group,
                purged: purged.index,
                from,
            });
        }
        let mut entries = Vec::new();
        let last = match self.log.bounds() {
            Some((first, _)) if first > from => {
                return Err(LogReadError::Hole {
                    group: self.group,
                    missing: from,
                    found: first,
                })
            }
            Some((_, last)) => last,
            None => return Ok(entries),
        };
        let end = until.map_or(last + 1, |until| until.min(last + 1));
        let mut read = 0;
        for index in from..end {
            if read >= budget {
                break;
            }
            let raw = self.log.read(index)?.ok_or(LogReadError::Hole {
                group: self.group,
                missing: index,
                found: last,
            })?;
            read += raw.len();
            entries.push(decode_entry(&raw)?);
        }
        Ok(entries)
    }
}

impl RaftLogReader<TypeConfig> for GroupLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let until = match range.end_bound() {
            Bound::Included(i) => Some(i + 1),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        blocking(|| self.entries_in(from, until, usize::MAX))
            .map_err(|err| io_error(ErrorSubject::LogIndex(from), ErrorVerb::Read, err))
    }

    /// What the leader sends a follower in one AppendEntries: bounded in bytes,
    /// so a frame to a lagging follower is committed well within the timeout
    /// openraft gives it (one heartbeat interval) and never resent forever.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, RaftStorageError> {
        blocking(|| self.entries_in(start, Some(end), REPLICATION_FRAME_BYTES))
            .map_err(|err| io_error(ErrorSubject::LogIndex(start), ErrorVerb::Read, err))
    }
}

impl RaftLogStorage<TypeConfig> for GroupLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let read = || -> Result<_, StorageError> {
            let last_purged: Option<LogId> = self.read_state(keys::TAG_LAST_PURGED)?;
            let last = self.last_entry()?.map(|entry| entry.log_id).or(last_purged);
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last,
            })
        };
        blocking(read).map_err(|err| io_error(ErrorSubject::Logs, ErrorVerb::Read, err))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), RaftStorageError> {
        let write = || self.store.write_durable(self.state_write(keys::TAG_VOTE, vote)?);
        blocking(write).map_err(|err| io_error(ErrorSubject::Vote, ErrorVerb::Write, err))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, RaftStorageError> {
        blocking(|| self.read_state(keys::TAG_VOTE)).map_err(|err| io_error(ErrorSubject::Vote, ErrorVerb::Read, err))
    }

    /// Saved so that a restarted node re-applies committed entries the state
    /// machine had not made durable before the crash.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        let write = || {
            self.store
                .write_buffered(self.state_write(keys::TAG_COMMITTED, &committed)?)
        };
        blocking(write).map_err(|err| io_error(ErrorSubject::Store, ErrorVerb::Write, err))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, RaftStorageError> {
        blocking(|| self.read_state::<Option<LogId>>(keys::TAG_COMMITTED))
            .map(Option::flatten)
            .map_err(|err| io_error(ErrorSubject::Store, ErrorVerb::Read, err))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let encoded = entries
            .into_iter()
            .map(|entry| Ok((entry.log_id.index, encode_entry(&entry)?)))
            .collect::<Result<Vec<(u64, Vec<u8>)>, StorageError>>()
            .map_err(|err| io_error(ErrorSubject::Logs, ErrorVerb::Write, err))?;
        let bytes = encoded.iter().map(|(_, raw)| raw.len()).sum();
        // The write is synced before returning, so entries are readable and durable at once.
        let started = std::time::Instant::now();
        let result = blocking(|| {
            self.log
                .append(encoded.iter().map(|(index, raw)| (*index, raw.as_slice())))
        });
        METRICS.raft_log_appended(encoded.len(), bytes, started.elapsed());
        let io_result = result
            .as_ref()
            .map(|_| ())
            .map_err(|err| std::io::Error::other(err.to_string()));
        callback.log_io_completed(io_result);
        result.map_err(|err| io_error(ErrorSubject::Logs, ErrorVerb::Write, err))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        blocking(|| self.log.truncate_from(log_id.index))
            .map_err(|err| io_error(ErrorSubject::Logs, ErrorVerb::Delete, err))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        // The purge point is durable before any file goes: readers refuse what
        // lies below it, and a crash in between leaves files the next purge frees.
        let purge = || -> Result<(), StorageError> {
            self.store
                .write_durable(self.state_write(keys::TAG_LAST_PURGED, &log_id)?)?;
            self.log.purge_through(log_id.index)
        };
        blocking(purge).map_err(|err| io_error(ErrorSubject::Logs, ErrorVerb::Delete, err))
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn put_entries(log: &GroupLogStore, indexes: impl IntoIterator<Item = u64>) {
        let encoded: Vec<(u64, Vec<u8>)> = indexes
            .into_iter()
            .map(|index| {
                let entry = Entry {
                    log_id: log_id(index),
                    payload: EntryPayload::Blank,
                };
                (index, encode_entry(&entry).unwrap())
            })
            .collect();
        log.log
            .append(encoded.iter().map(|(index, raw)| (*index, raw.as_slice())))
            .unwrap();
    }

    fn open(dir: &Path, group: GroupId) -> GroupLogStore {
        let store = Store::open(dir).unwrap();
        let roll = RollPolicy {
            max_bytes: 1 << 20,
            max_age: std::time::Duration::from_secs(3600),
        };
        GroupLogStore::open(group, store, dir, roll).unwrap()
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|entry| entry.log_id.index).collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_purged_range_is_refused_not_served_from_what_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), 4);
        put_entries(&log, 0..10);
        assert_eq!(indexes(&log.try_get_log_entries(0..3).await.unwrap()), vec![0, 1, 2]);

        log.purge(log_id(5)).await.unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(5)));
        assert_eq!(state.last_log_id, Some(log_id(9)));
        for purged in [0..8, 5..7, 0..1] {
            assert!(
                log.try_get_log_entries(purged.clone()).await.is_err(),
                "{purged:?} starts in the purged part"
            );
        }
        assert_eq!(indexes(&log.try_get_log_entries(6..8).await.unwrap()), vec![6, 7]);
        assert_eq!(
            indexes(&log.try_get_log_entries(6..).await.unwrap()),
            vec![6, 7, 8, 9],
            "a range past the last entry ends early"
        );
        assert!(log.try_get_log_entries(10..20).await.unwrap().is_empty());
        assert!(
            log.try_get_log_entries(3..3).await.unwrap().is_empty(),
            "an empty range"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_log_with_a_hole_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), 2);
        // What a follower was left with when a leader streamed it a purged log's
        // tail: entries from 38 on and no purge point below them.
        put_entries(&log, 38..42);
        assert!(log.try_get_log_entries(0..64).await.is_err());
        assert!(log.try_get_log_entries(0..1).await.is_err());
        assert!(
            log.log.append([(44, [ENTRY_FORMAT].as_slice())]).is_err(),
            "the segment log itself refuses a hole"
        );
        assert_eq!(
            indexes(&log.try_get_log_entries(38..42).await.unwrap()),
            vec![38, 39, 40, 41]
        );
    }
}
