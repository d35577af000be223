//! Requests and responses of the versions Kafka 4.0 removed (KIP-896), which
//! `kafka-protocol` 0.18 no longer decodes: Produce v0-v2, Fetch v0-v3,
//! ListOffsets v0, OffsetCommit v0-v1, OffsetFetch v0, CreateTopics v0-v1,
//! DeleteTopics v0, DescribeConfigs v0, OffsetForLeaderEpoch v0-v1. Kafka 3.9 still accepts them and
//! clients of Kafka 0.8-0.10 send nothing else.
//!
//! `kafka-protocol` 0.15.1, which carries Kafka 3.9's schemas, decodes such a
//! request and encodes it again at the oldest version 0.18 knows, where the
//! handlers read it; the response travels the other way. Each of these old
//! versions differs from its successor only by fields a handler does not need
//! or that default as Kafka's broker defaults them; [`fill_old_fields`] adjusts
//! the responses whose old versions have fields of their own. Record bytes pass through
//! untouched: message formats are converted by the Produce and Fetch handlers.

use anyhow::anyhow;
use bytes::BytesMut;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use kafka_protocol_legacy::messages as legacy;

/// DescribeConfigs' config source of a value nobody set.
const DEFAULT_CONFIG: i8 = 5;

/// The oldest version of `api_key` that `kafka-protocol` 0.18 decodes.
fn oldest_native(api_key: ApiKey) -> i16 {
    api_key.valid_versions().min
}

/// Whether `version` of `api_key` goes through the bridge.
pub fn needs_bridge(api_key: ApiKey, version: i16) -> bool {
    version < oldest_native(api_key)
}

fn legacy_key(api_key: ApiKey) -> anyhow::Result<legacy::ApiKey> {
    legacy::ApiKey::try_from(api_key as i16).map_err(|_| anyhow!("{api_key:?} has no legacy schema"))
}

/// Decodes a request body of an old `version` into today's types.
pub fn decode_request(api_key: ApiKey, body: &mut bytes::Bytes, version: i16) -> anyhow::Result<RequestKind> {
    let old = legacy::RequestKind::decode(legacy_key(api_key)?, body, version)?;
    let native = oldest_native(api_key);
    let mut bridged = BytesMut::new();
    old.encode(&mut bridged, native)?;
    RequestKind::decode(api_key, &mut bridged.freeze(), native)
}

/// Encodes a response body at an old `version`.
pub fn encode_response(api_key: ApiKey, version: i16, body: &ResponseKind, out: &mut BytesMut) -> anyhow::Result<()> {
    let native = oldest_native(api_key);
    let mut bridged = BytesMut::new();
    body.encode(&mut bridged, native)?;
    let mut old = legacy::ResponseKind::decode(legacy_key(api_key)?, &mut bridged.freeze(), native)?;
    fill_old_fields(&mut old, version);
    old.encode(out, version)
}

