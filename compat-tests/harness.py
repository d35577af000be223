"""Shared helpers for the rafka client compatibility suites.

Starts the broker binary on free loopback ports with a fresh data directory,
waits (with a deadline) until it answers a Kafka Metadata request, and records
named checks, ending with the plain `N passed, N failed` line.

Environment: RAFKA_BIN (broker binary), RAFKA_READY_TIMEOUT (startup deadline,
default 30 s), RAFKA_COMPAT_KEEP_TMP=1 (keep each broker's data dir and log).
"""

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/single-node.toml"
READY_TIMEOUT = float(os.environ.get("RAFKA_READY_TIMEOUT", "30"))
STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = 60


def wait_until(predicate, timeout, interval=0.05, what="condition", fatal=()):
    """Poll `predicate` until it returns a truthy value; return that value.

    Raises TimeoutError (mentioning `what`) once `timeout` seconds have passed.
    Exceptions from the predicate count as "not yet" and are reported on timeout,
    except those of the types in `fatal`, which propagate at once.
    """
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except fatal:
            raise
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def free_ports(n=1):
    """Return `n` distinct free TCP ports on 127.0.0.1 (bound to port 0, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def find_binary():
    """Locate the broker: $RAFKA_BIN, then target/release/rafka, then $CARGO_TARGET_DIR/release/rafka."""
    explicit = os.environ.get("RAFKA_BIN")
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit
        raise FileNotFoundError(f"RAFKA_BIN={explicit} is not an executable file")
    candidates = [REPO_ROOT / "target" / "release" / "rafka"]
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(Path(os.environ["CARGO_TARGET_DIR"]) / "release" / "rafka")
    for c in candidates:
        if os.access(c, os.X_OK):
            return str(c)
    raise FileNotFoundError(
        "rafka binary not found (looked at $RAFKA_BIN, "
        + ", ".join(str(c) for c in candidates)
        + "); build it first with `cargo build --release`"
    )


def _die_with_parent():
    """preexec_fn: have the kernel SIGKILL the broker if this test process dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


# -- broker processes: shared by Broker, cluster/cluster.py and bench/cluster.py ----------
def spawn_broker(binary, config, log_path, start_number, cwd, env):
    """Start `rafka --config CONFIG` with stdout and stderr appended to `log_path`.

    A `==== start #N ====` line goes first so that a log kept across restarts shows which
    start said what. The broker dies with the thread that spawned it (_die_with_parent).
    """
    with open(log_path, "ab") as log:
        log.write(f"\n==== start #{start_number} ====\n".encode())
        log.flush()
        return subprocess.Popen(
            [binary, "--config", str(config)], cwd=cwd, env=env,
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=_die_with_parent)


def stop_brokers(procs, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
    """Send `sig` to every running process, wait up to `timeout` in all, SIGKILL the rest.

    All are signalled before any is waited for, so the nodes of a cluster shut down in
    parallel. Returns the exit codes in order, None for a None entry (not started).
    """
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
    deadline = time.monotonic() + timeout
    codes = []
    for proc in procs:
        if proc is None:
            codes.append(None)
            continue
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
        codes.append(proc.returncode)
    return codes


def log_tail(log_path, lines=LOG_TAIL_LINES, node_id=None):
    """The last `lines` lines of a broker log under a header naming it (and its node, if any)."""
    what = f"node {node_id} ({log_path})" if node_id is not None else str(log_path)
    try:
        text = Path(log_path).read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no broker log at {what})"
    return f"---- last {len(text)} lines of {what} ----\n" + "\n".join(text)


def remove_tmp(path, what):
    """Delete a test's temporary directory, or keep it and say where (RAFKA_COMPAT_KEEP_TMP=1)."""
    if os.environ.get("RAFKA_COMPAT_KEEP_TMP"):
        print(f"kept {what} in {path}", file=sys.stderr)
    else:
        shutil.rmtree(path, ignore_errors=True)


class StartedInWith:
    """`with x:` starts x and closes it on the way out.

    A start that fails (a broker dies, readiness times out, Ctrl-C) closes x too: `__exit__`
    does not run when `__enter__` raises, and without that the processes and the temporary
    directory would outlive the test. Subclasses define close() and either start() or, when
    start() means something else for them, _start_in_with().
    """

    def __enter__(self):
        try:
            self._start_in_with()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _start_in_with(self):
        self.start()


