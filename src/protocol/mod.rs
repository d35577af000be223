//! Kafka APIs: the sans-io codec, one handler file per API, and the single table
//! of supported versions that both request decoding and ApiVersions use.

pub mod alter_configs;
pub mod alter_partition_reassignments;
pub mod api_versions;
pub mod bridge;
pub mod codec;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod describe_log_dirs;
pub mod elect_leaders;
pub mod error_codes;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod list_partition_reassignments;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod sync_group;

use std::net::SocketAddr;
use std::sync::Arc;

use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use kafka_protocol::protocol::{StrBytes, VersionRange};

use crate::cluster::Cluster;
use crate::group::coordinator::GroupCoordinator;
use codec::Request;

/// What request handlers work with.
pub struct Broker {
    pub cluster: Arc<Cluster>,
    pub groups: Arc<GroupCoordinator>,
}

/// Every API this broker answers, with the versions it speaks: the newest each
/// is what `kafka-protocol` knows, unless a handler's file says why not.
pub const SUPPORTED_APIS: &[(ApiKey, VersionRange)] = &[
    (ApiKey::Produce, produce::VERSIONS),
    (ApiKey::Fetch, fetch::VERSIONS),
    (ApiKey::ListOffsets, list_offsets::VERSIONS),
    (ApiKey::Metadata, metadata::VERSIONS),
    (ApiKey::OffsetCommit, offset_commit::VERSIONS),
    (ApiKey::OffsetFetch, offset_fetch::VERSIONS),
    (ApiKey::FindCoordinator, find_coordinator::VERSIONS),
    (ApiKey::JoinGroup, join_group::VERSIONS),
    (ApiKey::Heartbeat, heartbeat::VERSIONS),
    (ApiKey::LeaveGroup, leave_group::VERSIONS),
    (ApiKey::SyncGroup, sync_group::VERSIONS),
    (ApiKey::DescribeGroups, describe_groups::VERSIONS),
    (ApiKey::ListGroups, list_groups::VERSIONS),
    (ApiKey::ApiVersions, api_versions::VERSIONS),
    (ApiKey::CreateTopics, create_topics::VERSIONS),
    (ApiKey::DeleteTopics, delete_topics::VERSIONS),
    (ApiKey::DescribeConfigs, describe_configs::VERSIONS),
    (ApiKey::AlterConfigs, alter_configs::VERSIONS),
    (ApiKey::CreatePartitions, create_partitions::VERSIONS),
    (ApiKey::InitProducerId, init_producer_id::VERSIONS),
    (ApiKey::DeleteGroups, delete_groups::VERSIONS),
    (ApiKey::OffsetDelete, offset_delete::VERSIONS),
    (ApiKey::DescribeCluster, describe_cluster::VERSIONS),
    (ApiKey::DeleteRecords, delete_records::VERSIONS),
    (ApiKey::IncrementalAlterConfigs, incremental_alter_configs::VERSIONS),
    (ApiKey::DescribeLogDirs, describe_log_dirs::VERSIONS),
    (ApiKey::OffsetForLeaderEpoch, offset_for_leader_epoch::VERSIONS),
    (ApiKey::ElectLeaders, elect_leaders::VERSIONS),
    (
        ApiKey::AlterPartitionReassignments,
        alter_partition_reassignments::VERSIONS,
    ),
    (
        ApiKey::ListPartitionReassignments,
        list_partition_reassignments::VERSIONS,
    ),
];

pub fn supported_versions(api_key: ApiKey) -> Option<VersionRange> {
    SUPPORTED_APIS
        .iter()
        .find(|(key, _)| *key == api_key)
        .map(|(_, range)| *range)
}

/// What the connection does with a handler's answer.
#[derive(Debug)]
pub enum Reply {
    Send(ResponseKind),
    /// Nothing is sent: a Produce with acks=0 that succeeded. The response is
    /// kept for the request metrics only.
    Silent(ResponseKind),
    /// Nothing is sent and the connection is closed once the earlier answers
    /// are written: a Produce with acks=0 that failed, as Kafka does so that a
    /// client that gets no answer still notices and refreshes its metadata;
    /// or a request without a handler, which would otherwise wait forever.
    Close(Option<ResponseKind>),
}

impl Reply {
    /// The response the handler produced, sent or not (for the request metrics).
    pub fn response(&self) -> Option<&ResponseKind> {
        match self {
            Reply::Send(response) | Reply::Silent(response) => Some(response),
            Reply::Close(response) => response.as_ref(),
        }
    }
}

