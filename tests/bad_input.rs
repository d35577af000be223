//! Hostile and broken input against a real broker process: each case gets the
//! right Kafka error code or a closed connection, and the broker keeps serving.

mod common;

use bytes::{BufMut, BytesMut};
use common::{record_batch, topic_name, Broker, Client};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, CreateTopicsRequest, MetadataRequest, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

/// Appends `count` bytes of a xorshift sequence, so a failing seed replays.
fn put_random(bytes: &mut BytesMut, state: &mut u64, count: usize) {
    for _ in 0..count {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        bytes.put_u8(*state as u8);
    }
}

fn assert_still_serving(broker: &mut Broker) {
    assert!(broker.is_running(), "broker died: {}", broker.log());
    let mut client = Client::connect(broker.port).unwrap();
    let response = client.request(ApiKey::Metadata, 12, RequestKind::Metadata(MetadataRequest::default()));
    assert!(matches!(response, ResponseKind::Metadata(_)));
}

fn assert_closes(broker: &mut Broker, bytes: &[u8], why: &str) {
    let mut client = Client::connect(broker.port).unwrap();
    client.send_raw(bytes).unwrap();
    assert!(client.is_closed_by_broker(), "{why}: connection should be closed");
    assert_still_serving(broker);
}

#[test]
fn broken_frames_close_only_their_connection() {
    let mut broker = Broker::start_with(&[("RAFKA_SOCKET_REQUEST_MAX_BYTES", "65536")]);
    let bystander = Client::connect(broker.port).unwrap();

    // A frame too short to hold a request header.
    assert_closes(&mut broker, &[0, 0, 0, 3, 0, 3, 0], "truncated frame");
    // A header that promises a body the frame does not contain.
    let mut client = Client::connect(broker.port).unwrap();
    let frame = client.encode_request(ApiKey::Metadata, 12, &RequestKind::Metadata(MetadataRequest::default()));
    let mut cut = BytesMut::new();
    cut.put_i32(frame.len() as i32 - 4 - 2);
    cut.extend_from_slice(&frame[4..frame.len() - 2]);
    assert_closes(&mut broker, &cut, "truncated body");
    // A frame over socket_request_max_bytes.
    assert_closes(&mut broker, &[0, 1, 0, 1, 0, 0, 0, 0], "oversized frame");
    assert_closes(&mut broker, &[0xff, 0xff, 0xff, 0xf0], "negative frame size");
    // An API key Kafka does not define, and one we do not serve.
    assert_closes(
        &mut broker,
        &[0, 0, 0, 8, 0x7f, 0x00, 0, 0, 0, 0, 0, 1],
        "unknown api key",
    );
    assert_closes(&mut broker, &[0, 0, 0, 8, 0, 57, 0, 0, 0, 0, 0, 1], "unserved api key");
    // A version outside the advertised range.
    let mut client = Client::connect(broker.port).unwrap();
    let mut frame = BytesMut::from(
        &client.encode_request(ApiKey::Metadata, 12, &RequestKind::Metadata(MetadataRequest::default()))[..],
    );
    frame[6..8].copy_from_slice(&99i16.to_be_bytes());
    assert_closes(&mut broker, &frame, "unsupported version");

    // Metadata v1 declaring 2^31 topics in a 12-byte body: the decoder sizes the
    // array from the count before reading it.
    assert_closes(
        &mut broker,
        &[0, 0, 0, 12, 0, 3, 0, 1, 0, 0, 0, 1, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff],
        "absurd array count",
    );

    // Random bytes, with a fixed seed so a failure replays.
    let mut state: u64 = 0x9e3779b97f4a7c15;
    for round in 0..50 {
        let len = 8 + (round * 37) % 400;
        let mut bytes = BytesMut::with_capacity(len + 4);
        bytes.put_i32(len as i32);
        put_random(&mut bytes, &mut state, len);
        let mut client = Client::connect(broker.port).unwrap();
        client.send_raw(&bytes).unwrap();
        // Either answered (valid by chance) or closed; the broker must survive.
        let _ = client.is_closed_by_broker();
        assert!(
            broker.is_running(),
            "random bytes round {round} killed the broker: {}",
            broker.log()
        );
    }
    // Valid headers of every served API followed by random bodies: the decoder
    // must reject them without taking the process down.
    let apis: [(i16, i16); 10] = [
        (0, 9),
        (1, 12),
        (2, 6),
        (3, 12),
        (18, 3),
        (19, 7),
        (20, 6),
        (32, 4),
        (37, 3),
        (60, 1),
    ];
    for round in 0..400 {
        let (key, version) = apis[round % apis.len()];
        let len = 16 + (round * 53) % 300;
        let mut bytes = BytesMut::with_capacity(len + 4);
        bytes.put_i32(len as i32);
        bytes.put_i16(key);
        bytes.put_i16(version);
        bytes.put_i32(round as i32);
        put_random(&mut bytes, &mut state, len - 8);
        let mut client = Client::connect(broker.port).unwrap();
        client.send_raw(&bytes).unwrap();
        let _ = client.is_closed_by_broker();
        assert!(
            broker.is_running(),
            "random body round {round} killed the broker: {}",
            broker.log()
        );
    }
    assert_still_serving(&mut broker);
    drop(bystander);
    assert!(
        broker.log().contains("closing connection after bad input"),
        "reasons are logged"
    );
}

