//! Kafka APIs: the sans-io codec, one handler file per API, and the single table
//! of supported versions that both request decoding and ApiVersions use.

pub mod api_versions;
pub mod codec;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod fetch;
pub mod list_offsets;
pub mod metadata;
pub mod produce;

use std::sync::Arc;

use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use kafka_protocol::protocol::{StrBytes, VersionRange};

use crate::cluster::Cluster;
use codec::Request;

/// Every API this broker answers, with the versions it speaks. Ranges stop
/// before versions that address topics only by id, which this broker does not
/// resolve yet, so clients keep using names.
pub const SUPPORTED_APIS: &[(ApiKey, VersionRange)] = &[
    (ApiKey::Produce, produce::VERSIONS),
    (ApiKey::Fetch, fetch::VERSIONS),
    (ApiKey::ListOffsets, list_offsets::VERSIONS),
    (ApiKey::Metadata, metadata::VERSIONS),
    (ApiKey::ApiVersions, api_versions::VERSIONS),
    (ApiKey::CreateTopics, create_topics::VERSIONS),
    (ApiKey::DeleteTopics, delete_topics::VERSIONS),
    (ApiKey::DescribeConfigs, describe_configs::VERSIONS),
    (ApiKey::CreatePartitions, create_partitions::VERSIONS),
    (ApiKey::DescribeCluster, describe_cluster::VERSIONS),
];

pub fn supported_versions(api_key: ApiKey) -> Option<VersionRange> {
    SUPPORTED_APIS
        .iter()
        .find(|(key, _)| *key == api_key)
        .map(|(_, range)| *range)
}

/// Runs the handler of a decoded request. `None` means no response is sent
/// (Produce with acks=0).
pub async fn handle(cluster: Arc<Cluster>, request: Request) -> Option<ResponseKind> {
    let version = request.header.request_api_version;
    let response = match request.body {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions::handle()),
        RequestKind::Metadata(req) => ResponseKind::Metadata(metadata::handle(&cluster, version, req).await),
        RequestKind::Produce(req) => match produce::handle(&cluster, req).await {
            Some(response) => ResponseKind::Produce(response),
            None => return None,
        },
        RequestKind::Fetch(req) => ResponseKind::Fetch(fetch::handle(&cluster, req).await),
        RequestKind::ListOffsets(req) => ResponseKind::ListOffsets(list_offsets::handle(&cluster, req)),
        RequestKind::CreateTopics(req) => ResponseKind::CreateTopics(create_topics::handle(&cluster, req).await),
        RequestKind::DeleteTopics(req) => ResponseKind::DeleteTopics(delete_topics::handle(&cluster, req).await),
        RequestKind::CreatePartitions(req) => {
            ResponseKind::CreatePartitions(create_partitions::handle(&cluster, req).await)
        }
        RequestKind::DescribeConfigs(req) => ResponseKind::DescribeConfigs(describe_configs::handle(&cluster, req)),
        RequestKind::DescribeCluster(_) => ResponseKind::DescribeCluster(describe_cluster::handle(&cluster)),
        other => {
            // decode_request only lets through the keys of SUPPORTED_APIS.
            tracing::error!(api = ?request.api_key, "no handler for {other:?}");
            return None;
        }
    };
    Some(response)
}

pub(crate) fn str_bytes(value: impl Into<String>) -> StrBytes {
    StrBytes::from_string(value.into())
}

/// The message that goes with an error code, or none for success.
pub(crate) fn error_message<T>(result: &Result<T, crate::error::BrokerError>) -> Option<StrBytes> {
    result.as_ref().err().map(|err| str_bytes(err.to_string()))
}
