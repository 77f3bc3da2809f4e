"""The HTTP heartbeat intake worker as a real process, behind a stand-in parent, driven with real HTTP."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from pydantic import BaseModel

from supervisor.wire.messages import AgentUpdate, AgentView, HeartbeatTimes
from supervisor.wire.protocol import Request
from supervisor.wire.verbs import metrics as metrics_verb
from tests.support import stand_in_parent
from tests.support.wait import wait_until
from supervisor.common.prometheus import Exposition

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"
REQUEST_TIMEOUT = 1.0
MAX_BODY = 65536
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


class StandInParent(stand_in_parent.StandInParent):
    """The parent's three endpoints in a temporary run dir; answers `metrics` with `metrics_text` too."""

    def __init__(self, agents: list[AgentView], *, bind_events: bool = True) -> None:
        self.metrics_text = ""  # what the `metrics` verb answers (the parent's Prometheus text)
        self.metrics_requests = 0
        super().__init__(None, agents, bind_events=bind_events)
        self.dir = self.run_dir

    def answer(self, request: Request) -> BaseModel | dict:
        if request.verb == metrics_verb.NAME:
            self.metrics_requests += 1
            return metrics_verb.Result(text=self.metrics_text)
        return super().answer(request)

    def publish_agent(self, agent: AgentView) -> None:
        with self.lock:
            self.seq += 1
            self.agents[agent.id] = agent
            msg = AgentUpdate(seq=self.seq, agent=agent)
        self.publish(msg)

    def publish_heartbeat_times(self, times: dict[str, float]) -> None:
        with self.lock:
            self.seq += 1
            self.last_heartbeat.update(times)
            msg = HeartbeatTimes(seq=self.seq, last_heartbeat=times)
        self.publish(msg)


