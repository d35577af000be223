//! Produce requests pipelined on one connection are folded into shared Raft
//! entries (group commit), yet each is checked and answered on its own, in order.

mod common;

use common::{producer_batch, record_batch, Broker, Client};
use kafka_protocol::messages::{ApiKey, InitProducerIdRequest, ProducerId, RequestKind, ResponseKind};
use kafka_protocol::records::Compression;

const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;

fn values(request: usize, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("r{request}-{i}")).collect()
}

#[test]
fn pipelined_produce_requests_get_dense_offsets_in_request_order() {
    let broker = Broker::start();
    let mut client = Client::connect(broker.port).unwrap();
    assert_eq!(client.create_topic("folded", 1).error_code, 0);
    let requests = 60;
    let batches = (0..requests)
        .map(|r| record_batch(&values(r, r % 4 + 1), Compression::None))
        .collect();
    let answers = client.pipeline_produce("folded", batches);
    let mut next = 0;
    for (request, (code, base)) in answers.into_iter().enumerate() {
        assert_eq!(code, 0, "request {request}");
        assert_eq!(base, next, "request {request} starts where the one before ended");
        next += (request % 4 + 1) as i64;
    }
    let read: Vec<String> = client.read_all("folded", 0).into_iter().map(|(_, v)| v).collect();
    let sent: Vec<String> = (0..requests).flat_map(|r| values(r, r % 4 + 1)).collect();
    assert_eq!(read, sent);
}

#[test]
fn a_refused_request_in_a_folded_entry_leaves_its_neighbours_appended() {
    let broker = Broker::start();
    let mut client = Client::connect(broker.port).unwrap();
    assert_eq!(client.create_topic("idempotent", 1).error_code, 0);
    let init = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let (producer_id, epoch) = match client.request(ApiKey::InitProducerId, 4, RequestKind::InitProducerId(init)) {
        ResponseKind::InitProducerId(response) => {
            assert_eq!(response.error_code, 0);
            (response.producer_id.0, response.producer_epoch)
        }
        other => panic!("unexpected {other:?}"),
    };
    assert!(producer_id >= 0, "InitProducerId answered producer id {producer_id}");
    // Sequences 0, 2, 4, then a gap (100), then 6 and a retry of 6: the gap is
    // refused, the retry is answered with the offset of the first 6.
    let sequences = [0, 2, 4, 100, 6, 6];
    let batches = sequences
        .iter()
        .map(|&sequence| {
            producer_batch(
                &values(sequence as usize, 2),
                Compression::None,
                producer_id,
                epoch,
                sequence,
            )
        })
        .collect();
    let answers = client.pipeline_produce("idempotent", batches);
    assert_eq!(
        answers,
        vec![
            (0, 0),
            (0, 2),
            (0, 4),
            (OUT_OF_ORDER_SEQUENCE_NUMBER, -1),
            (0, 6),
            (0, 6)
        ]
    );
    let read: Vec<(i64, String)> = client.read_all("idempotent", 0);
    let expected: Vec<(i64, String)> = [0, 2, 4, 6]
        .iter()
        .flat_map(|&sequence| values(sequence, 2))
        .enumerate()
        .map(|(offset, value)| (offset as i64, value))
        .collect();
    assert_eq!(read, expected);
}
