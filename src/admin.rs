//! Admin tools, speaking the Kafka protocol to any Kafka-compatible broker
//! (versions are negotiated with ApiVersions): `rafka topic` ([`topic`]),
//! `rafka cluster info` ([`cluster`]), `rafka group list|describe` (here: the
//! describe report lists members, assignments, committed offsets and lag),
//! `rafka group delete|reset-offsets` ([`group`]), `rafka produce` and
//! `rafka consume` ([`records`]); `rafka health` checks one broker (Kafka
//! Metadata, or its admin listener's `/ready`); `rafka checksums` compares
//! replicas over the peer protocol.

pub mod cluster;
pub mod group;
pub mod reassign;
pub mod records;
pub mod topic;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, ConsumerProtocolAssignment, DescribeGroupsRequest, GroupId, ListGroupsRequest,
    ListOffsetsRequest, MetadataRequest, MetadataResponse, OffsetFetchRequest, RequestHeader, RequestKind,
    ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::raft::handshake::PeerCredentials;
use crate::raft::network::PeerClient;
use crate::raft::wire::{PeerRequest, PeerResponse};

const TIMEOUT: Duration = Duration::from_secs(30);
/// Health checks run every few seconds; a broker slower than this is not healthy.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

/// A blocking connection that sends one request at a time.
pub struct AdminClient {
    stream: TcpStream,
    correlation: i32,
    /// The broker's version range of each API key, once asked.
    versions: Option<BTreeMap<i16, (i16, i16)>>,
}

impl AdminClient {
    /// Connects to the first broker of `bootstrap` (`host:port`, or several
    /// comma-separated, as Kafka's tools take them) that accepts.
    pub fn connect(bootstrap: &str) -> anyhow::Result<Self> {
        let mut refused = Vec::new();
        let stream = bootstrap
            .split(',')
            .map(str::trim)
            .filter(|address| !address.is_empty())
            .find_map(|address| {
                TcpStream::connect(address)
                    .map_err(|err| refused.push(format!("{address}: {err}")))
                    .ok()
            })
            .ok_or_else(|| anyhow::anyhow!("no broker of {bootstrap:?} accepts: {}", refused.join("; ")))?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        Ok(AdminClient {
            stream,
            correlation: 0,
            versions: None,
        })
    }

    /// The highest version of `api_key` that both this tool (`ours`) and the
    /// broker speak, from the broker's ApiVersions answer.
    pub fn negotiate(&mut self, api_key: ApiKey, ours: std::ops::RangeInclusive<i16>) -> anyhow::Result<i16> {
        if self.versions.is_none() {
            // v0 is answered by every broker, whatever versions it speaks.
            let ResponseKind::ApiVersions(answer) =
                self.request(ApiKey::ApiVersions, 0, RequestKind::ApiVersions(Default::default()))?
            else {
                anyhow::bail!("unexpected ApiVersions answer");
            };
            error_code(answer.error_code)?;
            self.versions = Some(
                answer
                    .api_keys
                    .iter()
                    .map(|api| (api.api_key, (api.min_version, api.max_version)))
                    .collect(),
            );
        }
        let (min, max) = self
            .versions
            .as_ref()
            .and_then(|versions| versions.get(&(api_key as i16)).copied())
            .ok_or_else(|| anyhow::anyhow!("the broker does not support {api_key:?}"))?;
        let version = max.min(*ours.end());
        anyhow::ensure!(
            version >= min.max(*ours.start()),
            "the broker speaks {api_key:?} v{min}-v{max}, this tool v{}-v{}",
            ours.start(),
            ours.end()
        );
        Ok(version)
    }

    pub fn request(&mut self, api_key: ApiKey, version: i16, body: RequestKind) -> anyhow::Result<ResponseKind> {
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("rafka-admin")));
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        header.encode(&mut frame, api_key.request_header_version(version))?;
        body.encode(&mut frame, version)?;
        let size = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&size.to_be_bytes());
        self.stream.write_all(&frame)?;
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size)?;
        let mut response = vec![0u8; usize::try_from(i32::from_be_bytes(size))?];
        self.stream.read_exact(&mut response)?;
        let mut response = Bytes::from(response);
        let header = ResponseHeader::decode(&mut response, api_key.response_header_version(version))?;
        anyhow::ensure!(header.correlation_id == self.correlation, "response out of order");
        ResponseKind::decode(api_key, &mut response, version)
    }
}

