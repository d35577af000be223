//! Helpers for tests that run real broker processes on free loopback ports.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, FetchRequest, ProduceRequest, RequestHeader, RequestKind, ResponseHeader,
    ResponseKind, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::RecordBatchDecoder;
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A broker process with its own data directory; killed when dropped.
pub struct Broker {
    pub port: u16,
    raft_port: u16,
    pub admin_port: u16,
    data: PathBuf,
    _dir: Option<tempfile::TempDir>,
    child: Option<Child>,
    extra_env: Vec<(String, String)>,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_with(&[])
    }

    pub fn start_with(env: &[(&str, &str)]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut broker = Broker {
            port: free_port(),
            raft_port: free_port(),
            admin_port: free_port(),
            data: dir.path().to_path_buf(),
            _dir: Some(dir),
            child: None,
            extra_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let listener = format!("127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.join("broker.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_rafka"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["--config", "configs/single-node.toml"])
            .env("RAFKA_LISTENER", &listener)
            .env("RAFKA_ADVERTISED_LISTENER", &listener)
            .env("RAFKA_RAFT_ADDRESS", format!("127.0.0.1:{}", self.raft_port))
            .env("RAFKA_ADMIN_LISTENER", format!("127.0.0.1:{}", self.admin_port))
            .env("RAFKA_DATA_DIR", self.data.join("data"))
            .envs(self.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("broker binary starts");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("broker exited with {status}: {}", self.log());
            }
            if let Ok(mut client) = Client::connect(self.port) {
                if client
                    .try_request(ApiKey::ApiVersions, 3, RequestKind::ApiVersions(Default::default()))
                    .is_ok()
                {
                    return;
                }
            }
            assert!(start.elapsed() < DEADLINE, "broker not ready: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("broker.log")).unwrap_or_default()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn stop_gracefully(&mut self) {
        if let Some(mut child) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            let start = Instant::now();
            while child.try_wait().unwrap().is_none() {
                assert!(start.elapsed() < DEADLINE, "broker ignored SIGTERM");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Peak resident memory of the broker process, from /proc.
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("broker running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc status")
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A blocking Kafka client speaking through `kafka-protocol`.
pub struct Client {
    stream: TcpStream,
    correlation: i32,
}

impl Client {
    pub fn connect(port: u16) -> std::io::Result<Client> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(DEADLINE))?;
        Ok(Client { stream, correlation: 0 })
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// True when the broker closed the connection (EOF or reset) before the deadline.
    pub fn is_closed_by_broker(&mut self) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(err) => {
                    return err.kind() != std::io::ErrorKind::WouldBlock && err.kind() != std::io::ErrorKind::TimedOut
                }
            }
        }
    }

    pub fn encode_request(&mut self, api_key: ApiKey, version: i16, body: &RequestKind) -> Bytes {
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("rafka-tests")));
        let mut frame = BytesMut::new();
        header
            .encode(&mut frame, api_key.request_header_version(version))
            .unwrap();
        body.encode(&mut frame, version).unwrap();
        let mut out = BytesMut::new();
        out.put_i32(frame.len() as i32);
        out.extend_from_slice(&frame);
        out.freeze()
    }

    /// Decodes the next response frame, of a request sent with `encode_request`
    /// and `send_raw` (responses come back in request order).
    pub fn read_response(&mut self, api_key: ApiKey, version: i16) -> ResponseKind {
        let mut response = self.read_frame().expect("response frame");
        ResponseHeader::decode(&mut response, api_key.response_header_version(version)).unwrap();
        ResponseKind::decode(api_key, &mut response, version).unwrap()
    }

    pub fn read_frame(&mut self) -> std::io::Result<Bytes> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut body)?;
        Ok(Bytes::from(body))
    }

    pub fn try_request(&mut self, api_key: ApiKey, version: i16, body: RequestKind) -> std::io::Result<ResponseKind> {
        let frame = self.encode_request(api_key, version, &body);
        self.stream.write_all(&frame)?;
        let mut response = self.read_frame()?;
        let header = ResponseHeader::decode(&mut response, api_key.response_header_version(version))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        assert_eq!(header.correlation_id, self.correlation);
        ResponseKind::decode(api_key, &mut response, version).map_err(|e| std::io::Error::other(e.to_string()))
    }

    pub fn request(&mut self, api_key: ApiKey, version: i16, body: RequestKind) -> ResponseKind {
        self.try_request(api_key, version, body).expect("request answered")
    }
}

