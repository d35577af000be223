//! `rafka produce` and `rafka consume`: quick checks of a topic with Produce
//! and Fetch sent to each partition's leader.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, ProduceRequest, RequestKind, ResponseKind};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType, NO_PRODUCER_EPOCH,
    NO_PRODUCER_ID, NO_SEQUENCE,
};
use serde_json::json;

use super::topic::{metadata, topic_name};
use super::{error_code, print_json, AdminClient, Leaders};

/// How long the leader may take to commit a produced batch (acks=all).
const PRODUCE_TIMEOUT_MS: i32 = 30_000;
/// How long one Fetch waits for records before answering empty.
const FETCH_WAIT_MS: i32 = 200;
const FETCH_MAX_BYTES: i32 = 1 << 20;
/// ListOffsets timestamps of the log start and the log end.
const EARLIEST: i64 = -2;
const LATEST: i64 = -1;
/// How long consume waits for a partition without a leader (an election) before giving up.
const LEADER_WAIT: Duration = Duration::from_secs(15);

/// The topic's partitions and their leaders, from the bootstrap broker.
fn partitions_of(bootstrap: &str, topic: &str) -> anyhow::Result<(Vec<i32>, Leaders)> {
    let mut client = AdminClient::connect(bootstrap)?;
    let answer = metadata(&mut client, Some(&[topic.to_string()]))?;
    let found = answer
        .topics
        .first()
        .ok_or_else(|| anyhow::anyhow!("no metadata for topic {topic}"))?;
    error_code(found.error_code).map_err(|err| anyhow::anyhow!("topic {topic}: {err}"))?;
    let mut partitions: Vec<i32> = found.partitions.iter().map(|p| p.partition_index).collect();
    partitions.sort();
    Ok((partitions, Leaders::new(&answer)))
}

/// Kafka's murmur2 hash, by which its default partitioner places keyed records,
/// so `rafka produce --key` puts a key where Kafka's own clients would.
fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// One record of `rafka produce` and where it went.
struct Produced {
    partition: i32,
    offset: i64,
    value: String,
}

/// `rafka produce`: one record per line of stdin (without its line ending),
/// all with `key`, sent with acks=all. The partition is `partition`, else the
/// key's murmur2 hash as in Kafka's clients, else round-robin by line.
pub fn produce(
    bootstrap: &str,
    topic: &str,
    key: Option<&str>,
    partition: Option<i32>,
    json: bool,
) -> anyhow::Result<()> {
    let (partitions, mut leaders) = partitions_of(bootstrap, topic)?;
    anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
    if let Some(p) = partition {
        anyhow::ensure!(partitions.contains(&p), "topic {topic} has no partition {p}");
    }
    let mut values: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    let mut order = Vec::new();
    for (line, value) in std::io::stdin().lock().lines().enumerate() {
        let value = value?;
        let target = match (partition, key) {
            (Some(p), _) => p,
            (None, Some(key)) => partitions[(murmur2(key.as_bytes()) & 0x7fff_ffff) as usize % partitions.len()],
            (None, None) => partitions[line % partitions.len()],
        };
        let batch = values.entry(target).or_default();
        order.push((target, batch.len()));
        batch.push(value);
    }
    let mut base_offsets = BTreeMap::new();
    for (target, batch) in &values {
        base_offsets.insert(*target, send_batch(&mut leaders, topic, *target, key, batch)?);
    }
    let produced: Vec<Produced> = order
        .into_iter()
        .map(|(target, index)| Produced {
            partition: target,
            offset: base_offsets[&target] + index as i64,
            value: values[&target][index].clone(),
        })
        .collect();
    if json {
        let rows: Vec<_> = produced
            .iter()
            .map(
                |p| json!({"topic": topic, "partition": p.partition, "offset": p.offset, "key": key, "value": p.value}),
            )
            .collect();
        return print_json(&rows.into());
    }
    for (target, batch) in &values {
        let first = base_offsets[target];
        println!(
            "produced {} record(s) to {topic}-{target} at offsets {first}-{}",
            batch.len(),
            first + batch.len() as i64 - 1
        );
    }
    if produced.is_empty() {
        println!("no input lines: nothing produced");
    }
    Ok(())
}