#[test]
fn unsupported_api_versions_version_gets_a_v0_answer() {
    let broker = Broker::start();
    let mut client = Client::connect(broker.port).unwrap();
    let mut frame = BytesMut::from(
        &client.encode_request(ApiKey::ApiVersions, 3, &RequestKind::ApiVersions(Default::default()))[..],
    );
    frame[6..8].copy_from_slice(&42i16.to_be_bytes());
    client.send_raw(&frame).unwrap();
    let mut response = client.read_frame().unwrap();
    let header = ResponseHeader::decode(&mut response, 0).unwrap();
    assert_eq!(header.correlation_id, 1);
    let body = ApiVersionsResponse::decode(&mut response, 0).unwrap();
    assert_eq!(body.error_code, 35, "UNSUPPORTED_VERSION");
    assert!(body.api_keys.iter().any(|k| k.api_key == ApiKey::Produce as i16));
}

#[test]
fn bad_batches_get_kafka_error_codes_and_store_nothing() {
    let broker = Broker::start_with(&[("RAFKA_MESSAGE_MAX_BYTES", "2048")]);
    let mut client = Client::connect(broker.port).unwrap();
    assert_eq!(client.create_topic("bad-batches", 1).error_code, 0);

    let mut corrupt = BytesMut::from(&record_batch(&["a".into(), "b".into()], Compression::None)[..]);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x55;
    let response = client.produce("bad-batches", 0, corrupt.freeze(), -1).unwrap();
    assert_eq!(response.error_code, 2, "CORRUPT_MESSAGE for a wrong CRC");

    let big = record_batch(&["x".repeat(4096)], Compression::None);
    assert_eq!(
        client.produce("bad-batches", 0, big, -1).unwrap().error_code,
        10,
        "MESSAGE_TOO_LARGE"
    );

    let mut old_magic = BytesMut::from(&record_batch(&["a".into()], Compression::None)[..]);
    old_magic[16] = 1;
    assert_eq!(
        client
            .produce("bad-batches", 0, old_magic.freeze(), -1)
            .unwrap()
            .error_code,
        43
    );

    // A 320-byte batch found by fuzzing, framed with a valid CRC: its record
    // declares 2^31 headers, which once made validation touch 4 GB.
    let mut bomb = include_bytes!("fixtures/header-count-bomb.bin").to_vec();
    let length = bomb.len() as i32 - 12;
    bomb[8..12].copy_from_slice(&length.to_be_bytes());
    bomb[16] = 2;
    let crc = crc32c::crc32c(&bomb[21..]);
    bomb[17..21].copy_from_slice(&crc.to_be_bytes());
    let response = client.produce("bad-batches", 0, bytes::Bytes::from(bomb), -1).unwrap();
    assert_eq!(response.error_code, 2, "CORRUPT_MESSAGE for an absurd header count");
    assert!(
        broker.peak_rss_kib() < 512 * 1024,
        "peak RSS {} KiB",
        broker.peak_rss_kib()
    );

    let ok = client
        .produce("bad-batches", 0, record_batch(&["good".into()], Compression::None), -1)
        .unwrap();
    assert_eq!(
        (ok.error_code, ok.base_offset),
        (0, 0),
        "nothing was stored by the refused batches"
    );
    assert_eq!(client.read_all("bad-batches", 0), vec![(0, "good".to_string())]);

    assert_eq!(
        client.create_topic("bad topic!", 1).error_code,
        17,
        "INVALID_TOPIC_EXCEPTION"
    );
    assert_eq!(
        client.create_topic("bad-batches", 1).error_code,
        36,
        "TOPIC_ALREADY_EXISTS"
    );
    assert_eq!(
        client.create_topic("zero-partitions", 0).error_code,
        37,
        "INVALID_PARTITIONS"
    );
    let unknown = client
        .produce("bad-batches", 7, record_batch(&["a".into()], Compression::None), -1)
        .unwrap();
    assert_eq!(unknown.error_code, 3, "UNKNOWN_TOPIC_OR_PARTITION");
}

