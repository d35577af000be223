//! openraft log storage for one group, in the node's shared RocksDB.
//!
//! Durability is enforced here: votes and appended entries are fsynced before
//! openraft is told they are stored, so an acknowledged write survives kill -9.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError, Vote};
use rocksdb::WriteBatch;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{GroupId, LogId, NodeId, RaftStorageError, TypeConfig};
use crate::metrics::METRICS;
use crate::storage::keys::{self, CF_RAFT_LOG, CF_RAFT_STATE};
use crate::storage::{StorageError, Store};

type Entry = openraft::Entry<TypeConfig>;

#[derive(Clone)]
pub struct GroupLogStore {
    group: GroupId,
    store: Store,
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
    pub fn new(group: GroupId, store: Store) -> Self {
        GroupLogStore { group, store }
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
        let (start, end) = keys::group_range(self.group);
        let mut iter = self.store.db().raw_iterator_cf(self.store.cf(CF_RAFT_LOG));
        iter.seek_for_prev(&end);
        match (iter.key(), iter.value()) {
            (Some(key), Some(value)) if key >= start.as_slice() && key < end.as_slice() => {
                Ok(Some(bincode::deserialize(value)?))
            }
            _ => {
                iter.status()?;
                Ok(None)
            }
        }
    }

    /// The consecutive entries `from..until` this store holds, which may end early
    /// (past the last entry) but never start late: a range that begins at or
    /// below the purge point, or runs into a hole, is refused.
    fn entries_in(&self, from: u64, until: Option<u64>) -> Result<Vec<Entry>, LogReadError> {
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
        for item in self
            .store
            .scan_group(CF_RAFT_LOG, self.group, &keys::group_u64_key(self.group, from))
        {
            let (key, value) = item?;
            let index = keys::key_suffix_u64(&key).unwrap_or(u64::MAX);
            if until.is_some_and(|until| index >= until) && !entries.is_empty() {
                break;
            }
            // Also past the range when nothing was found before it: the log then
            // starts after `from` with no purge point to account for the gap.
            let expected = from + entries.len() as u64;
            if index != expected {
                return Err(LogReadError::Hole {
                    group: self.group,
                    missing: expected,
                    found: index,
                });
            }
            entries.push(bincode::deserialize(&value).map_err(StorageError::from)?);
        }
        Ok(entries)
    }

    fn delete_log_range(&self, batch: &mut WriteBatch, from: u64, until: Option<u64>) {
        let end = match until {
            Some(until) => keys::group_u64_key(self.group, until).to_vec(),
            None => keys::group_range(self.group).1,
        };
        batch.delete_range_cf(
            self.store.cf(CF_RAFT_LOG),
            keys::group_u64_key(self.group, from).to_vec(),
            end,
        );
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
        blocking(|| self.entries_in(from, until))
            .map_err(|err| io_error(ErrorSubject::LogIndex(from), ErrorVerb::Read, err))
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
        let mut batch = WriteBatch::default();
        let cf = self.store.cf(CF_RAFT_LOG);
        let (mut count, mut bytes) = (0, 0);
        for entry in entries {
            let value = bincode::serialize(&entry)
                .map_err(|err| io_error(ErrorSubject::Logs, ErrorVerb::Write, StorageError::from(err)))?;
            count += 1;
            bytes += value.len();
            batch.put_cf(cf, keys::group_u64_key(self.group, entry.log_id.index), value);
        }
        // The write is synced before returning, so entries are readable and durable at once.
        let started = std::time::Instant::now();
        let result = blocking(|| self.store.write_durable(batch));
        METRICS.raft_log_appended(count, bytes, started.elapsed());
        let io_result = result
            .as_ref()
            .map(|_| ())
            .map_err(|err| std::io::Error::other(err.to_string()));
        callback.log_io_completed(io_result);
        result.map_err(|err| io_error(ErrorSubject::Logs, ErrorVerb::Write, err))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        let mut batch = WriteBatch::default();
        self.delete_log_range(&mut batch, log_id.index, None);
        blocking(|| self.store.write_durable(batch)).map_err(|err| io_error(ErrorSubject::Logs, ErrorVerb::Delete, err))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        // The purge point and the deletion are one atomic write, so the log never
        // has a hole that get_log_state would not account for.
        let purge = || -> Result<(), StorageError> {
            let mut batch = self.state_write(keys::TAG_LAST_PURGED, &log_id)?;
            self.delete_log_range(&mut batch, 0, Some(log_id.index + 1));
            self.store.write_durable(batch)
        };
        blocking(purge).map_err(|err| io_error(ErrorSubject::Logs, ErrorVerb::Delete, err))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn put_entries(store: &Store, group: GroupId, indexes: impl IntoIterator<Item = u64>) {
        let mut batch = WriteBatch::default();
        for index in indexes {
            let entry = Entry {
                log_id: log_id(index),
                payload: EntryPayload::Blank,
            };
            batch.put_cf(
                store.cf(CF_RAFT_LOG),
                keys::group_u64_key(group, index),
                bincode::serialize(&entry).unwrap(),
            );
        }
        store.write_durable(batch).unwrap();
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|entry| entry.log_id.index).collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_purged_range_is_refused_not_served_from_what_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut log = GroupLogStore::new(4, store.clone());
        put_entries(&store, 4, 0..10);
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
        let store = Store::open(dir.path()).unwrap();
        let mut log = GroupLogStore::new(2, store.clone());
        // What a follower was left with when a leader streamed it a purged log's
        // tail: entries from 38 on and no purge point below them.
        put_entries(&store, 2, 38..42);
        assert!(log.try_get_log_entries(0..64).await.is_err());
        assert!(log.try_get_log_entries(0..1).await.is_err());
        put_entries(&store, 2, [44]);
        assert!(log.try_get_log_entries(40..45).await.is_err(), "entry 43 is missing");
        assert_eq!(
            indexes(&log.try_get_log_entries(38..42).await.unwrap()),
            vec![38, 39, 40, 41]
        );
    }
}
