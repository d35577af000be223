//! Acknowledged writes survive restarts and kill -9 of the broker process, and
//! a partition group damaged on disk does not take the broker down.

mod common;

use std::time::{Duration, Instant};

use common::{record_batch, Broker, Client};
use kafka_protocol::records::Compression;

fn produce_acked(client: &mut Client, topic: &str, from: usize, count: usize) -> Vec<String> {
    let mut acked = Vec::new();
    for i in from..from + count {
        let values = vec![format!("v{i}-a"), format!("v{i}-b")];
        let codec = [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ][i % 5];
        let response = client.produce(topic, 0, record_batch(&values, codec), -1).unwrap();
        assert_eq!(response.error_code, 0);
        assert_eq!(response.base_offset, acked.len() as i64 + 2 * from as i64);
        acked.extend(values);
    }
    acked
}

fn assert_log_is(client: &mut Client, topic: &str, expected: &[String]) {
    let read = client.read_all(topic, 0);
    let offsets: Vec<i64> = read.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (0..expected.len() as i64).collect::<Vec<_>>(),
        "dense offsets from 0"
    );
    let values: Vec<String> = read.into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, expected);
}

#[test]
fn acknowledged_writes_survive_kill_9_and_graceful_restarts() {
    let mut broker = Broker::start_with(&[("RAFKA_SNAPSHOT_ENTRIES", "25")]);
    let mut client = Client::connect(broker.port).unwrap();
    assert_eq!(client.create_topic("durable", 1).error_code, 0);
    let mut acked = produce_acked(&mut client, "durable", 0, 60);

    broker.kill9();
    broker.restart();
    let mut client = Client::connect(broker.port).unwrap();
    assert_log_is(&mut client, "durable", &acked);

    acked.extend(produce_acked(&mut client, "durable", 60, 20));
    broker.stop_gracefully();
    broker.restart();
    let mut client = Client::connect(broker.port).unwrap();
    assert_log_is(&mut client, "durable", &acked);
    let log = broker.data_dir().join("data/log/group-1");
    assert!(
        std::fs::read_dir(log).unwrap().count() > 0,
        "the partition's records are in its log files"
    );
}

#[test]
fn topics_and_acks_0_writes_survive_restart() {
    let mut broker = Broker::start();
    let mut client = Client::connect(broker.port).unwrap();
    assert_eq!(client.create_topic("three", 3).error_code, 0);
    for partition in 0..3 {
        client.produce(
            "three",
            partition,
            record_batch(&[format!("p{partition}")], Compression::None),
            0,
        );
    }
    // acks=0 has no answer; a later acks=all write on the same connection is ordered after it.
    let fenced = client
        .produce("three", 2, record_batch(&["after".into()], Compression::None), -1)
        .unwrap();
    assert_eq!(fenced.base_offset, 1);
    broker.kill9();
    broker.restart();
    let mut client = Client::connect(broker.port).unwrap();
    for partition in 0..2 {
        assert_eq!(client.read_all("three", partition), vec![(0, format!("p{partition}"))]);
    }
    assert_eq!(
        client.read_all("three", 2),
        vec![(0, "p2".to_string()), (1, "after".to_string())]
    );
}

