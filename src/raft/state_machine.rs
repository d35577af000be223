//! openraft state machine for one group. Applying an entry writes the group's
//! new state and its applied log id in one RocksDB write batch without fsync:
//! after a crash the state is consistent at some earlier applied id, and openraft
//! re-applies the rest from the durable log (committed id saved by the log store).
//!
//! A partition that holds records snapshots a checkpoint of its state taken
//! where a log file ends, the newest one below its log start: its snapshot
//! never copies records, and the log before it can be freed whole files at a
//! time. Such a partition builds a snapshot only when asked (its log start
//! moved); the controller and consumer-offsets partitions snapshot their whole
//! state every `snapshot_entries` entries.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use rocksdb::WriteBatch;
use tokio::io::AsyncWriteExt;

use super::command::{Command, CommandResponse};
use super::log_store::{blocking, io_error};
use super::snapshot::{
    dump_group, is_whole_state_snapshot, load_into_store, read_applied_state, read_checkpoint, write_checkpoint,
    AppliedState, CurrentSnapshot, SnapshotDir,
};
use super::{GroupId, LogId, NodeId, RaftStorageError, SnapshotMeta, StoredMembership, TypeConfig};
use crate::metrics::METRICS;
use crate::storage::keys::{self, CF_SM_STATE, TAG_APPLIED};
use crate::storage::partition::{Checkpoint, PartitionLog};
use crate::storage::segments::SegmentLog;
use crate::storage::{StorageError, Store};

type Entry = openraft::Entry<TypeConfig>;

/// What a group replicates: the state its entries build, kept in the node's
/// store, and published to the readers of that state. The controller, the
/// partitions and the consumer-offsets partitions each implement it in their
/// own module; this one only drives them.
pub trait ReplicatedState: Send + Sync + 'static {
    /// Applies one command. Whatever it holds, a command is answered, refused
    /// inside its response if it cannot be applied: an error or a panic here
    /// would stop the group, and every replica would meet the same entry again
    /// at each restart. Only a storage failure is an error.
    fn apply(
        &mut self,
        write: &mut WriteBatch,
        command: &Command,
        entry: &Applying<'_>,
    ) -> Result<CommandResponse, StorageError>;

    /// Called before applying an entry whose leader differs from the previous
    /// applied entry's, whatever the entry holds. Every replica applies the
    /// same entries in the same order, so every replica calls this at the same
    /// entries: a count of these calls numbers the group's leaders alike
    /// everywhere. openraft commits a blank entry at each election, so a
    /// leader passes here before its first command, and once its own entry is
    /// applied the state reflects its leadership. Like `apply`, only a storage
    /// failure is an error.
    fn leader_changed(&mut self, _write: &mut WriteBatch, _entry: &Applying<'_>) -> Result<(), StorageError> {
        Ok(())
    }

    /// Adds to `write` the state that is not already staged by `apply`.
    fn stage(&self, _write: &mut WriteBatch, _store: &Store, _group: GroupId) -> Result<(), StorageError> {
        Ok(())
    }

    /// Reads the state back from the store (at start, after a snapshot install).
    fn reload(&mut self, store: &Store, group: GroupId) -> Result<(), StorageError>;

    /// Makes the applied state visible to its readers.
    fn publish(&self);

    /// A state that holds records: snapshotted as checkpoints of its state,
    /// its log cut only where its log start moved.
    fn records(&self) -> Option<&PartitionLog> {
        None
    }

    /// The state to checkpoint now, with the replication layer's own record
    /// of this point; states that hold no records keep no checkpoints.
    fn checkpoint(&self, _replication: Vec<u8>) -> Option<Checkpoint> {
        None
    }

    /// Stages the state's own part of a checkpoint received in a snapshot
    /// (`Checkpoint::state`), beside the partition's own state.
    fn stage_restore(
        &self,
        _write: &mut WriteBatch,
        _store: &Store,
        _group: GroupId,
        _checkpoint: &Checkpoint,
    ) -> Result<(), StorageError> {
        Ok(())
    }
}

/// What a command's apply may need to know about the entry that carries it.
pub struct Applying<'a> {
    pub index: u64,
    pub store: &'a Store,
    pub group: GroupId,
    membership: &'a StoredMembership,
}

