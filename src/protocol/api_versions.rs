//! ApiVersions: the versions of every API this broker speaks. v4 only lifts
//! a client-side check on the minimum version of supported features
//! (KAFKA-17011); this broker announces no features.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::ApiVersionsResponse;
use kafka_protocol::protocol::VersionRange;

use super::SUPPORTED_APIS;

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 4 };

pub fn handle() -> ApiVersionsResponse {
    let api_keys = SUPPORTED_APIS
        .iter()
        .map(|(key, range)| {
            ApiVersion::default()
                .with_api_key(*key as i16)
                .with_min_version(range.min)
                .with_max_version(range.max)
        })
        .collect();
    ApiVersionsResponse::default().with_api_keys(api_keys)
}

/// The answer to an ApiVersions request of a version we do not speak (KIP-511):
/// UNSUPPORTED_VERSION with our ranges, encoded as v0 so any client can read it
/// and retry with a version both sides know.
pub fn unsupported_version() -> ApiVersionsResponse {
    handle().with_error_code(ResponseError::UnsupportedVersion.code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::ApiKey;

    #[test]
    fn advertises_old_and_modern_versions() {
        let response = handle();
        let range = |key: ApiKey| {
            response
                .api_keys
                .iter()
                .find(|v| v.api_key == key as i16)
                .map(|v| (v.min_version, v.max_version))
        };
        // Down to Kafka 0.8's versions, as Kafka 3.9 accepts them, and up to
        // the newest kafka-protocol knows.
        assert_eq!(range(ApiKey::Produce), Some((0, 13)));
        assert_eq!(range(ApiKey::Fetch), Some((0, 18)));
        assert_eq!(range(ApiKey::Metadata), Some((0, 13)));
        assert_eq!(range(ApiKey::ListOffsets), Some((0, 10)));
        assert_eq!(range(ApiKey::ApiVersions), Some((0, 4)));
        assert_eq!(range(ApiKey::OffsetCommit), Some((0, 9)));
        assert_eq!(range(ApiKey::OffsetFetch), Some((0, 9)));
        assert_eq!(range(ApiKey::FindCoordinator), Some((0, 6)));
        assert_eq!(range(ApiKey::JoinGroup), Some((0, 8)));
        assert_eq!(range(ApiKey::LeaveGroup), Some((0, 5)));
        assert_eq!(range(ApiKey::ListGroups), Some((0, 5)));
        assert_eq!(range(ApiKey::DescribeGroups), Some((0, 6)));
        assert_eq!(range(ApiKey::InitProducerId), Some((0, 5)));
        assert_eq!(range(ApiKey::DescribeCluster), Some((0, 2)));
        // Kafka 3.9's whole ranges.
        assert_eq!(range(ApiKey::AlterConfigs), Some((0, 2)));
        assert_eq!(range(ApiKey::IncrementalAlterConfigs), Some((0, 1)));
        assert_eq!(unsupported_version().error_code, 35);
    }
}