/// Sends `values` as one batch to the partition's leader; returns its base offset.
fn send_batch(
    leaders: &mut Leaders,
    topic: &str,
    partition: i32,
    key: Option<&str>,
    values: &[String],
) -> anyhow::Result<i64> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, value)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: NO_SEQUENCE,
            timestamp: now,
            key: key.map(|k| Bytes::from(k.to_string())),
            value: Some(Bytes::from(value.clone())),
            headers: Default::default(),
        })
        .collect();
    let mut batch = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut batch, &records, &options)?;
    let (_, client) = leaders.client(topic, partition)?;
    // v3 is the first version that carries v2 record batches.
    let version = client.negotiate(ApiKey::Produce, 3..=9)?;
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(PRODUCE_TIMEOUT_MS)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(batch.freeze()))])]);
    let ResponseKind::Produce(answer) = client.request(ApiKey::Produce, version, RequestKind::Produce(request))? else {
        anyhow::bail!("unexpected Produce answer");
    };
    let result = answer
        .responses
        .first()
        .and_then(|t| t.partition_responses.first())
        .ok_or_else(|| anyhow::anyhow!("Produce answered for no partition"))?;
    error_code(result.error_code).map_err(|err| anyhow::anyhow!("produce to {topic}-{partition}: {err}"))?;
    Ok(result.base_offset)
}

/// What `rafka consume` reads and when it stops.
pub struct ConsumeOptions<'a> {
    pub topic: &'a str,
    /// Only this partition; every partition when `None`.
    pub partition: Option<i32>,
    /// Start at each partition's log start instead of its end.
    pub from_beginning: bool,
    /// Stop after this many records.
    pub count: Option<u64>,
    /// Stop when no record came for this long (an error if `count` is not reached).
    pub timeout: Option<Duration>,
    /// One JSON object per record and line, instead of the bare value.
    pub json: bool,
}

/// `rafka consume`: prints each record's value (or, with `--json`, one JSON
/// object per line, so output can be read while it is written).
pub fn consume(bootstrap: &str, options: &ConsumeOptions<'_>) -> anyhow::Result<()> {
    let topic = options.topic;
    let (mut partitions, mut leaders) = partitions_of(bootstrap, topic)?;
    if let Some(p) = options.partition {
        anyhow::ensure!(partitions.contains(&p), "topic {topic} has no partition {p}");
        partitions = vec![p];
    }
    let start = if options.from_beginning { EARLIEST } else { LATEST };
    let mut positions = BTreeMap::new();
    for partition in &partitions {
        positions.insert(*partition, leaders.list_offset(topic, *partition, start)?);
    }
    let mut printed = 0u64;
    let mut last_record = Instant::now();
    let mut stdout = std::io::stdout().lock();
    while options.count.is_none_or(|count| printed < count) {
        if let Some(timeout) = options.timeout.filter(|t| last_record.elapsed() >= *t) {
            anyhow::ensure!(
                options.count.is_none(),
                "{printed} of {} record(s) within {timeout:?}",
                options.count.unwrap_or_default()
            );
            break;
        }
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for partition in &partitions {
            match leaders.client(topic, *partition) {
                Ok((leader, _)) => by_leader.entry(leader).or_default().push(*partition),
                Err(_) => refresh_leaders(bootstrap, topic, &mut leaders)?,
            }
        }
        for owned in by_leader.values() {
            let records = fetch(&mut leaders, bootstrap, topic, owned, &mut positions)?;
            for (partition, record) in records {
                if options.count.is_some_and(|count| printed >= count) {
                    break;
                }
                print_record(&mut stdout, partition, &record, options.json)?;
                printed += 1;
                last_record = Instant::now();
            }
        }
    }
    Ok(())
}