impl<'a> Applying<'a> {
    pub fn new(index: u64, store: &'a Store, group: GroupId, membership: &'a StoredMembership) -> Self {
        Applying {
            index,
            store,
            group,
            membership,
        }
    }

    /// The group's voters as of this entry.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.membership.membership().voter_ids().collect()
    }
}

/// How a group's snapshots are made and loaded.
#[derive(Clone)]
enum SnapshotKind {
    /// Every state-machine key of the group.
    WholeState,
    /// The newest checkpoint below the partition's log start.
    Checkpoint(PartitionLog),
}

pub struct GroupStateMachine {
    group: GroupId,
    store: Store,
    state: Box<dyn ReplicatedState>,
    applied: Option<LogId>,
    membership: StoredMembership,
    snapshots: SnapshotDir,
    /// The group's log files: a checkpoint is taken where one ends.
    segments: Arc<SegmentLog>,
}

impl GroupStateMachine {
    /// Loads the group's persisted state and publishes it.
    pub fn open(
        group: GroupId,
        store: Store,
        mut state: Box<dyn ReplicatedState>,
        snapshot_root: &Path,
        segments: Arc<SegmentLog>,
    ) -> Result<Self, StorageError> {
        let (applied, membership) = read_applied_state(&store, group)?;
        state.reload(&store, group)?;
        state.publish();
        Ok(GroupStateMachine {
            group,
            store,
            state,
            applied,
            membership,
            snapshots: SnapshotDir::new(snapshot_root, group),
            segments,
        })
    }

    fn snapshot_kind(&self) -> SnapshotKind {
        match self.state.records() {
            Some(log) => SnapshotKind::Checkpoint(log.clone()),
            None => SnapshotKind::WholeState,
        }
    }

    fn builder(&self) -> GroupSnapshotBuilder {
        GroupSnapshotBuilder {
            group: self.group,
            store: self.store.clone(),
            snapshots: self.snapshots.clone(),
            kind: self.snapshot_kind(),
        }
    }

    /// The partition's state after the entry just applied, where the log can be cut.
    fn stage_checkpoint(&self, write: &mut WriteBatch) -> Result<(), StorageError> {
        let (Some(log), Some(applied)) = (self.state.records(), self.applied) else {
            return Ok(());
        };
        if !self.segments.ends_file(applied.index) {
            return Ok(());
        }
        let replication = bincode::serialize(&(self.applied, &self.membership))?;
        match self.state.checkpoint(replication) {
            Some(checkpoint) => log.stage_checkpoint(write, applied.index, &checkpoint),
            None => Ok(()),
        }
    }

    fn persist(&mut self, mut write: WriteBatch) -> Result<(), StorageError> {
        self.state.stage(&mut write, &self.store, self.group)?;
        let applied = bincode::serialize(&(self.applied, &self.membership))?;
        write.put_cf(
            self.store.cf(CF_SM_STATE),
            keys::group_tag_key(self.group, TAG_APPLIED),
            applied,
        );
        self.store.write_buffered(write)
    }

    fn apply_entries(&mut self, entries: impl Iterator<Item = Entry>) -> Result<Vec<CommandResponse>, StorageError> {
        let mut write = WriteBatch::default();
        let mut responses = Vec::new();
        for entry in entries {
            if matches!(&entry.payload, EntryPayload::Normal(command) if command.reads_partition_log()) {
                // Its apply reads what the entries before it wrote, from the
                // store: they are written first, with the applied id they
                // reach, as at the end of a call.
                self.persist(std::mem::take(&mut write))?;
            }
            // The leader id is (term, node): a new one at every election. The
            // previous applied id is the same on every replica, also after a
            // restart or a snapshot install (both restore it). Term 0 is the
            // initial membership, which no leader wrote.
            let new_leader = entry.log_id.leader_id.get_term() > 0
                && self.applied.map(|id| id.leader_id) != Some(entry.log_id.leader_id);
            self.applied = Some(entry.log_id);
            if new_leader {
                let applying = Applying::new(entry.log_id.index, &self.store, self.group, &self.membership);
                self.state.leader_changed(&mut write, &applying)?;
            }
            let response = match entry.payload {
                EntryPayload::Blank => CommandResponse::Empty,
                EntryPayload::Normal(command) => {
                    let applying = Applying::new(entry.log_id.index, &self.store, self.group, &self.membership);
                    self.state.apply(&mut write, &command, &applying)?
                }
                EntryPayload::Membership(membership) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), membership);
                    CommandResponse::Empty
                }
            };
            self.stage_checkpoint(&mut write)?;
            responses.push(response);
        }
        self.persist(write)?;
        self.state.publish();
        Ok(responses)
    }
}

