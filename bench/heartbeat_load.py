"""Heartbeat intake under load, end to end: what the agentd parent actually applies, per second, and at what latency.

Run by hand (not part of `make test`):

    .venv/bin/python bench/heartbeat_load.py [--seconds 60] [--connections 64] [--agents 50]
                                             [--http-processes 1,2] [--rss-seconds 60] [--no-docs]

It writes a config into a short temp dir under /tmp (ipc paths must stay under 100 bytes) with `--agents`
agents that are plain `/bin/sleep` processes (`heartbeat_timeout: null`, so they never heartbeat by
themselves) plus `--socket-agents` agents whose command is this script in `--socket-client` mode, and
`heartbeat.http.listen: 127.0.0.1:0`. It starts the real daemon (`.venv/bin/agentd run -c`), finds the HTTP
port in `agentctl workers --json` (`info.listen`) and the agents' pids in `agentctl status --json`, and runs:

1. **HTTP**: `wrk` with 64 keep-alive connections POSTing `/heartbeat` bodies that rotate over the sleep
   agents, each with that agent's id and pid, for `--seconds`; then the same load against the yardstick, a
   bare uvicorn raw-ASGI app (httptools, uvloop when installed) that only parses the JSON body and answers
   200, in a subprocess on port 0. Once per value of `--http-processes` (a fresh agentd each time).
2. **Unix socket**: the socket-client agents are started by agentd, so SO_PEERCRED puts them inside their
   own agent's tree. On a "go" file they write newline-delimited heartbeats as fast as the socket takes
   them over `--socket-conns` connections each, for `--seconds`, and report how many complete lines they
   wrote.
3. **Full load**: both at once for `--rss-seconds`, sampling the RSS of every agentd process every 5 s.
4. **Parent capacity**: ready-made heartbeat batches pushed straight into `events.ipc` for `--parent-seconds`,
   no worker involved: the ceiling of `EventIntake` + `HeartbeatApplier.apply`.
5. **Sender identity** (`heartbeat.http.verify_sender`, issue 8): two more agentds, the check off and on, each
   with one agent that runs wrk as its own child (so wrk's connections are in the agent's tree); the same
   load with the check off, proved by the tree, proved by the agent's secret, keep-alive and one connection
   per request, interleaved for `--identity-repeats` rounds; medians of throughput and of the HTTP worker's
   CPU per heartbeat. wrk in the HTTP phase above sends each sleep agent's secret (it is outside their trees).

After each phase it waits for the queues to drain, then compares what the parent applied (`parent.applied`
delta in `agentctl workers`, plus its `dropped_*` counters) with what the workers answered 200 (HTTP) or
what the clients wrote (socket). It prints a table and, unless `--no-docs`, writes it into the
`## Heartbeat intake` section of docs/performance.md (only the generated block between its markers; the
rest of the file is left as it is). At the end it runs `agentctl shutdown --stop-agents` and checks that
every process it started is gone; Ctrl-C, SIGTERM or an error on the way take the same path.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench_daemon import AGENTD, BenchDaemon, die_with_us, marked_pids  # noqa: E402  (sibling module)

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = VENV_BIN / "python"
DOCS = ROOT / "docs" / "performance.md"
SLEEP = "/bin/sleep"
MARKER_ENV = "AGENTD_HEARTBEAT_LOAD"  # every agent gets it: how leftovers are found, whatever happened to agentd
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
WARMUP = 3.0  # seconds of load before each measured HTTP run; excluded from socket-phase rates
SECTION = "## Heartbeat intake"
BEGIN = "<!-- heartbeat_load.py: generated block, begin -->"
END = "<!-- heartbeat_load.py: generated block, end -->"
# Benchmark targets (not tests).
TARGET_HTTP_X = 1.5
TARGET_P99_MS = 25.0
TARGET_SOCKET = 60_000
TARGET_RSS_PCT = 10.0
TARGET_IDENTITY_PCT = 10.0  # issue 8: the HTTP sender check may cost at most this much throughput
TIMESTAMP = "2026-01-01T12:00:00.000Z"  # a fixed agent timestamp: parsing it is part of the work measured


def heartbeat_fields(agent_id: str, pid: int) -> dict:
    """The fields a real agent sends (examples/agentkit.py), as the HTTP load and the socket clients send them."""
    return {"agent_id": agent_id, "pid": pid, "timestamp": TIMESTAMP, "status": "running", "version": "1.0.0",
            "cpu": 1.5, "memory": 12_345_678}


# ----------------------------------------------------------------------------------------------- socket client
# Runs as an agent (agentd starts it), so the heartbeat socket's SO_PEERCRED check places it in its own tree.


def socket_client(ctl: Path) -> int:
    path = os.environ["AGENTD_HEARTBEAT_SOCKET"]
    agent_id = os.environ["AGENTD_AGENT_ID"]
    line = (json.dumps(heartbeat_fields(agent_id, os.getpid()), separators=(",", ":")) + "\n").encode()
    chunk = line * max(1, 32768 // len(line))  # whole lines, so a chunk boundary is a line boundary
    go_file = ctl / "go.json"
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))

    def current_round() -> dict | None:
        try:
            return json.loads(go_file.read_text())
        except (OSError, ValueError):
            return None

    seen = (current_round() or {}).get("round", 0)  # a respawned client never replays a round it missed
    print(f"socket client {agent_id} pid {os.getpid()}: ready, line {len(line)} bytes", flush=True)
    while True:
        if not ctl.is_dir():
            return 0  # the bench is gone: nothing left to do
        go = current_round()
        if go is None or go["round"] <= seen:
            time.sleep(0.05)
            continue
        seen = go["round"]
        result = _blast(path, line, chunk, go["conns"], go["seconds"])
        out = ctl / f"result.{agent_id}.{seen}.json"
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        tmp.rename(out)
        print(f"round {seen}: {result}", flush=True)


def _blast(path: str, line: bytes, chunk: bytes, conns: int, seconds: float) -> dict:
    """Write `chunk` over and over on `conns` connections for `seconds`; returns complete lines written."""
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    offsets: dict[socket.socket, int] = {}
    written: dict[socket.socket, int] = {}
    errors = 0
    for _ in range(conns):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.setblocking(False)
        socks.append(s)
        offsets[s], written[s] = 0, 0
        sel.register(s, selectors.EVENT_WRITE)
    view = memoryview(chunk)
    start = time.monotonic()
    deadline = start + seconds
    while (now := time.monotonic()) < deadline:
        for key, _ in sel.select(deadline - now):
            s = key.fileobj
            try:
                n = s.send(view[offsets[s]:])
            except BlockingIOError:
                continue
            except OSError:
                errors += 1
                sel.unregister(s)
                continue
            written[s] += n
            offsets[s] = (offsets[s] + n) % len(chunk)
    sent = 0
    for s in socks:
        # Finish a line cut in half, so the worker never reads a torn line at end of stream.
        rest = (-written[s]) % len(line)
        if rest:
            try:
                s.setblocking(True)
                s.sendall(view[offsets[s]:offsets[s] + rest])
                written[s] += rest
            except OSError:
                errors += 1
        sent += written[s] // len(line)
        s.close()
    return {"sent": sent, "errors": errors, "elapsed": time.monotonic() - start}


# ----------------------------------------------------------------------------------------------- yardstick


def yardstick_serve() -> int:
    """Bare uvicorn on a raw ASGI app (httptools, uvloop if installed): parse the JSON body, answer 200."""
    import asyncio
    import importlib.util

    import uvicorn

    reply = b'{"success":true,"message":"heartbeat accepted"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(reply)).encode())]

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        json.loads(body)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": reply})

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    sock = socket.create_server(("127.0.0.1", 0), backlog=4096)
    print(json.dumps({"port": sock.getsockname()[1], "loop": loop, "uvicorn": uvicorn.__version__}), flush=True)
    server = uvicorn.Server(uvicorn.Config(app, loop=loop, http="httptools", lifespan="off", access_log=False, log_level="warning"))
    signal.signal(signal.SIGTERM, lambda *_: setattr(server, "should_exit", True))
    if loop == "uvloop":
        import uvloop
        uvloop.run(server.serve(sockets=[sock]))
    else:
        asyncio.run(server.serve(sockets=[sock]))
    return 0


# ----------------------------------------------------------------------------------------------- /proc


def proc_cpu(pid: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds of the process, all its threads, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def tree_of(pid: int) -> list[int]:
    """pid and all its descendants now."""
    from workers.proc_lineage import children

    out, queue = [], [pid]
    while queue:
        p = queue.pop()
        out.append(p)
        queue.extend(children(p))
    return out


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of pid onto `cpus` (processes it starts later inherit it); a process gone meanwhile is skipped."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for tid in tasks:
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass


def children_cpu() -> tuple[float, float]:
    """(user, system) CPU seconds of our waited-for children (wrk): os.times() counts them once they exit."""
    t = os.times()
    return t.children_user, t.children_system


def proc_rss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ----------------------------------------------------------------------------------------------- agentd


def write_config(tmp: Path, agents: int, socket_agents: int, http_processes: int) -> Path:
    lines = [
        "# written by bench/heartbeat_load.py",
        "daemon:",
        "  run_dir: run",
        "  data_dir: data",
        "  log_dir: log",
        "  log_level: warning",
        "heartbeat:",
        "  http:",
        "    listen: 127.0.0.1:0",
        f"    processes: {http_processes}",
        "    max_unverified_per_peer: 512   # wrk opens all its connections at once from one user, as no agent does",
        "shutdown:",
        "  stop_agents: true      # a SIGTERM from the bench (or its death) stops the agents too",
        "agent_defaults:",
        "  stop_timeout: 5s",
        "  env:",
        f"    {MARKER_ENV}: {json.dumps(str(tmp))}",
        "  log:",
        "    max_size: 1MiB",
        "    keep: 0",
        "  health_check:",
        "    heartbeat_timeout: null   # nothing here heartbeats on its own schedule",
        "agents:",
    ]
    for i in range(agents):
        lines += [f"  - id: a{i:04d}", f"    binary_path: {SLEEP}", '    args: ["100000"]']
    for i in range(socket_agents):
        lines += [f"  - id: sock{i:02d}", f"    binary_path: {PYTHON}",
                  f"    args: {json.dumps([str(Path(__file__).resolve()), '--socket-client', str(tmp / 'ctl')])}"]
    path = tmp / "agentd.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Agentd(BenchDaemon):
    """One agentd under test, and the cleanup that always runs."""

    marker_env = MARKER_ENV

    def wait_ready(self, agents: int, http_processes: int, timeout: float) -> tuple[dict, dict]:
        """Every agent running and every worker beating; returns (status, workers) as agentctl --json prints them."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise RuntimeError(f"agentd exited with {self.proc.returncode} during start-up:\n{self.log_tail()}")
            summary = "control socket not up yet"
            if (self.run_dir / "control.ipc").exists():
                try:
                    status = self.agentctl("status", timeout=30)
                    workers = self.agentctl("workers", timeout=30)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    summary = str(exc)
                else:
                    running = sum(a["state"] == "running" for a in status["agents"])
                    http = [w for w in workers["workers"] if w["kind"] == "heartbeat_http" and w["info"].get("listen")]
                    unix = [w for w in workers["workers"] if w["kind"] == "heartbeat_unix" and w["last_beat_age_s"] is not None]
                    if running == agents and len(http) == http_processes and unix:
                        return status, workers
                    summary = f"{running}/{agents} agents running, {len(http)}/{http_processes} HTTP workers, {len(unix)} Unix worker"
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {timeout:g} s ({summary})")
            time.sleep(1.0)

    def counters(self) -> dict:
        """parent counters and per-worker (pid, counters, queue_depth), through the `workers` verb."""
        doc = self.client.call("workers")
        return {"parent": dict(doc["parent"]),
                "workers": {w["name"]: {"pid": w["pid"], "kind": w["kind"], "counters": dict(w["counters"]), "queue_depth": w["queue_depth"]}
                            for w in doc["workers"]}}