/// Connections to the leaders of a topic's partitions (produce, fetch and
/// ListOffsets go to the leader), opened on first use, from one Metadata answer.
pub struct Leaders {
    /// Broker id -> `host:port`.
    brokers: BTreeMap<i32, String>,
    /// (topic, partition) -> leader's broker id.
    leaders: BTreeMap<(String, i32), i32>,
    clients: BTreeMap<i32, AdminClient>,
}

impl Leaders {
    pub fn new(metadata: &MetadataResponse) -> Self {
        let mut leaders = Leaders {
            brokers: BTreeMap::new(),
            leaders: BTreeMap::new(),
            clients: BTreeMap::new(),
        };
        leaders.update(metadata);
        leaders
    }

    /// Takes the brokers and leaders of a newer Metadata answer.
    pub fn update(&mut self, metadata: &MetadataResponse) {
        for broker in &metadata.brokers {
            let address = format!("{}:{}", broker.host.as_str(), broker.port);
            if self.brokers.insert(broker.node_id.0, address.clone()) != Some(address) {
                self.clients.remove(&broker.node_id.0);
            }
        }
        for topic in &metadata.topics {
            let name = topic.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
            for partition in &topic.partitions {
                self.leaders
                    .insert((name.clone(), partition.partition_index), partition.leader_id.0);
            }
        }
    }

    /// The leader of `topic`'s `partition` and a connection to it.
    pub fn client(&mut self, topic: &str, partition: i32) -> anyhow::Result<(i32, &mut AdminClient)> {
        let leader = self
            .leaders
            .get(&(topic.to_string(), partition))
            .copied()
            .filter(|id| *id >= 0)
            .ok_or_else(|| anyhow::anyhow!("partition {topic}-{partition} has no leader"))?;
        if !self.clients.contains_key(&leader) {
            let address = self
                .brokers
                .get(&leader)
                .ok_or_else(|| anyhow::anyhow!("broker {leader} is not in the metadata"))?;
            self.clients.insert(leader, AdminClient::connect(address)?);
        }
        let client = self
            .clients
            .get_mut(&leader)
            .ok_or_else(|| anyhow::anyhow!("no connection to broker {leader}"))?;
        Ok((leader, client))
    }

    /// The offset ListOffsets answers for `timestamp` (-2 log start, -1 log end).
    pub fn list_offset(&mut self, topic: &str, partition: i32, timestamp: i64) -> anyhow::Result<i64> {
        let (_, client) = self.client(topic, partition)?;
        // v1 is the first with a single offset per partition.
        let version = client.negotiate(ApiKey::ListOffsets, 1..=6)?;
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic::topic_name(topic))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(partition)
                    .with_timestamp(timestamp)])]);
        let ResponseKind::ListOffsets(answer) =
            client.request(ApiKey::ListOffsets, version, RequestKind::ListOffsets(request))?
        else {
            anyhow::bail!("unexpected ListOffsets answer");
        };
        let found = answer
            .topics
            .first()
            .and_then(|t| t.partitions.first())
            .ok_or_else(|| anyhow::anyhow!("ListOffsets answered for no partition"))?;
        error_code(found.error_code).map_err(|err| anyhow::anyhow!("offsets of {topic}-{partition}: {err}"))?;
        Ok(found.offset)
    }
}

/// `Ok` for error code 0, else the error named as Kafka names it.
pub fn error_code(code: i16) -> anyhow::Result<()> {
    match kafka_protocol::error::ResponseError::try_from_code(code) {
        None => Ok(()),
        Some(error) => Err(anyhow::anyhow!("{error} (error code {code})")),
    }
}

/// Prints `value` as pretty JSON on stdout.
fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn group_id(name: &str) -> GroupId {
    GroupId(StrBytes::from_string(name.to_string()))
}

