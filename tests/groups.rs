//! Consumer-group protocol against a real broker: the join/sync round trip,
//! the errors Kafka clients rely on, and committed offsets across a restart.

mod common;

use bytes::Bytes;
use common::{topic_name, Broker, Client};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, DeleteGroupsRequest, GroupId, HeartbeatRequest, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    MetadataRequest, OffsetCommitRequest, OffsetFetchRequest, RequestKind, ResponseKind, SyncGroupRequest,
};
use kafka_protocol::protocol::StrBytes;

fn s(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

fn join(client: &mut Client, group: &str, member_id: &str, session_timeout_ms: i32) -> JoinGroupResponse {
    let protocol = JoinGroupRequestProtocol::default()
        .with_name(s("range"))
        .with_metadata(Bytes::from_static(b"meta"));
    let request = JoinGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_session_timeout_ms(session_timeout_ms)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(s(member_id))
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![protocol]);
    match client.request(ApiKey::JoinGroup, 7, RequestKind::JoinGroup(request)) {
        ResponseKind::JoinGroup(response) => response,
        other => panic!("unexpected {other:?}"),
    }
}

fn commit(client: &mut Client, group: &str, generation: i32, member: &str, topic: &str, offset: i64) -> i16 {
    let partition = OffsetCommitRequestPartition::default()
        .with_partition_index(0)
        .with_committed_offset(offset);
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(s(member))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![partition])]);
    match client.request(ApiKey::OffsetCommit, 8, RequestKind::OffsetCommit(request)) {
        ResponseKind::OffsetCommit(r) => r.topics[0].partitions[0].error_code,
        other => panic!("unexpected {other:?}"),
    }
}