INTAKE_KINDS = ("heartbeat_http", "heartbeat_unix")
PARENT_DROPS = ("dropped_unknown_agent", "dropped_not_running", "dropped_stale_generation")


def _sum(snap: dict, kind: str, key: str) -> int:
    return sum(w["counters"].get(key, 0) for w in snap["workers"].values() if w["kind"] == kind)


def drain(agentd: Agentd, timeout: float = 60.0) -> tuple[dict, float]:
    """Wait until every intake worker's queue is empty, all it accepted was forwarded, the parent received
    all of it, and nothing moved for two liveness beats; returns the final counters and the seconds waited."""
    start = time.monotonic()
    prev = None
    stable = 0
    while True:
        snap = agentd.counters()
        p = snap["parent"]
        forwarded = sum(_sum(snap, k, "forwarded") for k in INTAKE_KINDS)
        accepted = sum(_sum(snap, k, "accepted") for k in INTAKE_KINDS)
        queued = sum(w["queue_depth"] for w in snap["workers"].values() if w["kind"] in INTAKE_KINDS)
        parent_in = p.get("applied", 0) + sum(p.get(k, 0) for k in PARENT_DROPS)
        key = (forwarded, accepted, queued, parent_in, sum(_sum(snap, k, "received") for k in INTAKE_KINDS))
        settled = queued == 0 and accepted == forwarded and parent_in >= forwarded
        stable = stable + 1 if (settled and key == prev) else 0
        if stable >= 3:  # unchanged over ~1.5 s: at least one worker beat (1 s) came in between
            return snap, time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"queues did not drain in {timeout:g} s: {key}")
        prev = key
        time.sleep(0.5)


def delta(a: dict, b: dict) -> dict:
    """Counter differences b - a: parent, and per intake kind summed over its workers."""
    out = {"parent": {k: b["parent"].get(k, 0) - a["parent"].get(k, 0) for k in set(a["parent"]) | set(b["parent"])}}
    for kind in INTAKE_KINDS:
        keys = set()
        for w in (*a["workers"].values(), *b["workers"].values()):
            if w["kind"] == kind:
                keys |= set(w["counters"])
        out[kind] = {k: _sum(b, kind, k) - _sum(a, kind, k) for k in keys}
    respawned = [n for n, w in a["workers"].items() if b["workers"].get(n, {}).get("pid") != w["pid"]]
    out["respawned"] = respawned
    return out


def agentd_pids(agentd: Agentd, status: dict) -> dict[str, int]:
    snap = agentd.counters()
    pids = {"parent": status["daemon"]["pid"]}
    pids.update({name: w["pid"] for name, w in sorted(snap["workers"].items()) if w["pid"]})
    return pids


def cpu_of(pids: dict[str, int]) -> dict[str, tuple[float, float] | None]:
    return {n: proc_cpu(p) for n, p in pids.items()}


def rss_of(pids: dict[str, int]) -> dict[str, int | None]:
    return {n: proc_rss(p) for n, p in pids.items()}


def cpu_pct(c0: dict, c1: dict, window: float) -> dict[str, tuple[float, float] | None]:
    """Per process: (% of one core in all, % of one core in the kernel) over the window."""
    out = {}
    for n in c0:
        a, b = c0[n], c1.get(n)
        out[n] = None if a is None or b is None else (100.0 * (b[0] + b[1] - a[0] - a[1]) / window, 100.0 * (b[1] - a[1]) / window)
    return out


# ----------------------------------------------------------------------------------------------- HTTP load


def agent_secret(pid: int) -> str:
    """The AGENTD_HEARTBEAT_TOKEN agentd put in an agent's environment: wrk sends for the agents from outside
    their trees, so it proves each heartbeat with the agent's own secret (heartbeat.http.verify_sender)."""
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(v.split(b"=", 1)[1].decode() for v in env if v.startswith(b"AGENTD_HEARTBEAT_TOKEN="))


def wrk_script(bodies: list[bytes], path: str = "/heartbeat", tokens: list[str] | None = None) -> str:
    items = ",\n".join(f"  [==[{b.decode()}]==]" for b in bodies)
    toks = ",\n".join(f'  "Bearer {t}"' for t in (tokens or []))
    return f"""-- written by bench/heartbeat_load.py: POST {path}, bodies rotating over the agents
local bodies = {{
{items}
}}
local tokens = {{
{toks}
}}
local requests = {{}}
local i = 0
function init(args)
  for k, body in ipairs(bodies) do
    local headers = {{["Content-Type"] = "application/json"}}
    if tokens[k] then headers["Authorization"] = tokens[k] end
    requests[k] = wrk.format("POST", "{path}", headers, body)
  end
  i = math.random(#requests) - 1
end
function request()
  i = i % #requests + 1
  return requests[i]
end
"""


def _to_ms(value: str) -> float:
    num, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()
    return float(num) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk_cmd(port: int, connections: int, seconds: float, lua: Path) -> list[str]:
    threads = max(1, min(2, connections))
    return ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(lua),
            f"http://127.0.0.1:{port}/heartbeat"]


def parse_wrk(out: str) -> dict:
    pct = {p: _to_ms(v) for p, v in re.findall(r"^\s+(\d+(?:\.\d+)?)%\s+(\S+)$", out, re.M)}
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_err = re.search(r"Socket errors: (.*)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "requests": int(total.group(1)),
            "duration_s": _to_ms(total.group(2) + total.group(3)) / 1000.0,
            "p50": pct.get("50"), "p99": pct.get("99"), "non2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": sock_err.group(1).strip() if sock_err else ""}


