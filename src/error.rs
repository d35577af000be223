//! Broker errors and the one place they become Kafka error codes.

use kafka_protocol::error::ResponseError;

use crate::raft::command::{ControllerRefusal, ProduceRefusal};
use crate::raft::wire::HandOverError;
use crate::storage::batch::BatchError;
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("unknown topic id")]
    UnknownTopicId,
    #[error("offset metadata of {size} bytes exceeds offset_metadata_max_bytes ({max})")]
    OffsetMetadataTooLarge { size: usize, max: usize },
    #[error("invalid topic name: {0}")]
    InvalidTopic(String),
    #[error("topic already exists")]
    TopicAlreadyExists,
    #[error("invalid partitions: {0}")]
    InvalidPartitions(String),
    #[error("invalid replication factor: {0}")]
    InvalidReplicationFactor(String),
    #[error("invalid replica assignment: {0}")]
    InvalidReplicaAssignment(String),
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("unsupported endpoint type {0}")]
    UnsupportedEndpointType(i8),
    #[error("the request was sent to a broker endpoint, but asked for a controller endpoint")]
    MismatchedEndpointType,
    #[error("this node is not the partition leader")]
    NotLeader,
    #[error("the partition leader has not heard from a majority of its replicas within its lease")]
    NotEnoughReplicas,
    #[error("leader epoch {requested} is older than the partition's epoch {current}")]
    FencedLeaderEpoch { requested: i32, current: i32 },
    #[error("leader epoch {requested} is newer than this replica's epoch {current}")]
    UnknownLeaderEpoch { requested: i32, current: i32 },
    #[error("no coordinator is available: {0}")]
    CoordinatorNotAvailable(String),
    #[error("this node is not the group's coordinator")]
    NotCoordinator,
    #[error("this node is not the controller leader")]
    NotController,
    #[error("no leader is available: {0}")]
    LeaderNotAvailable(String),
    #[error("offset {offset} is outside [{log_start}, {high_watermark}]")]
    OffsetOutOfRange {
        offset: i64,
        log_start: i64,
        high_watermark: i64,
    },
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("no reassignment is in progress for the partition")]
    NoReassignmentInProgress,
    #[error("the preferred replica already leads the partition")]
    ElectionNotNeeded,
    #[error("the preferred replica cannot take the leadership: {0}")]
    PreferredLeaderNotAvailable(String),
    #[error("no replica can be elected: {0}")]
    EligibleLeadersNotAvailable(String),
    #[error("unknown group member")]
    UnknownMemberId,
    #[error("generation {0} is not the group's current one")]
    IllegalGeneration(i32),
    #[error("the group is rebalancing")]
    RebalanceInProgress,
    #[error("session timeout {0} ms is outside the broker's range")]
    InvalidSessionTimeout(i32),
    #[error("another member with the same group.instance.id has replaced this one")]
    FencedInstanceId,
    #[error("a member id is required: rejoin with {0}")]
    MemberIdRequired(String),
    #[error("the member's protocols do not match the group's")]
    InconsistentGroupProtocol,
    #[error("invalid group id")]
    InvalidGroupId,
    #[error("group not found")]
    GroupIdNotFound,
    #[error("the group still has members")]
    NonEmptyGroup,
    #[error("the group has members subscribed to the topic")]
    GroupSubscribedToTopic,
    #[error(transparent)]
    Produce(#[from] ProduceRefusal),
    #[error("acks={0} is not one of -1, 0, 1")]
    InvalidRequiredAcks(i16),
    #[error("transactions are not supported")]
    TransactionsUnsupported,
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<ControllerRefusal> for BrokerError {
    fn from(refusal: ControllerRefusal) -> Self {
        match refusal {
            ControllerRefusal::TopicExists => BrokerError::TopicAlreadyExists,
            ControllerRefusal::UnknownTopic => BrokerError::UnknownTopicOrPartition,
            ControllerRefusal::PartitionsCannotShrink { .. } => BrokerError::InvalidPartitions(refusal.to_string()),
            ControllerRefusal::InvalidTopicName(reason) => BrokerError::InvalidTopic(reason),
            ControllerRefusal::InvalidAssignment(reason) => BrokerError::InvalidReplicaAssignment(reason),
            ControllerRefusal::InvalidConfig(reason) => BrokerError::InvalidConfig(reason),
            ControllerRefusal::NoReassignmentInProgress => BrokerError::NoReassignmentInProgress,
            ControllerRefusal::StaleReassignment => BrokerError::InvalidRequest(refusal.to_string()),
        }
    }
}

/// A failed hand-over, as ElectLeaders reports it: the leader moved or is
/// being elected (retriable), or the preferred replica cannot take over.
impl From<HandOverError> for BrokerError {
    fn from(err: HandOverError) -> Self {
        match err {
            HandOverError::NotLeader(_) | HandOverError::GroupNotHere => BrokerError::NotLeader,
            HandOverError::Unavailable(reason) => BrokerError::LeaderNotAvailable(reason),
            HandOverError::NotAReplica(_)
            | HandOverError::TargetNotAlive(_)
            | HandOverError::TargetBehind(_)
            | HandOverError::CampaignRefused(_) => BrokerError::PreferredLeaderNotAvailable(err.to_string()),
        }
    }
}

impl BrokerError {
    pub fn response_error(&self) -> ResponseError {
        match self {
            BrokerError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
            BrokerError::UnknownTopicId => ResponseError::UnknownTopicId,
            BrokerError::OffsetMetadataTooLarge { .. } => ResponseError::OffsetMetadataTooLarge,
            BrokerError::InvalidTopic(_) => ResponseError::InvalidTopicException,
            BrokerError::TopicAlreadyExists => ResponseError::TopicAlreadyExists,
            BrokerError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
            BrokerError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
            BrokerError::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment,
            BrokerError::InvalidConfig(_) => ResponseError::InvalidConfig,
            BrokerError::InvalidRequest(_) => ResponseError::InvalidRequest,
            BrokerError::UnsupportedEndpointType(_) => ResponseError::UnsupportedEndpointType,
            BrokerError::MismatchedEndpointType => ResponseError::MismatchedEndpointType,
            BrokerError::NotLeader => ResponseError::NotLeaderOrFollower,
            BrokerError::NotEnoughReplicas => ResponseError::NotEnoughReplicas,
            BrokerError::FencedLeaderEpoch { .. } => ResponseError::FencedLeaderEpoch,
            BrokerError::UnknownLeaderEpoch { .. } => ResponseError::UnknownLeaderEpoch,
            BrokerError::NotController => ResponseError::NotController,
            BrokerError::NotCoordinator => ResponseError::NotCoordinator,
            BrokerError::CoordinatorNotAvailable(_) => ResponseError::CoordinatorNotAvailable,
            BrokerError::LeaderNotAvailable(_) => ResponseError::LeaderNotAvailable,
            BrokerError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
            BrokerError::Timeout(_) => ResponseError::RequestTimedOut,
            BrokerError::NoReassignmentInProgress => ResponseError::NoReassignmentInProgress,
            BrokerError::ElectionNotNeeded => ResponseError::ElectionNotNeeded,
            BrokerError::PreferredLeaderNotAvailable(_) => ResponseError::PreferredLeaderNotAvailable,
            BrokerError::EligibleLeadersNotAvailable(_) => ResponseError::EligibleLeadersNotAvailable,
            BrokerError::UnknownMemberId => ResponseError::UnknownMemberId,
            BrokerError::IllegalGeneration(_) => ResponseError::IllegalGeneration,
            BrokerError::RebalanceInProgress => ResponseError::RebalanceInProgress,
            BrokerError::InvalidSessionTimeout(_) => ResponseError::InvalidSessionTimeout,
            BrokerError::MemberIdRequired(_) => ResponseError::MemberIdRequired,
            BrokerError::FencedInstanceId => ResponseError::FencedInstanceId,
            BrokerError::InconsistentGroupProtocol => ResponseError::InconsistentGroupProtocol,
            BrokerError::InvalidGroupId => ResponseError::InvalidGroupId,
            BrokerError::GroupIdNotFound => ResponseError::GroupIdNotFound,
            BrokerError::NonEmptyGroup => ResponseError::NonEmptyGroup,
            BrokerError::GroupSubscribedToTopic => ResponseError::GroupSubscribedToTopic,
            BrokerError::Produce(ProduceRefusal::OutOfOrderSequence) => ResponseError::OutOfOrderSequenceNumber,
            BrokerError::Produce(ProduceRefusal::InvalidProducerEpoch) => ResponseError::InvalidProducerEpoch,
            BrokerError::Produce(ProduceRefusal::InvalidBatch) => ResponseError::CorruptMessage,
            BrokerError::TransactionsUnsupported => ResponseError::TransactionalIdAuthorizationFailed,
            BrokerError::InvalidRequiredAcks(_) => ResponseError::InvalidRequiredAcks,
            BrokerError::Batch(BatchError::Corrupt(_)) => ResponseError::CorruptMessage,
            BrokerError::Batch(BatchError::TooLarge { .. }) => ResponseError::MessageTooLarge,
            BrokerError::Batch(BatchError::UnsupportedMagic(_)) => ResponseError::UnsupportedForMessageFormat,
            BrokerError::Batch(BatchError::InvalidRecords(_)) => ResponseError::InvalidRecord,
            BrokerError::Storage(_) => ResponseError::KafkaStorageError,
        }
    }

    pub fn code(&self) -> i16 {
        self.response_error().code()
    }
}

/// The error code field of a response: 0 or the error's code.
pub fn code_of<T>(result: &Result<T, BrokerError>) -> i16 {
    result.as_ref().err().map_or(0, BrokerError::code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_to_the_codes_kafka_clients_expect() {
        let cases: Vec<(BrokerError, i16)> = vec![
            (
                BrokerError::OffsetOutOfRange {
                    offset: 9,
                    log_start: 0,
                    high_watermark: 1,
                },
                1,
            ),
            (BrokerError::Batch(BatchError::Corrupt("crc".into())), 2),
            (BrokerError::UnknownTopicOrPartition, 3),
            (BrokerError::UnknownTopicId, 100),
            (BrokerError::OffsetMetadataTooLarge { size: 5000, max: 4096 }, 12),
            (BrokerError::LeaderNotAvailable("electing".into()), 5),
            (BrokerError::NotLeader, 6),
            (BrokerError::MismatchedEndpointType, 114),
            (BrokerError::UnsupportedEndpointType(3), 115),
            (BrokerError::Timeout("commit".into()), 7),
            (BrokerError::Batch(BatchError::TooLarge { size: 2, max: 1 }), 10),
            (BrokerError::InvalidTopic("a b".into()), 17),
            (BrokerError::NotEnoughReplicas, 19),
            (
                BrokerError::FencedLeaderEpoch {
                    requested: 1,
                    current: 2,
                },
                74,
            ),
            (
                BrokerError::UnknownLeaderEpoch {
                    requested: 3,
                    current: 2,
                },
                75,
            ),
            (BrokerError::NotController, 41),
            (BrokerError::InvalidRequest("x".into()), 42),
            (BrokerError::Batch(BatchError::UnsupportedMagic(1)), 43),
            (BrokerError::Batch(BatchError::InvalidRecords(Vec::new())), 87),
            (BrokerError::TopicAlreadyExists, 36),
            (BrokerError::InvalidPartitions("0".into()), 37),
            (BrokerError::InvalidReplicationFactor("9".into()), 38),
            (BrokerError::InvalidConfig("x".into()), 40),
            (BrokerError::Storage(StorageError::Encoding("x".into())), 56),
            (BrokerError::from(ControllerRefusal::TopicExists), 36),
            (BrokerError::CoordinatorNotAvailable("x".into()), 15),
            (BrokerError::NotCoordinator, 16),
            (BrokerError::IllegalGeneration(3), 22),
            (BrokerError::InconsistentGroupProtocol, 23),
            (BrokerError::InvalidGroupId, 24),
            (BrokerError::UnknownMemberId, 25),
            (BrokerError::InvalidSessionTimeout(1), 26),
            (BrokerError::RebalanceInProgress, 27),
            (BrokerError::NonEmptyGroup, 68),
            (BrokerError::GroupIdNotFound, 69),
            (BrokerError::MemberIdRequired("m".into()), 79),
            (BrokerError::FencedInstanceId, 82),
            (BrokerError::Produce(ProduceRefusal::OutOfOrderSequence), 45),
            (BrokerError::Produce(ProduceRefusal::InvalidProducerEpoch), 47),
            (BrokerError::TransactionsUnsupported, 53),
            (BrokerError::InvalidRequiredAcks(2), 21),
            (BrokerError::PreferredLeaderNotAvailable("x".into()), 80),
            (BrokerError::EligibleLeadersNotAvailable("x".into()), 83),
            (BrokerError::ElectionNotNeeded, 84),
            (BrokerError::from(HandOverError::TargetBehind(2)), 80),
            (BrokerError::from(HandOverError::NotLeader(None)), 6),
            (BrokerError::GroupSubscribedToTopic, 86),
            (BrokerError::from(ControllerRefusal::UnknownTopic), 3),
            (BrokerError::from(ControllerRefusal::InvalidTopicName("a b".into())), 17),
            (BrokerError::from(ControllerRefusal::InvalidAssignment("[]".into())), 39),
            (BrokerError::Produce(ProduceRefusal::InvalidBatch), 2),
            (BrokerError::from(ControllerRefusal::InvalidConfig("x".into())), 40),
            (BrokerError::from(ControllerRefusal::NoReassignmentInProgress), 85),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code, "{error}");
        }
        assert_eq!(code_of::<()>(&Ok(())), 0);
    }
}