fn committed(client: &mut Client, group: &str, topic: &str) -> i64 {
    let wanted = OffsetFetchRequestTopic::default()
        .with_name(topic_name(topic))
        .with_partition_indexes(vec![0]);
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_topics(Some(vec![wanted]));
    match client.request(ApiKey::OffsetFetch, 7, RequestKind::OffsetFetch(request)) {
        ResponseKind::OffsetFetch(r) => {
            assert_eq!(r.error_code, 0);
            r.topics[0].partitions[0].committed_offset
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn error_code(response: ResponseKind) -> i16 {
    match response {
        ResponseKind::Heartbeat(r) => r.error_code,
        ResponseKind::SyncGroup(r) => r.error_code,
        ResponseKind::LeaveGroup(r) => r.error_code,
        ResponseKind::DeleteGroups(r) => r.results[0].error_code,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_member_joins_syncs_commits_and_its_offsets_survive_restart() {
    let mut broker = Broker::start_with(&[("RAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")]);
    let mut client = Client::connect(broker.port).unwrap();
    assert_eq!(client.create_topic("orders", 1).error_code, 0);

    assert_eq!(
        join(&mut client, "g", "", 1).error_code,
        26,
        "INVALID_SESSION_TIMEOUT (too short)"
    );
    assert_eq!(
        join(&mut client, "g", "", i32::MAX).error_code,
        26,
        "INVALID_SESSION_TIMEOUT (absurd)"
    );
    assert_eq!(
        join(&mut client, "g", "nobody", 10_000).error_code,
        25,
        "UNKNOWN_MEMBER_ID"
    );
    assert_eq!(
        commit(&mut client, "g", 5, "nobody", "orders", 1),
        25,
        "commit from an unknown member"
    );

    let first = join(&mut client, "g", "", 10_000);
    assert_eq!(first.error_code, 79, "MEMBER_ID_REQUIRED");
    let member = first.member_id.to_string();
    let joined = join(&mut client, "g", &member, 10_000);
    assert_eq!(joined.error_code, 0);
    assert_eq!(joined.leader.as_str(), member, "the only member leads");
    assert_eq!(joined.members.len(), 1);
    assert_eq!(joined.protocol_name.as_ref().map(|p| p.as_str()), Some("range"));
    let generation = joined.generation_id;

    let assignment = SyncGroupRequestAssignment::default()
        .with_member_id(s(&member))
        .with_assignment(Bytes::from_static(b"assigned"));
    let sync = SyncGroupRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_generation_id(generation)
        .with_member_id(s(&member))
        .with_assignments(vec![assignment]);
    match client.request(ApiKey::SyncGroup, 5, RequestKind::SyncGroup(sync)) {
        ResponseKind::SyncGroup(r) => assert_eq!((r.error_code, &r.assignment[..]), (0, &b"assigned"[..])),
        other => panic!("unexpected {other:?}"),
    }
    let heartbeat = |generation: i32| {
        RequestKind::Heartbeat(
            HeartbeatRequest::default()
                .with_group_id(GroupId(s("g")))
                .with_generation_id(generation)
                .with_member_id(s(&member)),
        )
    };
    assert_eq!(
        error_code(client.request(ApiKey::Heartbeat, 4, heartbeat(generation))),
        0
    );
    assert_eq!(
        error_code(client.request(ApiKey::Heartbeat, 4, heartbeat(generation + 7))),
        22,
        "ILLEGAL_GENERATION"
    );

    assert_eq!(
        commit(&mut client, "g", generation + 1, &member, "orders", 3),
        22,
        "stale generation"
    );
    assert_eq!(
        commit(&mut client, "g", generation, &member, "deleted-topic", 3),
        3,
        "unknown topic"
    );
    assert_eq!(commit(&mut client, "g", generation, &member, "orders", 42), 0);
    assert_eq!(committed(&mut client, "g", "orders"), 42);
    assert_eq!(
        committed(&mut client, "g", "deleted-topic"),
        -1,
        "nothing stored for the refused commit"
    );

    let report = std::process::Command::new(env!("CARGO_BIN_EXE_rafka"))
        .args(["groups", "--bootstrap", &format!("127.0.0.1:{}", broker.port)])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&report.stdout);
    let row = report
        .lines()
        .find(|line| line.starts_with("g "))
        .unwrap_or_else(|| panic!("no row for g in {report}"));
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&columns[..3], ["g", "Stable", "orders-0"], "{report}");
    assert_eq!(
        &columns[columns.len() - 3..],
        ["42", "0", "-42"],
        "committed, end offset and lag: {report}"
    );
    let group_json = |args: &[&str]| -> serde_json::Value {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_rafka"))
            .args(args)
            .args(["--json", "--bootstrap", &format!("127.0.0.1:{}", broker.port)])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    };
    assert_eq!(
        group_json(&["group", "list"]),
        serde_json::json!([{"group": "g", "state": "Stable", "protocol_type": "consumer"}])
    );
    let described = group_json(&["group", "describe", "g"]);
    assert_eq!(described[0]["partition"], 0, "{described}");
    assert_eq!(described[0]["topic"], "orders", "{described}");
    assert_eq!(described[0]["state"], "Stable", "{described}");
    assert_eq!(
        (&described[0]["committed"], &described[0]["end"], &described[0]["lag"]),
        (&serde_json::json!(42), &serde_json::json!(0), &serde_json::json!(-42)),
        "{described}"
    );
    assert_eq!(
        group_json(&["group", "describe", "no-such-group"]),
        serde_json::json!([])
    );

    let delete = || RequestKind::DeleteGroups(DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s("g"))]));
    assert_eq!(
        error_code(client.request(ApiKey::DeleteGroups, 2, delete())),
        68,
        "NON_EMPTY_GROUP"
    );

    broker.kill9();
    broker.restart();
    let mut client = Client::connect(broker.port).unwrap();
    assert_eq!(
        committed(&mut client, "g", "orders"),
        42,
        "committed offsets survive kill -9"
    );
    // The member is gone with the old process; it must rejoin.
    assert_eq!(
        error_code(client.request(ApiKey::Heartbeat, 4, heartbeat(generation))),
        25
    );
    let rejoin = join(&mut client, "g", "", 10_000);
    let rejoined = join(&mut client, "g", rejoin.member_id.as_str(), 10_000);
    assert!(
        rejoined.generation_id > generation,
        "generations stay monotonic across restarts"
    );

    let leave = LeaveGroupRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_member_id(rejoined.member_id.clone());
    assert_eq!(
        error_code(client.request(ApiKey::LeaveGroup, 2, RequestKind::LeaveGroup(leave))),
        0
    );
    assert_eq!(error_code(client.request(ApiKey::DeleteGroups, 2, delete())), 0);
    assert_eq!(
        committed(&mut client, "g", "orders"),
        -1,
        "deleting the group drops its offsets"
    );
    assert_eq!(
        error_code(client.request(ApiKey::DeleteGroups, 2, delete())),
        69,
        "GROUP_ID_NOT_FOUND"
    );
}

#[test]
fn the_offsets_topic_keeps_its_layout_when_a_client_auto_creates_it() {
    let broker = Broker::start_with(&[("RAFKA_OFFSETS_TOPIC_PARTITIONS", "3")]);
    let mut client = Client::connect(broker.port).unwrap();
    let request = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name("__consumer_offsets")))
        ]))
        .with_allow_auto_topic_creation(true);
    let ResponseKind::Metadata(metadata) = client.request(ApiKey::Metadata, 12, RequestKind::Metadata(request)) else {
        panic!("unexpected Metadata answer");
    };
    let topic = &metadata.topics[0];
    assert_eq!(topic.error_code, 0);
    assert!(topic.is_internal, "reported as internal");
    assert_eq!(
        topic.partitions.len(),
        3,
        "offsets_topic_partitions, not the default of 1"
    );
}

