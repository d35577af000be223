"""Minimal raw Kafka-protocol probes (no client library) for precise timing.

A client library adds its own connection backoff and retry timers, which would
show up in a startup or recovery measurement. These probes open one TCP
connection, send one request, parse just enough of the answer and return, so a
caller can poll every few milliseconds against a deadline.

* `metadata_ok`: Metadata v1 (no topics) answered with at least one broker.
* `metadata`: Metadata v4 (never auto-creates a topic) parsed into brokers,
  controller id and each requested topic's partition leaders; the 3-node
  readiness check and the leader lookup of the fetch probe use it.
* `fetch_last`: Fetch v4 at a given offset answered without error and with a
  record batch containing that offset.
"""

import socket
import struct

CLIENT_ID = b"rafka-bench-probe"


class ProbeError(Exception):
    pass


def _request(bootstrap, api_key, api_version, body, timeout):
    host, port = bootstrap.rsplit(":", 1)
    header = struct.pack(">hhih", api_key, api_version, 7, len(CLIENT_ID)) + CLIENT_ID
    frame = header + body
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(frame)) + frame)
        size = struct.unpack(">i", _recv_exact(sock, 4))[0]
        payload = _recv_exact(sock, size)
    correlation = struct.unpack_from(">i", payload, 0)[0]
    if correlation != 7:
        raise ProbeError(f"correlation id {correlation}, expected 7")
    return payload, 4


def _recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ProbeError("connection closed mid-response")
        buf += chunk
    return bytes(buf)


def _string(s):
    raw = s.encode()
    return struct.pack(">h", len(raw)) + raw


def metadata_ok(bootstrap, timeout=1.0):
    """True if a Metadata v1 request for no topics lists at least one broker."""
    payload, pos = _request(bootstrap, 3, 1, struct.pack(">i", 0), timeout)
    brokers = struct.unpack_from(">i", payload, pos)[0]
    return brokers > 0


def _read_string(payload, pos, nullable=False):
    (n,) = struct.unpack_from(">h", payload, pos)
    pos += 2
    if n < 0:
        if not nullable:
            raise ProbeError("null string")
        return None, pos
    return payload[pos:pos + n].decode(errors="replace"), pos + n


def metadata(bootstrap, topics=(), timeout=1.0):
    """Metadata v4 with allow_auto_topic_creation=false, as answered by `bootstrap` itself.

    Returns {"brokers": {node_id: "host:port"}, "controller_id": int,
    "topics": {name: {"error": code, "partitions": {index: leader_id},
                      "replicas": {index: [ids]}, "isr": {index: [ids]}}}}.
    """
    body = struct.pack(">i", len(topics)) + b"".join(_string(t) for t in topics) + struct.pack(">b", 0)
    payload, pos = _request(bootstrap, 3, 4, body, timeout)
    pos += 4  # throttle_time_ms
    (nbrokers,) = struct.unpack_from(">i", payload, pos)
    pos += 4
    brokers = {}
    for _ in range(nbrokers):
        (node_id,) = struct.unpack_from(">i", payload, pos)
        host, pos = _read_string(payload, pos + 4)
        (port,) = struct.unpack_from(">i", payload, pos)
        _rack, pos = _read_string(payload, pos + 4, nullable=True)
        brokers[node_id] = f"{host}:{port}"
    _cluster_id, pos = _read_string(payload, pos, nullable=True)
    (controller_id, ntopics) = struct.unpack_from(">ii", payload, pos)
    pos += 8
    out_topics = {}
    for _ in range(max(ntopics, 0)):
        (err,) = struct.unpack_from(">h", payload, pos)
        name, pos = _read_string(payload, pos + 2)
        pos += 1  # is_internal
        (nparts,) = struct.unpack_from(">i", payload, pos)
        pos += 4
        leaders, replicas, isr = {}, {}, {}
        for _ in range(max(nparts, 0)):
            _perr, index, leader = struct.unpack_from(">hii", payload, pos)
            pos += 10
            for into in (replicas, isr):
                (n,) = struct.unpack_from(">i", payload, pos)
                into[index] = list(struct.unpack_from(f">{max(n, 0)}i", payload, pos + 4))
                pos += 4 + 4 * max(n, 0)
            leaders[index] = leader
        out_topics[name] = {"error": err, "partitions": leaders, "replicas": replicas, "isr": isr}
    return {"brokers": brokers, "controller_id": controller_id, "topics": out_topics}


def fetch_last(bootstrap, topic, partition, offset, timeout=1.0, max_wait_ms=0):
    """Fetch v4 at `offset`; True if the answer holds a batch containing `offset`.

    Raises ProbeError with the Kafka error code while the partition is not
    servable yet (e.g. no leader after a restart).
    """
    body = struct.pack(">iiiib", -1, max_wait_ms, 1, 1 << 20, 0)
    body += struct.pack(">i", 1) + _string(topic)
    body += struct.pack(">i", 1) + struct.pack(">iqi", partition, offset, 1 << 20)
    payload, pos = _request(bootstrap, 1, 4, body, timeout)
    pos += 4  # throttle_time_ms
    (ntopics,) = struct.unpack_from(">i", payload, pos)
    pos += 4
    for _ in range(ntopics):
        (tlen,) = struct.unpack_from(">h", payload, pos)
        pos += 2 + tlen
        (nparts,) = struct.unpack_from(">i", payload, pos)
        pos += 4
        for _ in range(nparts):
            part, err, _hw, _lso = struct.unpack_from(">ihqq", payload, pos)
            pos += struct.calcsize(">ihqq")
            (naborted,) = struct.unpack_from(">i", payload, pos)
            pos += 4 + max(naborted, 0) * 16
            (rlen,) = struct.unpack_from(">i", payload, pos)
            pos += 4
            records = payload[pos:pos + max(rlen, 0)]
            pos += max(rlen, 0)
            if part != partition:
                continue
            if err != 0:
                raise ProbeError(f"fetch error code {err}")
            return _batch_covers(records, offset)
    return False


def _batch_covers(records, offset):
    """True if one of the v2 record batches in `records` contains `offset`."""
    pos = 0
    while pos + 61 <= len(records):
        base, length = struct.unpack_from(">qi", records, pos)
        (last_delta,) = struct.unpack_from(">i", records, pos + 23)
        if base <= offset <= base + last_delta:
            return True
        pos += 12 + length
    return False
