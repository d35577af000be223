//! Leader epochs across restarts of a single broker process, on its real
//! data dir: the epoch history and each batch's epoch survive kill -9 and a
//! graceful restart. A sole voter resumes its leadership with its stored vote
//! (openraft restores it as leader), so a restart is no new leader and the
//! epoch stays; the cluster suite covers epochs that change with the leader.

mod common;

use std::time::{Duration, Instant};

use common::{record_batch, topic_name, Broker, Client, DEADLINE};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_for_leader_epoch_request::{OffsetForLeaderPartition, OffsetForLeaderTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, ListOffsetsRequest, MetadataRequest, OffsetForLeaderEpochRequest, RequestKind, ResponseKind,
};
use kafka_protocol::records::{Compression, RecordBatchDecoder};

const TOPIC: &str = "epochs";
const UNKNOWN_LEADER_EPOCH: i16 = 75;

/// The partition's leader epoch once Metadata names a leader.
fn wait_leader_epoch(broker: &Broker) -> i32 {
    let start = Instant::now();
    loop {
        let epoch = Client::connect(broker.port).ok().and_then(|mut client| {
            let request = MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic_name(TOPIC)))
            ]));
            match client.try_request(ApiKey::Metadata, 12, RequestKind::Metadata(request)) {
                Ok(ResponseKind::Metadata(response)) => {
                    let partition = &response.topics.first()?.partitions.first()?;
                    (partition.leader_id.0 >= 0).then_some(partition.leader_epoch)
                }
                _ => None,
            }
        });
        if let Some(epoch) = epoch {
            return epoch;
        }
        assert!(start.elapsed() < DEADLINE, "no leader: {}", broker.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn produce(client: &mut Client, values: &[&str]) {
    let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    let answer = client
        .produce(TOPIC, 0, record_batch(&values, Compression::Lz4), -1)
        .unwrap();
    assert_eq!(answer.error_code, 0, "{:?}", answer.error_message);
}

/// `(error, epoch, end offset)` for `epoch`, checked against `current`.
fn end_offset(client: &mut Client, epoch: i32, current: i32) -> (i16, i32, i64) {
    let partition = OffsetForLeaderPartition::default()
        .with_partition(0)
        .with_current_leader_epoch(current)
        .with_leader_epoch(epoch);
    let request = OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![OffsetForLeaderTopic::default()
            .with_topic(topic_name(TOPIC))
            .with_partitions(vec![partition])]);
    match client.request(
        ApiKey::OffsetForLeaderEpoch,
        4,
        RequestKind::OffsetForLeaderEpoch(request),
    ) {
        ResponseKind::OffsetForLeaderEpoch(response) => {
            let answer = &response.topics[0].partitions[0];
            (answer.error_code, answer.leader_epoch, answer.end_offset)
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// ListOffsets latest: `(error, offset, epoch)`, checked against `current`.
fn latest(client: &mut Client, current: i32) -> (i16, i64, i32) {
    let partition = ListOffsetsPartition::default()
        .with_partition_index(0)
        .with_current_leader_epoch(current)
        .with_timestamp(-1);
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(TOPIC))
            .with_partitions(vec![partition])]);
    match client.request(ApiKey::ListOffsets, 6, RequestKind::ListOffsets(request)) {
        ResponseKind::ListOffsets(response) => {
            let answer = &response.topics[0].partitions[0];
            (answer.error_code, answer.offset, answer.leader_epoch)
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// The leader epoch of every record, in offset order.
fn record_epochs(client: &mut Client) -> Vec<i32> {
    let data = client.fetch(TOPIC, 0, 0, 0, 0);
    assert_eq!(data.error_code, 0);
    let mut records = data.records.unwrap_or_default();
    RecordBatchDecoder::decode_all(&mut records)
        .unwrap()
        .iter()
        .flat_map(|set| set.records.iter().map(|r| r.partition_leader_epoch))
        .collect()
}

#[test]
fn the_epoch_history_and_batch_epochs_survive_restarts() {
    let mut broker = Broker::start();
    let mut client = Client::connect(broker.port).unwrap();
    assert_eq!(client.create_topic(TOPIC, 1).error_code, 0);
    let epoch = wait_leader_epoch(&broker);
    assert_eq!(epoch, 0, "the first leader's epoch");
    produce(&mut client, &["a", "b", "c"]);
    assert_eq!(latest(&mut client, epoch), (0, 3, epoch));

    broker.kill9();
    broker.restart();
    assert_eq!(wait_leader_epoch(&broker), epoch, "the same leader after kill -9");
    let mut client = Client::connect(broker.port).unwrap();
    produce(&mut client, &["d", "e"]);

    broker.stop_gracefully();
    broker.restart();
    assert_eq!(
        wait_leader_epoch(&broker),
        epoch,
        "the same leader after a graceful restart"
    );
    let mut client = Client::connect(broker.port).unwrap();

    assert_eq!(record_epochs(&mut client), vec![epoch; 5]);
    assert_eq!(
        end_offset(&mut client, epoch, epoch),
        (0, epoch, 5),
        "the current epoch ends at the log end"
    );
    assert_eq!(
        end_offset(&mut client, epoch + 1, -1),
        (0, -1, -1),
        "a future epoch is unknown"
    );
    assert_eq!(latest(&mut client, -1), (0, 5, epoch));
    assert_eq!(latest(&mut client, epoch + 1).0, UNKNOWN_LEADER_EPOCH);
    assert_eq!(end_offset(&mut client, epoch, epoch + 1).0, UNKNOWN_LEADER_EPOCH);
}
