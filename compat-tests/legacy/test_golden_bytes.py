#!/usr/bin/env python3
"""The oldest request versions, byte for byte: requests written by hand from the
Kafka protocol guide (non-flexible versions, request header v1, response header
v0), answers compared with the bytes Kafka 3.x gives for the same state.

Where the answer is fully determined (offsets, error codes, names, a message
set of magic 0) the whole response body must equal the expected bytes; where
it holds what the broker chooses (timestamps of magic 1 messages) it is parsed
field by field. No Kafka library takes part: a codec bug shared by the broker
and a client library cannot hide here.

Covered: CreateTopics v0/v1, Metadata v0, Produce v0/v1/v2 with message sets
of magic 0 and 1, Fetch v0 (down-converted to magic 0) and v2 (magic 1),
ListOffsets v0, OffsetCommit v0/v1 (and the metadata size limit), OffsetFetch
v0, DescribeConfigs v0, DeleteTopics v0. And a few of the newest, flexible
versions (request header v2, response header v1, compact types): Fetch v13
and v18 naming the topic by id (a known id, an unknown one), and ListOffsets
v7 by max timestamp.
"""

import socket
import struct
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness import expect, expect_eq, run_suite  # noqa: E402

TIMEOUT = 30  # seconds, for one request's answer
TOPIC = "golden"
GROUP = "golden-group"
CLIENT_ID = "golden-bytes"

PRODUCE, FETCH, LIST_OFFSETS, METADATA = 0, 1, 2, 3
UNKNOWN_TOPIC_ID = 100
OFFSET_COMMIT, OFFSET_FETCH, CREATE_TOPICS, DELETE_TOPICS, OFFSET_FOR_LEADER_EPOCH, DESCRIBE_CONFIGS = 8, 9, 19, 20, 23, 32
UNKNOWN_TOPIC_OR_PARTITION = 3
TOPIC_ALREADY_EXISTS = 36
OFFSET_METADATA_TOO_LARGE = 12
OFFSET_METADATA_MAX_BYTES = 4096  # the broker's default offset_metadata_max_bytes, as Kafka's
NULL = None
CREATE_TIME_MS = 1_700_000_000_000  # the timestamps of the magic 1 messages produced here


# -- primitive types of the protocol guide (big-endian) ----------------------------------------
def i8(v):
    return struct.pack(">b", v)


def i16(v):
    return struct.pack(">h", v)


def i32(v):
    return struct.pack(">i", v)


def i64(v):
    return struct.pack(">q", v)


def boolean(v):
    return b"\x01" if v else b"\x00"


def string(s):
    """STRING / NULLABLE_STRING: int16 length (-1 for null), then UTF-8 bytes."""
    if s is None:
        return i16(-1)
    raw = s.encode()
    return i16(len(raw)) + raw


def blob(b):
    """BYTES / NULLABLE_BYTES: int32 length (-1 for null), then the bytes."""
    if b is None:
        return i32(-1)
    return i32(len(b)) + b


def array(items):
    """ARRAY: int32 count, then the items, each already encoded."""
    return i32(len(items)) + b"".join(items)


# -- flexible versions: unsigned varints, compact types, tagged fields -----------------------
def uvarint(v):
    out = b""
    while True:
        byte = v & 0x7F
        v >>= 7
        if v:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])


def compact_string(s):
    """COMPACT_(NULLABLE_)STRING: uvarint length + 1 (0 for null), then UTF-8 bytes."""
    if s is None:
        return uvarint(0)
    raw = s.encode()
    return uvarint(len(raw) + 1) + raw


def compact_bytes(b):
    if b is None:
        return uvarint(0)
    return uvarint(len(b) + 1) + b


def compact_array(items):
    """COMPACT_(NULLABLE_)ARRAY: uvarint count + 1 (0 for null), then the items."""
    if items is None:
        return uvarint(0)
    return uvarint(len(items) + 1) + b"".join(items)


NO_TAGS = uvarint(0)  # an empty tagged-field section


