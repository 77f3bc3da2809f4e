"""The health worker as a real process against a stand-in parent, judging real agent processes."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from pydantic import BaseModel

from supervisor.config.health_check import HealthCheck
from supervisor.wire.messages import (
    AgentView,
    HealthReport,
    HeartbeatTimes,
    ResourceSamples,
    Verdict,
    WorkerBeat,
)
from supervisor.wire.protocol import Request
from supervisor.wire.verbs import snapshot
from supervisor.wire.verbs import workers as workers_verb
from tests.support.processes import kill_tree
from tests.support.stand_in_parent import StandInParent
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
PUBLISH_EVERY = 0.2  # heartbeat times; the real parent publishes every second
FAST = {"interval": 0.5, "heartbeat_timeout": 1.0, "startup_grace": 1.0, "threshold_duration": 1.0}
BALLOON = "import time; x = b'x' * (100 << 20); open('{ready}', 'w').close(); time.sleep(120)"


class HealthParent(StandInParent):
    """Publishes HeartbeatTimes every PUBLISH_EVERY, keeping `fresh` agents current; answers snapshot and workers."""

    def __init__(self, run_dir: Path, agents: list[AgentView], last_heartbeat: dict[str, float], fresh: set[str]) -> None:
        self.fresh = fresh
        self._next_times = 0.0
        super().__init__(run_dir, agents, last_heartbeat=last_heartbeat)

    def on_round(self) -> None:
        if time.monotonic() < self._next_times:
            return
        # Fresh heartbeats for the well-behaved agents, numbered like the real feed.
        self._next_times = time.monotonic() + PUBLISH_EVERY
        with self.lock:
            self.last_heartbeat.update({a: time.time() for a in self.fresh})
            self.seq += 1
            msg = HeartbeatTimes(seq=self.seq, last_heartbeat=dict(self.last_heartbeat), last_heartbeat_mono=_mono(self.last_heartbeat))
        self.publish(msg)

    def snapshot(self) -> snapshot.Result:
        return super().snapshot().model_copy(update={"last_heartbeat_mono": _mono(self.last_heartbeat)})

    def answer(self, request: Request) -> BaseModel | dict:
        if request.verb == workers_verb.NAME:
            return {"workers": [], "parent": {}}
        return super().answer(request)

    def verdicts(self, agent_id: str) -> list[Verdict]:
        return [v for v in self.of(Verdict) if v.agent_id == agent_id]


_SHIFT = time.monotonic() - time.time()  # taken once: the same instant must map to the same number


def _mono(wall_times: dict[str, float]) -> dict[str, float]:
    """The same instants on the monotonic clock, which is what the judge's deadlines use."""
    return {k: t + _SHIFT for k, t in wall_times.items()}


def agent_view(agent_id: str, pid: int, started_at: float | None = None, **health) -> AgentView:
    proc = psutil.Process(pid) if psutil.pid_exists(pid) else None
    create_time = proc.create_time() if proc else time.time() - 1
    return AgentView(
        id=agent_id, type="custom", state="running", pid=pid, pgid=pid, create_time=create_time, generation=1,
        expects_heartbeat=health.get("heartbeat_timeout", 1.0) is not None, started_at=started_at or create_time,
        started_mono=_mono({"t": started_at or create_time})["t"],
        health_check=HealthCheck(**{**FAST, **health}).model_dump(mode="json"),
    )


def spawn(*argv: str) -> subprocess.Popen:
    return subprocess.Popen(list(argv), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world():
    run_dir = Path(tempfile.mkdtemp(prefix="hw-", dir="/tmp"))
    procs: list[subprocess.Popen] = []
    parent = worker = None
    # Accepts connections (the kernel does) but never answers: each check must run out its own timeout.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        sleeper = lambda: procs.append(spawn("sleep", "120")) or procs[-1].pid  # noqa: E731
        ready = run_dir / "balloon.ready"
        procs.append(spawn("sh", "-c", f'"{sys.executable}" -c "{BALLOON.format(ready=ready)}" & wait'))
        balloon = procs[-1].pid
        gone = subprocess.Popen(["true"])
        gone_view = agent_view("gone", gone.pid, heartbeat_timeout=None)
        gone.wait()  # exited and reaped: nothing of that process is left
        now = time.time()
        agents = [
            agent_view("good", sleeper()),
            agent_view("stale", sleeper(), started_at=now - 100),
            gone_view,
            agent_view("balloon", balloon, heartbeat_timeout=None, cpu_threshold=None, memory_threshold=50 * MIB),
            agent_view("web", sleeper(), heartbeat_timeout=None, http_endpoint=f"http://127.0.0.1:{closed_port()}/metrics", http_timeout=0.5),
            agent_view("hang", sleeper(), heartbeat_timeout=None, http_endpoint=f"http://127.0.0.1:{silent.getsockname()[1]}/", http_timeout=0.3,
                       endpoint_failures=1000),
            agent_view("op", sleeper()).model_copy(update={"operator_stopped": True, "state": "stopping"}),
        ]
        wait_until(ready.exists, timeout=30, message="the balloon's allocation")
        parent = HealthParent(run_dir, agents, {"stale": now - 50}, fresh={"good"})
        settings = json.dumps({"resources": {"interval": 0.5}, "history": {"retention": 60}})
        with open(run_dir / "worker.log", "wb") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "workers.health", "--run-dir", str(run_dir), "--settings", settings, "--log-level", "debug"],
                cwd=ROOT, stdout=out, stderr=out,
            )
        wait_until(lambda: parent.of(WorkerBeat), timeout=30, message="the worker's first beat")
        yield {"parent": parent, "worker": worker, "run_dir": run_dir, "agents": {a.id: a for a in agents}}
    finally:
        if worker is not None and worker.poll() is None:
            kill_tree(worker.pid)
            worker.wait()
        if parent is not None:
            parent.close()
        for proc in procs:
            kill_tree(proc.pid)
            proc.wait()
        silent.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def verdict_for(parent: HealthParent, agent_id: str, timeout: float = 8) -> Verdict:
    return wait_until(lambda: parent.verdicts(agent_id), timeout=timeout, message=f"a verdict for {agent_id}")[0]