def run_wrk(port: int, connections: int, seconds: float, lua: Path) -> dict:
    out = subprocess.run(wrk_cmd(port, connections, seconds, lua), capture_output=True, text=True, timeout=seconds + 60,
                         stdin=subprocess.DEVNULL, preexec_fn=die_with_us)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    return parse_wrk(out.stdout)


class Yardstick:
    def __init__(self, tmp: Path) -> None:
        self.log = tmp / "yardstick.log"
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    def start(self) -> int:
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen([str(PYTHON), str(Path(__file__).resolve()), "--yardstick"], stdout=subprocess.PIPE,
                                         stderr=err, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_us)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"yardstick did not start: {self.log.read_text(errors='replace')[-2000:]}")
        self.info = json.loads(line)
        return self.info["port"]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass


def http_phase(agentd: Agentd, port: int, lua: Path, args, pids: dict[str, int], yard: Yardstick) -> dict:
    log_progress(f"HTTP: warm-up {WARMUP:g} s, then {args.seconds:g} s against agentd on port {port}")
    run_wrk(port, args.connections, WARMUP, lua)
    before, _ = drain(agentd)
    load0 = loadavg()
    c0 = {**cpu_of(pids), "wrk": children_cpu()}
    t0 = time.monotonic()
    w = run_wrk(port, args.connections, args.seconds, lua)
    t1 = time.monotonic()
    c1 = {**cpu_of(pids), "wrk": children_cpu()}
    after, drain_s = drain(agentd)
    d = delta(before, after)
    window = w["duration_s"]
    applied = d["parent"].get("applied", 0)
    ok200 = d["heartbeat_http"].get("http_200", 0)
    result = {
        "wrk": w, "window_s": window, "wall_s": t1 - t0, "drain_s": drain_s, "delta": d, "load_start": load0, "load_end": loadavg(),
        "applied": applied, "applied_per_s": applied / window, "answered_200": ok200,
        "lost": max(0, ok200 - applied), "cpu_pct": cpu_pct(c0, c1, t1 - t0),
    }
    ystart = yard.start()
    try:
        log_progress(f"HTTP: yardstick ({yard.info['loop']}, uvicorn {yard.info['uvicorn']}) warm-up, then {args.seconds:g} s")
        run_wrk(ystart, args.connections, WARMUP, lua)
        ypid = yard.proc.pid
        y0 = {"yardstick": proc_cpu(ypid), "wrk": children_cpu()}
        ty0 = time.monotonic()
        yw = run_wrk(ystart, args.connections, args.seconds, lua)
        y1 = {"yardstick": proc_cpu(ypid), "wrk": children_cpu()}
        result["yardstick"] = {**yw, "loop": yard.info["loop"], "uvicorn": yard.info["uvicorn"], "rss": proc_rss(ypid),
                               "cpu_pct": cpu_pct(y0, y1, time.monotonic() - ty0)}
    finally:
        yard.stop()
    result["x_yard"] = result["applied_per_s"] / result["yardstick"]["rps"]
    return result


# ----------------------------------------------------------------------------------------------- socket load


def start_socket_round(ctl: Path, round_no: int, conns: int, seconds: float) -> None:
    tmp = ctl / "go.tmp"
    tmp.write_text(json.dumps({"round": round_no, "conns": conns, "seconds": seconds}))
    tmp.rename(ctl / "go.json")