/// Asks the bootstrap broker again who leads the topic's partitions, waiting out an election.
fn refresh_leaders(bootstrap: &str, topic: &str, leaders: &mut Leaders) -> anyhow::Result<()> {
    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        let mut client = AdminClient::connect(bootstrap)?;
        let answer = metadata(&mut client, Some(&[topic.to_string()]))?;
        leaders.update(&answer);
        let led = answer
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .all(|p| p.leader_id.0 >= 0);
        if led {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{topic} has partitions without a leader");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One Fetch of `partitions` (all led by one broker) from their positions;
/// returns the new records in offset order per partition and advances the positions.
fn fetch(
    leaders: &mut Leaders,
    bootstrap: &str,
    topic: &str,
    partitions: &[i32],
    positions: &mut BTreeMap<i32, i64>,
) -> anyhow::Result<Vec<(i32, Record)>> {
    let Some(first) = partitions.first() else {
        return Ok(Vec::new());
    };
    let (_, client) = leaders.client(topic, *first)?;
    // v4 is the first that returns v2 record batches; v13 names topics by id only.
    let version = client.negotiate(ApiKey::Fetch, 4..=12)?;
    let wanted = partitions
        .iter()
        .map(|p| {
            FetchPartition::default()
                .with_partition(*p)
                .with_fetch_offset(positions[p])
                .with_current_leader_epoch(-1)
                .with_last_fetched_epoch(-1)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(FETCH_MAX_BYTES)
        })
        .collect();
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(FETCH_WAIT_MS)
        .with_min_bytes(1)
        .with_max_bytes(FETCH_MAX_BYTES)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(wanted)]);
    let ResponseKind::Fetch(answer) = client.request(ApiKey::Fetch, version, RequestKind::Fetch(request))? else {
        anyhow::bail!("unexpected Fetch answer");
    };
    error_code(answer.error_code)?;
    let mut out = Vec::new();
    for data in answer.responses.iter().flat_map(|t| &t.partitions) {
        let partition = data.partition_index;
        if let Some(err) = kafka_protocol::error::ResponseError::try_from_code(data.error_code) {
            if err.is_retriable() {
                // A new leader, or one being elected: ask again who leads.
                refresh_leaders(bootstrap, topic, leaders)?;
                continue;
            }
            anyhow::bail!("fetch from {topic}-{partition}: {err} (error code {})", data.error_code);
        }
        let position = positions.get(&partition).copied().unwrap_or(0);
        let mut next = position;
        for record in decode_batches(data.records.clone().unwrap_or_default())? {
            // A batch may begin before the position asked for.
            if record.offset < position {
                continue;
            }
            next = record.offset + 1;
            // Control records (transaction markers) are not data.
            if !record.control {
                out.push((partition, record));
            }
        }
        positions.insert(partition, next);
    }
    Ok(out)
}

/// The records of every complete batch in `records`; a broker may cut the
/// last batch short at the byte limit, and that part is fetched again later.
fn decode_batches(mut records: Bytes) -> anyhow::Result<Vec<Record>> {
    // base offset (8) and batch length (4) lead every batch; the length counts what follows.
    const HEADER: usize = 12;
    let mut out = Vec::new();
    while records.len() >= HEADER {
        let length = i32::from_be_bytes([records[8], records[9], records[10], records[11]]);
        let size = HEADER + usize::try_from(length)?;
        if records.len() < size {
            break;
        }
        let mut batch = records.split_to(size);
        out.extend(RecordBatchDecoder::decode(&mut batch)?.records);
        anyhow::ensure!(!batch.has_remaining(), "a record batch is longer than its length says");
    }
    Ok(out)
}

fn print_record(out: &mut impl Write, partition: i32, record: &Record, json: bool) -> anyhow::Result<()> {
    let text = |bytes: &Option<Bytes>| bytes.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    if json {
        let row = json!({
            "partition": partition,
            "offset": record.offset,
            "timestamp": record.timestamp,
            "key": text(&record.key),
            "value": text(&record.value),
        });
        writeln!(out, "{row}")?;
    } else {
        writeln!(out, "{}", text(&record.value).unwrap_or_default())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Kafka's UtilsTest vectors.
        let cases: [(&str, i32); 6] = [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            ("abc", 479470107),
        ];
        for (input, hash) in cases {
            assert_eq!(murmur2(input.as_bytes()), hash, "{input}");
        }
    }
}