fn snapshot_of(meta: SnapshotMeta, file: std::fs::File) -> Snapshot<TypeConfig> {
    Snapshot {
        meta,
        snapshot: Box::new(tokio::fs::File::from_std(file)),
    }
}

pub struct GroupSnapshotBuilder {
    group: GroupId,
    store: Store,
    snapshots: SnapshotDir,
    kind: SnapshotKind,
}

impl GroupSnapshotBuilder {
    fn build(&self) -> Result<(SnapshotMeta, std::fs::File), StorageError> {
        match &self.kind {
            SnapshotKind::WholeState => self.snapshots.build(|path| dump_group(&self.store, self.group, path)),
            SnapshotKind::Checkpoint(log) => self.build_checkpoint(log),
        }
    }

    /// The newest checkpoint no record above the log start precedes (nor
    /// one a later compaction step reads, see
    /// `PartitionLog::snapshot_checkpoint`); the current snapshot again when there is no newer one, and an empty one
    /// (which openraft ignores) when there is none at all.
    fn build_checkpoint(&self, log: &PartitionLog) -> Result<(SnapshotMeta, std::fs::File), StorageError> {
        let log_start = log.load_offsets()?.log_start_offset;
        let newest = log.snapshot_checkpoint(log_start)?;
        let current = self.snapshots.current()?;
        let current_index = match &current {
            CurrentSnapshot::Found(meta, _) => meta.last_log_id.map(|id| id.index),
            _ => None,
        };
        match (newest, current) {
            (Some((index, checkpoint)), _) if current_index.is_none_or(|current| index > current) => {
                let built = self.snapshots.build(|path| write_checkpoint(path, &checkpoint))?;
                let mut forget = WriteBatch::default();
                log.stage_forget_checkpoints_before(&mut forget, index);
                self.store.write_buffered(forget)?;
                Ok(built)
            }
            (_, CurrentSnapshot::Found(meta, file)) => Ok((meta, file)),
            _ => Ok((
                SnapshotMeta {
                    last_log_id: None,
                    last_membership: StoredMembership::default(),
                    snapshot_id: "none".into(),
                },
                self.snapshots.receiving_file()?,
            )),
        }
    }

    /// Loads a snapshot received from the leader into the store. A
    /// whole-state snapshot is loaded as such whatever the group's kind: the
    /// consumer-offsets partitions made them before they held records, and a
    /// leader upgraded since may still send its last one.
    fn load(&self, path: &Path, state: &dyn ReplicatedState) -> Result<(), StorageError> {
        match &self.kind {
            SnapshotKind::Checkpoint(_) if is_whole_state_snapshot(path)? => {
                load_into_store(&self.store, self.group, path)
            }
            SnapshotKind::WholeState => load_into_store(&self.store, self.group, path),
            SnapshotKind::Checkpoint(log) => {
                let (checkpoint, applied): (Checkpoint, AppliedState) = read_checkpoint(path, self.group)?;
                let mut write = WriteBatch::default();
                let index = applied.0.map_or(0, |id| id.index);
                log.stage_restore(&mut write, index, &checkpoint)?;
                state.stage_restore(&mut write, &self.store, self.group, &checkpoint)?;
                write.put_cf(
                    self.store.cf(CF_SM_STATE),
                    keys::group_tag_key(self.group, TAG_APPLIED),
                    bincode::serialize(&applied)?,
                );
                self.store.write_durable(write)
            }
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for GroupSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let started = std::time::Instant::now();
        let (meta, file) =
            blocking(|| self.build()).map_err(|err| io_error(ErrorSubject::None, ErrorVerb::Write, err))?;
        METRICS.raft_snapshot_built();
        tracing::info!(
            group = self.group,
            last_log_id = ?meta.last_log_id,
            bytes = file.metadata().map_or(0, |m| m.len()),
            micros = started.elapsed().as_micros() as u64,
            "snapshot built"
        );
        Ok(snapshot_of(meta, file))
    }
}

impl RaftStateMachine<TypeConfig> for GroupStateMachine {
    type SnapshotBuilder = GroupSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), RaftStorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries = entries.into_iter();
        blocking(|| self.apply_entries(entries))
            .map_err(|err| io_error(ErrorSubject::StateMachine, ErrorVerb::Write, err))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.builder()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, RaftStorageError> {
        let file = blocking(|| self.snapshots.receiving_file())
            .map_err(|err| io_error(ErrorSubject::None, ErrorVerb::Write, err))?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), RaftStorageError> {
        let install = async {
            // Finish openraft's writes into the received file before reading it.
            snapshot.flush().await?;
            let mut received = (*snapshot).into_std().await;
            let builder = self.builder();
            blocking(|| -> Result<(), StorageError> {
                self.snapshots
                    .install(meta, &mut received, |path| builder.load(path, self.state.as_ref()))?;
                self.state.reload(&self.store, self.group)
            })?;
            self.applied = meta.last_log_id;
            self.membership = meta.last_membership.clone();
            self.state.publish();
            tracing::info!(group = self.group, last_log_id = ?meta.last_log_id, "snapshot installed");
            METRICS.raft_snapshot_installed();
            Ok::<_, StorageError>(())
        };
        install
            .await
            .map_err(|err| io_error(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write, err))
    }

