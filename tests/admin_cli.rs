//! The admin verbs (`rafka topic ...`, `rafka cluster info`) run as processes
//! against real brokers, checked through their `--json` output, on one node
//! and on three.

mod common;

use std::process::{Command, Output};

use common::{Broker, ClusterNodes};
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

    assert_eq!(
        json_of(&bootstrap(3), &["topic", "delete", "cli-replicated"]),
        json!([{"topic": "cli-replicated", "deleted": true}])
    );
    cluster.wait_for("the deleted topic gone from node 1's list", || {
        listed(&bootstrap(1), "cli-replicated").is_none().then_some(())
    });
}