class Worker:
    """A real `python -m workers.heartbeat_http` on a listening socket this test bound to port 0 (or was given)."""

    def __init__(self, parent: StandInParent, *extra: str, listener: socket.socket | None = None,
                 name: str = "hh-test", wait: bool = True, settings: dict | None = None) -> None:
        self.listener = listener or socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.listener.getsockname()[1]
        fd = self.listener.fileno()
        self.log = parent.dir / f"{name}.log"
        # The test process sends for the agents from outside their trees: the sender check is off here and
        # exercised with real agents in tests/system/test_hostile_identity.py.
        conf = {"listen": "127.0.0.1:0", "processes": 1, "max_body": MAX_BODY, "request_timeout": REQUEST_TIMEOUT, "verify_sender": False,
                **(settings or {})}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "workers.heartbeat_http", "--run-dir", str(parent.dir), "--name", name,
                 "--settings", json.dumps(conf), "--listen-fd", str(fd), "--log-level", "debug", *extra],
                cwd=ROOT, pass_fds=[fd], stderr=log, stdout=log)
        if wait:
            wait_until(self._ready, timeout=30, message="the worker to answer")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, f"worker exited: {self.log.read_text()}"
        try:
            return request(self.port, "GET", "/heartbeat/stats", timeout=0.5)[0] == 200
        except OSError:
            return False

    def stop_process(self) -> int:
        """SIGTERM the worker (SIGKILL if it lingers) and return its exit code; the socket stays open."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def stop(self) -> int:
        code = self.stop_process()
        self.listener.close()
        return code


def request(port: int, method: str, path: str, body: bytes | str | object = None, headers: dict | None = None,
            timeout: float = 5.0) -> tuple[int, dict, bytes]:
    """One request on a new connection: (status, lower-cased headers, body)."""
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def post(port: int, obj: object, path: str = "/heartbeat", token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    status, _, body = request(port, "POST", path, obj, headers)
    return status, json.loads(body)


def raw_exchange(port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes, then read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        return _read_all(s)


def _read_all(s: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def stats(port: int) -> dict:
    status, _, body = request(port, "GET", "/heartbeat/stats")
    assert status == 200
    return json.loads(body)


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def agent_procs():
    """Stand-ins for agents: one plain process, one shell with a child (a descendant that may heartbeat)."""
    plain = subprocess.Popen(["sleep", "120"], start_new_session=True)
    tree = subprocess.Popen(["sh", "-c", "sleep 120 & wait"], start_new_session=True)
    try:
        child = wait_until(lambda: psutil.Process(tree.pid).children(), timeout=30)[0]
        yield plain, tree, child.pid
    finally:
        for proc in (plain, tree):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def _agents(plain: subprocess.Popen, tree: subprocess.Popen) -> list[AgentView]:
    return [
        AgentView(id="open", type="custom", state="running", pid=plain.pid, pgid=plain.pid),
        AgentView(id="secure", type="custom", state="running", pid=tree.pid, pgid=tree.pid, token=TOKEN),
        AgentView(id="halted", type="telegraf", state="stopped"),
    ]


@pytest.fixture(scope="module")
def env(agent_procs):
    plain, tree, _child = agent_procs
    parent = StandInParent(_agents(plain, tree))
    worker = None
    try:
        worker = Worker(parent)
        yield parent, worker, agent_procs
        assert worker.stop() == 0, worker.log.read_text()
        assert "Traceback" not in worker.log.read_text(), worker.log.read_text()
    finally:
        if worker is not None:
            worker.stop()
        parent.close()


# ----------------------------------------------------------------------------------------------- heartbeats


def test_heartbeat_accepted_and_forwarded_as_batch(env):
    parent, worker, (plain, _tree, _child) = env
    status, reply = post(worker.port, {"agent_id": "open", "pid": plain.pid, "status": "running", "version": "2.1",
                                       "cpu": 1.5, "memory": 1024, "timestamp": "2024-05-01T12:00:00Z", "extra": "ignored"})
    assert status == 200 and reply["success"] is True, reply
    assert RFC3339.fullmatch(reply["timestamp"])
    items = wait_until(lambda: [h for h in parent.heartbeats() if h.version == "2.1"], timeout=30)
    assert items[0].agent_id == "open" and items[0].pid == plain.pid and items[0].cpu == 1.5
    assert items[0].timestamp == 1714564800.0


def test_unparsable_timestamp_uses_receipt_time_and_is_counted(env):
    # As in the original daemon: not a rejection. Counted, and logged at most once per 10 s.
    parent, worker, (plain, _tree, _child) = env
    before = stats(worker.port)["timestamp_replaced"]
    sent = time.time()
    for stamp in ("yesterday", 1700000000, "2024-03-01T12:00"):
        status, reply = post(worker.port, {"agent_id": "open", "pid": plain.pid, "timestamp": stamp, "version": "ts-test"})
        assert status == 200 and reply["success"] is True, reply
    items = wait_until(lambda: [h for h in parent.heartbeats() if h.version == "ts-test"] or None, timeout=30)
    assert sent - 1 <= items[0].timestamp <= time.time() + 1
    assert stats(worker.port)["timestamp_replaced"] == before + 3
    lines = wait_until(lambda: [l for l in worker.log.read_text().splitlines() if "is not RFC 3339" in l] or None, timeout=30)
    assert len(lines) == 1 and "heartbeat of open: timestamp 'yesterday'" in lines[0]


def test_stats_carry_the_original_daemons_fields(env):
    _parent, worker, (plain, _tree, _child) = env
    assert post(worker.port, {"agent_id": "open", "pid": plain.pid})[0] == 200
    s = stats(worker.port)
    assert s["total_received"] == s["received"] and s["total_processed"] == s["accepted"] >= 1
    assert s["total_errors"] == sum(s["rejected"].values()) + s["dropped"]
    assert RFC3339.fullmatch(s["last_received_time"]) and s["last_received_time"].endswith("Z")
    assert isinstance(s["average_latency"], int) and 0 < s["average_latency"] < 10**9  # nanoseconds


def test_worker_beat_reports_listen_address_and_counters(env):
    parent, worker, _ = env
    beat = wait_until(lambda: [b for b in parent.beats() if b.counters.get("accepted", 0) >= 0], timeout=30)[-1]
    assert beat.worker == "hh-test" and beat.pid == worker.proc.pid
    assert beat.info["listen"] == f"127.0.0.1:{worker.port}"
    assert "received" in beat.counters and "rejected_invalid" in beat.counters


def test_descendant_pid_accepted_and_pid_outside_tree_refused(env):
    _parent, worker, (_plain, tree, child) = env
    assert post(worker.port, {"agent_id": "secure", "pid": child}, token=TOKEN)[0] == 200
    status, reply = post(worker.port, {"agent_id": "secure", "pid": os.getpid()}, token=TOKEN)
    assert status == 400 and "pid" in reply["message"] and reply["success"] is False


def test_token_missing_wrong_right(env):
    _parent, worker, (_plain, tree, _child) = env
    hb = {"agent_id": "secure", "pid": tree.pid}
    status, reply = post(worker.port, hb)
    assert status == 401 and "token" in reply["message"]
    assert post(worker.port, hb, token="wrong")[0] == 401
    status, _, _ = request(worker.port, "POST", "/heartbeat", hb, {"Authorization": f"Basic {TOKEN}"})
    assert status == 401
    assert post(worker.port, hb, token=TOKEN)[0] == 200


def test_invalid_fields_name_the_field(env):
    _parent, worker, (plain, _tree, _child) = env
    status, reply = post(worker.port, {"agent_id": "open", "pid": "abc"})
    assert status == 400 and "pid" in reply["message"]
    status, reply = post(worker.port, {"pid": plain.pid})
    assert status == 400 and "agent_id" in reply["message"]
    status, reply = post(worker.port, [1, 2])
    assert status == 400 and reply["success"] is False
    status, reply = post(worker.port, b"{not json")
    assert status == 400 and "JSON" in reply["message"]


def test_unknown_agent_and_stopped_agent(env):
    _parent, worker, (plain, _tree, _child) = env
    status, reply = post(worker.port, {"agent_id": "nobody", "pid": plain.pid})
    assert status == 404 and "nobody" in reply["message"]
    status, reply = post(worker.port, {"agent_id": "halted", "pid": plain.pid})
    assert status == 400 and "not running" in reply["message"]


def test_invalid_utf8_and_deep_json(env):
    _parent, worker, _ = env
    status, reply = post(worker.port, b'{"agent_id": "\xff\xfe"}')
    assert status == 400 and "UTF-8" in reply["message"]
    for depth in (1000, 10000):  # 10,000 deep still fits in max_body
        status, reply = post(worker.port, "[" * depth + "]" * depth)
        assert status == 400, reply
        status, reply = post(worker.port, '{"a":' * depth + "1" + "}" * depth, path="/heartbeats")
        assert status == 400, reply
    assert stats(worker.port)["received"] > 0  # the worker survived


# ----------------------------------------------------------------------------------------------- batches


def test_batch_reports_each_rejected_item(env):
    parent, worker, (plain, _tree, _child) = env
    items = [
        {"agent_id": "open", "pid": plain.pid, "status": "batch-good"},
        {"agent_id": "open", "pid": "x"},
        {"agent_id": "ghost", "pid": plain.pid},
        "not an object",
        {"agent_id": "open", "pid": plain.pid, "status": "batch-good"},
    ]
    status, reply = post(worker.port, items, path="/heartbeats")
    assert status == 200 and reply["success"] is True
    assert reply["accepted"] == 2 and reply["rejected_count"] == 3
    assert [(r["index"], r["status"]) for r in reply["rejected"]] == [(1, 400), (2, 404), (3, 400)]
    assert "pid" in reply["rejected"][0]["message"] and "ghost" in reply["rejected"][1]["message"]
    wait_until(lambda: len([h for h in parent.heartbeats() if h.status == "batch-good"]) == 2, timeout=30)

    status, reply = post(worker.port, items[1:4], path="/heartbeats")
    assert status == 400 and reply["accepted"] == 0 and len(reply["rejected"]) == 3
    assert post(worker.port, {"agent_id": "open"}, path="/heartbeats")[0] == 400  # not an array
    assert post(worker.port, [], path="/heartbeats")[0] == 400


# ----------------------------------------------------------------------------------------------- HTTP


def test_unknown_path_and_wrong_method(env):
    _parent, worker, _ = env
    status, _, body = request(worker.port, "GET", "/nope")
    assert status == 404 and json.loads(body)["success"] is False
    status, headers, body = request(worker.port, "GET", "/heartbeat")
    assert status == 405 and headers["allow"] == "POST" and json.loads(body)["success"] is False
    status, headers, _ = request(worker.port, "POST", "/metrics", b"{}")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, headers, body = request(worker.port, "HEAD", "/heartbeat/stats")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


def test_keep_alive_serves_several_requests_on_one_connection(env):
    _parent, worker, (plain, _tree, _child) = env
    conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=5)
    try:
        conn.connect()
        first = conn.sock
        for _ in range(3):
            conn.request("POST", "/heartbeat", json.dumps({"agent_id": "open", "pid": plain.pid}))
            resp = conn.getresponse()
            assert resp.status == 200 and resp.getheader("Connection") is None
            resp.read()
        assert conn.sock is first
    finally:
        conn.close()


def test_malformed_http_is_400(env):
    _parent, worker, _ = env
    assert raw_exchange(worker.port, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    # Both framings at once is the request-smuggling shape: refused, not guessed at.
    smuggle = b"POST /heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert raw_exchange(worker.port, smuggle).startswith(b"HTTP/1.1 400 ")
    huge_header = b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    assert raw_exchange(worker.port, huge_header).startswith(b"HTTP/1.1 431 ")
    rss = psutil.Process(worker.proc.pid).memory_info().rss
    endless = b"GET /metrics HTTP/1.1\r\nX-Endless: " + b"a" * (8 << 20)  # one header line that never ends
    assert raw_exchange(worker.port, endless).startswith(b"HTTP/1.1 431 ")
    assert psutil.Process(worker.proc.pid).memory_info().rss - rss < 4 << 20


def test_http10_and_expect_continue(env):
    _parent, worker, (plain, _tree, _child) = env
    body = json.dumps({"agent_id": "open", "pid": plain.pid}).encode()
    reply = raw_exchange(worker.port, b"POST /heartbeat HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    assert reply.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in reply  # closed after one reply
    with socket.create_connection(("127.0.0.1", worker.port), timeout=5) as s:
        s.sendall(b"POST /heartbeat HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert s.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_oversized_body_refused_without_reading_it(env):
    _parent, worker, _ = env
    # Only the headers: the 413 must come back without the server waiting for 10 MB (a server that waited
    # would answer 408 at request_timeout instead, since the body never comes).
    head = b"POST /heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n\r\n"
    with socket.create_connection(("127.0.0.1", worker.port), timeout=30) as s:
        s.sendall(head)
        reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413 ") and b"max_body" in reply
    # A client that sends all 10 MB before reading still gets the 413, not a reset.
    status, headers, body = request(worker.port, "POST", "/heartbeat", b"x" * (10 * 1024 * 1024))
    assert status == 413 and headers["connection"] == "close" and json.loads(body)["success"] is False


def test_oversized_chunked_body_stops_at_the_limit(env):
    _parent, worker, _ = env
    chunk = b"a" * 16384
    with socket.create_connection(("127.0.0.1", worker.port), timeout=5) as s:
        s.sendall(b"POST /heartbeat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(8):
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = _read_all(s)
    assert reply.startswith(b"HTTP/1.1 413 ")


def test_slow_loris_headers_and_body_cut_off(env):
    _parent, worker, _ = env
    for opening, trickle in (
        (b"POST /heartbeat HTTP/1.1\r\nHost: x\r\n", b"X-Slow: a\r\n"),
        (b"POST /heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n", b'{"a": 1, '),
    ):
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", worker.port), timeout=5) as s:
            s.sendall(opening)
            reply = b""
            for _ in range(300):  # up to 30 s of trickling, far past request_timeout even on a busy machine
                try:
                    s.sendall(trickle)
                except (BrokenPipeError, ConnectionResetError):
                    break
                time.sleep(0.1)
                s.setblocking(False)
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    data = None
                except ConnectionResetError:
                    break
                finally:
                    s.setblocking(True)
                if data is not None:
                    reply += data
                    if not data:
                        break
        elapsed = time.monotonic() - started
        assert reply.startswith(b"HTTP/1.1 408 "), reply  # cut off while the client still trickled
        assert elapsed >= REQUEST_TIMEOUT  # not before its time


def test_idle_connection_closed_after_request_timeout(env):
    _parent, worker, _ = env
    with socket.create_connection(("127.0.0.1", worker.port), timeout=30) as s:
        started = time.monotonic()
        assert s.recv(1024) == b""  # closed quietly (a socket.timeout here means never closed)
        assert time.monotonic() - started >= REQUEST_TIMEOUT


# ----------------------------------------------------------------------------------------------- reports

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\\n])*"(,[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\\n])*")*)?\})? '
                    r'(-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?|NaN|[+-]Inf)$')
META = re.compile(r"^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$")


def parse_prometheus(text: str) -> dict[str, list[str]]:
    """Check every line's format and that HELP/TYPE precede a family's samples; samples by metric name."""
    typed: dict[str, str] = {}
    helped: set[str] = set()
    samples: dict[str, list[str]] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        meta = META.match(line)
        if meta:
            kind, name, rest = meta.groups()
            if kind == "TYPE":
                assert rest in ("counter", "gauge"), line
                assert name not in typed, f"second TYPE for {name}"
                typed[name] = rest
            else:
                helped.add(name)
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        name = m.group(1)
        assert name in typed and name in helped, f"{name} has samples before its HELP/TYPE"
        if typed[name] == "counter":
            assert name.endswith("_total"), name
        samples.setdefault(name, []).append(line)
    return samples


def test_metrics_are_prometheus_text(env):
    parent, worker, (plain, _tree, _child) = env
    parent.publish_heartbeat_times({"open": 1700000000.5})
    status, headers, body = request(worker.port, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = parse_prometheus(body.decode())
    # No state label: a state change must flip a value, not start a new series.
    assert 'agentd_agent_up{agent="open",type="custom"} 1.0' in samples["agentd_agent_up"]
    assert 'agentd_agent_up{agent="halted",type="telegraf"} 0.0' in samples["agentd_agent_up"]
    assert any(s.startswith('agentd_heartbeat_http_heartbeats_rejected_total{reason="unauthorized",worker="hh-test"} ')
               for s in samples["agentd_heartbeat_http_heartbeats_rejected_total"])
    assert samples["agentd_heartbeat_http_resident_memory_bytes"]

    def last_heartbeat_shown() -> bool:
        text = request(worker.port, "GET", "/metrics")[2].decode()
        return any(line.startswith('agentd_agent_last_heartbeat_timestamp_seconds{agent="open"} ') and float(line.split()[-1]) == 1700000000.5
                   for line in text.splitlines())

    wait_until(last_heartbeat_shown, timeout=30)


def _past_the_shared_fetch(worker: Worker) -> None:
    """Scrape once, then let PARENT_METRICS_FRESH pass: the next scrape fetches the parent's text itself."""
    from workers.http_replies import PARENT_METRICS_FRESH

    request(worker.port, "GET", "/metrics")
    last_scrape = time.monotonic()
    wait_until(lambda: time.monotonic() - last_scrape > PARENT_METRICS_FRESH + 0.1, timeout=10)


