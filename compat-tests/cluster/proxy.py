"""TCP proxies in the test process, so that a test can cut network links on demand.

A `TcpProxy` listens on one loopback port and forwards every connection to one target port.
Whether a connection may pass is decided by a policy, `allows(side)`, asked when the connection
arrives and again on every `reevaluate()`:

- an allowed connection is forwarded byte for byte in both directions;
- a connection that is not allowed is either *blackholed* (`blackhole=True`): accepted and held
  open without forwarding anything, which is how a dropped network path looks to the sender (its
  writes succeed, no answer ever comes), so the brokers' own RPC timeouts are exercised, not just
  their reconnect path; or *rejected*: reset at once, as by an unreachable host;
- when the policy changes, `reevaluate()` closes forwarded connections that are no longer allowed
  and closes blackholed ones that are allowed again, so their owners reconnect through the proxy.

`side` is None unless the proxy has a `read_side` function: Kafka client links use
`kafka_client_id` to learn which side of a simulated network partition a client is on from the
client.id in its first request header.
"""

import contextlib
import socket
import struct
import threading

ACCEPT_POLL_S = 0.2  # how often the accept loop notices close()
FIRST_BYTES_TIMEOUT_S = 10.0  # a client that sends no request header within this is dropped
CHUNK = 65536


class Connection:
    """One proxied connection: the accepted socket, the upstream socket once dialled, the client's side."""

    def __init__(self, downstream, side):
        self.downstream = downstream
        self.upstream = None
        self.side = side
        self.closed = False
        self._lock = threading.Lock()

    def attach_upstream(self, upstream):
        """Record the dialled socket; False (and the socket closed) if close() came first."""
        with self._lock:
            if not self.closed:
                self.upstream = upstream
                return True
        _close_socket(upstream)
        return False

    def close(self):
        with self._lock:
            if self.closed:
                return
            self.closed = True
        _close_socket(self.downstream)
        if self.upstream is not None:
            _close_socket(self.upstream)


class TcpProxy:
    """Forwards 127.0.0.1:listen_port -> 127.0.0.1:target_port while `allows(side)` holds."""

    def __init__(self, name, listen_port, target_port, allows, read_side=None, blackhole=True):
        self.name = name
        self.blackhole = blackhole
        self.listen_port = listen_port
        self.target_port = target_port
        self.allows = allows
        self.read_side = read_side
        self._forwarded = set()
        self._blackholed = set()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", listen_port))
        self._listener.settimeout(ACCEPT_POLL_S)
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"proxy {name}", daemon=True)
        self._acceptor.start()

    def reevaluate(self):
        """Apply a changed policy to the connections already open (see the module docstring)."""
        with self._lock:
            cut = [c for c in self._forwarded if not self.allows(c.side)]
            released = [c for c in self._blackholed if self.allows(c.side)]
            self._forwarded.difference_update(cut)
            self._blackholed.difference_update(released)
        for conn in cut + released:
            conn.close()

    def close(self):
        self._closing.set()
        self._acceptor.join(5)
        _close_socket(self._listener)
        with self._lock:
            conns = list(self._forwarded | self._blackholed)
            self._forwarded.clear()
            self._blackholed.clear()
        for conn in conns:
            conn.close()

    # -- internals ---------------------------------------------------------------
    def _accept_loop(self):
        while not self._closing.is_set():
            try:
                sock, _addr = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), name=f"proxy {self.name} conn",
                             daemon=True).start()

    def _serve(self, sock):
        """Classify, then either blackhole or forward one accepted connection."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        side, first_bytes = None, b""
        if self.read_side is not None:
            try:
                sock.settimeout(FIRST_BYTES_TIMEOUT_S)
                side, first_bytes = self.read_side(sock)
            except (OSError, EOFError, ValueError):
                _close_socket(sock)  # e.g. a bare TCP probe that connects and closes
                return
        sock.settimeout(None)
        conn = Connection(sock, side)
        with self._lock:
            if self._closing.is_set():
                conn.close()
                return
            if not self.allows(side):
                if self.blackhole:
                    self._blackholed.add(conn)
                else:
                    _reset(sock)
                return
            self._forwarded.add(conn)
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            self._drop(conn)  # target down: the dialler sees the connection close, as it would
            return
        upstream.settimeout(None)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not conn.attach_upstream(upstream):
            return
        try:
            upstream.sendall(first_bytes)
        except OSError:
            self._drop(conn)
            return
        threading.Thread(target=self._pump, args=(conn, sock, upstream), daemon=True).start()
        self._pump(conn, upstream, sock)

    def _pump(self, conn, src, dst):
        try:
            while True:
                data = src.recv(CHUNK)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        self._drop(conn)

    def _drop(self, conn):
        with self._lock:
            self._forwarded.discard(conn)
        conn.close()


def kafka_client_id(sock):
    """Read the first Kafka request header from `sock`: (client_id or None, the bytes read).

    Every request header version (v1, v2) starts size:int32, api_key:int16, api_version:int16,
    correlation_id:int32, client_id:nullable string with an int16 length (kept non-compact even
    in flexible versions), so the client id is found without decoding the request itself.
    """
    head = _recv_exact(sock, 14)
    (length,) = struct.unpack(">h", head[12:14])
    if length <= 0:
        return None, head
    raw = _recv_exact(sock, length)
    return raw.decode("utf-8", errors="replace"), head + raw


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed before a full request header")
        buf += chunk
    return buf


def _reset(sock):
    """Close with an RST rather than a FIN, as a refused or unreachable peer appears."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def _close_socket(sock):
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