/// `rafka group list`: every group the broker knows, with its state.
pub fn list_groups(bootstrap: &str, json: bool) -> anyhow::Result<()> {
    let mut client = AdminClient::connect(bootstrap)?;
    let version = client.negotiate(ApiKey::ListGroups, 0..=4)?;
    let ResponseKind::ListGroups(listed) = client.request(
        ApiKey::ListGroups,
        version,
        RequestKind::ListGroups(ListGroupsRequest::default()),
    )?
    else {
        anyhow::bail!("unexpected ListGroups answer");
    };
    error_code(listed.error_code)?;
    if json {
        let groups: Vec<serde_json::Value> = listed
            .groups
            .iter()
            .map(|g| {
                serde_json::json!({
                    "group": g.group_id.0.as_str(),
                    "state": g.group_state.as_str(),
                    "protocol_type": g.protocol_type.as_str(),
                })
            })
            .collect();
        return print_json(&serde_json::Value::from(groups));
    }
    println!("{:<40} {:<20} PROTOCOL-TYPE", "GROUP", "STATE");
    for g in &listed.groups {
        println!(
            "{:<40} {:<20} {}",
            g.group_id.0.as_str(),
            g.group_state.as_str(),
            g.protocol_type.as_str()
        );
    }
    Ok(())
}

/// One partition of a consumer group: who owns it, where the group is and how far behind.
struct GroupPartition {
    group: String,
    state: String,
    topic: String,
    partition: i32,
    member: String,
    client_id: String,
    committed: i64,
    end: i64,
}

impl GroupPartition {
    fn lag(&self) -> Option<i64> {
        (self.committed >= 0 && self.end >= 0).then(|| self.end - self.committed)
    }
}

/// `rafka group describe` (and `rafka groups`): one line per (group, topic,
/// partition) with its owner, committed offset, end offset and lag; every
/// group, or only `only`.
pub fn describe_groups(bootstrap: &str, only: Option<&str>, json: bool) -> anyhow::Result<()> {
    let mut client = AdminClient::connect(bootstrap)?;
    let ResponseKind::ListGroups(listed) = client.request(
        ApiKey::ListGroups,
        4,
        RequestKind::ListGroups(ListGroupsRequest::default()),
    )?
    else {
        anyhow::bail!("unexpected ListGroups answer");
    };
    let mut rows = Vec::new();
    for group in listed.groups {
        let name = group.group_id.0.to_string();
        if only.is_some_and(|only| only != name) {
            continue;
        }
        let owners = owners(&mut client, &name)?;
        let request = OffsetFetchRequest::default()
            .with_group_id(group_id(&name))
            .with_topics(None);
        let ResponseKind::OffsetFetch(fetched) =
            client.request(ApiKey::OffsetFetch, 7, RequestKind::OffsetFetch(request))?
        else {
            anyhow::bail!("unexpected OffsetFetch answer");
        };
        let mut committed: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for topic in fetched.topics {
            for p in topic.partitions {
                committed.insert((topic.name.0.to_string(), p.partition_index), p.committed_offset);
            }
        }
        let mut partitions: Vec<(String, i32)> = committed.keys().cloned().collect();
        partitions.extend(owners.keys().cloned());
        partitions.sort();
        partitions.dedup();
        for (topic, partition) in partitions {
            let (member, client_id) = owners.get(&(topic.clone(), partition)).cloned().unwrap_or_default();
            rows.push(GroupPartition {
                group: name.clone(),
                state: group.group_state.to_string(),
                end: end_offset(&mut client, &topic, partition)?,
                committed: committed.get(&(topic.clone(), partition)).copied().unwrap_or(-1),
                topic,
                partition,
                member,
                client_id,
            });
        }
    }
    if json {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "group": r.group,
                    "state": r.state,
                    "topic": r.topic,
                    "partition": r.partition,
                    "member": r.member,
                    "client_id": r.client_id,
                    "committed": r.committed,
                    "end": r.end,
                    "lag": r.lag(),
                })
            })
            .collect();
        return print_json(&serde_json::Value::from(rows));
    }
    println!(
        "{:<24} {:<20} {:<28} {:<40} {:>9} {:>12} {:>12} {:>8}",
        "GROUP", "STATE", "TOPIC-PARTITION", "MEMBER", "CLIENT", "COMMITTED", "END", "LAG"
    );
    for r in &rows {
        println!(
            "{:<24} {:<20} {:<28} {:<40} {:>9} {:>12} {:>12} {:>8}",
            r.group,
            r.state,
            format!("{}-{}", r.topic, r.partition),
            r.member,
            r.client_id,
            r.committed,
            r.end,
            r.lag().map_or("-".to_string(), |lag| lag.to_string())
        );
    }
    Ok(())
}