def test_parent_metrics_are_fetched_by_the_scrape_itself(env):
    # Issue 11: the parent's text is fetched for a scrape (not every few seconds), so it is as of the scrape.
    parent, worker, _agents = env
    _past_the_shared_fetch(worker)
    fetches = parent.metrics_requests
    parent.metrics_text = "# TYPE agentd_test_value gauge\nagentd_test_value 1.0\n"
    assert "agentd_test_value 1.0" in request(worker.port, "GET", "/metrics")[2].decode()
    assert parent.metrics_requests == fetches + 1
    parent.metrics_text = "# TYPE agentd_test_value gauge\nagentd_test_value 2.0\n"
    wait_until(lambda: "agentd_test_value 2.0" in request(worker.port, "GET", "/metrics")[2].decode(), timeout=30)


def test_requests_pipelined_behind_a_scrape_are_answered_in_order(env):
    parent, worker, _agents = env
    _past_the_shared_fetch(worker)
    parent.metrics_text = "# TYPE agentd_test_value gauge\nagentd_test_value 3.0\n"
    payload = (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
               b"GET /heartbeat/stats HTTP/1.1\r\nHost: x\r\n\r\n"
               b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    replies = raw_exchange(worker.port, payload).split(b"HTTP/1.1 ")[1:]
    assert [r.split(b"\r\n", 1)[0] for r in replies] == [b"200 OK"] * 3
    assert b"agentd_test_value 3.0" in replies[0] and b"text/plain" in replies[0]
    assert b"application/json" in replies[1] and b'"message": "heartbeat intake counters"' in replies[1]
    assert replies[2].endswith(b"\r\n\r\n")  # HEAD: headers only


def test_pipelined_heartbeats_and_refusals_are_answered_in_request_order(env):
    # Keep-alive 200s are held to the end of the loop pass and sent together (docs/performance.md); a reply
    # written at once (400, 404, 100 Continue, the last one before a close) must not overtake them.
    _parent, worker, (plain, _tree, _child) = env
    good = json.dumps({"agent_id": "open", "pid": plain.pid}).encode()

    def post_req(path: bytes, body: bytes, extra: bytes = b"") -> bytes:
        return b"POST %s HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n%s" % (path, extra, len(body), body)

    payload = (post_req(b"/heartbeat", good) + post_req(b"/heartbeat", b"{not json") + post_req(b"/heartbeat", good)
               + post_req(b"/nowhere", good) + post_req(b"/heartbeat", good, b"Expect: 100-continue\r\n")
               + post_req(b"/heartbeat", good) + post_req(b"/heartbeat", good, b"Connection: close\r\n"))
    replies = raw_exchange(worker.port, payload).split(b"HTTP/1.1 ")[1:]
    assert [r.split(b"\r\n", 1)[0] for r in replies] == [
        b"200 OK", b"400 Bad Request", b"200 OK", b"404 Not Found", b"100 Continue", b"200 OK", b"200 OK", b"200 OK"]
    assert b"Connection: close" in replies[-1] and b"Connection: close" not in b"".join(replies[:-1])


def test_label_values_are_escaped():
    m = Exposition()
    m.gauge("m", "h", 1, a='x"y\\z\nw')
    text = m.text().decode()
    assert parse_prometheus(text) == {"m": ['m{a="x\\"y\\\\z\\nw"} 1.0']}


def test_agent_added_later_is_accepted(env):
    parent, worker, (plain, _tree, _child) = env
    hb = {"agent_id": "late", "pid": plain.pid}
    assert post(worker.port, hb)[0] == 404
    parent.publish_agent(AgentView(id="late", type="custom", state="running", pid=plain.pid, pgid=plain.pid))
    wait_until(lambda: post(worker.port, hb)[0] == 200, timeout=30)


def test_stats_count_every_outcome(env):
    _parent, worker, (plain, _tree, _child) = env
    before = stats(worker.port)
    post(worker.port, {"agent_id": "open", "pid": plain.pid})
    post(worker.port, {"agent_id": "ghost", "pid": plain.pid})
    post(worker.port, {"agent_id": "secure", "pid": plain.pid})
    post(worker.port, [{"agent_id": "open", "pid": plain.pid}, {"agent_id": "open"}], path="/heartbeats")
    after = stats(worker.port)
    assert RFC3339.fullmatch(after["timestamp"]) and after["success"] is True
    assert after["received"] - before["received"] == 5
    assert after["accepted"] - before["accepted"] == 2
    assert after["rejected"]["unknown_agent"] - before["rejected"]["unknown_agent"] == 1
    assert after["rejected"]["unauthorized"] - before["rejected"]["unauthorized"] == 1
    assert after["rejected"]["invalid"] - before["rejected"]["invalid"] == 1
    assert after["received"] == after["accepted"] + sum(after["rejected"].values()) + after["dropped"]
    assert {"queue_depth", "dropped", "forwarded", "connections_open", "responses"} <= after.keys()
    assert after["responses"]["200"] > before["responses"]["200"]


# ----------------------------------------------------------------------------------------------- limits


def test_backpressure_503_with_bounded_memory_and_connection_cap(agent_procs):
    plain, tree, _child = agent_procs
    parent = StandInParent(_agents(plain, tree), bind_events=False)  # nobody drains events.ipc
    worker = None
    held: list[socket.socket] = []
    try:
        worker = Worker(parent, "--max-connections", "8")
        batch = json.dumps([{"agent_id": "open", "pid": plain.pid, "status": "flood"}] * 500)
        conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=10)
        first_503 = None
        for sent in range(1000):
            conn.request("POST", "/heartbeats", batch)
            resp = conn.getresponse()
            resp.read()
            if resp.status == 503:
                first_503 = sent
                assert resp.getheader("Retry-After") == "1"
                break
            assert resp.status == 200
        assert first_503 is not None, "no 503 after 500,000 heartbeats"
        rss_at_first = psutil.Process(worker.proc.pid).memory_info().rss
        for _ in range(100):
            conn.request("POST", "/heartbeats", batch)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 503
        # A batch no longer fits; single heartbeats fill what is left of the queue, then get 503 too.
        single = json.dumps({"agent_id": "open", "pid": plain.pid})
        for _ in range(600):
            conn.request("POST", "/heartbeat", single)
            resp = conn.getresponse()
            resp.read()
            if resp.status == 503:
                break
        assert resp.status == 503
        assert post(worker.port, {"agent_id": "open", "pid": plain.pid})[0] == 503
        conn.close()
        rss = psutil.Process(worker.proc.pid).memory_info().rss
        assert rss - rss_at_first < 16 * 2**20, (rss_at_first, rss)
        assert rss < 400 * 2**20, rss
        counted = stats(worker.port)
        assert counted["dropped"] >= 100 * 500 and counted["queue_depth"] > 0

        # Connection cap: connections that delivered no valid heartbeat get a quarter of max_connections (2 of
        # 8), the rest is kept for agents; the next one gets a 503 and is closed.
        for _ in range(2):
            held.append(socket.create_connection(("127.0.0.1", worker.port), timeout=5))
        wait_until(lambda: stats_via(held[0])["connections_open"] == 2, timeout=30)
        refused = raw_exchange(worker.port, b"")
        assert refused.startswith(b"HTTP/1.1 503 ") and b"no valid heartbeat" in refused, refused
    finally:
        for s in held:
            s.close()
        if worker is not None:
            assert worker.stop() == 0, worker.log.read_text()
        parent.close()