    /// A lost snapshot file is not fatal: the state machine has applied all it
    /// held, so a new snapshot is built from it, and a leader can still send one.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        let current =
            blocking(|| self.snapshots.current()).map_err(|err| io_error(ErrorSubject::None, ErrorVerb::Read, err))?;
        match current {
            CurrentSnapshot::Found(meta, file) => Ok(Some(snapshot_of(meta, file))),
            CurrentSnapshot::None => Ok(None),
            CurrentSnapshot::Lost(why) => {
                tracing::warn!(group = self.group, why = %why, "the current snapshot is lost; building a new one");
                let builder = self.builder();
                let (meta, file) =
                    blocking(|| builder.build()).map_err(|err| io_error(ErrorSubject::None, ErrorVerb::Write, err))?;
                Ok(Some(snapshot_of(meta, file)).filter(|snapshot| snapshot.meta.last_log_id.is_some()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use openraft::CommittedLeaderId;

    use super::*;
    use crate::storage::segments::RollPolicy;

    /// Remembers the entries at which it was told of a new leader.
    struct Leaders(Arc<Mutex<Vec<u64>>>);

    impl ReplicatedState for Leaders {
        fn apply(
            &mut self,
            _write: &mut WriteBatch,
            _command: &Command,
            _entry: &Applying<'_>,
        ) -> Result<CommandResponse, StorageError> {
            Ok(CommandResponse::Empty)
        }

        fn leader_changed(&mut self, _write: &mut WriteBatch, entry: &Applying<'_>) -> Result<(), StorageError> {
            self.0.lock().unwrap().push(entry.index);
            Ok(())
        }

        fn reload(&mut self, _store: &Store, _group: GroupId) -> Result<(), StorageError> {
            Ok(())
        }

        fn publish(&self) {}
    }

    fn blank(term: u64, leader: NodeId, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, leader), index),
            payload: EntryPayload::Blank,
        }
    }

    /// The rule leader epochs are built on: a leader is new at its first
    /// entry, term 0 (initialisation) is none, and the previous leader is
    /// remembered across a restart (a real RocksDB and log directory).
    #[test]
    fn a_new_leader_is_seen_at_its_first_entry_also_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let roll = RollPolicy {
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(3600),
        };
        let open = |store: &Store| {
            let segments = Arc::new(SegmentLog::open(&dir.path().join("log"), roll).unwrap());
            let state = Box::new(Leaders(Arc::clone(&seen)));
            GroupStateMachine::open(5, store.clone(), state, &dir.path().join("snapshots"), segments).unwrap()
        };
        {
            let store = Store::open(&dir.path().join("db")).unwrap();
            let mut machine = open(&store);
            let entries = [blank(0, 0, 0), blank(1, 1, 1), blank(1, 1, 2), blank(2, 2, 3)];
            machine.apply_entries(entries.into_iter()).unwrap();
        }
        let store = Store::open(&dir.path().join("db")).unwrap();
        let mut machine = open(&store);
        machine
            .apply_entries([blank(2, 2, 4), blank(3, 1, 5), blank(3, 1, 6)].into_iter())
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![1, 3, 5]);
    }
}