class BrokerProcesses(StartedInWith):
    """One or more rafka processes in the temporary directory `tmp`, started together by
    start() and stopped together by stop(sig): harness.Broker and bench's BenchCluster.

    restart() and kill9() keep the ports and data dirs; close() stops and removes `tmp`.
    """

    kept_what = "broker data and log"  # for the RAFKA_COMPAT_KEEP_TMP message

    def restart(self):
        """Graceful stop (SIGTERM) and start again; returns what stop() returned."""
        code = self.stop()
        self.start()
        return code

    def kill9(self):
        """SIGKILL (no chance to flush) and start again."""
        self.stop(signal.SIGKILL)
        self.start()

    def close(self):
        try:
            self.stop()
        finally:
            remove_tmp(self.tmp, self.kept_what)


def metadata_ok(bootstrap, timeout=1.0):
    """True if a Metadata request to `bootstrap` succeeds and lists at least one broker."""
    host, port = bootstrap.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout):
        pass  # cheap pre-check so no client is created while the port is closed
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0,
                         "socket.connection.setup.timeout.ms": int(timeout * 1000)})
    return len(admin.list_topics(timeout=timeout).brokers) > 0


class Broker(BrokerProcesses):
    """A rafka process on free loopback ports with its own temporary data dir.

    Use as a context manager; `restart()` stops it gracefully and starts it again,
    `kill9()` SIGKILLs it and starts it again, both on the same ports and data dir.
    """

    def __init__(self, auto_create_topics=None, default_partitions=None,
                 message_max_bytes=None, extra_env=None):
        self.binary = find_binary()
        self.port, self.raft_port, self.admin_port = free_ports(3)
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.admin = f"127.0.0.1:{self.admin_port}"  # /metrics, /health, /ready
        self.tmp = Path(tempfile.mkdtemp(prefix="rafka-compat-"))
        self.data_dir = self.tmp / "data"
        self.log_path = self.tmp / "broker.log"
        self.proc = None
        self.starts = 0
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info,openraft=warn")
        env.setdefault("NO_COLOR", "1")  # plain broker.log without ANSI colour codes
        env.update({
            "RAFKA_LISTENER": self.bootstrap,
            "RAFKA_ADVERTISED_LISTENER": self.bootstrap,
            "RAFKA_RAFT_ADDRESS": f"127.0.0.1:{self.raft_port}",
            "RAFKA_ADMIN_LISTENER": self.admin,
            "RAFKA_DATA_DIR": str(self.data_dir),
        })
        optional = {"RAFKA_AUTO_CREATE_TOPICS": auto_create_topics,
                    "RAFKA_DEFAULT_PARTITIONS": default_partitions,
                    "RAFKA_MESSAGE_MAX_BYTES": message_max_bytes}
        for key, value in optional.items():
            if value is not None:
                env[key] = str(value).lower() if isinstance(value, bool) else str(value)
        env.update(extra_env or {})
        self.env = env

    # -- lifecycle (with, restart, kill9, close: BrokerProcesses) ----------------
    def start(self):
        self.starts += 1
        self.proc = spawn_broker(self.binary, CONFIG, self.log_path, self.starts, REPO_ROOT, self.env)
        self.wait_ready()

    def wait_ready(self, timeout=READY_TIMEOUT):
        def ready():
            if self.proc.poll() is not None:
                raise BrokerDied(f"rafka exited with code {self.proc.returncode} during startup")
            return metadata_ok(self.bootstrap)

        try:
            wait_until(ready, timeout, interval=0.1, fatal=BrokerDied,
                       what=f"rafka Metadata on {self.bootstrap}")
        except Exception as exc:
            raise RuntimeError(f"{exc}\n{self.log_tail()}") from None

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Send `sig`, wait up to `timeout`, then SIGKILL. Returns the exit code."""
        proc, self.proc = self.proc, None
        return stop_brokers([proc], sig, timeout)[0]

    def log_tail(self, lines=LOG_TAIL_LINES):
        return log_tail(self.log_path, lines)


class BrokerDied(RuntimeError):
    pass


class CheckTimeout(Exception):
    pass


class Results:
    """Records named checks; `finish()` prints `N passed, N failed` last and exits."""

    def __init__(self, suite):
        self.suite = suite
        self.passed = []
        self.failed = []
        self.broker = None  # set to print the broker log tail on the first failure

    def record(self, name, ok, detail=""):
        (self.passed if ok else self.failed).append(name)
        print(f"[{self.suite}] {'PASS' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""),
              flush=True)
        if not ok and self.broker is not None and len(self.failed) == 1:
            print(self.broker.log_tail(), flush=True)

    @contextlib.contextmanager
    def check(self, name, timeout=120):
        """`with results.check("name"):` passes unless the block raises or exceeds `timeout` s."""
        def on_alarm(_sig, _frame):
            raise CheckTimeout(f"check exceeded {timeout}s")

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(int(timeout))
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - any error fails this check only
            signal.alarm(0)
            tb = traceback.extract_tb(exc.__traceback__)
            where = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(tb)
                          if "compat-tests" in f.filename and not f.filename.endswith("harness.py")), "")
            self.record(name, False, f"{type(exc).__name__}: {exc}" + (f" [{where}]" if where else ""))
        else:
            signal.alarm(0)
            self.record(name, True)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)

    def finish(self):
        if self.failed:
            print(f"[{self.suite}] failed checks: " + ", ".join(self.failed))
        print(f"{len(self.passed)} passed, {len(self.failed)} failed", flush=True)
        sys.exit(1 if self.failed else 0)


# -- shared test data -------------------------------------------------------
BASE_TS = (int(time.time()) - 3600) * 1000  # explicit CreateTime for test messages: an hour ago


class Msg:
    """One message to produce: explicit partition, key, value, headers [(str, bytes|None)], timestamp."""
    __slots__ = ("partition", "key", "value", "headers", "ts")

    def __init__(self, partition, key, value, headers, ts):
        self.partition, self.key, self.value, self.headers, self.ts = partition, key, value, headers, ts


def make_messages(tag, partitions, per_partition, ts_base=BASE_TS, null_header_values=True):
    """Deterministic keyed messages with some null keys, null values and empty/null/no headers.

    Timestamps increase by 1 s per message within a partition.
    """
    msgs = []
    for p in range(partitions):
        for i in range(per_partition):
            key = None if i % 9 == 4 else f"key-{p}-{i}".encode()
            null_value = i % 5 == 2 and key is not None  # never both null
            value = None if null_value else (f"value-{tag}-{p}-{i}|" * (1 + i % 4)).encode()
            headers = [] if i % 6 == 5 else [("idx", str(i).encode()), ("tag", tag.encode())]
            if i % 3 == 0:
                headers.append(("empty", b""))
            if null_header_values and i % 4 == 1:
                headers.append(("null", None))
            msgs.append(Msg(p, key, value, headers, ts_base + p * 1_000_000 + i * 1000))
    return msgs


def by_partition(items, part_of):
    """Group `items` into {partition: [items in order]}."""
    out = {}
    for item in items:
        out.setdefault(part_of(item), []).append(item)
    return out


def expect(cond, message):
    """Assertion that survives `python -O`."""
    if not cond:
        raise AssertionError(message)


def expect_eq(actual, expected, what):
    if actual != expected:
        raise AssertionError(f"{what}: expected {_short(expected)}, got {_short(actual)}")


def _short(value, limit=300):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def exit_on_sigterm():
    """Turn SIGTERM into SystemExit so `with Broker()` blocks still stop the broker and clean up."""
    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)


def run_suite(suite, body, **broker_kwargs):
    """Start a broker, run `body(broker, results)`, stop the broker, print the totals, exit."""
    exit_on_sigterm()
    results = Results(suite)
    try:
        with results.check("broker starts and answers Metadata", timeout=READY_TIMEOUT + 15):
            broker = Broker(**broker_kwargs)
            broker.__enter__()
        if not results.failed:
            results.broker = broker
            try:
                body(broker, results)
            finally:
                broker.close()
    except Exception:  # noqa: BLE001 - a crash in the body is one more failure
        results.record("suite ran to completion", False, traceback.format_exc(limit=5))
    results.finish()


def run_parts(suite, *parts):
    """Run each `part(results)` in turn (each starts and stops its own brokers), print the totals, exit.
    A part that crashes counts as one more failure; the next part still runs."""
    exit_on_sigterm()
    results = Results(suite)
    for part in parts:
        try:
            part(results)
        except Exception as exc:  # noqa: BLE001 - a crash in one part is one more failure
            results.record(f"{part.__name__} ran to completion", False, repr(exc))
        results.broker = None
    results.finish()