/// A v2 record batch of `values` (keys `k0`, `k1`, ...).
pub fn record_batch(values: &[String], compression: Compression) -> Bytes {
    producer_batch(values, compression, -1, -1, -1)
}

/// A v2 record batch of `values` from an idempotent producer (or from none,
/// with `producer_id` -1), its first record at `base_sequence`.
pub fn producer_batch(
    values: &[String],
    compression: Compression,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, value)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: if producer_id < 0 {
                i as i32
            } else {
                base_sequence + i as i32
            },
            timestamp: 1_700_000_000_000 + i as i64,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(value.clone())),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    buf.freeze()
}

/// A Produce request (v9) of `records` to one partition.
pub fn produce_request(topic: &str, partition: i32, records: Bytes, acks: i16) -> RequestKind {
    let data = PartitionProduceData::default()
        .with_index(partition)
        .with_records(Some(records));
    RequestKind::Produce(
        ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(topic_name(topic))
                .with_partition_data(vec![data])]),
    )
}

pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

impl Client {
    pub fn create_topic(&mut self, name: &str, partitions: i32) -> CreatableTopicResult {
        let topic = CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(partitions)
            .with_replication_factor(-1);
        let request = CreateTopicsRequest::default()
            .with_topics(vec![topic])
            .with_timeout_ms(10_000);
        match self.request(ApiKey::CreateTopics, 7, RequestKind::CreateTopics(request)) {
            ResponseKind::CreateTopics(mut response) => response.topics.remove(0),
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn produce(
        &mut self,
        topic: &str,
        partition: i32,
        records: Bytes,
        acks: i16,
    ) -> Option<PartitionProduceResponse> {
        let body = produce_request(topic, partition, records, acks);
        if acks == 0 {
            let frame = self.encode_request(ApiKey::Produce, 9, &body);
            self.send_raw(&frame).unwrap();
            return None;
        }
        match self.request(ApiKey::Produce, 9, body) {
            ResponseKind::Produce(mut response) => Some(response.responses.remove(0).partition_responses.remove(0)),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Sends a Produce of each of `batches` to partition 0 before reading any
    /// answer, so they reach the broker together; (error code, base offset) of each.
    pub fn pipeline_produce(&mut self, topic: &str, batches: Vec<Bytes>) -> Vec<(i16, i64)> {
        let frames: Vec<Bytes> = batches
            .into_iter()
            .map(|records| self.encode_request(ApiKey::Produce, 9, &produce_request(topic, 0, records, -1)))
            .collect();
        self.send_raw(&frames.concat()).unwrap();
        (0..frames.len())
            .map(|_| match self.read_response(ApiKey::Produce, 9) {
                ResponseKind::Produce(response) => {
                    let partition = &response.responses[0].partition_responses[0];
                    (partition.error_code, partition.base_offset)
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    pub fn fetch(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_wait_ms: i32,
        min_bytes: i32,
    ) -> PartitionData {
        let part = FetchPartition::default()
            .with_partition(partition)
            .with_fetch_offset(offset)
            .with_partition_max_bytes(1 << 20)
            .with_log_start_offset(-1);
        let request = FetchRequest::default()
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(min_bytes)
            .with_max_bytes(50 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(vec![part])]);
        match self.request(ApiKey::Fetch, 12, RequestKind::Fetch(request)) {
            ResponseKind::Fetch(mut response) => response.responses.remove(0).partitions.remove(0),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Every record value of the partition, read from offset 0 up to the high watermark.
    pub fn read_all(&mut self, topic: &str, partition: i32) -> Vec<(i64, String)> {
        self.read_from(topic, partition, 0)
    }

    /// Every record from `start` to the high watermark.
    pub fn read_from(&mut self, topic: &str, partition: i32, start: i64) -> Vec<(i64, String)> {
        let mut out = Vec::new();
        let mut offset = start;
        loop {
            let data = self.fetch(topic, partition, offset, 0, 0);
            assert_eq!(data.error_code, 0, "fetch error");
            let mut records = data.records.unwrap_or_default();
            if records.is_empty() {
                return out;
            }
            for set in RecordBatchDecoder::decode_all(&mut records).unwrap() {
                for record in set.records {
                    if record.offset >= offset {
                        let value = String::from_utf8(record.value.unwrap().to_vec()).unwrap();
                        out.push((record.offset, value));
                        offset = record.offset + 1;
                    }
                }
            }
        }
    }
}

/// A three-node cluster of broker processes on free loopback ports, one JSON
/// config file per node; every process is killed when dropped.
pub struct ClusterNodes {
    pub nodes: Vec<ClusterNode>,
    _dir: tempfile::TempDir,
}

pub struct ClusterNode {
    pub id: u64,
    pub port: u16,
    pub raft_port: u16,
    pub admin_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl ClusterNodes {
    pub fn start(count: u64) -> ClusterNodes {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16, u16)> = (0..count).map(|_| (free_port(), free_port(), free_port())).collect();
        let members: serde_json::Map<String, serde_json::Value> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, raft, _))| ((i + 1).to_string(), format!("127.0.0.1:{raft}").into()))
            .collect();
        let mut nodes = Vec::new();
        for (i, (port, raft_port, admin_port)) in ports.iter().enumerate() {
            let id = i as u64 + 1;
            let config = serde_json::json!({
                "node_id": id,
                "listener": format!("127.0.0.1:{port}"),
                "raft_address": format!("127.0.0.1:{raft_port}"),
                "admin_listener": format!("127.0.0.1:{admin_port}"),
                "initial_members": members,
                "data_dir": dir.path().join(format!("node{id}")),
                "rtt_millis": 50, "election_rtt": 4, "heartbeat_rtt": 1, "snapshot_entries": 10000,
                "auto_create_topics": true, "default_partitions": 3, "default_replication_factor": 3,
                "message_max_bytes": 1048588, "socket_request_max_bytes": 104857600, "max_connections": 1024,
                "offsets_topic_partitions": 3, "group_initial_rebalance_delay_ms": 0,
            });
            let path = dir.path().join(format!("node{id}.json"));
            std::fs::write(&path, config.to_string()).unwrap();
            nodes.push(ClusterNode {
                id,
                port: *port,
                raft_port: *raft_port,
                admin_port: *admin_port,
                config: path,
                log: dir.path().join(format!("node{id}.log")),
                child: None,
            });
        }
        let mut cluster = ClusterNodes { nodes, _dir: dir };
        for node in &mut cluster.nodes {
            node.spawn();
        }
        cluster
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "---- node {} ----\n{}",
                    n.id,
                    std::fs::read_to_string(&n.log).unwrap_or_default()
                )
            })
            .collect()
    }

    pub fn node(&self, id: u64) -> &ClusterNode {
        &self.nodes[id as usize - 1]
    }

    /// Polls `check` until it returns `Some`, or fails the test with every node's log.
    pub fn wait_for<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(value) = check() {
                return value;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl ClusterNodes {
    /// The nodes whose process has exited since it was started.
    pub fn exited(&mut self) -> Vec<u64> {
        self.nodes
            .iter_mut()
            .filter_map(|node| {
                let exited = node.child.as_mut()?.try_wait().unwrap().is_some();
                exited.then_some(node.id)
            })
            .collect()
    }
}

impl ClusterNode {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_rafka"))
            .args(["--config".as_ref(), self.config.as_os_str()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("broker binary starts");
        self.child = Some(child);
    }

    pub fn client(&self) -> Option<Client> {
        Client::connect(self.port).ok()
    }

    /// The node's per-partition checksums, from `rafka checksums`.
    pub fn checksums(&self) -> Vec<serde_json::Value> {
        let output = Command::new(env!("CARGO_BIN_EXE_rafka"))
            .args(["checksums", "--peer", &format!("127.0.0.1:{}", self.raft_port)])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    }
}

impl Drop for ClusterNodes {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