/// Fields of the old `version` derived from the fields that replaced them, and
/// the newer fields cleared: the encoder refuses a field its version lacks.
fn fill_old_fields(response: &mut legacy::ResponseKind, version: i16) {
    match response {
        // v0 answers a list of offsets; the one offset found is all a client reads.
        legacy::ResponseKind::ListOffsets(response) => {
            for partition in response.topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
                if partition.error_code == 0 && partition.offset >= 0 {
                    partition.old_style_offsets = vec![partition.offset];
                }
                partition.offset = -1;
                partition.timestamp = -1;
                partition.leader_epoch = -1;
            }
        }
        // v0-v3 have no transactions, hence no stable offset.
        legacy::ResponseKind::Fetch(response) => {
            for partition in response.responses.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
                partition.last_stable_offset = -1;
                partition.log_start_offset = -1;
                partition.aborted_transactions = Some(Vec::new());
            }
        }
        legacy::ResponseKind::CreateTopics(response) if version == 0 => {
            for topic in response.topics.iter_mut() {
                topic.error_message = Some(Default::default());
            }
        }
        // v0 answers the end offset alone, without the epoch it ends.
        legacy::ResponseKind::OffsetForLeaderEpoch(response) if version == 0 => {
            for partition in response.topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
                partition.leader_epoch = -1;
            }
        }
        // v0 flags defaults instead of naming each value's source.
        legacy::ResponseKind::DescribeConfigs(response) => {
            for config in response.results.iter_mut().flat_map(|r| r.configs.iter_mut()) {
                config.is_default = config.config_source == DEFAULT_CONFIG;
                config.config_source = -1;
                config.synonyms = Vec::new();
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
    use kafka_protocol::messages::{ListOffsetsResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol_legacy::protocol::Decodable as _;

    #[test]
    fn a_produce_v0_request_reaches_the_handler_with_its_records() {
        let records = bytes::Bytes::from_static(b"message set bytes");
        let partition = legacy::produce_request::PartitionProduceData::default()
            .with_index(2)
            .with_records(Some(records.clone()));
        let topic = legacy::produce_request::TopicProduceData::default()
            .with_name(legacy::TopicName(
                kafka_protocol_legacy::protocol::StrBytes::from_static_str("t"),
            ))
            .with_partition_data(vec![partition]);
        let request = legacy::ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(1234)
            .with_topic_data(vec![topic]);
        let mut wire = BytesMut::new();
        legacy::RequestKind::Produce(request).encode(&mut wire, 0).unwrap();
        assert!(needs_bridge(ApiKey::Produce, 0));
        let RequestKind::Produce(decoded) = decode_request(ApiKey::Produce, &mut wire.freeze(), 0).unwrap() else {
            panic!("not a produce request");
        };
        assert_eq!((decoded.acks, decoded.timeout_ms), (-1, 1234));
        let partition = &decoded.topic_data[0].partition_data[0];
        assert_eq!((partition.index, partition.records.clone()), (2, Some(records)));
    }

    #[test]
    fn handler_responses_encode_at_every_bridged_version() {
        use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
        use kafka_protocol::messages::describe_configs_response::{
            DescribeConfigsResourceResult, DescribeConfigsResult,
        };
        use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
        use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
        use kafka_protocol::messages::*;
        let name = || TopicName(StrBytes::from_static_str("t"));
        let fetch = FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
            .with_topic(name())
            .with_partitions(vec![PartitionData::default()
                .with_high_watermark(7)
                .with_last_stable_offset(7)
                .with_log_start_offset(0)
                .with_records(Some(bytes::Bytes::from_static(b"set")))])]);
        let produce = ProduceResponse::default().with_responses(vec![TopicProduceResponse::default()
            .with_name(name())
            .with_partition_responses(vec![PartitionProduceResponse::default()
                .with_base_offset(3)
                .with_log_append_time_ms(-1)
                .with_log_start_offset(0)])]);
        let create = CreateTopicsResponse::default().with_topics(vec![CreatableTopicResult::default()
            .with_name(name())
            .with_error_code(36)
            .with_error_message(Some(StrBytes::from_static_str("exists")))]);
        let configs = DescribeConfigsResponse::default().with_results(vec![DescribeConfigsResult::default()
            .with_resource_name(StrBytes::from_static_str("t"))
            .with_configs(vec![DescribeConfigsResourceResult::default()
                .with_name(StrBytes::from_static_str("retention.ms"))
                .with_value(Some(StrBytes::from_static_str("1")))
                .with_config_source(DEFAULT_CONFIG)])]);
        let epochs = OffsetForLeaderEpochResponse::default().with_topics(vec![
            offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default()
                .with_topic(name())
                .with_partitions(vec![offset_for_leader_epoch_response::EpochEndOffset::default()
                    .with_leader_epoch(3)
                    .with_end_offset(9)]),
        ]);
        let cases = [
            (ApiKey::Produce, ResponseKind::Produce(produce), 0..=2),
            (ApiKey::Fetch, ResponseKind::Fetch(fetch), 0..=3),
            (ApiKey::CreateTopics, ResponseKind::CreateTopics(create), 0..=1),
            (ApiKey::DescribeConfigs, ResponseKind::DescribeConfigs(configs), 0..=0),
            (
                ApiKey::OffsetCommit,
                ResponseKind::OffsetCommit(OffsetCommitResponse::default()),
                0..=1,
            ),
            (
                ApiKey::OffsetFetch,
                ResponseKind::OffsetFetch(OffsetFetchResponse::default()),
                0..=0,
            ),
            (
                ApiKey::DeleteTopics,
                ResponseKind::DeleteTopics(DeleteTopicsResponse::default()),
                0..=0,
            ),
            (
                ApiKey::DescribeLogDirs,
                ResponseKind::DescribeLogDirs(DescribeLogDirsResponse::default()),
                0..=0,
            ),
            (
                ApiKey::OffsetForLeaderEpoch,
                ResponseKind::OffsetForLeaderEpoch(epochs),
                0..=1,
            ),
        ];
        for (api_key, response, versions) in cases {
            for version in versions {
                assert!(needs_bridge(api_key, version), "{api_key:?} v{version}");
                let mut wire = BytesMut::new();
                let encoded = encode_response(api_key, version, &response, &mut wire);
                assert!(encoded.is_ok(), "{api_key:?} v{version}: {encoded:?}");
            }
        }
    }

    #[test]
    fn a_list_offsets_v0_response_lists_the_offset_found() {
        let partition = ListOffsetsPartitionResponse::default()
            .with_partition_index(0)
            .with_offset(42);
        let topic = ListOffsetsTopicResponse::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![partition]);
        let response = ResponseKind::ListOffsets(ListOffsetsResponse::default().with_topics(vec![topic]));
        let mut wire = BytesMut::new();
        encode_response(ApiKey::ListOffsets, 0, &response, &mut wire).unwrap();
        let old = legacy::ListOffsetsResponse::decode(&mut wire.freeze(), 0).unwrap();
        assert_eq!(old.topics[0].partitions[0].old_style_offsets, vec![42]);
        assert!(!needs_bridge(ApiKey::Metadata, 0), "0.18 still decodes Metadata v0");
    }
}
