"""Single Kafka requests with fields a client library does not let a test choose (a stale
`current_leader_epoch`, a `last_fetched_epoch`), built and parsed with kafka-python's
protocol classes and sent over a plain socket to one broker.
"""

import socket
import struct

from kafka.protocol.consumer.fetch import FetchRequest, FetchResponse
from kafka.protocol.consumer.offsets import (ListOffsetsRequest, ListOffsetsResponse, OffsetForLeaderEpochRequest,
                                             OffsetForLeaderEpochResponse)
from kafka.protocol.metadata.metadata import MetadataRequest, MetadataResponse

FENCED_LEADER_EPOCH = 74
UNKNOWN_LEADER_EPOCH = 75
NO_EPOCH = -1
SOCKET_TIMEOUT = 10  # seconds for one request's answer
LATEST = -1  # ListOffsets timestamp


class Connection:
    """One connection to one broker; requests are answered in order."""

    def __init__(self, address):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=SOCKET_TIMEOUT)
        self.correlation_id = 0

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        self.close()

    def call(self, request, response_class, version):
        self.correlation_id += 1
        request.with_header(correlation_id=self.correlation_id, client_id="epoch-test")
        self.sock.sendall(bytes(request.encode(version=version, header=True, framed=True)))
        (size,) = struct.unpack(">i", self._read(4))
        response = response_class.decode(self._read(size), version=version, header=True)
        if response.header.correlation_id != self.correlation_id:
            raise AssertionError(f"correlation id {response.header.correlation_id}, sent {self.correlation_id}")
        return response

    def _read(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            data += chunk
        return data

    # -- the requests ----------------------------------------------------------------
    def partition_metadata(self, topic, partition, version=12):
        """(error code, leader id, leader epoch) of one partition as this broker reports it."""
        request = MetadataRequest[version](topics=[MetadataRequest.MetadataRequestTopic(name=topic)],
                                           allow_auto_topic_creation=False)
        response = self.call(request, MetadataResponse, version)
        for entry in response.topics:
            if entry.name == topic:
                for p in entry.partitions:
                    if p.partition_index == partition:
                        return p.error_code, p.leader_id, p.leader_epoch
        raise AssertionError(f"no metadata for {topic}/{partition}: {response}")

    def fetch(self, topic, partition, offset, current_leader_epoch=NO_EPOCH, last_fetched_epoch=NO_EPOCH,
              version=12):
        """The partition's response: error_code, high_watermark, records, diverging_epoch, current_leader."""
        part = FetchRequest.FetchTopic.FetchPartition(
            partition=partition, current_leader_epoch=current_leader_epoch, fetch_offset=offset,
            last_fetched_epoch=last_fetched_epoch, log_start_offset=-1, partition_max_bytes=1 << 20)
        request = FetchRequest[version](replica_id=-1, max_wait_ms=0, min_bytes=0, max_bytes=1 << 20,
                                        isolation_level=0, session_id=0, session_epoch=-1,
                                        topics=[FetchRequest.FetchTopic(topic=topic, partitions=[part])],
                                        forgotten_topics_data=[], rack_id="")
        response = self.call(request, FetchResponse, version)
        return response.responses[0].partitions[0]

    def list_offsets(self, topic, partition, timestamp, current_leader_epoch=NO_EPOCH, version=6):
        """The partition's response: error_code, offset, leader_epoch."""
        part = ListOffsetsRequest.ListOffsetsTopic.ListOffsetsPartition(
            partition_index=partition, current_leader_epoch=current_leader_epoch, timestamp=timestamp)
        request = ListOffsetsRequest[version](replica_id=-1, isolation_level=0,
                                              topics=[ListOffsetsRequest.ListOffsetsTopic(name=topic,
                                                                                          partitions=[part])])
        return self.call(request, ListOffsetsResponse, version).topics[0].partitions[0]

    def offset_for_leader_epoch(self, topic, partition, leader_epoch, current_leader_epoch=NO_EPOCH, version=4):
        """The partition's response: error_code, leader_epoch, end_offset."""
        topic_class = OffsetForLeaderEpochRequest.OffsetForLeaderTopic
        part = topic_class.OffsetForLeaderPartition(partition=partition, current_leader_epoch=current_leader_epoch,
                                                     leader_epoch=leader_epoch)
        request = OffsetForLeaderEpochRequest[version](replica_id=-1,
                                                       topics=[topic_class(topic=topic, partitions=[part])])
        return self.call(request, OffsetForLeaderEpochResponse, version).topics[0].partitions[0]


def batch_epochs(records):
    """[(base offset, last offset, partition leader epoch)] of the v2 batches in a Fetch
    response's record bytes."""
    records = bytes(records or b"")
    found, pos = [], 0
    while pos + 27 <= len(records):
        base_offset, length, epoch = struct.unpack_from(">qii", records, pos)
        (last_offset_delta,) = struct.unpack_from(">i", records, pos + 23)
        if pos + 12 + length > len(records):
            break  # a partial batch at the end of the response
        found.append((base_offset, base_offset + last_offset_delta, epoch))
        pos += 12 + length
    return found