fn create_with_configs(
    client: &mut Client,
    name: &str,
    configs: &[(&str, &str)],
    validate_only: bool,
) -> CreatableTopicResult {
    let configs = configs
        .iter()
        .map(|(name, value)| {
            CreatableTopicConfig::default()
                .with_name(StrBytes::from_string(name.to_string()))
                .with_value(Some(StrBytes::from_string(value.to_string())))
        })
        .collect();
    let topic = CreatableTopic::default()
        .with_name(topic_name(name))
        .with_num_partitions(-1)
        .with_replication_factor(-1)
        .with_configs(configs);
    let request = CreateTopicsRequest::default()
        .with_topics(vec![topic])
        .with_timeout_ms(10_000)
        .with_validate_only(validate_only);
    match client.request(ApiKey::CreateTopics, 7, RequestKind::CreateTopics(request)) {
        ResponseKind::CreateTopics(mut response) => response.topics.remove(0),
        other => panic!("unexpected {other:?}"),
    }
}

/// A batch of one record per key, `None` for a record without one.
fn keyed_batch(keys: &[Option<&'static str>]) -> bytes::Bytes {
    let records: Vec<Record> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // Consecutive sequences keep the encoder to one batch.
            sequence: i as i32,
            timestamp: 1_700_000_000_000,
            key: key.map(|k| bytes::Bytes::from_static(k.as_bytes())),
            value: Some(bytes::Bytes::from_static(b"v")),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
    buf.freeze()
}

#[test]
fn topic_configs_are_checked_at_creation_and_enforced_on_produce() {
    let broker = Broker::start_with(&[("RAFKA_MESSAGE_MAX_BYTES", "2048")]);
    let mut client = Client::connect(broker.port).unwrap();
    let metadata_lists = |client: &mut Client, name: &str| match client.request(
        ApiKey::Metadata,
        12,
        RequestKind::Metadata(MetadataRequest::default()),
    ) {
        ResponseKind::Metadata(r) => r
            .topics
            .iter()
            .any(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == name)),
        other => panic!("unexpected {other:?}"),
    };

    let unknown = create_with_configs(&mut client, "configs-unknown", &[("dummy.doesntexist", "1")], false);
    assert_eq!(unknown.error_code, 40, "INVALID_CONFIG");
    assert!(
        unknown
            .error_message
            .as_ref()
            .is_some_and(|m| m.contains("dummy.doesntexist")),
        "{unknown:?}"
    );
    assert!(!metadata_lists(&mut client, "configs-unknown"));
    let checked = create_with_configs(&mut client, "configs-checked", &[("cleanup.policy", "compact")], true);
    assert_eq!(
        (checked.error_code, checked.num_partitions, checked.replication_factor),
        (0, 1, 1),
        "validate_only answers the defaults it would use"
    );
    assert!(
        !metadata_lists(&mut client, "configs-checked"),
        "validate_only created nothing"
    );
    let refused = create_with_configs(&mut client, "configs-checked", &[("max.message.bytes", "-5")], true);
    assert_eq!(refused.error_code, 40, "validate_only checks configs too");

    // A topic's max.message.bytes replaces the broker's message_max_bytes, in both directions.
    let small = create_with_configs(&mut client, "small-batches", &[("max.message.bytes", "200")], false);
    assert_eq!(small.error_code, 0);
    let large = create_with_configs(&mut client, "large-batches", &[("max.message.bytes", "100000")], false);
    assert_eq!(large.error_code, 0);
    let medium = record_batch(&["x".repeat(500)], Compression::None);
    assert_eq!(
        client
            .produce("small-batches", 0, medium.clone(), -1)
            .unwrap()
            .error_code,
        10
    );
    assert_eq!(client.produce("large-batches", 0, medium, -1).unwrap().error_code, 0);
    let big = record_batch(&["x".repeat(4096)], Compression::None);
    assert_eq!(client.produce("large-batches", 0, big, -1).unwrap().error_code, 0);

    // KIP-467: a compacted topic refuses records without a key, naming each one.
    assert_eq!(
        create_with_configs(&mut client, "compacted", &[("cleanup.policy", "compact,delete")], false).error_code,
        0
    );
    let refused = client
        .produce("compacted", 0, keyed_batch(&[Some("a"), None, Some("c")]), -1)
        .unwrap();
    assert_eq!(refused.error_code, 87, "INVALID_RECORD");
    assert_eq!(
        refused.record_errors.iter().map(|e| e.batch_index).collect::<Vec<_>>(),
        vec![1]
    );
    assert!(
        refused.record_errors[0]
            .batch_index_error_message
            .as_ref()
            .is_some_and(|m| m.contains("without key")),
        "{refused:?}"
    );
    assert!(
        refused
            .error_message
            .as_ref()
            .is_some_and(|m| m.contains("1 record errors")),
        "{refused:?}"
    );
    let stored = client
        .produce("compacted", 0, keyed_batch(&[Some("a"), Some("b")]), -1)
        .unwrap();
    assert_eq!(
        (stored.error_code, stored.base_offset),
        (0, 0),
        "nothing of the refused batch stored"
    );
    let internal = client
        .produce("__consumer_offsets", 0, keyed_batch(&[None]), -1)
        .unwrap();
    assert_eq!(
        internal.error_code, 17,
        "an internal topic is refused before its records are looked at"
    );
    let mut corrupt = BytesMut::from(&keyed_batch(&[Some("a")])[..]);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x55;
    let corrupt = client.produce("compacted", 0, corrupt.freeze(), -1).unwrap();
    assert_eq!(
        (corrupt.error_code, corrupt.record_errors.len()),
        (2, 0),
        "a CRC mismatch is CORRUPT_MESSAGE for the whole batch"
    );
}