/// A partition group whose log on disk is inconsistent (its file claims to
/// start at an entry its first record is not) cannot start. The broker logs
/// it, keeps serving every other partition, and keeps retrying that group
/// without exiting.
#[test]
fn a_damaged_partition_group_leaves_the_rest_of_the_broker_serving() {
    let mut broker = Broker::start();
    let mut client = Client::connect(broker.port).unwrap();
    // Groups are numbered in creation order from 1: "damaged" is group 1.
    assert_eq!(client.create_topic("damaged", 1).error_code, 0);
    assert_eq!(client.create_topic("healthy", 1).error_code, 0);
    for topic in ["damaged", "healthy"] {
        let answer = client
            .produce(topic, 0, record_batch(&[format!("{topic}-0")], Compression::None), -1)
            .unwrap();
        assert_eq!(answer.error_code, 0);
    }
    broker.stop_gracefully();

    let log = broker.data_dir().join("data/log/group-1");
    let files: Vec<_> = std::fs::read_dir(&log).unwrap().map(|f| f.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "one log file: {files:?}");
    std::fs::rename(&files[0], log.join(format!("{:020}.log", 100))).unwrap();

    broker.restart();
    let mut client = Client::connect(broker.port).unwrap();
    assert_eq!(client.read_all("healthy", 0), vec![(0, "healthy-0".to_string())]);
    let answer = client
        .produce("healthy", 0, record_batch(&["healthy-1".into()], Compression::None), -1)
        .unwrap();
    assert_eq!((answer.error_code, answer.base_offset), (0, 1));
    let refused = client
        .produce("damaged", 0, record_batch(&["lost".into()], Compression::None), -1)
        .unwrap();
    assert_ne!(refused.error_code, 0, "the damaged partition has no leader here");

    // Retried every few seconds, and the broker stays up through the retries.
    let start = Instant::now();
    while broker.log().matches("cannot start partition group").count() < 3 {
        assert!(broker.is_running(), "the broker exited: {}", broker.log());
        assert!(start.elapsed() < common::DEADLINE, "no retry logged: {}", broker.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(broker.is_running());
    assert_eq!(
        client.read_all("healthy", 0),
        vec![(0, "healthy-0".to_string()), (1, "healthy-1".to_string())]
    );
}

fn snapshot_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flat_map(|group| std::fs::read_dir(group.unwrap().path()).unwrap())
        .map(|file| file.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "snap"))
        .collect()
}

/// Snapshot files deleted while the broker is down (the logs were purged
/// behind them) are not fatal: the broker starts, builds new snapshots from
/// its state, and serves every acknowledged record. The controller's snapshot
/// holds its whole state; a partition's, a checkpoint taken where retention
/// freed its log.
#[test]
fn lost_snapshot_files_are_rebuilt_at_start() {
    let mut broker = Broker::start_with(&[
        ("RAFKA_SNAPSHOT_ENTRIES", "10"),
        ("RAFKA_LOG_SEGMENT_BYTES", "4096"),
        ("RAFKA_LOG_RETENTION_BYTES", "8192"),
        ("RAFKA_LOG_RETENTION_CHECK_INTERVAL_MS", "100"),
    ]);
    let mut client = Client::connect(broker.port).unwrap();
    assert_eq!(client.create_topic("retained", 1).error_code, 0);
    for topic in 0..12 {
        assert_eq!(client.create_topic(&format!("extra-{topic}"), 1).error_code, 0);
    }
    let mut acked = produce_acked(&mut client, "retained", 0, 400);
    let last = acked.len() as i64 - 1;
    let log_start = |client: &mut Client| client.fetch("retained", 0, last, 0, 0).log_start_offset;
    let start = Instant::now();
    while log_start(&mut client) == 0 {
        assert!(
            start.elapsed() < common::DEADLINE,
            "retention never moved the log start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    broker.stop_gracefully();

    let snapshots = broker.data_dir().join("data/snapshots");
    let lost = snapshot_files(&snapshots);
    let groups: Vec<_> = lost.iter().filter_map(|f| f.parent()).collect();
    assert!(
        groups.iter().any(|g| g.ends_with("group-0")) && groups.iter().any(|g| g.ends_with("group-1")),
        "the controller and the partition were snapshotted: {lost:?}"
    );
    for file in &lost {
        std::fs::remove_file(file).unwrap();
    }

    broker.restart();
    let mut client = Client::connect(broker.port).unwrap();
    let first = log_start(&mut client);
    let expected: Vec<(i64, String)> = (first..).zip(acked[first as usize..].iter().cloned()).collect();
    assert_eq!(client.read_from("retained", 0, first), expected);
    assert_eq!(
        client.create_topic("extra-0", 1).error_code,
        36,
        "the controller kept its topics"
    );
    acked.extend(produce_acked(&mut client, "retained", 400, 5));
    assert_eq!(client.read_from("retained", 0, last + 1).len(), 10);
    let rebuilt = snapshot_files(&snapshots);
    assert!(
        !rebuilt.is_empty() && rebuilt.iter().all(|file| !lost.contains(file)),
        "new snapshot files {rebuilt:?}"
    );
    assert!(broker.log().contains("building a new one"), "{}", broker.log());
}
