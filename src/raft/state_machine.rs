//! openraft state machine for one group. Applying an entry writes the group's
//! new state and its applied log id in one RocksDB write batch without fsync:
//! after a crash the state is consistent at some earlier applied id, and openraft
//! re-applies the rest from the durable log (committed id saved by the log store).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use rocksdb::WriteBatch;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::command::{Command, CommandResponse};
use super::log_store::{blocking, io_error};
use super::snapshot::{read_applied_state, CurrentSnapshot, SnapshotDir};
use super::{GroupId, LogId, NodeId, RaftStorageError, SnapshotMeta, StoredMembership, TypeConfig};
use crate::cluster::metadata::ClusterState;
use crate::group::store::SharedGroups;
use crate::metrics::METRICS;
use crate::storage::keys::{self, CF_SM_STATE, TAG_APPLIED, TAG_CLUSTER};
use crate::storage::partition::{PartitionLog, PartitionOffsets};
use crate::storage::producers::Producers;
use crate::storage::{StorageError, Store};

type Entry = openraft::Entry<TypeConfig>;

/// What a group replicates, and where it publishes its state for readers.
pub enum GroupRole {
    Controller {
        cluster: ClusterState,
        published: watch::Sender<Arc<ClusterState>>,
    },
    Partition {
        log: PartitionLog,
        offsets: PartitionOffsets,
        producers: Producers,
        published: watch::Sender<PartitionOffsets>,
        /// Bumped on every append to any partition; wakes long-polling fetches.
        appends: Arc<watch::Sender<u64>>,
    },
    /// A `__consumer_offsets` partition: committed offsets of consumer groups.
    Offsets { groups: SharedGroups },
}

impl GroupRole {
    /// Applies one command. Whatever it holds, a command is answered, refused
    /// inside its response if it cannot be applied: an error or a panic here
    /// would stop the group, and every replica would meet the same entry again
    /// at each restart. Only a storage failure is an error.
    fn apply(
        &mut self,
        write: &mut WriteBatch,
        command: &Command,
        store: &Store,
        group: GroupId,
        membership: &StoredMembership,
    ) -> Result<CommandResponse, StorageError> {
        match (self, command) {
            (
                GroupRole::Partition {
                    log,
                    offsets,
                    producers,
                    ..
                },
                Command::Append { batches },
            ) => Ok(match log.stage_append(write, offsets, producers, batches)? {
                Ok(base_offset) => CommandResponse::Appended {
                    base_offset,
                    log_start_offset: offsets.log_start_offset,
                },
                Err(refusal) => CommandResponse::ProduceRefused(refusal),
            }),
            (GroupRole::Controller { cluster, .. }, Command::AllocateProducerId) => {
                Ok(CommandResponse::ProducerId(cluster.allocate_producer_id()))
            }
            (GroupRole::Offsets { groups }, Command::Group(change)) => {
                let mut groups = groups.write().unwrap_or_else(|poisoned| poisoned.into_inner());
                crate::group::store::apply(&mut groups, change, store, group, write)?;
                Ok(CommandResponse::Empty)
            }
            (
                GroupRole::Controller { cluster, .. },
                Command::CreateTopic { .. }
                | Command::DeleteTopic { .. }
                | Command::CreatePartitions { .. }
                | Command::AlterTopicConfigs { .. },
            ) => {
                let voters: BTreeSet<NodeId> = membership.membership().voter_ids().collect();
                Ok(CommandResponse::Controller(cluster.apply(command, &voters)))
            }
            _ => Ok(CommandResponse::WrongGroup),
        }
    }

    fn stage_state(&self, write: &mut WriteBatch, store: &Store, group: GroupId) -> Result<(), StorageError> {
        if let GroupRole::Controller { cluster, .. } = self {
            write.put_cf(
                store.cf(CF_SM_STATE),
                keys::group_tag_key(group, TAG_CLUSTER),
                bincode::serialize(cluster)?,
            );
        }
        Ok(())
    }

    fn reload(&mut self, store: &Store, group: GroupId) -> Result<(), StorageError> {
        match self {
            GroupRole::Controller { cluster, .. } => {
                *cluster = match store.get(CF_SM_STATE, &keys::group_tag_key(group, TAG_CLUSTER))? {
                    Some(raw) => bincode::deserialize(&raw)?,
                    None => ClusterState::default(),
                };
            }
            GroupRole::Partition {
                log,
                offsets,
                producers,
                ..
            } => {
                *offsets = log.load_offsets()?;
                *producers = log.load_producers()?;
            }
            GroupRole::Offsets { groups } => {
                let loaded = crate::group::store::load(store, group)?;
                *groups.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = loaded;
            }
        }
        Ok(())
    }

    fn publish(&self) {
        match self {
            GroupRole::Controller { cluster, published } => {
                published.send_replace(Arc::new(cluster.clone()));
            }
            GroupRole::Partition {
                offsets,
                published,
                appends,
                ..
            } => {
                published.send_replace(*offsets);
                appends.send_modify(|count| *count = count.wrapping_add(1));
            }
            // Readers share the map the state machine updates.
            GroupRole::Offsets { .. } => {}
        }
    }
}

pub struct GroupStateMachine {
    group: GroupId,
    store: Store,
    role: GroupRole,
    applied: Option<LogId>,
    membership: StoredMembership,
    snapshots: SnapshotDir,
}

impl GroupStateMachine {
    /// Loads the group's persisted state and publishes it.
    pub fn open(group: GroupId, store: Store, mut role: GroupRole, snapshot_root: &Path) -> Result<Self, StorageError> {
        let (applied, membership) = read_applied_state(&store, group)?;
        role.reload(&store, group)?;
        role.publish();
        Ok(GroupStateMachine {
            group,
            store,
            role,
            applied,
            membership,
            snapshots: SnapshotDir::new(snapshot_root, group),
        })
    }

    fn persist(&mut self, mut write: WriteBatch) -> Result<(), StorageError> {
        self.role.stage_state(&mut write, &self.store, self.group)?;
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
            self.applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => CommandResponse::Empty,
                EntryPayload::Normal(command) => {
                    self.role
                        .apply(&mut write, &command, &self.store, self.group, &self.membership)?
                }
                EntryPayload::Membership(membership) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), membership);
                    CommandResponse::Empty
                }
            };
            responses.push(response);
        }
        self.persist(write)?;
        self.role.publish();
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
}

impl RaftSnapshotBuilder<TypeConfig> for GroupSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let (meta, file) = blocking(|| self.snapshots.build(&self.store, self.group))
            .map_err(|err| io_error(ErrorSubject::None, ErrorVerb::Write, err))?;
        METRICS.raft_snapshot_built();
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
        GroupSnapshotBuilder {
            group: self.group,
            store: self.store.clone(),
            snapshots: self.snapshots.clone(),
        }
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
            blocking(|| -> Result<(), StorageError> {
                self.snapshots.install(&self.store, self.group, meta, &mut received)?;
                self.role.reload(&self.store, self.group)
            })?;
            self.applied = meta.last_log_id;
            self.membership = meta.last_membership.clone();
            self.role.publish();
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
                let (meta, file) = blocking(|| self.snapshots.build(&self.store, self.group))
                    .map_err(|err| io_error(ErrorSubject::None, ErrorVerb::Write, err))?;
                Ok(Some(snapshot_of(meta, file)))
            }
        }
    }
}