def test_no_heartbeat_for_an_old_last_heartbeat(world):
    v = verdict_for(world["parent"], "stale")
    assert (v.verdict, v.generation, v.worker) == ("no_heartbeat", 1, "health")
    assert v.detail.startswith("no heartbeat for 5") and v.detail.endswith("(timeout 1 s)")


def test_dead_for_a_pid_that_exited(world):
    assert verdict_for(world["parent"], "gone").verdict == "dead"


def test_over_threshold_for_a_memory_balloon_child(world):
    v = verdict_for(world["parent"], "balloon")
    assert v.verdict == "over_threshold" and v.detail.startswith("rss 1") and "> 50 MiB for " in v.detail


def test_endpoint_failed_for_a_closed_port(world):
    v = verdict_for(world["parent"], "web")
    assert v.verdict == "endpoint_failed" and "failed 3 times in a row" in v.detail


def test_resource_samples_cover_agents_and_agentd(world):
    parent = world["parent"]

    def full_round():
        for msg in reversed(parent.of(ResourceSamples)):
            by_id = {s.agent_id: s for s in msg.samples}
            if "balloon" in by_id and by_id["balloon"].cpu is not None:
                return by_id
        return None

    by_id = wait_until(full_round, timeout=30, message="a second round of samples")
    assert by_id["balloon"].rss > 100 * MIB and by_id["balloon"].procs == 2 and by_id["balloon"].generation == 1
    assert by_id["good"].rss > 0 and by_id["gone"].procs == 0
    assert by_id["agentd/parent"].rss > 0 and by_id["agentd/parent"].generation is None
    assert by_id["agentd/health"].rss > 0 and by_id["agentd/health"].procs == 1
    assert "workers" in parent.requests


def test_health_report_says_healthy_for_a_well_behaved_agent(world):
    parent = world["parent"]
    verdict_for(parent, "web")  # by now every agent has been judged several times

    def latest():
        reports = parent.of(HealthReport)
        return reports[-1].agents if reports else None

    report = wait_until(latest, timeout=30)
    assert report["good"].health == "healthy" and report["good"].generation == 1
    assert report["op"].health == "operator_stopped"
    assert report["stale"].health == "no_heartbeat" and report["gone"].health == "dead"
    assert report["hang"].health == "healthy"  # failing, but endpoint_failures is far away
    assert not parent.verdicts("good") and not parent.verdicts("op") and not parent.verdicts("hang")


def test_each_verdict_once_and_counters(world):
    parent, worker = world["parent"], world["worker"]
    for agent_id in ("stale", "gone", "balloon", "web"):
        verdict_for(parent, agent_id)
    time.sleep(1.0)  # two more judging rounds
    assert {a: len(parent.verdicts(a)) for a in ("stale", "gone", "balloon", "web")} == {"stale": 1, "gone": 1, "balloon": 1, "web": 1}

    def counters():
        beats = [b for b in parent.of(WorkerBeat) if b.pid == worker.pid]
        c = beats[-1].counters if beats else {}
        return c if c.get("verdicts_endpoint_failed") else None

    c = wait_until(counters, timeout=30, message="counters with the endpoint verdict")
    assert c["judged"] > 10 and c["samples"] > 10 and c["sample_errors"] == 0
    assert c["verdicts_no_heartbeat"] == c["verdicts_dead"] == c["verdicts_over_threshold"] == 1
    assert c["endpoint_checks"] >= 4 and c["endpoint_failures"] >= 4


def test_sigterm_exits_zero(world):
    worker = world["worker"]
    assert worker.poll() is None
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    log = (world["run_dir"] / "worker.log").read_text()
    assert "Traceback" not in log, log
    assert log.count("stale (generation 1): no_heartbeat") == 1, log