fn join_static(client: &mut Client, group: &str, member_id: &str, instance: &str) -> JoinGroupResponse {
    let protocol = JoinGroupRequestProtocol::default()
        .with_name(s("range"))
        .with_metadata(Bytes::from_static(b"meta"));
    let request = JoinGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(s(member_id))
        .with_group_instance_id(Some(s(instance)))
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![protocol]);
    match client.request(ApiKey::JoinGroup, 7, RequestKind::JoinGroup(request)) {
        ResponseKind::JoinGroup(response) => response,
        other => panic!("unexpected {other:?}"),
    }
}

fn heartbeat_static(client: &mut Client, group: &str, generation: i32, member: &str, instance: &str) -> i16 {
    let request = HeartbeatRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id(generation)
        .with_member_id(s(member))
        .with_group_instance_id(Some(s(instance)));
    error_code(client.request(ApiKey::Heartbeat, 4, RequestKind::Heartbeat(request)))
}

#[test]
fn a_static_member_keeps_its_assignment_across_a_restart_and_leaves_by_instance_id() {
    use kafka_protocol::messages::leave_group_request::MemberIdentity;

    let broker = Broker::start_with(&[("RAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")]);
    let mut client = Client::connect(broker.port).unwrap();
    assert_eq!(client.create_topic("static-orders", 1).error_code, 0);

    // A static member needs no MEMBER_ID_REQUIRED round (KIP-394 exempts it).
    let joined = join_static(&mut client, "static", "", "instance-1");
    assert_eq!(joined.error_code, 0);
    let first_id = joined.member_id.to_string();
    assert_eq!(joined.leader.as_str(), first_id);
    assert_eq!(joined.members[0].group_instance_id.as_deref(), Some("instance-1"));
    let generation = joined.generation_id;
    let sync = SyncGroupRequest::default()
        .with_group_id(GroupId(s("static")))
        .with_generation_id(generation)
        .with_member_id(s(&first_id))
        .with_group_instance_id(Some(s("instance-1")))
        .with_assignments(vec![SyncGroupRequestAssignment::default()
            .with_member_id(s(&first_id))
            .with_assignment(Bytes::from_static(b"partitions of instance-1"))]);
    let ResponseKind::SyncGroup(synced) = client.request(ApiKey::SyncGroup, 5, RequestKind::SyncGroup(sync)) else {
        panic!("unexpected SyncGroup answer");
    };
    assert_eq!(synced.error_code, 0);

    // The restarted member joins without its member id: it gets a new one in
    // the same generation, no rebalance, and its old assignment from SyncGroup.
    let rejoined = join_static(&mut client, "static", "", "instance-1");
    assert_eq!(rejoined.error_code, 0);
    let second_id = rejoined.member_id.to_string();
    assert_ne!(second_id, first_id);
    assert_eq!(rejoined.generation_id, generation, "no new generation");
    assert_eq!(
        rejoined.leader.as_str(),
        first_id,
        "the old leader id, so the new member runs no assignment"
    );
    assert!(rejoined.members.is_empty());
    let sync = SyncGroupRequest::default()
        .with_group_id(GroupId(s("static")))
        .with_generation_id(generation)
        .with_member_id(s(&second_id))
        .with_group_instance_id(Some(s("instance-1")));
    let ResponseKind::SyncGroup(synced) = client.request(ApiKey::SyncGroup, 5, RequestKind::SyncGroup(sync)) else {
        panic!("unexpected SyncGroup answer");
    };
    assert_eq!(
        (synced.error_code, &synced.assignment[..]),
        (0, &b"partitions of instance-1"[..])
    );
    assert_eq!(
        heartbeat_static(&mut client, "static", generation, &second_id, "instance-1"),
        0
    );
    assert_eq!(
        heartbeat_static(&mut client, "static", generation, &first_id, "instance-1"),
        82,
        "FENCED_INSTANCE_ID for the replaced member id"
    );
    assert_eq!(
        join_static(&mut client, "static", &first_id, "instance-1").error_code,
        82,
        "the replaced copy cannot join back either"
    );
    assert_eq!(
        commit(&mut client, "static", generation, &second_id, "static-orders", 1),
        0,
        "the new member id commits in the same generation"
    );

    // LeaveGroup v3+ names a static member by its instance id alone.
    let mut leave = |instance: &str| {
        let request = LeaveGroupRequest::default()
            .with_group_id(GroupId(s("static")))
            .with_members(vec![MemberIdentity::default()
                .with_member_id(s(""))
                .with_group_instance_id(Some(s(instance)))]);
        match client.request(ApiKey::LeaveGroup, 4, RequestKind::LeaveGroup(request)) {
            ResponseKind::LeaveGroup(r) => (r.error_code, r.members[0].error_code),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(leave("instance-1"), (0, 0));
    assert_eq!(leave("instance-1"), (0, 25), "gone: UNKNOWN_MEMBER_ID");
    assert_eq!(
        heartbeat_static(&mut client, "static", generation, &second_id, "instance-1"),
        25
    );
}
