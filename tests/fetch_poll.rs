//! Fetch long-polls until data arrives, and ListOffsets finds offsets.

mod common;

use common::{record_batch, Broker, Client};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{ApiKey, ListOffsetsRequest, RequestKind, ResponseKind};
use kafka_protocol::records::{Compression, RecordBatchDecoder};

#[test]
fn a_waiting_fetch_returns_as_soon_as_a_record_is_committed() {
    let broker = Broker::start();
    let mut client = Client::connect(broker.port).unwrap();
    assert_eq!(client.create_topic("poll", 1).error_code, 0);
    let port = broker.port;
    let producer = std::thread::spawn(move || {
        let mut producer = Client::connect(port).unwrap();
        // The consumer's fetch is already parked or about to be; either way it must see this.
        producer
            .produce("poll", 0, record_batch(&["late".into()], Compression::None), -1)
            .unwrap()
    });
    // A long max_wait: if long-polling did not wake up on the append, the
    // response would come back empty at the deadline instead.
    let data = client.fetch("poll", 0, 0, 25_000, 1);
    assert_eq!(producer.join().unwrap().error_code, 0);
    let mut records = data.records.unwrap_or_default();
    let sets = RecordBatchDecoder::decode_all(&mut records).unwrap();
    assert_eq!(sets[0].records[0].value.as_deref(), Some(&b"late"[..]));
    assert_eq!(data.high_watermark, 1);

    let out_of_range = client.fetch("poll", 0, 5, 0, 0);
    assert_eq!(out_of_range.error_code, 1, "OFFSET_OUT_OF_RANGE");
}

#[test]
fn list_offsets_answers_earliest_latest_and_by_timestamp() {
    let broker = Broker::start();
    let mut client = Client::connect(broker.port).unwrap();
    assert_eq!(client.create_topic("times", 1).error_code, 0);
    // Records carry timestamps 1_700_000_000_000 + index within their batch.
    client.produce(
        "times",
        0,
        record_batch(&["a".into(), "b".into(), "c".into()], Compression::None),
        -1,
    );
    client.produce(
        "times",
        0,
        record_batch(&["d".into(), "e".into()], Compression::Zstd),
        -1,
    );
    let lookup = |client: &mut Client, timestamp: i64| {
        let partition = ListOffsetsPartition::default()
            .with_partition_index(0)
            .with_timestamp(timestamp);
        let topic = ListOffsetsTopic::default()
            .with_name(common::topic_name("times"))
            .with_partitions(vec![partition]);
        let request = ListOffsetsRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_topics(vec![topic]);
        match client.request(ApiKey::ListOffsets, 6, RequestKind::ListOffsets(request)) {
            ResponseKind::ListOffsets(mut r) => {
                let p = r.topics.remove(0).partitions.remove(0);
                assert_eq!(p.error_code, 0);
                p.offset
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(lookup(&mut client, -2), 0);
    assert_eq!(lookup(&mut client, -1), 5);
    assert_eq!(lookup(&mut client, 1_700_000_000_002), 2);
    assert_eq!(lookup(&mut client, 1_700_000_000_001), 1);
    assert_eq!(lookup(&mut client, 1_900_000_000_000), -1);
}
