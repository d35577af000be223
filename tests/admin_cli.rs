//! The admin verbs (`rafka topic ...`, `rafka cluster info`, `rafka group ...`,
//! `rafka produce`, `rafka consume`) run as processes against real brokers,
//! checked through their `--json` output, on one node and on three.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use bytes::Bytes;
use common::{Broker, Client, ClusterNodes};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::{ApiKey, GroupId, JoinGroupRequest, RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use serde_json::{json, Value};

fn rafka(bootstrap: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rafka"))
        .args(args)
        .args(["--bootstrap", bootstrap])
        .output()
        .expect("rafka runs")
}

/// Runs a verb with `--json`; it must succeed and print JSON.
fn json_of(bootstrap: &str, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let output = rafka(bootstrap, &args);
    assert!(
        output.status.success(),
        "rafka {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "rafka {args:?} printed no JSON ({err}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// Runs a verb with `input` on its stdin.
fn rafka_with_input(bootstrap: &str, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rafka"))
        .args(args)
        .args(["--bootstrap", bootstrap])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rafka runs");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .expect("stdin takes the input");
    child.wait_with_output().expect("rafka finishes")
}

/// `rafka produce --json` of `lines`; it must succeed.
fn produce(bootstrap: &str, args: &[&str], lines: &str) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let output = rafka_with_input(bootstrap, &args, lines);
    assert!(
        output.status.success(),
        "rafka {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("produce prints JSON")
}

/// `rafka consume --json`: one JSON object per line, sorted by (partition, offset).
fn consume(bootstrap: &str, args: &[&str]) -> Vec<Value> {
    let mut args = args.to_vec();
    args.extend(["--json", "--timeout-ms", "20000"]);
    let output = rafka(bootstrap, &args);
    assert!(
        output.status.success(),
        "rafka {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut records: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    records.sort_by_key(|r| (r["partition"].as_i64(), r["offset"].as_i64()));
    records
}

/// (partition, offset, value) of consumed or produced records.
fn placed(records: &[Value]) -> Vec<(i64, i64, String)> {
    records
        .iter()
        .map(|r| {
            (
                r["partition"].as_i64().unwrap(),
                r["offset"].as_i64().unwrap(),
                r["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Runs a verb that must fail; returns its stderr.
fn failure(bootstrap: &str, args: &[&str]) -> String {
    let output = rafka(bootstrap, args);
    assert!(!output.status.success(), "rafka {args:?} should fail");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A consumer-group member that stays in `group` for its session (30 s), over the raw protocol.
fn join_group(port: u16, group: &str) -> Client {
    let mut client = Client::connect(port).unwrap();
    let mut member = String::new();
    for _ in 0..2 {
        let request = JoinGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
            .with_session_timeout_ms(30_000)
            .with_rebalance_timeout_ms(10_000)
            .with_member_id(StrBytes::from_string(member.clone()))
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str("range"))
                .with_metadata(Bytes::from_static(b"meta"))]);
        let ResponseKind::JoinGroup(joined) = client.request(ApiKey::JoinGroup, 7, RequestKind::JoinGroup(request))
        else {
            panic!("unexpected JoinGroup answer");
        };
        // The first join answers MEMBER_ID_REQUIRED (79) with the id to join with.
        match joined.error_code {
            79 => member = joined.member_id.to_string(),
            0 => return client,
            other => panic!("JoinGroup failed with {other}"),
        }
    }
    panic!("no member id after two joins");
}

fn committed(bootstrap: &str, group: &str) -> Vec<(String, i64, i64)> {
    json_of(bootstrap, &["group", "describe", group])
        .as_array()
        .expect("group describe is an array")
        .iter()
        .map(|row| {
            (
                row["topic"].as_str().unwrap().to_string(),
                row["partition"].as_i64().unwrap(),
                row["committed"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn listed(bootstrap: &str, topic: &str) -> Option<Value> {
    json_of(bootstrap, &["topic", "list"])
        .as_array()
        .expect("topic list is an array")
        .iter()
        .find(|t| t["topic"] == topic)
        .cloned()
}

#[test]
fn topic_and_cluster_verbs_on_a_single_node() {
    let broker = Broker::start();
    let bs = format!("127.0.0.1:{}", broker.port);

    let created = json_of(
        &bs,
        &[
            "topic",
            "create",
            "cli-topic",
            "--partitions",
            "3",
            "--config",
            "retention.ms=60000",
        ],
    );
    assert_eq!(
        created,
        json!({"topic": "cli-topic", "created": true, "partitions": 3, "replication_factor": 1})
    );
    let again = rafka(&bs, &["topic", "create", "cli-topic"]);
    assert!(!again.status.success(), "creating an existing topic must fail");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("TopicAlreadyExists"),
        "the error is named: {}",
        String::from_utf8_lossy(&again.stderr)
    );

    assert_eq!(
        listed(&bs, "cli-topic"),
        Some(json!({"topic": "cli-topic", "partitions": 3, "replication_factor": 1, "internal": false}))
    );
    let described = json_of(&bs, &["topic", "describe", "cli-topic"]);
    let topic = &described[0];
    assert_eq!(topic["topic"], "cli-topic");
    assert_eq!(topic["configs"]["retention.ms"], "60000", "{described}");
    let partitions: Vec<Value> = (0..3)
        .map(|p| json!({"partition": p, "leader": 1, "replicas": [1], "isr": [1]}))
        .collect();
    assert_eq!(topic["partitions"], Value::from(partitions));

    let info = json_of(&bs, &["cluster", "info"]);
    assert_eq!(info["controller"], 1);
    assert_eq!(info["cluster_id"], "rafka-single-node");
    assert_eq!(info["partitions"], 3, "{info}");
    assert_eq!(
        info["brokers"],
        json!([{"id": 1, "host": "127.0.0.1", "port": broker.port, "leaders": 3, "replicas": 3}])
    );

    assert_eq!(
        json_of(&bs, &["topic", "delete", "cli-topic"]),
        json!([{"topic": "cli-topic", "deleted": true}])
    );
    assert_eq!(listed(&bs, "cli-topic"), None);
    let gone = rafka(&bs, &["topic", "describe", "cli-topic"]);
    assert!(!gone.status.success(), "describing a deleted topic must fail");
    assert!(String::from_utf8_lossy(&gone.stderr).contains("UnknownTopicOrPartition"));
}

#[test]
fn topic_and_cluster_verbs_on_three_nodes() {
    let cluster = ClusterNodes::start(3);
    let bootstrap = |node: u64| format!("127.0.0.1:{}", cluster.node(node).port);
    cluster.wait_for("cluster info listing three brokers and a controller", || {
        let output = rafka(&bootstrap(1), &["cluster", "info", "--json"]);
        let info: Value = serde_json::from_slice(&output.stdout).ok()?;
        let brokers = info["brokers"].as_array()?.len();
        (brokers == 3 && info["controller"].as_i64()? > 0).then_some(())
    });

    // Sent to node 2, whichever node leads the controller group.
    let created = json_of(
        &bootstrap(2),
        &["topic", "create", "cli-replicated", "-p", "3", "-r", "3"],
    );
    assert_eq!(created["partitions"], 3, "{created}");
    assert_eq!(created["replication_factor"], 3, "{created}");

    // Every partition led by one of the nodes, each with all three in sync, as node 3 sees it.
    let described = cluster.wait_for("three partitions with leaders and full ISRs", || {
        let output = rafka(&bootstrap(3), &["topic", "describe", "cli-replicated", "--json"]);
        let described: Value = serde_json::from_slice(&output.stdout).ok()?;
        let partitions = described[0]["partitions"].as_array()?.clone();
        let settled = partitions.len() == 3
            && partitions.iter().all(|p| {
                (1..=3).contains(&p["leader"].as_i64().unwrap_or(-1))
                    && p["replicas"].as_array().map(Vec::len) == Some(3)
                    && p["isr"].as_array().map(Vec::len) == Some(3)
            });
        settled.then_some(partitions)
    });

    let info = cluster.wait_for("cluster info agreeing with topic describe", || {
        let output = rafka(&bootstrap(1), &["cluster", "info", "--json"]);
        let info: Value = serde_json::from_slice(&output.stdout).ok()?;
        let leaders: i64 = info["brokers"]
            .as_array()?
            .iter()
            .filter_map(|b| b["leaders"].as_i64())
            .sum();
        // The offsets topic may exist too; this topic's 3 partitions are among the led ones.
        (leaders >= 3).then_some(info)
    });
    for broker in info["brokers"].as_array().unwrap() {
        let id = broker["id"].as_i64().unwrap();
        let port = cluster.node(id as u64).port;
        assert_eq!(broker["port"], port, "{info}");
        let leads = described.iter().filter(|p| p["leader"] == id).count() as i64;
        assert!(broker["leaders"].as_i64().unwrap() >= leads, "{info} vs {described:?}");
        assert!(
            broker["replicas"].as_i64().unwrap() >= 3,
            "each node holds every partition: {info}"
        );
    }

    // A config change sent to node 3 goes through the controller group, wherever it leads.
    json_of(
        &bootstrap(3),
        &[
            "topic",
            "alter-config",
            "cli-replicated",
            "--set",
            "compression.type=zstd",
        ],
    );
    cluster.wait_for("node 1 reporting the changed config", || {
        let output = rafka(&bootstrap(1), &["topic", "describe", "cli-replicated", "--json"]);
        let described: Value = serde_json::from_slice(&output.stdout).ok()?;
        (described[0]["configs"]["compression.type"] == "zstd").then_some(())
    });

    // Produce and consume reach each partition's leader, whichever node was asked.
    let produced = produce(&bootstrap(1), &["produce", "cli-replicated"], "x\ny\nz\n");
    assert_eq!(
        placed(produced.as_array().unwrap()),
        vec![(0, 0, "x".into()), (1, 0, "y".into()), (2, 0, "z".into())]
    );
    let consumed = consume(
        &bootstrap(2),
        &["consume", "cli-replicated", "--from-beginning", "--count", "3"],
    );
    assert_eq!(placed(&consumed), placed(produced.as_array().unwrap()));

    // Group verbs find the group's coordinator themselves.
    let reset = json_of(
        &bootstrap(2),
        &[
            "group",
            "reset-offsets",
            "cli-group3",
            "--topic",
            "cli-replicated",
            "--to-latest",
        ],
    );
    let offsets: Vec<i64> = reset
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(offsets, vec![1, 1, 1], "{reset}");
    assert_eq!(
        json_of(&bootstrap(3), &["group", "delete", "cli-group3"]),
        json!([{"group": "cli-group3", "deleted": true}])
    );

    assert_eq!(
        json_of(&bootstrap(3), &["topic", "delete", "cli-replicated"]),
        json!([{"topic": "cli-replicated", "deleted": true}])
    );
    cluster.wait_for("the deleted topic gone from node 1's list", || {
        listed(&bootstrap(1), "cli-replicated").is_none().then_some(())
    });
}

#[test]
fn config_record_and_group_verbs_on_a_single_node() {
    let broker = Broker::start_with(&[("RAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")]);
    let bs = format!("127.0.0.1:{}", broker.port);
    json_of(&bs, &["topic", "create", "cli-records", "--partitions", "2"]);

    // topic alter-config: set and delete single keys; describe reports the result.
    let altered = json_of(
        &bs,
        &[
            "topic",
            "alter-config",
            "cli-records",
            "--set",
            "compression.type=gzip",
            "--set",
            "cleanup.policy=compact,delete",
        ],
    );
    assert_eq!(
        altered,
        json!({"topic": "cli-records", "set": {"compression.type": "gzip", "cleanup.policy": "compact,delete"}, "deleted": []})
    );
    let configs = || json_of(&bs, &["topic", "describe", "cli-records"])[0]["configs"].clone();
    assert_eq!(configs()["compression.type"], "gzip");
    assert_eq!(configs()["cleanup.policy"], "compact,delete");
    json_of(
        &bs,
        &["topic", "alter-config", "cli-records", "--delete", "compression.type"],
    );
    assert_eq!(
        configs()["compression.type"],
        "producer",
        "deleted: back to the default"
    );
    assert_eq!(configs()["cleanup.policy"], "compact,delete", "the other key is kept");
    let refused = failure(
        &bs,
        &["topic", "alter-config", "cli-records", "--set", "dummy.doesntexist=1"],
    );
    assert!(refused.contains("InvalidConfig"), "{refused}");
    let refused = failure(
        &bs,
        &["topic", "alter-config", "cli-records", "--set", "min.insync.replicas=0"],
    );
    assert!(refused.contains("InvalidConfig"), "{refused}");
    // A compacted topic refuses records without a key, as Kafka does; the
    // produce checks below send some.
    json_of(
        &bs,
        &["topic", "alter-config", "cli-records", "--delete", "cleanup.policy"],
    );
    assert_eq!(configs()["cleanup.policy"], "delete");

    // produce: an explicit partition, then a key placed by Kafka's murmur2 partitioner
    // ("key" hashes to partition 1 of 2), then round-robin by line.
    let produced = produce(&bs, &["produce", "cli-records", "--partition", "1"], "a\nb\nc\n");
    assert_eq!(
        placed(produced.as_array().unwrap()),
        vec![(1, 0, "a".into()), (1, 1, "b".into()), (1, 2, "c".into())]
    );
    let keyed = produce(&bs, &["produce", "cli-records", "--key", "key"], "d\n");
    assert_eq!(
        keyed,
        json!([{"topic": "cli-records", "partition": 1, "offset": 3, "key": "key", "value": "d"}])
    );
    let spread = produce(&bs, &["produce", "cli-records"], "e\nf\n");
    assert_eq!(
        placed(spread.as_array().unwrap()),
        vec![(0, 0, "e".into()), (1, 4, "f".into())]
    );

    // consume: every record from the beginning, one partition, and plain values.
    let all = consume(&bs, &["consume", "cli-records", "--from-beginning", "--count", "6"]);
    assert_eq!(
        placed(&all),
        vec![
            (0, 0, "e".into()),
            (1, 0, "a".into()),
            (1, 1, "b".into()),
            (1, 2, "c".into()),
            (1, 3, "d".into()),
            (1, 4, "f".into())
        ]
    );
    assert_eq!(all[4]["key"], "key");
    assert!(all[0]["key"].is_null());
    let plain = rafka(
        &bs,
        &[
            "consume",
            "cli-records",
            "--partition",
            "1",
            "--from-beginning",
            "--count",
            "2",
        ],
    );
    assert!(plain.status.success(), "{}", String::from_utf8_lossy(&plain.stderr));
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "a\nb\n");
    let short = failure(
        &bs,
        &[
            "consume",
            "cli-records",
            "--partition",
            "0",
            "--from-beginning",
            "--count",
            "5",
            "--timeout-ms",
            "500",
        ],
    );
    assert!(short.contains("1 of 5 record(s)"), "{short}");

    // group reset-offsets on a group without members, then delete it.
    let reset = json_of(
        &bs,
        &[
            "group",
            "reset-offsets",
            "cli-group",
            "--topic",
            "cli-records",
            "--to-latest",
        ],
    );
    assert_eq!(
        reset,
        json!([
            {"group": "cli-group", "topic": "cli-records", "partition": 0, "offset": 1},
            {"group": "cli-group", "topic": "cli-records", "partition": 1, "offset": 5}
        ])
    );
    assert_eq!(
        committed(&bs, "cli-group"),
        vec![("cli-records".into(), 0, 1), ("cli-records".into(), 1, 5)]
    );
    json_of(
        &bs,
        &[
            "group",
            "reset-offsets",
            "cli-group",
            "--topic",
            "cli-records",
            "--to-offset",
            "3",
        ],
    );
    assert_eq!(
        committed(&bs, "cli-group"),
        vec![("cli-records".into(), 0, 1), ("cli-records".into(), 1, 3)],
        "an offset past a partition's end is moved to its end"
    );
    json_of(
        &bs,
        &[
            "group",
            "reset-offsets",
            "cli-group",
            "--topic",
            "cli-records",
            "--to-earliest",
        ],
    );
    assert_eq!(
        committed(&bs, "cli-group"),
        vec![("cli-records".into(), 0, 0), ("cli-records".into(), 1, 0)]
    );
    assert_eq!(
        json_of(&bs, &["group", "delete", "cli-group"]),
        json!([{"group": "cli-group", "deleted": true}])
    );
    let groups = json_of(&bs, &["group", "list"]);
    assert!(
        !groups.as_array().unwrap().iter().any(|g| g["group"] == "cli-group"),
        "{groups}"
    );
    let missing = failure(&bs, &["group", "delete", "cli-group"]);
    assert!(missing.contains("GroupIdNotFound"), "{missing}");

    // A group with a member: both verbs refuse, and say why.
    let _member = join_group(broker.port, "cli-active");
    let active = failure(
        &bs,
        &[
            "group",
            "reset-offsets",
            "cli-active",
            "--topic",
            "cli-records",
            "--to-earliest",
        ],
    );
    assert!(active.contains("1 active member(s)"), "{active}");
    let nonempty = failure(&bs, &["group", "delete", "cli-active"]);
    assert!(nonempty.contains("NonEmptyGroup"), "{nonempty}");
}
