//! What Raft groups replicate. Commands are deterministic: everything that
//! depends on the leader's clock or view (topic ids, timestamps, replica
//! placement) is stamped into the command before it is proposed, and Kafka
//! offsets are assigned when the command is applied.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{GroupId, NodeId};
use crate::group::records;
use crate::group::store::GroupCommand;
use crate::storage::batch::ValidatedBatch;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Command {
    /// Controller: create a topic; `replicas[i]` are the nodes of partition `i`.
    CreateTopic {
        name: String,
        topic_id: [u8; 16],
        replicas: Vec<Vec<NodeId>>,
        configs: BTreeMap<String, String>,
    },
    /// Controller: delete a topic and drop its partitions.
    DeleteTopic { name: String },
    /// Controller: grow a topic to `replicas.len()` partitions in total.
    CreatePartitions { name: String, replicas: Vec<Vec<NodeId>> },
    /// Partition: append validated record batches. Written by earlier
    /// versions, one produce request per entry; still applied when read back.
    Append { batches: Vec<ValidatedBatch> },
    /// Partition: move the log start forward (retention, DeleteRecords); the
    /// records below it are gone for readers, and their log can be freed.
    AdvanceLogStart { offset: i64 },
    /// Partition: forget idempotent producers whose last batch is older than
    /// `before_timestamp` (the leader's clock, stamped at proposal).
    ExpireProducers { before_timestamp: i64 },
    /// Offsets partition: a consumer group change.
    Group(GroupCommand),
    /// Controller: hand out the next idempotent producer id.
    AllocateProducerId,
    /// Controller: change a topic's config overrides. The changes, not the
    /// resulting set, are replicated so that concurrent changes to different
    /// keys compose; `replace` (AlterConfigs) first drops every override,
    /// otherwise (IncrementalAlterConfigs) the current ones are kept.
    AlterTopicConfigs {
        name: String,
        replace: bool,
        changes: Vec<ConfigChange>,
    },
    /// Partition: the validated batches of several produce requests, folded
    /// into one entry (group commit). Each request is checked and appended on
    /// its own, in order, and answered on its own.
    AppendRequests { requests: Vec<Vec<ValidatedBatch>> },
    /// Controller: move a partition's replicas to `target` (Kafka's
    /// AlterPartitionReassignments); no target cancels the move in progress.
    ReassignPartition {
        topic: String,
        partition: i32,
        target: Option<Vec<NodeId>>,
    },
    /// Controller: the leader of a moving partition's Raft group reports that
    /// the group's voters are now `replicas`, the move's target.
    CompleteReassignment { group: GroupId, replicas: Vec<NodeId> },
    /// Partition: one step of a compaction (`cleanup.policy=compact`). Added
    /// last, so every entry written before it decodes as it did; a node too
    /// old to know it cannot decode an entry that holds one.
    Compact(Compaction),
}

/// One step of a compaction: the live records of the partition below `end`
/// (the cleanable end its leader scanned to), restated as batches of one
/// record each, in offset order. A compaction too large for one entry is
/// several steps; only the last moves the log start to `end`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Compaction {
    /// The log start the leader scanned from: a step applied after the log
    /// start moved (retention, DeleteRecords) is refused, as it would bring
    /// back records that went.
    pub log_start: i64,
    pub end: i64,
    pub batches: Vec<ValidatedBatch>,
    pub last: bool,
}

/// One config change of [`Command::AlterTopicConfigs`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigChange {
    pub name: String,
    pub op: ConfigOp,
}

/// IncrementalAlterConfigs' operations (AlterConfigs only sets).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum ConfigOp {
    Set(String),
    /// Back to the default.
    Delete,
    /// Add to a list config (`cleanup.policy`) unless already there.
    Append(String),
    /// Remove from a list config.
    Subtract(String),
}