def collect_socket_round(ctl: Path, round_no: int, ids: list[str], timeout: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        got = {}
        for agent_id in ids:
            try:
                got[agent_id] = json.loads((ctl / f"result.{agent_id}.{round_no}.json").read_text())
            except (OSError, ValueError):
                pass
        if len(got) == len(ids):
            return got
        if time.monotonic() > deadline:
            raise RuntimeError(f"socket clients did not report round {round_no}: missing {sorted(set(ids) - set(got))}")
        time.sleep(0.2)


def socket_phase(agentd: Agentd, ctl: Path, round_no: int, ids: list[str], args, pids: dict[str, int]) -> dict:
    log_progress(f"socket: {len(ids)} client agents x {args.socket_conns} connections for {args.seconds:g} s")
    before, _ = drain(agentd)
    load0 = loadavg()
    start_socket_round(ctl, round_no, args.socket_conns, args.seconds)
    t_go = time.monotonic()
    warmup = min(WARMUP, args.seconds / 4)  # short runs keep most of their window
    time.sleep(warmup)
    a0 = agentd.counters()["parent"].get("applied", 0)
    c0 = cpu_of(pids)
    ts = time.monotonic()
    time.sleep(max(0.0, t_go + args.seconds - time.monotonic()))
    a1 = agentd.counters()["parent"].get("applied", 0)
    te = time.monotonic()
    c1 = cpu_of(pids)
    clients = collect_socket_round(ctl, round_no, ids, timeout=30)
    after, drain_s = drain(agentd)
    d = delta(before, after)
    sent = sum(c["sent"] for c in clients.values())
    applied = d["parent"].get("applied", 0)
    return {
        "clients": clients, "sent": sent, "client_errors": sum(c["errors"] for c in clients.values()),
        "delta": d, "applied": applied, "drain_s": drain_s, "steady_window_s": te - ts,
        "applied_per_s": (a1 - a0) / (te - ts), "sent_per_s": sent / args.seconds,
        "unaccounted": sent - d["heartbeat_unix"].get("received", 0), "load_start": load0, "load_end": loadavg(), "warmup_s": warmup,
        "cpu_pct": cpu_pct(c0, c1, te - ts),
    }


# ----------------------------------------------------------------------------------------------- full load


def full_phase(agentd: Agentd, port: int, lua: Path, ctl: Path, round_no: int, ids: list[str], args, pids: dict[str, int],
               rss_idle: dict) -> dict:
    seconds = args.rss_seconds
    log_progress(f"full load: HTTP ({args.connections} connections) and socket together for {seconds:g} s, RSS every 5 s")
    before, _ = drain(agentd)
    rss_start = rss_of(pids)
    load0 = loadavg()
    c0 = {**cpu_of(pids), "wrk": children_cpu()}
    t0 = time.monotonic()
    out_path = agentd.tmp / "wrk-full.out"
    with open(out_path, "wb") as out:
        wrk = subprocess.Popen(wrk_cmd(port, args.connections, seconds, lua), stdout=out, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, preexec_fn=die_with_us)
    try:
        start_socket_round(ctl, round_no, args.socket_conns, seconds)
        samples = []
        next_at = t0 + 5.0
        while wrk.poll() is None:
            if time.monotonic() >= next_at:
                samples.append((round(time.monotonic() - t0, 1), rss_of(pids)))
                next_at += 5.0
            time.sleep(0.1)
            if time.monotonic() - t0 > seconds + 60:
                raise RuntimeError("wrk did not finish")
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    t1 = time.monotonic()
    c1 = {**cpu_of(pids), "wrk": children_cpu()}
    rss_end = rss_of(pids)
    clients = collect_socket_round(ctl, round_no, ids, timeout=30)
    after, drain_s = drain(agentd)
    rss_drained = rss_of(pids)
    w = parse_wrk(out_path.read_text())
    d = delta(before, after)
    sent = sum(c["sent"] for c in clients.values())
    warm = samples[0][1] if samples else rss_start  # after 5 s of load: buffers and caches have grown to size
    rss = {}
    for name in pids:
        series = [s[1][name] for s in samples if s[1].get(name)]
        rss[name] = {"idle": rss_idle.get(name), "start": rss_start[name], "warm": warm.get(name), "end": rss_end[name],
                     "drained": rss_drained[name], "max": max(series) if series else None, "trend_pct": trend_pct(samples, name)}
    applied = d["parent"].get("applied", 0)
    return {
        "wrk": w, "window_s": t1 - t0, "drain_s": drain_s, "delta": d, "sent": sent, "applied": applied,
        "applied_per_s": applied / (t1 - t0), "answered_200": d["heartbeat_http"].get("http_200", 0),
        "rss": rss, "samples": samples, "load_start": load0, "load_end": loadavg(), "cpu_pct": cpu_pct(c0, c1, t1 - t0),
    }


# ----------------------------------------------------------------------------------------------- parent capacity


def parent_phase(agentd: Agentd, args, pids: dict[str, int]) -> dict:
    """The parent's ceiling alone: ready-made HeartbeatBatch messages pushed straight into events.ipc, as fast as
    its PULL socket takes them (blocking sends: its high-water mark is the back-pressure), no intake worker involved."""
    import zmq

    from supervisor.wire.messages import HeartbeatBatch

    seconds = args.parent_seconds
    snap = agentd.client.call("snapshot")
    agents = [a for a in snap["agents"] if a["id"].startswith("a") and a["pid"]]
    items = [dict(heartbeat_fields(a["id"], a["pid"]), timestamp=1767268800.0 + i / 1000, generation=a["generation"])
             for i, a in zip(range(512), __import__("itertools").cycle(agents))]
    payload = HeartbeatBatch(worker="bench-parent-capacity", items=items).model_dump_json(exclude_none=True).encode()
    log_progress(f"parent capacity: batches of {len(items)} pushed into events.ipc for {seconds:g} s")
    before, _ = drain(agentd)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.setsockopt(zmq.SNDHWM, 10)
    push.connect(f"ipc://{agentd.run_dir / 'events.ipc'}")
    try:
        load0 = loadavg()
        a0 = agentd.counters()["parent"].get("applied", 0)
        c0 = cpu_of(pids)
        own0 = time.process_time()
        t0 = time.monotonic()
        sent = 0
        while time.monotonic() - t0 < seconds:
            push.send(payload)
            sent += 1
        t1 = time.monotonic()
        a1 = agentd.counters()["parent"].get("applied", 0)
        c1 = cpu_of(pids)
        own = time.process_time() - own0
    finally:
        push.close(linger=0)
        ctx.term()
    after, drain_s = drain(agentd)
    d = delta(before, after)
    return {"window_s": t1 - t0, "batch": len(items), "sent": sent * len(items), "applied_in_window": a1 - a0,
            "applied_per_s": (a1 - a0) / (t1 - t0), "applied": d["parent"].get("applied", 0), "drops": {k: d["parent"].get(k, 0) for k in PARENT_DROPS},
            "cpu_pct": cpu_pct(c0, c1, t1 - t0), "bench_cpu_pct": 100.0 * own / (t1 - t0), "load_start": load0, "load_end": loadavg(),
            "bytes_per_heartbeat": len(payload) / len(items)}


# ----------------------------------------------------------------------------------------------- report


def trend_pct(samples: list, name: str) -> float | None:
    """Least-squares change of RSS over the sampled run, as % of its mean: growth, not one sample's jitter."""
    pts = [(t, s[name]) for t, s in samples if s.get(name)]
    if len(pts) < 3:
        return None
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mv = sum(v for _, v in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    slope = sum((t - mt) * (v - mv) for t, v in pts) / var if var else 0.0
    return 100.0 * slope * (pts[-1][0] - pts[0][0]) / mv


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def pct_change(a: int | None, b: int | None) -> float | None:
    return None if not a or b is None else 100.0 * (b - a) / a


def fmt_pct(v: float | None, signed: bool = True) -> str:
    return "-" if v is None else (f"{v:+.1f} %" if signed else f"{v:.0f} %")


def fmt_cpu(cpu: dict) -> str:
    return ", ".join(f"{n} {v[0]:.0f} % (kernel {v[1]:.0f} %)" for n, v in cpu.items() if v is not None and v[0] >= 0.5)


def verdict(ok: bool, gap: str) -> str:
    return "**met**" if ok else f"**not met** ({gap})"


def render(r: dict) -> str:
    m = r["machine"]
    a = r["args"]
    lines = [BEGIN, ""]
    lines.append(f"Latest run: {m['date']} on {m['nproc']} CPUs ({m['cpu']}), kernel {m['kernel']}, Python {m['python']}, "
                 f"{m['wrk']}; load average (1 min) at start {m['load_start']:.2f}. Command: `{r['command']}`.")
    lines.append("")
    lines.append("| path | heartbeats/s applied by the parent | yardstick req/s | × yard | p50 ms | p99 ms | non-200 / dropped | answered 200 (HTTP) / sent (socket) | applied | lost | parent drops | load avg |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for h in r["http"]:
        y = h["yardstick"]
        drops = sum(h["delta"]["parent"].get(k, 0) for k in PARENT_DROPS)
        lines.append(
            f"| HTTP, {h['processes']} worker{'s' if h['processes'] > 1 else ''}, {a['connections']} conns | {h['applied_per_s']:,.0f} | "
            f"{y['rps']:,.0f} | {h['x_yard']:.2f} | {h['wrk']['p50']:.2f} | {h['wrk']['p99']:.2f} | {h['wrk']['non2xx']} | "
            f"{h['answered_200']:,} | {h['applied']:,} | {h['lost']} | {drops} | {h['load_start']:.1f}–{h['load_end']:.1f} |")
    s = r.get("socket")
    if s:
        d = s["delta"]
        drops = sum(d["parent"].get(k, 0) for k in PARENT_DROPS)
        lines.append(
            f"| Unix socket, {a['socket_agents']} clients × {a['socket_conns']} conns | {s['applied_per_s']:,.0f} | - | - | n/a | n/a | "
            f"{d['heartbeat_unix'].get('dropped', 0)} | {s['sent']:,} sent | {s['applied']:,} | "
            f"{max(0, d['heartbeat_unix'].get('accepted', 0) - s['applied']) + max(0, s['unaccounted'])} | {drops} | "
            f"{s['load_start']:.1f}–{s['load_end']:.1f} |")
    f = r.get("full")
    if f:
        d = f["delta"]
        drops = sum(d["parent"].get(k, 0) for k in PARENT_DROPS)
        lost = max(0, f["answered_200"] + d["heartbeat_unix"].get("accepted", 0) - f["applied"])
        lines.append(
            f"| full load (HTTP + socket), {f['seconds']:g} s | {f['applied_per_s']:,.0f} | - | - | {f['wrk']['p50']:.2f} | {f['wrk']['p99']:.2f} | "
            f"{f['wrk']['non2xx']} / {d['heartbeat_unix'].get('dropped', 0)} | {f['answered_200']:,} + {f['sent']:,} sent | {f['applied']:,} | {lost} | {drops} | "
            f"{f['load_start']:.1f}–{f['load_end']:.1f} |")
    lines.append("")
    # details per run
    for h in r["http"]:
        d = h["delta"]["heartbeat_http"]
        y = h["yardstick"]
        lines.append(f"- HTTP, {h['processes']} worker(s): wrk {h['wrk']['requests']:,} requests in {h['window_s']:.1f} s "
                     f"({h['wrk']['rps']:,.0f} req/s, socket errors: {h['wrk']['socket_errors'] or 'none'}); workers received "
                     f"{d.get('received', 0):,}, accepted {d.get('accepted', 0):,}, 503 {d.get('http_503', 0)}, rejected "
                     f"{sum(v for k, v in d.items() if k.startswith('rejected_'))}; drained in {h['drain_s']:.1f} s. CPU of one core: "
                     f"{fmt_cpu(h['cpu_pct'])}. Yardstick: {y['rps']:,.0f} req/s, p50 {y['p50']:.2f} ms, p99 {y['p99']:.2f} ms, "
                     f"non-200 {y['non2xx']}, {mib(y['rss'])} MiB, CPU {fmt_cpu(y['cpu_pct'])} "
                     f"(uvicorn {y['uvicorn']}, {y['loop']}).")
    if s:
        d = s["delta"]["heartbeat_unix"]
        lines.append(f"- Unix socket: clients wrote {s['sent']:,} lines ({s['sent_per_s']:,.0f}/s over {a['seconds']:g} s, "
                     f"{s['client_errors']} errors); worker received {d.get('received', 0):,}, accepted {d.get('accepted', 0):,}, "
                     f"dropped (back-pressure) {d.get('dropped', 0):,}, rejected {sum(v for k, v in d.items() if k.startswith('rejected_'))}; "
                     f"parent applied {s['applied']:,} (rate over the steady {s['steady_window_s']:.0f} s window after a "
                     f"{s.get('warmup_s', WARMUP):g} s warm-up); drained {s['drain_s']:.1f} s after the clients stopped. CPU of one core: {fmt_cpu(s['cpu_pct'])}.")
    if f:
        lines.append(f"- Full load: CPU of one core: {fmt_cpu(f['cpu_pct'])}.")
    pc = r.get("parent")
    if pc:
        lines.append(f"- Parent alone (ready-made batches of {pc['batch']} pushed straight into events.ipc, no worker): "
                     f"{pc['applied_per_s']:,.0f} heartbeats/s applied over {pc['window_s']:.0f} s; CPU of one core: {fmt_cpu(pc['cpu_pct'])}; "
                     f"parent drops {sum(pc['drops'].values())}.")
    lines.append("")
    if f:
        lines.append(f"RSS of every agentd process (MiB), read every 5 s: idle = right after start-up; start = before the full-load "
                     f"run (after the runs above); 5 s = after 5 s of full load; end = as the {f['seconds']:g} s run ends; trend = "
                     f"least-squares change over the samples. Flat means end vs 5 s, and the trend, within {TARGET_RSS_PCT:g} %.")
        lines.append("")
        lines.append("| process | idle | start | 5 s | max | end | end vs 5 s | trend | end vs idle |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for name, x in f["rss"].items():
            x.setdefault("trend_pct", trend_pct(f["samples"], name))  # results saved before the trend was recorded
            lines.append(f"| {name} | {mib(x['idle'])} | {mib(x['start'])} | {mib(x['warm'])} | {mib(x['max'])} | {mib(x['end'])} | "
                         f"{fmt_pct(pct_change(x['warm'], x['end']))} | {fmt_pct(x.get('trend_pct'))} | {fmt_pct(pct_change(x['idle'], x['end']))} |")
        lines.append("")
    lines += render_identity(r)
    lines.append("Targets (benchmark targets, not tests):")
    lines.append("")
    for line in targets(r):
        lines.append(f"- {line}")
    lines += ["", END]
    return "\n".join(lines)


def render_identity(r: dict) -> list[str]:
    """The sender identity phase's table, the check's own steps and the whole proof per connection."""
    a = r["args"]
    lines: list[str] = []
    ident = r.get("identity")
    if ident:
        lines.append(f"Sender identity (heartbeat.http.verify_sender), 1 worker, {a['connections']} conns, wrk run by the agent itself "
                     f"(so its connections are in the agent's tree), {a.get('identity_seconds', 10):g} s each"
                     + (", the HTTP worker pinned to CPU 0 and the parent, the other workers and wrk to the last CPU:" if a.get("pin") else ":"))
        lines.append("")
        lines.append("| load | worker CPU µs per heartbeat, median | heartbeats/s applied, median (rounds) | wrk req/s | p99 ms | non-200 (all rounds) | tree checks (all rounds) | of which recalled | descriptors read | throughput cost vs check off |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        costs = {label: pct for label, _rate, _base, pct in identity_cost(ident)}
        for x in ident:
            cost = f"{costs[x['label']]:+.1f} %" if x["label"] in costs else "baseline"
            lines.append(f"| {x['label']} | {x['cpu_us']:.1f} | {x['applied_per_s']:,.0f} ({', '.join(f'{v:,}' for v in x['rates'])}) | "
                         f"{x['wrk']['rps']:,.0f} | {x['wrk']['p99']:.2f} | {x['non2xx']} | {x['sender_checks']:,} | "
                         f"{x.get('recalled', 0):,} | {x.get('links_read', 0):,} | {cost} |")
        lines.append("")
    micro = r.get("identity_micro")
    if micro and ident:
        base = {x["closing"]: x["cpu_us"] for x in ident if not x["verify"] and x.get("cpu_us")}
        lines.append(f"The check's own steps, timed alone (min of 15 repeats; a client holding {micro['conns']} loopback connections, "
                     f"as wrk does): sock_diag lookup {micro['sock_diag_us']:.1f} µs per connection (paid with the check off too: the "
                     f"per-peer limits use it); tree proof (every read recorded) {micro['tree_scan_us']:.1f} µs reading every "
                     f"descriptor, {micro['tree_hinted_us']:.1f} µs with the descriptor hint, {micro['tree_child_us']:.1f} µs through a "
                     f"descendant, {micro.get('tree_recording_us', 0):.1f} µs reading every descriptor into a new record, "
                     f"{micro.get('tree_recalled_us', 0):.1f} µs for a socket a recent read recorded; "
                     f"per request afterwards: cached proof {micro['cached_us']:.2f} µs, secret compare {micro['secret_us']:.2f} µs.")
        if micro.get("proof_cost"):
            pcs = micro["proof_cost"]
            lines.append("The whole proof per new connection, in-process against a client that replaces each connection as soon "
                         f"as the server closes it ({pcs[0].get('seconds', 4):g} s each, thread CPU time of the proof only): "
                         + "; ".join(f"{x['conns']} connection{'s' if x['conns'] > 1 else ''} {x['cpu_us']:.1f} µs "
                                     f"({x['recalled'] / max(1, x['proofs']) * 100:.0f} % of {x['proofs']:,} recalled, "
                                     f"{x['links_read'] / max(1, x['proofs']):.2f} descriptors read per proof)" for x in pcs) + ".")
        if False in base:
            ka = (micro["cached_us"] + micro["secret_us"]) / base[False] * 100
            whole = (micro.get("proof_cost") or [{}])[-1]
            lines.append(f"Against the worker CPU per heartbeat with the check off ({base[False]:.1f} µs keep-alive"
                         + (f", {base[True]:.1f} µs with a connection per request" if True in base else "") + f"): a proved keep-alive "
                         f"connection adds {ka:.1f} %" + (f"; a connection per request adds the tree proof once per heartbeat, "
                         f"{micro['tree_hinted_us'] / base[True] * 100:.1f} % hinted, {micro['tree_scan_us'] / base[True] * 100:.1f} % unhinted"
                         + (f", {whole['cpu_us'] / base[True] * 100:.1f} % as the whole proof at {whole['conns']} connections above"
                            if whole else "") if True in base else "") + ".")
        lines.append("")
    return lines


def targets(r: dict) -> list[str]:
    out = []
    for h in r["http"]:
        ok = h["x_yard"] >= TARGET_HTTP_X
        gap = f"{h['x_yard']:.2f}×, {TARGET_HTTP_X * h['yardstick']['rps'] - h['applied_per_s']:,.0f}/s short"
        out.append(f"HTTP, {h['processes']} worker(s): applied ≥ {TARGET_HTTP_X}× yardstick: {h['x_yard']:.2f}× → {verdict(ok, gap)}; "
                   f"p99 < {TARGET_P99_MS:g} ms: {h['wrk']['p99']:.2f} ms → {verdict(h['wrk']['p99'] < TARGET_P99_MS, 'over')}")
    s = r.get("socket")
    if s:
        ok = s["applied_per_s"] >= TARGET_SOCKET
        short = f"{TARGET_SOCKET - s['applied_per_s']:,.0f}/s short"
        out.append(f"Unix socket ≥ {TARGET_SOCKET:,}/s applied: {s['applied_per_s']:,.0f}/s → {verdict(ok, short)}")
    f = r.get("full")
    if f:
        for name, x in f["rss"].items():
            x.setdefault("trend_pct", trend_pct(f["samples"], name))
        worst = max(((n, pct_change(x["warm"], x["end"])) for n, x in f["rss"].items()), key=lambda t: abs(t[1] or 0))
        ok = all(abs(pct_change(x["warm"], x["end"]) or 0) <= TARGET_RSS_PCT and abs(x.get("trend_pct") or 0) <= TARGET_RSS_PCT
                 for x in f["rss"].values())
        out.append(f"RSS flat within {TARGET_RSS_PCT:g} % over {f['seconds']:g} s of full load: largest change {worst[0]} "
                   f"{fmt_pct(worst[1])} → {verdict(ok, 'see the RSS table')}")
    lost = sum(h["lost"] for h in r["http"])
    if f:
        lost += max(0, f["answered_200"] + f["delta"]["heartbeat_unix"].get("accepted", 0) - f["applied"])
    if s:
        lost += max(0, s["delta"]["heartbeat_unix"].get("accepted", 0) - s["applied"])
    for label, _rate, _base, pct in identity_cost(r.get("identity") or []):
        out.append(f"sender identity costs ≤ {TARGET_IDENTITY_PCT:g} % of intake throughput ({label}): {pct:+.1f} % → "
                   f"{verdict(pct <= TARGET_IDENTITY_PCT, f'{pct:.1f} %')}")
    out.append(f"zero heartbeats lost that were answered 200 (accepted, for the socket): {lost} lost → {verdict(lost == 0, f'{lost} lost')}")
    return out


def write_docs(block: str) -> str:
    """Replace our generated block inside `## Heartbeat intake`, creating the section when missing; re-read first."""
    text = DOCS.read_text() if DOCS.exists() else "# Performance\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        new = head + block + tail
    elif SECTION in text:
        head, rest = text.split(SECTION, 1)
        nxt = re.search(r"^## ", rest, re.M)
        body, tail = (rest[: nxt.start()], rest[nxt.start():]) if nxt else (rest, "")
        new = head + SECTION + body.rstrip("\n") + "\n\n" + block + "\n\n" + tail
    else:
        new = text.rstrip("\n") + "\n\n" + SECTION + "\n\n" + block + "\n"
    DOCS.write_text(new)
    return str(DOCS)


def log_progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- main


def run_daemon(args, processes: int, tmp_parent: Path, phases: set[str], marker_dirs: list[Path], result: dict) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f"hb{processes}-", dir=tmp_parent))
    marker_dirs.append(tmp)
    ctl = tmp / "ctl"
    ctl.mkdir()
    socket_agents = args.socket_agents if phases & {"socket", "full"} else 0
    config = write_config(tmp, args.agents, socket_agents, processes)
    agentd = Agentd(tmp, config)
    yard = Yardstick(tmp)
    try:
        log_progress(f"agentd with heartbeat.http.processes {processes}, {args.agents} sleep agents, {socket_agents} socket clients ({tmp})")
        agentd.start()
        total = args.agents + socket_agents
        agentd.wait_ready(total, processes, timeout=60 + 0.5 * total)
        # As the brief has it: the port from `agentctl workers --json`, the pids from `agentctl status --json`.
        workers = agentd.agentctl("workers")
        status = agentd.agentctl("status")
        listen = next(w["info"]["listen"] for w in workers["workers"] if w["kind"] == "heartbeat_http")
        port = int(listen.rsplit(":", 1)[1])
        sleepers = [(a["id"], a["pid"]) for a in status["agents"] if a["id"].startswith("a")]
        clients = [a["id"] for a in status["agents"] if a["id"].startswith("sock")]
        bodies = [json.dumps(heartbeat_fields(i, p), separators=(",", ":")).encode() for i, p in sleepers]
        lua = tmp / "heartbeat.lua"
        lua.write_text(wrk_script(bodies, tokens=[agent_secret(p) for _i, p in sleepers]))
        pids = agentd_pids(agentd, status)
        rss_idle = rss_of(pids)
        if "http" in phases:
            h = http_phase(agentd, port, lua, args, pids, yard)
            h["processes"] = processes
            result["http"].append(h)
            print_http(h)
        if processes == args.http_processes[0]:
            round_no = 0
            if "socket" in phases:
                round_no += 1
                s = socket_phase(agentd, ctl, round_no, clients, args, pids)
                result["socket"] = s
                print_socket(s)
            if "full" in phases:
                round_no += 1
                f = full_phase(agentd, port, lua, ctl, round_no, clients, args, pids, rss_idle)
                f["seconds"] = args.rss_seconds
                result["full"] = f
                print_full(f)
            if "parent" in phases:
                pc = parent_phase(agentd, args, pids)
                result["parent"] = pc
                print_parent(pc)
        if not agentd.alive():
            raise RuntimeError(f"agentd exited:\n{agentd.log_tail()}")
    finally:
        yard.stop()
        log_progress("shutting down: agentctl shutdown --stop-agents")
        for note in agentd.shutdown(str(tmp)):
            log_progress(f"cleanup: {note}")
        left = marked_pids(MARKER_ENV, str(tmp))
        log_progress(f"cleanup: agentd {'exited with ' + str(agentd.proc.returncode) if agentd.proc else 'never started'}; "
                     f"agent processes left: {len(left)}")
        if left:
            result.setdefault("cleanup_problems", []).append(f"{len(left)} processes left in {tmp}")
        if args.keep:
            log_progress(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- sender identity
# heartbeat.http.verify_sender: what proving "this HTTP heartbeat comes from its agent" costs. One agent,
# `loadgen`, is a shell loop that runs wrk as its own child, so wrk's connections are in the agent's tree.
# The same load runs with the check off, proved by the tree (socket inode found among the agent's open files,
# once per connection), and proved by the agent's secret; keep-alive, and one connection per request.

LOADGEN = r"""
echo $$ > "$CTL/pid"
n=0
while true; do
  while [ ! -s "$CTL/go.$n" ]; do sleep 0.05; done
  set -- $(cat "$CTL/go.$n")   # port seconds connections closing(0/1) token(0/1)
  MODE_CLOSE=$4 MODE_TOKEN=$5 wrk -t2 -c$3 -d$2s --latency -s "$CTL/loadgen.lua" "http://127.0.0.1:$1/heartbeat" > "$CTL/out.$n" 2>&1
  touch "$CTL/done.$n"
  n=$((n+1))
done
"""

LOADGEN_LUA = """-- written by bench/heartbeat_load.py: loadgen's own heartbeats, with or without its secret
-- wrk claims its own pid, as an agent's process sending its own heartbeat does (a child of the agent's shell)
local pid = io.open("/proc/self/stat"):read("*l"):match("^(%%d+)")
local req
function init(args)
  local headers = {["Content-Type"] = "application/json"}
  if os.getenv("MODE_TOKEN") == "1" then headers["Authorization"] = "Bearer " .. os.getenv("AGENTD_HEARTBEAT_TOKEN") end
  if os.getenv("MODE_CLOSE") == "1" then headers["Connection"] = "close" end  -- wrk then reconnects per request
  local body = '{"agent_id":"loadgen","pid":' .. pid .. ',"timestamp":"%s","status":"running","version":"1.0.0","cpu":1.5,"memory":12345678}'
  req = wrk.format("POST", "/heartbeat", headers, body)
end
function request() return req end
""" % TIMESTAMP

IDENTITY_MODES = [  # (label, verify_sender, token, closing)
    ("check off, keep-alive", False, False, False),
    ("tree proof, keep-alive", True, False, False),
    ("secret proof, keep-alive", True, True, False),
    ("check off, new connection per request", False, False, True),
    ("tree proof, new connection per request", True, False, True),
]


def write_identity_config(tmp: Path, verify: bool) -> Path:
    ctl = tmp / "ctl"
    lines = [
        "# written by bench/heartbeat_load.py (sender identity phase)",
        "daemon: {run_dir: run, data_dir: data, log_dir: log, log_level: warning}",
        # wrk opens all its connections at once, as no real agent does: room for them before their first heartbeat.
        f"heartbeat: {{http: {{listen: 127.0.0.1:0, processes: 1, verify_sender: {str(verify).lower()}, max_unverified_per_peer: 512}}}}",
        "shutdown: {stop_agents: true}",
        "agents:",
        "  - id: loadgen",
        "    binary_path: /bin/sh",
        f"    args: {json.dumps(['-c', LOADGEN])}",
        f"    env: {json.dumps({'CTL': str(ctl), MARKER_ENV: str(tmp)})}",
        "    stop_timeout: 5s",
        "    health_check: {heartbeat_timeout: null}",
    ]
    path = tmp / "agentd.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def identity_round(agentd: Agentd, ctl: Path, n: int, port: int, args, token: bool, closing: bool) -> dict:
    (ctl / f"go.{n}").write_text(f"{port} {max(1, round(args.identity_seconds))} {args.connections} {int(closing)} {int(token)}\n")
    deadline = time.monotonic() + args.identity_seconds + 60
    while not (ctl / f"done.{n}").exists():
        if time.monotonic() > deadline or not agentd.alive():
            raise RuntimeError(f"loadgen round {n} did not finish: {(ctl / f'out.{n}').read_text(errors='replace')[-2000:] if (ctl / f'out.{n}').exists() else ''}")
        time.sleep(0.2)
    return parse_wrk((ctl / f"out.{n}").read_text())


def identity_phase(args, tmp_parent: Path, marker_dirs: list[Path], result: dict) -> None:
    """Both agentds (check off, check on) up at once, the modes run in turn on the right one, repeated: on a
    shared, noisy machine the median of interleaved rounds compares like with like."""
    daemons: dict[bool, tuple[Agentd, Path, int]] = {}
    rounds: dict[bool, int] = {False: 0, True: 0}
    runs: dict[str, list[dict]] = {label: [] for label, *_ in IDENTITY_MODES}
    try:
        for verify in (False, True):
            tmp = Path(tempfile.mkdtemp(prefix=f"hbid{int(verify)}-", dir=tmp_parent))
            marker_dirs.append(tmp)
            ctl = tmp / "ctl"
            ctl.mkdir()
            (ctl / "loadgen.lua").write_text(LOADGEN_LUA)
            agentd = Agentd(tmp, write_identity_config(tmp, verify))
            daemons[verify] = (agentd, ctl, 0)
            log_progress(f"sender identity: agentd with verify_sender {verify} ({tmp})")
            agentd.start()
            agentd.wait_ready(1, 1, timeout=60)
            workers = agentd.agentctl("workers")
            http = next(w for w in workers["workers"] if w["kind"] == "heartbeat_http")
            port = int(http["info"]["listen"].rsplit(":", 1)[1])
            daemons[verify] = (agentd, ctl, port)
            if args.pin:
                # The HTTP worker alone on CPU 0; the parent, the other workers and the agent (so the wrk it
                # starts) on the last CPU. Unpinned, the ratio swung by ±20 % between rounds on a quiet 2-CPU
                # box with the scheduler's choice of who shares a core with the worker.
                last = {os.cpu_count() - 1}
                for p in tree_of(agentd.proc.pid):
                    pin(p, last)
                pin(http["pid"], {0})
        for rep in range(args.identity_repeats):
            for label, verify, token, closing in IDENTITY_MODES:
                agentd, ctl, port = daemons[verify]
                before, _ = drain(agentd)
                worker_pid = next(w["pid"] for w in before["workers"].values() if w["kind"] == "heartbeat_http")
                cpu0 = proc_cpu(worker_pid)
                w = identity_round(agentd, ctl, rounds[verify], port, args, token, closing)
                rounds[verify] += 1
                after, _ = drain(agentd)
                cpu1 = proc_cpu(worker_pid)
                d = delta(before, after)
                applied = d["parent"].get("applied", 0)
                hh = d["heartbeat_http"]
                # The worker's own CPU per heartbeat: far less noisy than throughput on a shared machine.
                cpu_us = (sum(cpu1) - sum(cpu0)) / max(1, hh.get("received", 0)) * 1e6 if cpu0 and cpu1 else None
                runs[label].append({"wrk": w, "applied": applied, "applied_per_s": applied / w["duration_s"], "cpu_us": cpu_us,
                                    "sender_checks": hh.get("sender_checks", 0), "recalled": hh.get("sender_checks_recalled", 0),
                                    "links_read": hh.get("sender_fd_links_read", 0),
                                    "rejected": {k: v for k, v in hh.items() if k.startswith("rejected_") and v}})
                x = runs[label][-1]
                print(f"  [{rep + 1}/{args.identity_repeats}] {label}: {x['applied_per_s']:,.0f}/s applied, worker CPU "
                      f"{x['cpu_us'] or 0:.1f} µs/heartbeat, wrk {w['rps']:,.0f} req/s, "
                      f"p99 {w['p99']:.2f} ms, non-2xx {w['non2xx']}, socket errors {w['socket_errors'] or 'none'}, tree checks {x['sender_checks']:,} "
                      f"({x['recalled']:,} recalled, {x['links_read']:,} descriptors read), "
                      f"rejected {x['rejected'] or 'none'}", flush=True)
    finally:
        for verify, (agentd, ctl, _port) in daemons.items():
            for note in agentd.shutdown(str(ctl.parent)):
                log_progress(f"cleanup: {note}")
            if not args.keep:
                shutil.rmtree(ctl.parent, ignore_errors=True)
    summary = []
    for label, verify, token, closing in IDENTITY_MODES:
        rs = sorted(runs[label], key=lambda x: x["applied_per_s"])
        if not rs:
            continue
        mid = rs[len(rs) // 2]
        cpus = sorted(x["cpu_us"] for x in runs[label] if x["cpu_us"] is not None)
        summary.append({"label": label, "verify": verify, "token": token, "closing": closing, "wrk": mid["wrk"],
                        "cpu_us": cpus[len(cpus) // 2] if cpus else None,
                        "applied_per_s": mid["applied_per_s"], "rates": [round(x["applied_per_s"]) for x in runs[label]],
                        "sender_checks": sum(x["sender_checks"] for x in runs[label]),
                        "recalled": sum(x["recalled"] for x in runs[label]),
                        "links_read": sum(x["links_read"] for x in runs[label]),
                        "non2xx": sum(x["wrk"]["non2xx"] for x in runs[label])})
    result["identity"] = summary
    micro = identity_micro(args.connections)
    micro["proof_cost"] = [proof_cost(n) for n in (1, 16, args.connections)]
    result["identity_micro"] = micro
    for x in micro["proof_cost"]:
        print(f"  tree proof, {x['conns']} connections replaced as they close: {x['cpu_us']:.1f} µs CPU per proof, "
              f"{x['recalled']:,} of {x['proofs']:,} recalled, {x['links_read'] / max(1, x['proofs']):.2f} descriptors read per proof", flush=True)
    print("  identity steps, µs (min of repeats): " + ", ".join(f"{k[:-3]} {v:.2f}" for k, v in micro.items() if k.endswith("_us")), flush=True)
    for label, rate, base, pct in identity_cost(summary):
        print(f"  median {label}: {rate:.1f} µs/heartbeat of worker CPU vs {base:.1f} with the check off: throughput cost {pct:+.1f} %", flush=True)


HOLDER = r"""
import socket, sys, time
conns = [socket.create_connection(("127.0.0.1", int(sys.argv[1]))) for _ in range(int(sys.argv[2]))]
print("ready", flush=True)
sys.stdin.read()
"""


def identity_micro(conns: int = 64) -> dict:
    """The identity check's own steps, timed in this process (min of repeats: what the code costs, not what
    the shared machine did meanwhile): a client process holding `conns` loopback connections, as wrk does."""
    import hmac as _hmac
    import timeit
    from workers.peer_socket import SockDiag
    from workers.socket_owners import SocketOwners
    from workers.tree_proof import FdHints, socket_in_tree

    srv = socket.create_server(("127.0.0.1", 0), backlog=conns + 8)
    owners, child_owners = SocketOwners(ttl=3600), SocketOwners(ttl=3600)  # timed for the reads, not for expiry
    holder = subprocess.Popen([str(PYTHON), "-c", HOLDER, str(srv.getsockname()[1]), str(conns)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, preexec_fn=die_with_us)
    try:
        holder.stdout.readline()
        accepted = [srv.accept()[0] for _ in range(conns)]
        diag = SockDiag()
        peers = [diag.peer_of(c) for c in accepted]
        target = peers[conns // 2].inode

        def best(fn, number: int = 200) -> float:
            return min(timeit.repeat(fn, number=number, repeat=15)) / number * 1e6

        hints = FdHints()
        found = socket_in_tree(target, [holder.pid], holder.pid, owners=owners)

        def hinted() -> None:
            hints.freed(*found)  # as if its previous connection had closed there
            socket_in_tree(target, [holder.pid], holder.pid, hints=hints, owners=owners)

        other = peers[conns // 2 + 1]
        proven = {("agent", 1)}
        secret = "x" * 43
        return {
            "conns": conns,
            "sock_diag_us": best(lambda: diag.peer_of(accepted[0])),
            "tree_scan_us": best(lambda: socket_in_tree(target, [holder.pid], holder.pid, owners=owners)),
            "tree_hinted_us": best(hinted),
            # found under a descendant
            "tree_child_us": best(lambda: socket_in_tree(target, [os.getpid()], os.getpid(), owners=child_owners)),
            # A full read that records every socket it sees, and a later connection of the same process found in it.
            "tree_recording_us": best(lambda: recording_read(target, holder.pid)),
            "tree_recalled_us": recalled_us(target, other, holder.pid, best),
            "cached_us": best(lambda: ("agent", 1) in proven, number=100_000),
            "secret_us": best(lambda: _hmac.compare_digest(secret.encode("utf-8", "surrogateescape"), secret.encode()), number=100_000),
        }
    finally:
        owners.close()
        child_owners.close()
        holder.stdin.close()
        holder.wait(10)
        srv.close()


RECONNECTOR = r"""
import selectors, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
sel = selectors.DefaultSelector()
def connect():
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"x")
    sel.register(s, selectors.EVENT_READ)
for _ in range(n):
    connect()
while True:
    for key, _ in sel.select():
        if not key.fileobj.recv(16):
            sel.unregister(key.fileobj)
            key.fileobj.close()
            connect()
"""


def proof_cost(conns: int, seconds: float = 4.0) -> dict:
    """A client keeping `conns` connections open, each replaced as soon as the server closes it (wrk's pattern
    with a connection per request); the server proves every new one as the HTTP worker does and times only
    the proof, in this thread's CPU time: what a tree proof costs per connection at that concurrency."""
    from workers.peer_socket import SockDiag
    from workers.socket_owners import SocketOwners
    from workers.tree_proof import FdHints, socket_in_tree

    srv = socket.create_server(("127.0.0.1", 0), backlog=conns + 64)
    client = subprocess.Popen([str(PYTHON), "-c", RECONNECTOR, str(srv.getsockname()[1]), str(conns)], preexec_fn=die_with_us)
    diag, hints, owners = SockDiag(), FdHints(), SocketOwners()
    proofs = recalled = 0
    cpu = 0.0
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            conn, _ = srv.accept()
            conn.recv(1)
            peer = diag.peer_of(conn)
            t0 = time.thread_time()
            held = owners.holder(peer.inode, peer.uid, [client.pid], client.pid)
            recalled += held is not None
            held = held or socket_in_tree(peer.inode, [client.pid], client.pid, hints=hints, owners=owners)
            if held is not None:
                hints.taken(*held)
            cpu += time.thread_time() - t0
            proofs += 1
            conn.close()
            t0 = time.thread_time()
            if held is not None:
                hints.freed(*held, peer.inode)
            owners.forget(peer.inode)
            cpu += time.thread_time() - t0
    finally:
        client.kill()
        client.wait()
        owners.close()
        diag.close()
        srv.close()
    return {"conns": conns, "seconds": seconds, "proofs": proofs, "recalled": recalled, "links_read": owners.links_read,
            "cpu_us": cpu / max(1, proofs) * 1e6}


def recording_read(target: int, pid: int) -> None:
    from workers.socket_owners import SocketOwners
    from workers.tree_proof import socket_in_tree

    owners = SocketOwners()
    socket_in_tree(target, [pid], pid, owners=owners)
    owners.close()


def recalled_us(target: int, other, pid: int, best) -> float:
    """A connection proven by what the read for another connection of the same process recorded."""
    from workers.socket_owners import SocketOwners
    from workers.tree_proof import socket_in_tree

    owners = SocketOwners(ttl=3600)  # timed for the lookup, not for how long a record lasts
    try:
        socket_in_tree(target, [pid], pid, owners=owners)
        assert owners.holder(other.inode, other.uid, [pid], pid) is not None
        return best(lambda: owners.holder(other.inode, other.uid, [pid], pid), number=2000)
    finally:
        owners.close()


def identity_cost(runs: list[dict]) -> list[tuple[str, float, float, float]]:
    """(label, worker CPU µs per heartbeat, baseline µs, cost %) for every run with the check on, against the
    same load with it off. Cost is the extra worker CPU per heartbeat, i.e. the throughput a saturated worker
    loses: 1 - baseline/µs."""
    base = {r["closing"]: r["cpu_us"] for r in runs if not r["verify"] and r.get("cpu_us")}
    return [(r["label"], r["cpu_us"], base[r["closing"]], 100.0 * (1 - base[r["closing"]] / r["cpu_us"]))
            for r in runs if r["verify"] and r["closing"] in base and r.get("cpu_us")]


def print_http(h: dict) -> None:
    y = h["yardstick"]
    d = h["delta"]
    print(f"\nHTTP, heartbeat.http.processes {h['processes']}: applied {h['applied']:,} = {h['applied_per_s']:,.0f}/s "
          f"(wrk {h['wrk']['rps']:,.0f} req/s, p50 {h['wrk']['p50']:.2f} ms, p99 {h['wrk']['p99']:.2f} ms, non-2xx {h['wrk']['non2xx']}, "
          f"{h['wrk']['socket_errors'] or 'no socket errors'})")
    print(f"  answered 200: {h['answered_200']:,}; lost: {h['lost']}; parent drops: "
          f"{ {k: d['parent'].get(k, 0) for k in PARENT_DROPS} }; respawned workers: {d['respawned'] or 'none'}")
    print(f"  yardstick: {y['rps']:,.0f} req/s, p50 {y['p50']:.2f} ms, p99 {y['p99']:.2f} ms, non-2xx {y['non2xx']} -> x yard {h['x_yard']:.2f}")
    print(f"  CPU % of one core: {fmt_cpu(h['cpu_pct'])}; yardstick run: {fmt_cpu(y['cpu_pct'])}; load {h['load_start']:.2f} -> {h['load_end']:.2f}", flush=True)


def print_socket(s: dict) -> None:
    d = s["delta"]["heartbeat_unix"]
    print(f"\nUnix socket: sent {s['sent']:,} ({s['sent_per_s']:,.0f}/s), worker received {d.get('received', 0):,} accepted "
          f"{d.get('accepted', 0):,} dropped {d.get('dropped', 0):,}; parent applied {s['applied']:,}; "
          f"steady applied rate {s['applied_per_s']:,.0f}/s; unaccounted {s['unaccounted']}; drained in {s['drain_s']:.1f} s")
    print(f"  rejected: { {k: v for k, v in d.items() if k.startswith('rejected_') and v} }; client errors {s['client_errors']}")
    print(f"  CPU % of one core: {fmt_cpu(s['cpu_pct'])}; load {s['load_start']:.2f} -> {s['load_end']:.2f}", flush=True)


def print_parent(pc: dict) -> None:
    print(f"\nParent capacity: applied {pc['applied_in_window']:,} in {pc['window_s']:.1f} s = {pc['applied_per_s']:,.0f}/s "
          f"(batches of {pc['batch']}, {pc['bytes_per_heartbeat']:.0f} bytes per heartbeat); drops {pc['drops']}")
    print(f"  CPU % of one core: {fmt_cpu(pc['cpu_pct'])}; this script {pc['bench_cpu_pct']:.0f} %; load {pc['load_start']:.2f} -> {pc['load_end']:.2f}", flush=True)


def print_full(f: dict) -> None:
    print(f"\nFull load {f['seconds']:g} s: applied {f['applied']:,} ({f['applied_per_s']:,.0f}/s); HTTP p50 {f['wrk']['p50']:.2f} ms "
          f"p99 {f['wrk']['p99']:.2f} ms non-2xx {f['wrk']['non2xx']}; answered 200 {f['answered_200']:,}; socket sent {f['sent']:,}")
    print(f"  CPU % of one core: {fmt_cpu(f['cpu_pct'])}")
    print(f"  {'process':<18} {'idle':>7} {'start':>7} {'5 s':>7} {'max':>7} {'end':>7} {'end vs 5 s':>11} {'trend':>8}")
    for name, x in f["rss"].items():
        print(f"  {name:<18} {mib(x['idle']):>7} {mib(x['start']):>7} {mib(x['warm']):>7} {mib(x['max']):>7} {mib(x['end']):>7} "
              f"{fmt_pct(pct_change(x['warm'], x['end'])):>11} {fmt_pct(x.get('trend_pct')):>8}")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds per HTTP and socket run (default 60)")
    parser.add_argument("--connections", type=int, default=64, help="wrk keep-alive connections (default 64)")
    parser.add_argument("--agents", type=int, default=50, help="/bin/sleep agents the HTTP bodies rotate over (default 50)")
    parser.add_argument("--socket-agents", type=int, default=4, help="agents that are socket load clients (default 4)")
    parser.add_argument("--socket-conns", type=int, default=4, help="connections per socket client (default 4)")
    parser.add_argument("--rss-seconds", type=float, default=60.0, help="length of the full-load RSS run (default 60)")
    parser.add_argument("--http-processes", default="1,2", help="heartbeat.http.processes values, one agentd each (default 1,2)")
    parser.add_argument("--phases", default="http,socket,full,parent,identity", help="subset of http,socket,full,parent,identity")
    parser.add_argument("--parent-seconds", type=float, default=15.0, help="length of the parent-capacity run (default 15)")
    parser.add_argument("--identity-seconds", type=float, default=10.0, help="length of each sender-identity run (default 10)")
    parser.add_argument("--identity-repeats", type=int, default=3, help="interleaved rounds per sender-identity mode (default 3)")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="sender identity phase: do not pin the HTTP worker to CPU 0 and the rest to the last CPU")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/performance.md")
    parser.add_argument("--json", type=Path, help="also write the raw results as JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temp dirs (configs, agentd.log, wrk output)")
    parser.add_argument("--from-json", type=Path, help="no run: render (and write, unless --no-docs) the results a --json run saved")
    parser.add_argument("--socket-client", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--yardstick", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.socket_client is not None:
        return socket_client(args.socket_client)
    if args.yardstick:
        return yardstick_serve()

    sys.path.insert(0, str(ROOT))
    if args.from_json is not None:
        block = render(json.loads(args.from_json.read_text()))
        print(block)
        if not args.no_docs:
            print(f"\nwrote {write_docs(block)}", file=sys.stderr)
        return 0
    args.http_processes = [int(x) for x in args.http_processes.split(",")]
    phases = set(args.phases.split(","))
    if not AGENTD.exists() or not shutil.which("wrk"):
        print("needs .venv (make test once) and wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    if "http" in phases and subprocess.run([str(PYTHON), "-c", "import uvicorn, httptools, uvloop"], capture_output=True).returncode:
        # Checked before the first run, not when the yardstick starts minutes into it.
        print(f"the yardstick needs uvicorn in {VENV_BIN.parent}: {PYTHON} -m pip install uvicorn httptools uvloop", file=sys.stderr)
        return 2
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0].split(" [")[0]
    result: dict = {
        "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "kernel": platform.release(), "python": platform.python_version(),
                    "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "load_start": loadavg(), "wrk": wrk_version},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "command": "python bench/heartbeat_load.py " + " ".join(sys.argv[1:]),
        "http": [],
    }

    def on_signal(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    code = 0
    tmp_parent = Path("/tmp")
    dirs: list[Path] = []
    try:
        if phases - {"identity"}:
            for processes in args.http_processes:
                run_daemon(args, processes, tmp_parent, phases, dirs, result)
        if "identity" in phases:
            identity_phase(args, tmp_parent, dirs, result)
    except KeyboardInterrupt as exc:
        print(f"\ninterrupted ({exc or 'SIGINT'}); cleaned up", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"heartbeat_load: {exc}", file=sys.stderr)
        code = 1
    except Exception as exc:  # noqa: BLE001 - report, after cleanup already ran in run_daemon's finally
        print(f"heartbeat_load: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
    if result.get("cleanup_problems"):
        print(f"cleanup problems: {result['cleanup_problems']}", file=sys.stderr)
        code = code or 1
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    if result["http"] or result.get("socket"):
        block = render(result)
        print("\n" + block)
        if not args.no_docs and code == 0:
            print(f"\nwrote {write_docs(block)}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