#[test]
fn a_failed_acks0_produce_closes_its_connection_after_earlier_answers() {
    let mut broker = Broker::start();
    let mut client = Client::connect(broker.port).unwrap();
    assert_eq!(client.create_topic("acks0", 1).error_code, 0);

    // A successful acks=0 produce is not answered and the connection stays:
    // the next request's answer is the first frame to arrive (its correlation
    // id is checked), and the record was stored.
    assert!(client
        .produce("acks0", 0, record_batch(&["kept".into()], Compression::None), 0)
        .is_none());
    let answer = client.request(ApiKey::Metadata, 12, RequestKind::Metadata(MetadataRequest::default()));
    assert!(matches!(answer, ResponseKind::Metadata(_)));
    assert_eq!(client.read_all("acks0", 0), vec![(0, "kept".to_string())]);

    // A request pipelined before a failing acks=0 produce (to a partition the
    // topic does not have) still gets its answer; then the broker closes the
    // connection, as Kafka does, so the client notices and refreshes metadata.
    let metadata = client.encode_request(ApiKey::Metadata, 12, &RequestKind::Metadata(MetadataRequest::default()));
    client.send_raw(&metadata).unwrap();
    assert!(client
        .produce("acks0", 7, record_batch(&["lost".into()], Compression::None), 0)
        .is_none());
    let mut first = client.read_frame().expect("the earlier request is answered");
    let header = ResponseHeader::decode(&mut first, ApiKey::Metadata.response_header_version(12)).unwrap();
    assert_eq!(
        header.correlation_id,
        i32::from_be_bytes([metadata[8], metadata[9], metadata[10], metadata[11]])
    );
    assert!(
        client.is_closed_by_broker(),
        "a failed acks=0 produce closes the connection"
    );
    assert_still_serving(&mut broker);
}