def stats_via(s: socket.socket) -> dict:
    """GET /heartbeat/stats on an already open keep-alive socket."""
    s.sendall(b"GET /heartbeat/stats HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    while len(body) < length:
        body += s.recv(65536)
    return json.loads(body)


def test_respawned_worker_answers_what_queued_while_it_was_down(agent_procs):
    """The parent keeps the listening socket: a request sent while no worker runs waits in the backlog."""
    plain, tree, _child = agent_procs
    parent = StandInParent(_agents(plain, tree))
    workers = [Worker(parent, name="hh-first")]
    hb = {"agent_id": "open", "pid": plain.pid}
    try:
        assert workers[0].stop_process() == 0
        result: list = []
        client = threading.Thread(target=lambda: result.append(post(workers[0].port, hb)))
        client.start()  # connects into the backlog the test's socket still holds; nobody accepts yet
        time.sleep(0.3)
        assert not result
        workers.append(Worker(parent, listener=workers[0].listener, name="hh-second", wait=False))  # the respawn
        client.join(10)
        assert result and result[0][0] == 200, result

        # A second worker on the same socket (the parent's `processes: 2`) carries on when the first stops.
        workers.append(Worker(parent, listener=workers[0].listener, name="hh-third", wait=False))
        wait_until(lambda: any(b.worker == "hh-third" for b in parent.beats()), timeout=30)
        assert workers[1].stop_process() == 0
        assert post(workers[0].port, hb)[0] == 200
        assert stats(workers[0].port)["worker"] == "hh-third"
    finally:
        for worker in workers:
            worker.stop_process()
        workers[0].listener.close()
        parent.close()


def test_standalone_config_binds_its_own_socket(agent_procs, tmp_path):
    plain, tree, _child = agent_procs
    parent = StandInParent(_agents(plain, tree))
    config = tmp_path / "agentd.yaml"
    config.write_text(f"daemon:\n  run_dir: {parent.dir}\nheartbeat:\n  http:\n    listen: 127.0.0.1:0\n    verify_sender: false\nagents: []\n")
    proc = subprocess.Popen([sys.executable, "-m", "workers.heartbeat_http", "--config", str(config)], cwd=ROOT,
                            stderr=subprocess.DEVNULL)
    try:
        beat = wait_until(lambda: [b for b in parent.beats() if b.pid == proc.pid], timeout=30)[0]
        port = int(beat.info["listen"].rpartition(":")[2])
        assert port > 0
        assert post(port, {"agent_id": "open", "pid": plain.pid})[0] == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        parent.close()


def test_refuses_a_descriptor_that_is_not_a_listening_tcp_socket():
    a, b = socket.socketpair()
    try:
        proc = subprocess.run([sys.executable, "-m", "workers.heartbeat_http", "--run-dir", "/tmp", "--listen-fd", str(a.fileno())],
                              cwd=ROOT, pass_fds=[a.fileno()], capture_output=True, text=True, timeout=10)
    finally:
        a.close()
        b.close()
    assert proc.returncode == 2 and "not a listening TCP socket" in proc.stderr, proc.stderr