impl Command {
    /// Whether the command belongs to the controller group: the only commands a
    /// peer may propose on another node's behalf (admin forwarding). Partition
    /// appends and consumer-group changes are proposed by their leader's own
    /// request path, after it validated them.
    pub fn is_controller_command(&self) -> bool {
        match self {
            Command::CreateTopic { .. }
            | Command::DeleteTopic { .. }
            | Command::CreatePartitions { .. }
            | Command::AllocateProducerId
            | Command::AlterTopicConfigs { .. }
            | Command::ReassignPartition { .. }
            | Command::CompleteReassignment { .. } => true,
            Command::Append { .. }
            | Command::AppendRequests { .. }
            | Command::AdvanceLogStart { .. }
            | Command::ExpireProducers { .. }
            | Command::Compact(_)
            | Command::Group(_) => false,
        }
    }
}

impl Command {
    /// The record batches an append carries, in the order their offsets were
    /// assigned (a batch's position in it is its ordinal in the entry), or the
    /// batch a consumer-group change is rendered as; none for any other command.
    pub fn into_appended_batches(self) -> impl Iterator<Item = ValidatedBatch> {
        let requests = match self {
            Command::Append { batches } => vec![batches],
            Command::AppendRequests { requests } => requests,
            // Every restated batch, kept or dropped at apply, at its position.
            Command::Compact(compaction) => vec![compaction.batches],
            Command::Group(change) => vec![records::batch_of_change(&change).ok().flatten().into_iter().collect()],
            _ => Vec::new(),
        };
        requests.into_iter().flatten()
    }
}

impl Command {
    /// Whether applying the command reads the partition's log: the entries
    /// applied before it must then be in the store, not only staged.
    pub fn reads_partition_log(&self) -> bool {
        matches!(self, Command::Compact(_))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum CommandResponse {
    /// Membership and blank entries answer nothing.
    Empty,
    /// The controller applied (or refused) a metadata change.
    Controller(Result<Vec<GroupId>, ControllerRefusal>),
    /// What a partition answered each request of an AppendRequests, in order.
    AppendedRequests(Vec<Result<Appended, ProduceRefusal>>),
    /// A partition's log start after an AdvanceLogStart.
    LogStart(i64),
    /// How many idempotent producers a partition forgot.
    ProducersExpired(u32),
    /// The controller allocated a producer id.
    ProducerId(i64),
    /// The command was sent to a group that does not handle it.
    WrongGroup,
    /// An offsets partition refused a consumer-group change it cannot write
    /// as Kafka records (a name too long for its schema).
    GroupChangeRefused(String),
    /// A partition applied a compaction step: the restated records it
    /// appended, those it dropped (a newer record of their key came after
    /// the scan), and its log start after it.
    Compacted { kept: u32, dropped: u32, log_start: i64 },
    /// A partition refused a compaction step (the log start moved since the
    /// scan, or the step is malformed).
    CompactionRefused(String),
}

/// Where a partition appended one produce request's batches.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Appended {
    /// The first batch's offset (or, for a retried idempotent batch, the
    /// offset it was appended at before).
    pub base_offset: i64,
    pub log_start_offset: i64,
}

/// Why the controller refused a change, decided at apply time so every replica agrees.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, thiserror::Error)]
pub enum ControllerRefusal {
    #[error("topic already exists")]
    TopicExists,
    #[error("unknown topic")]
    UnknownTopic,
    #[error("a topic can only grow: it has {current} partitions")]
    PartitionsCannotShrink { current: usize },
    #[error("invalid topic name: {0}")]
    InvalidTopicName(String),
    #[error("invalid replica assignment: {0}")]
    InvalidAssignment(String),
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("no reassignment in progress")]
    NoReassignmentInProgress,
    #[error("the reassignment's target changed")]
    StaleReassignment,
}

/// Why a partition refused an idempotent producer's batch, decided at apply time.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, thiserror::Error)]
pub enum ProduceRefusal {
    #[error("sequence number out of order")]
    OutOfOrderSequence,
    #[error("the producer's epoch is older than the partition has seen")]
    InvalidProducerEpoch,
    /// The command carried a batch that is not a well-formed v2 batch with a
    /// valid CRC, or more records than the partition's offsets can hold. Only
    /// a command that bypassed produce validation can carry one.
    #[error("malformed record batch")]
    InvalidBatch,
}