/// Which member (and client id) owns each partition, from the members' assignments.
fn owners(client: &mut AdminClient, name: &str) -> anyhow::Result<BTreeMap<(String, i32), (String, String)>> {
    let request = DescribeGroupsRequest::default().with_groups(vec![group_id(name)]);
    let ResponseKind::DescribeGroups(described) =
        client.request(ApiKey::DescribeGroups, 5, RequestKind::DescribeGroups(request))?
    else {
        anyhow::bail!("unexpected DescribeGroups answer");
    };
    let mut owners = BTreeMap::new();
    for member in described.groups.into_iter().flat_map(|g| g.members) {
        let mut raw = member.member_assignment.clone();
        if raw.remaining() < 2 {
            continue;
        }
        let version = raw.get_i16();
        let Ok(assignment) = ConsumerProtocolAssignment::decode(&mut raw, version) else {
            continue;
        };
        for topic in assignment.assigned_partitions {
            for partition in topic.partitions {
                owners.insert(
                    (topic.topic.0.to_string(), partition),
                    (member.member_id.to_string(), member.client_id.to_string()),
                );
            }
        }
    }
    Ok(owners)
}

fn end_offset(client: &mut AdminClient, topic: &str, partition: i32) -> anyhow::Result<i64> {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(kafka_protocol::messages::TopicName(StrBytes::from_string(
                topic.to_string(),
            )))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(-1)])]);
    let ResponseKind::ListOffsets(offsets) =
        client.request(ApiKey::ListOffsets, 6, RequestKind::ListOffsets(request))?
    else {
        anyhow::bail!("unexpected ListOffsets answer");
    };
    Ok(offsets
        .topics
        .first()
        .and_then(|t| t.partitions.first())
        .map_or(-1, |p| if p.error_code == 0 { p.offset } else { -1 }))
}

/// `rafka health`: succeeds when the broker answers Metadata and knows a controller leader.
pub fn check_health(bootstrap: &str) -> anyhow::Result<()> {
    let mut client = AdminClient::connect(bootstrap)?;
    client.stream.set_read_timeout(Some(HEALTH_TIMEOUT))?;
    let request = MetadataRequest::default().with_topics(Some(Vec::new()));
    let ResponseKind::Metadata(metadata) = client.request(ApiKey::Metadata, 12, RequestKind::Metadata(request))? else {
        anyhow::bail!("unexpected Metadata answer");
    };
    anyhow::ensure!(metadata.controller_id.0 >= 0, "no controller leader yet");
    println!(
        "healthy: {} broker(s), controller {}",
        metadata.brokers.len(),
        metadata.controller_id.0
    );
    Ok(())
}

/// `rafka health --admin`: succeeds when the broker's admin listener answers
/// `GET /ready` with 200 (it serves and knows a controller leader).
pub fn check_ready(admin: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, body) = runtime.block_on(async {
        tokio::time::timeout(HEALTH_TIMEOUT, get(admin, "/ready"))
            .await
            .map_err(|_| anyhow::anyhow!("{admin} did not answer within {HEALTH_TIMEOUT:?}"))?
    })?;
    let body = String::from_utf8_lossy(&body);
    anyhow::ensure!(status == hyper::StatusCode::OK, "{status}: {}", body.trim());
    println!("{}", body.trim());
    Ok(())
}

/// One HTTP/1.1 GET of `path` on `address`; the status and the whole body.
async fn get(address: &str, path: &str) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    use http_body_util::{BodyExt, Empty};

    let socket = tokio::net::TcpStream::connect(address).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(socket)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, address)
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// `rafka checksums`: asks one node, on its Raft address, for a checksum of every
/// partition replica it holds, and prints them as JSON.
pub fn print_checksums(peer: &str, credentials: PeerCredentials) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Node id 0: the tool is no node; the handshake checks what it knows, not who it is.
    let client = PeerClient::new(0, credentials, 0, peer.to_string());
    let answer = runtime.block_on(client.call(&PeerRequest::Checksums, TIMEOUT))?;
    let PeerResponse::Checksums(checksums) = answer else {
        anyhow::bail!("unexpected answer {answer:?}");
    };
    let rows: Vec<serde_json::Value> = checksums
        .iter()
        .map(|c| {
            serde_json::json!({
                "topic": c.topic,
                "partition": c.partition,
                "group": c.group,
                "applied_index": c.applied_index,
                "checksum": format!("{:08x}", c.checksum),
                "batches": c.batches,
            })
        })
        .collect();
    println!("{}", serde_json::to_string_pretty(&rows)?);
    Ok(())
}