class Reader:
    """Reads the fields of a flexible answer in order."""

    def __init__(self, raw):
        self.raw, self.pos = raw, 0

    def take(self, n):
        out = self.raw[self.pos:self.pos + n]
        self.pos += n
        return out

    def fixed(self, fmt):
        (value,) = struct.unpack_from(">" + fmt, self.raw, self.pos)
        self.pos += struct.calcsize(">" + fmt)
        return value

    def uvarint(self):
        shift = value = 0
        while True:
            byte = self.raw[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    def compact_string(self):
        n = self.uvarint()
        return None if n == 0 else self.take(n - 1).decode()

    def skip_tags(self):
        for _ in range(self.uvarint()):
            self.uvarint()
            self.take(self.uvarint())


def batch_offsets(records):
    """(base offset, record count) of each v2 batch of a record set."""
    out, pos = [], 0
    while pos + 61 <= len(records):
        base, length = struct.unpack_from(">qi", records, pos)
        out.append((base, struct.unpack_from(">i", records, pos + 57)[0]))
        pos += 12 + length
    return out


# -- message sets (magic 0 and 1), as in the guide's "Message sets" --------------------------
def message(offset, value, magic, timestamp=None, key=None):
    """offset, size, crc (CRC-32 of what follows it), magic, attributes, [timestamp], key, value."""
    body = i8(magic) + i8(0) + (i64(timestamp) if magic == 1 else b"") + blob(key) + blob(value)
    crc = struct.pack(">I", zlib.crc32(body))
    return i64(offset) + i32(len(crc + body)) + crc + body


def message_set(values, magic, first_offset=0, timestamp=None):
    return b"".join(message(first_offset + i, v, magic, timestamp) for i, v in enumerate(values))


def parse_message_set(raw):
    """[(offset, magic, timestamp or None, key, value)], checking each message's CRC."""
    out, pos = [], 0
    while pos + 12 <= len(raw):
        offset, size = struct.unpack_from(">qi", raw, pos)
        if pos + 12 + size > len(raw):
            break  # a partial message at the end of a fetch is allowed
        crc, body = struct.unpack_from(">I", raw, pos + 12)[0], raw[pos + 16:pos + 12 + size]
        expect_eq(zlib.crc32(body), crc, f"CRC of the message at offset {offset}")
        magic, at = body[0], 2
        timestamp = None
        if magic == 1:
            timestamp = struct.unpack_from(">q", body, at)[0]
            at += 8
        key_len = struct.unpack_from(">i", body, at)[0]
        at += 4
        key = None if key_len < 0 else body[at:at + key_len]
        at += max(key_len, 0)
        value_len = struct.unpack_from(">i", body, at)[0]
        value = None if value_len < 0 else body[at + 4:at + 4 + value_len]
        out.append((offset, magic, timestamp, key, value))
        pos += 12 + size
    return out


# -- one connection, one request at a time -------------------------------------------------
class Wire:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.correlation = 0

    def close(self):
        self.sock.close()

    def call(self, api_key, version, body):
        """Sends header v1 + body; returns the response body after checking the correlation id."""
        self.correlation += 1
        frame = i16(api_key) + i16(version) + i32(self.correlation) + string(CLIENT_ID) + body
        self.sock.sendall(i32(len(frame)) + frame)
        size = struct.unpack(">i", self._read(4))[0]
        response = self._read(size)
        expect_eq(struct.unpack_from(">i", response)[0], self.correlation, "correlation id of the answer")
        return response[4:]

    def call_flexible(self, api_key, version, body):
        """Sends header v2 (v1 + tagged fields) + body; reads response header v1 (tagged fields after the
        correlation id) and returns the body."""
        self.correlation += 1
        frame = i16(api_key) + i16(version) + i32(self.correlation) + string(CLIENT_ID) + NO_TAGS + body
        self.sock.sendall(i32(len(frame)) + frame)
        size = struct.unpack(">i", self._read(4))[0]
        reader = Reader(self._read(size))
        expect_eq(reader.fixed("i"), self.correlation, "correlation id of the answer")
        reader.skip_tags()
        return reader.raw[reader.pos:]

    def _read(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise AssertionError(f"connection closed after {len(data)} of {n} bytes")
            data += chunk
        return data


def expect_bytes(actual, expected, what):
    if actual != expected:
        raise AssertionError(f"{what}:\n  got      {actual.hex()}\n  expected {expected.hex()}")


# -- the checks ----------------------------------------------------------------------------
def create_topics(wire):
    request = array([string(TOPIC) + i32(1) + i16(1) + array([]) + array([])]) + i32(10_000)
    expect_bytes(wire.call(CREATE_TOPICS, 0, request), array([string(TOPIC) + i16(0)]), "CreateTopics v0 answer")
    expect_bytes(wire.call(CREATE_TOPICS, 0, request), array([string(TOPIC) + i16(TOPIC_ALREADY_EXISTS)]),
                 "CreateTopics v0 answer for an existing topic")
    checked = array([string("golden-validated") + i32(2) + i16(1) + array([]) + array([])]) + i32(10_000)
    # v1 adds validate_only to the request and a nullable error message to each result.
    expect_bytes(wire.call(CREATE_TOPICS, 1, checked + boolean(True)),
                 array([string("golden-validated") + i16(0) + string(NULL)]),
                 "CreateTopics v1 answer with validate_only")


def metadata(wire, port):
    answer = wire.call(METADATA, 0, array([string(TOPIC)]))
    partition = i16(0) + i32(0) + i32(1) + array([i32(1)]) + array([i32(1)])
    expected = array([i32(1) + string("127.0.0.1") + i32(port)]) + array([i16(0) + string(TOPIC) + array([partition])])
    expect_bytes(answer, expected, "Metadata v0 answer")


def produce_request(version, records):
    topic = string(TOPIC) + array([i32(0) + blob(records)])
    return i16(-1) + i32(10_000) + array([topic])


def produce(wire):
    partition = i32(0) + i16(0)
    answer = wire.call(PRODUCE, 0, produce_request(0, message_set([b"v0-a", b"v0-b"], magic=0)))
    expect_bytes(answer, array([string(TOPIC) + array([partition + i64(0)])]), "Produce v0 answer")
    # v1 appends throttle_time_ms; v2 adds log_append_time (-1: the topic keeps CreateTime).
    records = message_set([b"v1-a", b"v1-b"], magic=1, timestamp=CREATE_TIME_MS)
    answer = wire.call(PRODUCE, 1, produce_request(1, records))
    expect_bytes(answer, array([string(TOPIC) + array([partition + i64(2)])]) + i32(0), "Produce v1 answer")
    records = message_set([b"v2-a", b"v2-b"], magic=1, timestamp=CREATE_TIME_MS + 1)
    answer = wire.call(PRODUCE, 2, produce_request(2, records))
    expect_bytes(answer, array([string(TOPIC) + array([partition + i64(4) + i64(-1)])]) + i32(0),
                 "Produce v2 answer")


VALUES = [b"v0-a", b"v0-b", b"v1-a", b"v1-b", b"v2-a", b"v2-b"]


def fetch_request(max_bytes=1 << 20):
    partition = i32(0) + i64(0) + i32(max_bytes)
    return i32(-1) + i32(100) + i32(1) + array([string(TOPIC) + array([partition])])


def fetch_v0(wire):
    """Fetch v0 and v1 get magic 0, whatever the format the records were produced in."""
    answer = wire.call(FETCH, 0, fetch_request())
    records = message_set(VALUES, magic=0)
    partition = i32(0) + i16(0) + i64(len(VALUES)) + blob(records)
    expect_bytes(answer, array([string(TOPIC) + array([partition])]), "Fetch v0 answer")


def fetch_v2(wire):
    """Fetch v2 and v3 get magic 1, with the producers' timestamps where they sent them."""
    answer = wire.call(FETCH, 2, fetch_request())
    expect_eq(struct.unpack_from(">i", answer)[0], 0, "Fetch v2 throttle_time_ms")
    # throttle_time_ms, [topic, [partition, error_code, high_watermark, records]]
    pos = 4
    expect_eq(struct.unpack_from(">i", answer, pos)[0], 1, "topics in the Fetch v2 answer")
    pos += 4
    name = string(TOPIC)
    expect_bytes(answer[pos:pos + len(name)], name, "topic name in the Fetch v2 answer")
    pos += len(name)
    count, index, error, high_watermark, size = struct.unpack_from(">iihqi", answer, pos)
    expect_eq((count, index, error, high_watermark), (1, 0, 0, len(VALUES)), "Fetch v2 partition header")
    pos += struct.calcsize(">iihqi")
    messages = parse_message_set(answer[pos:pos + size])
    expect_eq([(m[0], m[1], m[4]) for m in messages], [(i, 1, v) for i, v in enumerate(VALUES)],
              "offsets, magic and values of the Fetch v2 answer")
    expect_eq([m[2] for m in messages[2:]], [CREATE_TIME_MS] * 2 + [CREATE_TIME_MS + 1] * 2,
              "timestamps of the records produced with magic 1")


def list_offsets(wire):
    def ask(timestamp):
        partition = i32(0) + i64(timestamp) + i32(1)
        return wire.call(LIST_OFFSETS, 0, i32(-1) + array([string(TOPIC) + array([partition])]))

    for timestamp, offset in ((-1, len(VALUES)), (-2, 0)):
        expected = array([string(TOPIC) + array([i32(0) + i16(0) + array([i64(offset)])])])
        expect_bytes(ask(timestamp), expected, f"ListOffsets v0 answer for timestamp {timestamp}")


def offset_for_leader_epoch(wire):
    """v0 and v1 (the versions without the current leader epoch): where the current epoch ends, and
    an unknown partition's error; v0 answers without the epoch."""
    _, epoch = topic_id_and_epoch(wire)
    latest = wire.call(LIST_OFFSETS, 0, i32(-1) + array([string(TOPIC) + array([i32(0) + i64(-1) + i32(1)])]))
    end = struct.unpack_from(">q", latest, len(latest) - 8)[0]
    expect(end > 0, f"the golden topic's end offset {end}")
    request = array([string(TOPIC) + array([i32(0) + i32(epoch), i32(7) + i32(epoch)])])
    found = i16(0) + i32(0)
    missing = i16(UNKNOWN_TOPIC_OR_PARTITION) + i32(7)
    expect_bytes(wire.call(OFFSET_FOR_LEADER_EPOCH, 0, request),
                 array([string(TOPIC) + array([found + i64(end), missing + i64(-1)])]),
                 "OffsetForLeaderEpoch v0 answer")
    expect_bytes(wire.call(OFFSET_FOR_LEADER_EPOCH, 1, request),
                 array([string(TOPIC) + array([found + i32(epoch) + i64(end), missing + i32(-1) + i64(-1)])]),
                 "OffsetForLeaderEpoch v1 answer")


def topic_id_and_epoch(wire):
    """The golden topic's id and its partition's leader epoch, from a Metadata v12 answer."""
    # topics [topic_id (zero: by name), name], allow_auto_topic_creation, include_topic_authorized_operations
    request = compact_array([bytes(16) + compact_string(TOPIC) + NO_TAGS]) + boolean(False) + boolean(False) + NO_TAGS
    answer = Reader(wire.call_flexible(METADATA, 12, request))
    answer.fixed("i")  # throttle_time_ms
    for _ in range(answer.uvarint() - 1):  # brokers: node_id, host, port, rack
        answer.fixed("i"), answer.compact_string(), answer.fixed("i"), answer.compact_string(), answer.skip_tags()
    answer.compact_string(), answer.fixed("i")  # cluster_id, controller_id
    expect_eq(answer.uvarint() - 1, 1, "topics in the Metadata v12 answer")
    expect_eq((answer.fixed("h"), answer.compact_string()), (0, TOPIC), "error code and name of the topic")
    topic_id = answer.take(16)
    answer.fixed("?")  # is_internal
    expect_eq(answer.uvarint() - 1, 1, "partitions of the topic")
    answer.fixed("h"), answer.fixed("i"), answer.fixed("i")  # error_code, partition_index, leader_id
    return topic_id, answer.fixed("i")


def fetch_partition(fetch_offset=0):
    """partition, current_leader_epoch, fetch_offset, last_fetched_epoch, log_start_offset, partition_max_bytes."""
    return i32(0) + i32(-1) + i64(fetch_offset) + i32(-1) + i64(-1) + i32(1 << 20) + NO_TAGS


def flexible_fetch_request(version, topic):
    """replica_id (gone from v15: replica_state is a tagged field left out), max_wait_ms, min_bytes, max_bytes,
    isolation_level (READ_UNCOMMITTED), session_id, session_epoch, topics, forgotten_topics_data, rack_id."""
    replica = i32(-1) if version < 15 else b""
    topics = compact_array([topic + compact_array([fetch_partition()]) + NO_TAGS])
    return (replica + i32(100) + i32(1) + i32(1 << 20) + i8(0) + i32(0) + i32(-1) + topics + compact_array([])
            + compact_string("") + NO_TAGS)


def fetch_answer(topic, partition):
    """throttle_time_ms, error_code, session_id (0: no session), one topic, no node endpoints."""
    return i32(0) + i16(0) + i32(0) + compact_array([topic + compact_array([partition]) + NO_TAGS]) + NO_TAGS


def fetched_partition(error, high_watermark, log_start, records):
    """partition_index, error_code, high_watermark, last_stable_offset, log_start_offset, aborted_transactions
    (null: READ_UNCOMMITTED, or an error), preferred_read_replica, records."""
    return (i32(0) + i16(error) + i64(high_watermark) + i64(high_watermark) + i64(log_start) + compact_array(None)
            + i32(-1) + compact_bytes(records) + NO_TAGS)


def fetch_by_topic_id(wire):
    """Fetch v13+ names the topic by id: the answer is v12's, by name, with the id in place of the name; an
    unknown id is UNKNOWN_TOPIC_ID with Kafka's invalid offsets (-1) and no records."""
    topic_id, _ = topic_id_and_epoch(wire)
    expect(topic_id != bytes(16), "the topic has an id")
    by_name = Reader(wire.call_flexible(FETCH, 12, flexible_fetch_request(12, compact_string(TOPIC))))
    by_name.take(4 + 2 + 4 + 1 + len(compact_string(TOPIC)) + 1)  # up to the partition
    by_name.take(4 + 2 + 8 + 8 + 8 + 1 + 4)  # up to the records
    records = by_name.take(by_name.uvarint() - 1)
    # Each message of magic 0 or 1 became a batch of its own when it was converted up.
    expect_eq(batch_offsets(records), [(i, 1) for i in range(len(VALUES))], "batches of the Fetch v12 answer")
    for version in (13, 18):
        answer = wire.call_flexible(FETCH, version, flexible_fetch_request(version, topic_id))
        expect_bytes(answer, fetch_answer(topic_id, fetched_partition(0, len(VALUES), 0, records)),
                     f"Fetch v{version} answer by topic id")
    unknown = bytes(range(1, 17))
    answer = wire.call_flexible(FETCH, 13, flexible_fetch_request(13, unknown))
    expect_bytes(answer, fetch_answer(unknown, fetched_partition(UNKNOWN_TOPIC_ID, -1, -1, b"")),
                 "Fetch v13 answer for an unknown topic id")


def list_offsets_max_timestamp(wire):
    """ListOffsets v7, timestamp -3 (KIP-734): the first record with the largest timestamp, the first of the
    two produced with magic 1 at CREATE_TIME_MS + 1 (offset 4), in the epoch it was appended in."""
    _, epoch = topic_id_and_epoch(wire)
    partition = i32(0) + i32(-1) + i64(-3) + NO_TAGS
    request = i32(-1) + i8(0) + compact_array([compact_string(TOPIC) + compact_array([partition]) + NO_TAGS]) + NO_TAGS
    found = i32(0) + i16(0) + i64(CREATE_TIME_MS + 1) + i64(4) + i32(epoch) + NO_TAGS
    expected = i32(0) + compact_array([compact_string(TOPIC) + compact_array([found]) + NO_TAGS]) + NO_TAGS
    expect_bytes(wire.call_flexible(LIST_OFFSETS, 7, request), expected, "ListOffsets v7 answer for -3")


def offsets(wire):
    commit_v0 = string(GROUP) + array([string(TOPIC) + array([i32(0) + i64(3) + string("m0")])])
    committed = array([string(TOPIC) + array([i32(0) + i16(0)])])
    expect_bytes(wire.call(OFFSET_COMMIT, 0, commit_v0), committed, "OffsetCommit v0 answer")
    fetch_v0 = string(GROUP) + array([string(TOPIC) + array([i32(0)])])

    def fetched(offset, metadata_text):
        return array([string(TOPIC) + array([i32(0) + i64(offset) + string(metadata_text) + i16(0)])])

    expect_bytes(wire.call(OFFSET_FETCH, 0, fetch_v0), fetched(3, "m0"), "OffsetFetch v0 answer")
    # v1: generation -1 and an empty member id commit for a group without members; a timestamp per partition.
    commit_v1 = (string(GROUP) + i32(-1) + string("")
                 + array([string(TOPIC) + array([i32(0) + i64(5) + i64(-1) + string("m1")])]))
    expect_bytes(wire.call(OFFSET_COMMIT, 1, commit_v1), committed, "OffsetCommit v1 answer")
    expect_bytes(wire.call(OFFSET_FETCH, 0, fetch_v0), fetched(5, "m1"), "OffsetFetch v0 answer after v1")


def offset_metadata_limit(wire):
    """Kafka's offset.metadata.max.bytes (4096): one byte more is OFFSET_METADATA_TOO_LARGE for that
    partition and commits nothing; exactly the limit commits."""
    def commit(offset, metadata_text):
        body = string(GROUP) + array([string(TOPIC) + array([i32(0) + i64(offset) + string(metadata_text)])])
        return wire.call(OFFSET_COMMIT, 0, body)

    fetch_v0 = string(GROUP) + array([string(TOPIC) + array([i32(0)])])
    longest = "m" * OFFSET_METADATA_MAX_BYTES
    expect_bytes(commit(6, longest + "m"), array([string(TOPIC) + array([i32(0) + i16(OFFSET_METADATA_TOO_LARGE)])]),
                 "OffsetCommit v0 answer for metadata one byte over the limit")
    expect_bytes(wire.call(OFFSET_FETCH, 0, fetch_v0),
                 array([string(TOPIC) + array([i32(0) + i64(5) + string("m1") + i16(0)])]),
                 "OffsetFetch v0 answer after the refused commit")
    expect_bytes(commit(6, longest), array([string(TOPIC) + array([i32(0) + i16(0)])]),
                 "OffsetCommit v0 answer for metadata at the limit")
    expect_bytes(wire.call(OFFSET_FETCH, 0, fetch_v0),
                 array([string(TOPIC) + array([i32(0) + i64(6) + string(longest) + i16(0)])]),
                 "OffsetFetch v0 answer after the commit at the limit")


def describe_configs(wire):
    request = array([i8(2) + string(TOPIC) + array([string("cleanup.policy")])])
    answer = wire.call(DESCRIBE_CONFIGS, 0, request)
    config = string("cleanup.policy") + string("delete") + boolean(False) + boolean(True) + boolean(False)
    expected = i32(0) + array([i16(0) + string(NULL) + i8(2) + string(TOPIC) + array([config])])
    expect_bytes(answer, expected, "DescribeConfigs v0 answer")


def delete_topics(wire):
    doomed = "golden-deleted"
    create = array([string(doomed) + i32(1) + i16(1) + array([]) + array([])]) + i32(10_000)
    expect_bytes(wire.call(CREATE_TOPICS, 0, create), array([string(doomed) + i16(0)]), "CreateTopics v0 answer")
    answer = wire.call(DELETE_TOPICS, 0, array([string(doomed)]) + i32(10_000))
    expect_bytes(answer, array([string(doomed) + i16(0)]), "DeleteTopics v0 answer")


def main(broker, R):
    wire = Wire(broker.port)
    try:
        for name, check in [
            ("CreateTopics v0 and v1 (validate_only)", lambda: create_topics(wire)),
            ("Metadata v0", lambda: metadata(wire, broker.port)),
            ("Produce v0, v1, v2 with message sets of magic 0 and 1", lambda: produce(wire)),
            ("Fetch v0: every record down-converted to magic 0", lambda: fetch_v0(wire)),
            ("Fetch v2: magic 1 with the producers' timestamps", lambda: fetch_v2(wire)),
            ("ListOffsets v0: latest and earliest", lambda: list_offsets(wire)),
            ("Fetch v13 and v18: the topic named by id, known and unknown", lambda: fetch_by_topic_id(wire)),
            ("ListOffsets v7: the record with the largest timestamp", lambda: list_offsets_max_timestamp(wire)),
            ("OffsetForLeaderEpoch v0 and v1: where the current epoch ends", lambda: offset_for_leader_epoch(wire)),
            ("OffsetCommit v0 and v1, OffsetFetch v0", lambda: offsets(wire)),
            ("OffsetCommit v0: metadata over offset_metadata_max_bytes is refused per partition",
             lambda: offset_metadata_limit(wire)),
            ("DescribeConfigs v0", lambda: describe_configs(wire)),
            ("DeleteTopics v0", lambda: delete_topics(wire)),
        ]:
            with R.check(name):
                check()
    finally:
        wire.close()


if __name__ == "__main__":
    run_suite("golden", main, auto_create_topics=False)
