//! queued_max_request_bytes bounds the request bytes the broker holds: a
//! client that sends more than that at once is slowed down, not refused, and a
//! request larger than the whole budget still runs.

mod common;

use common::{record_batch, Broker, Client};
use kafka_protocol::records::Compression;

#[test]
fn requests_past_the_budget_wait_their_turn_and_all_succeed() {
    let budget = 64 * 1024;
    let broker = Broker::start_with(&[("RAFKA_QUEUED_MAX_REQUEST_BYTES", &budget.to_string())]);
    let mut client = Client::connect(broker.port).unwrap();
    assert_eq!(client.create_topic("budget", 1).error_code, 0);
    // 40 requests of about 16 KiB each (10 times the budget), then one of 200 KiB.
    let mut sizes: Vec<usize> = vec![16 * 1024; 40];
    sizes.push(200 * 1024);
    let batches = sizes
        .iter()
        .enumerate()
        .map(|(i, size)| record_batch(&[format!("{i}:{}", "x".repeat(*size))], Compression::None))
        .collect();
    let answers = client.pipeline_produce("budget", batches);
    let expected: Vec<(i16, i64)> = (0..sizes.len() as i64).map(|offset| (0, offset)).collect();
    assert_eq!(answers, expected);
    let read = client.read_all("budget", 0);
    assert_eq!(read.len(), sizes.len());
    assert!(read[40].1.starts_with("40:"));
}