/// Runs the handler of a decoded request.
pub async fn handle(broker: Arc<Broker>, peer: SocketAddr, request: Request) -> Reply {
    let version = request.header.request_api_version;
    let cluster = &broker.cluster;
    let groups = &broker.groups;
    let response = match request.body {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions::handle()),
        RequestKind::Metadata(req) => ResponseKind::Metadata(metadata::handle(cluster, version, req).await),
        RequestKind::Produce(req) => {
            let acks = req.acks;
            let response = produce::handle(cluster, version, req).await;
            if acks != 0 {
                ResponseKind::Produce(response)
            } else if produce::failed(&response) {
                tracing::info!(%peer, "closing the connection after a failed acks=0 produce");
                return Reply::Close(Some(ResponseKind::Produce(response)));
            } else {
                return Reply::Silent(ResponseKind::Produce(response));
            }
        }
        RequestKind::Fetch(req) => ResponseKind::Fetch(fetch::handle(cluster, version, req).await),
        RequestKind::ListOffsets(req) => ResponseKind::ListOffsets(list_offsets::handle(cluster, version, req)),
        RequestKind::OffsetForLeaderEpoch(req) => {
            ResponseKind::OffsetForLeaderEpoch(offset_for_leader_epoch::handle(cluster, req))
        }
        RequestKind::CreateTopics(req) => ResponseKind::CreateTopics(create_topics::handle(cluster, req).await),
        RequestKind::DeleteTopics(req) => ResponseKind::DeleteTopics(delete_topics::handle(cluster, req).await),
        RequestKind::CreatePartitions(req) => {
            ResponseKind::CreatePartitions(create_partitions::handle(cluster, req).await)
        }
        RequestKind::DeleteRecords(req) => ResponseKind::DeleteRecords(delete_records::handle(cluster, req).await),
        RequestKind::DescribeConfigs(req) => ResponseKind::DescribeConfigs(describe_configs::handle(cluster, req)),
        RequestKind::AlterConfigs(req) => ResponseKind::AlterConfigs(alter_configs::handle(cluster, req).await),
        RequestKind::IncrementalAlterConfigs(req) => {
            ResponseKind::IncrementalAlterConfigs(incremental_alter_configs::handle(cluster, req).await)
        }
        RequestKind::DescribeLogDirs(req) => ResponseKind::DescribeLogDirs(describe_log_dirs::handle(cluster, req)),
        RequestKind::ElectLeaders(req) => {
            ResponseKind::ElectLeaders(elect_leaders::handle(cluster, version, req).await)
        }
        RequestKind::AlterPartitionReassignments(req) => ResponseKind::AlterPartitionReassignments(
            alter_partition_reassignments::handle(cluster, version, req).await,
        ),
        RequestKind::ListPartitionReassignments(req) => {
            ResponseKind::ListPartitionReassignments(list_partition_reassignments::handle(cluster, req))
        }
        RequestKind::DescribeCluster(req) => {
            ResponseKind::DescribeCluster(describe_cluster::handle(cluster, version, req))
        }
        RequestKind::FindCoordinator(req) => {
            ResponseKind::FindCoordinator(find_coordinator::handle(cluster, version, req).await)
        }
        RequestKind::JoinGroup(req) => {
            let client_id = request.header.client_id.map(|id| id.to_string()).unwrap_or_default();
            ResponseKind::JoinGroup(join_group::handle(groups, version, client_id, peer, req).await)
        }
        RequestKind::InitProducerId(req) => ResponseKind::InitProducerId(init_producer_id::handle(cluster, req).await),
        RequestKind::SyncGroup(req) => ResponseKind::SyncGroup(sync_group::handle(groups, req).await),
        RequestKind::Heartbeat(req) => ResponseKind::Heartbeat(heartbeat::handle(groups, req).await),
        RequestKind::LeaveGroup(req) => ResponseKind::LeaveGroup(leave_group::handle(groups, version, req).await),
        RequestKind::OffsetCommit(req) => {
            ResponseKind::OffsetCommit(offset_commit::handle(cluster, groups, version, req).await)
        }
        RequestKind::OffsetFetch(req) => ResponseKind::OffsetFetch(offset_fetch::handle(groups, version, req).await),
        RequestKind::ListGroups(req) => ResponseKind::ListGroups(list_groups::handle(groups, req).await),
        RequestKind::DescribeGroups(req) => {
            ResponseKind::DescribeGroups(describe_groups::handle(groups, version, req).await)
        }
        RequestKind::DeleteGroups(req) => ResponseKind::DeleteGroups(delete_groups::handle(groups, req).await),
        RequestKind::OffsetDelete(req) => ResponseKind::OffsetDelete(offset_delete::handle(groups, req).await),
        other => {
            // decode_request only lets through the keys of SUPPORTED_APIS.
            tracing::error!(api = ?request.api_key, "no handler for {other:?}");
            return Reply::Close(None);
        }
    };
    Reply::Send(response)
}

/// `(node id, host, port)` of each live broker among `leaders` (-1: none),
/// once each and in id order: the node endpoints of KIP-951 that Fetch v16+
/// and Produce v10+ send with the leaders their errors name.
pub(crate) fn leader_endpoints(cluster: &Cluster, leaders: &[i32]) -> Vec<(i32, String, i32)> {
    let wanted: std::collections::BTreeSet<i32> = leaders.iter().copied().filter(|id| *id >= 0).collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    cluster
        .brokers()
        .into_iter()
        .map(|(id, host, port)| (id as i32, host, port))
        .filter(|(id, _, _)| wanted.contains(id))
        .collect()
}

pub(crate) fn str_bytes(value: impl Into<String>) -> StrBytes {
    StrBytes::from_string(value.into())
}

/// The message that goes with an error code, or none for success.
pub(crate) fn error_message<T>(result: &Result<T, crate::error::BrokerError>) -> Option<StrBytes> {
    result.as_ref().err().map(|err| str_bytes(err.to_string()))
}
