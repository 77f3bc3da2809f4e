"""Issue 10's fault matrix: agentd's own trouble never costs an agent its life.

Each test puts real agentd, real workers and real agents through one numbered break of the issue and
asserts the same things: no agent lost, no duplicate process, no restart caused by agentd's own trouble,
no corrupt file, and every refusal a one-line message. What the operator sees for each fault is in
docs/operations.md ("When agentd itself is in trouble").
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support.daemon import ROOT, TAG_VAR, processes_tagged
from tests.support.wait import read_markers, wait_until

FAST = {"interval": 0.3, "heartbeat_timeout": "3s", "startup_grace": "5s"}
WALLCLOCK_SHIM = Path(__file__).resolve().parents[1] / "support" / "wallclock"


def _judged(agentd):
    return agentd.workers()["health"]["counters"].get("judged", 0)


def _heartbeating_agents(agentd):
    return [
        agentd.helper_agent("h", "heartbeat-http", "--interval", "0.2", health_check=FAST),
        agentd.helper_agent("s", "heartbeat-socket", "--interval", "0.2", health_check=FAST),
        agentd.helper_agent("q", "well-behaved"),  # no heartbeats: judged by its process only
    ]


def _settle(agentd, ids):
    for agent_id in ids:
        agentd.wait_state(agent_id, "running")
    wait_until(lambda: all(agentd.status(a)["health"] == "healthy" for a in ids), timeout=40, message="all healthy")
    wait_until(lambda: all(w["state"] == "running" and w["last_beat_age_s"] is not None for w in agentd.workers().values()),
               timeout=30, message="every worker beating")
    return {a: agentd.status(a)["pid"] for a in ids}, {n: w["pid"] for n, w in agentd.workers().items()}


def _only_agents(agentd, pids):
    """Exactly these agent processes, no second copy. Polled: a process agentd has forked but not yet exec'd
    (a worker) still has agentd's environment and looks like an agent for a moment."""
    want = sorted(pids)
    wait_until(lambda: sorted(agentd.agent_pids()) == want, timeout=15, message=f"agent processes exactly {want} (a second copy?)")


def _assert_nothing_lost(agentd, pids, worker_pids, judged_rounds=15):
    """After the fault: the health worker judges many more rounds, and nobody paid for agentd's trouble."""
    judged = _judged(agentd)
    wait_until(lambda: _judged(agentd) >= judged + judged_rounds, timeout=60, message=f"{judged_rounds} more judgements")
    for agent_id, pid in pids.items():
        st = agentd.status(agent_id)
        assert (st["state"], st["pid"], st["restarts"]) == ("running", pid, 0), (st, agentd.log_text()[-4000:])
    workers = agentd.workers()
    for name, pid in worker_pids.items():
        assert (workers[name]["pid"], workers[name]["restarts"]) == (pid, 0), (name, workers[name], agentd.log_text()[-4000:])
    # No duplicates: exactly one process per agent (these agents have no children).
    _only_agents(agentd, pids.values())


# ----------------------------------------------------------------------------- break 1: a stalled parent


def test_break1_parent_stopped_20s_restarts_no_agent_and_kills_no_worker(agentd):
    agentd.extra = {"resources": {"interval": 0.5}}
    agentd.write_config(_heartbeating_agents(agentd))
    agentd.start()
    pids, worker_pids = _settle(agentd, ["h", "s", "q"])
    os.kill(agentd.proc.pid, signal.SIGSTOP)  # a VM pause, a swap storm, a blocked disk
    try:
        # The fault lasts 20 s: far past heartbeat_timeout (3 s) and the workers' silence limit (10 s). The
        # health worker keeps judging meanwhile, on heartbeat times the frozen parent no longer publishes.
        time.sleep(20)
    finally:
        os.kill(agentd.proc.pid, signal.SIGCONT)
    _assert_nothing_lost(agentd, pids, worker_pids)
    assert "agentd was stalled for" in agentd.log_text()  # what the operator sees
    assert agentd.call("workers")["parent"].get("stalls", 0) >= 1


# ----------------------------------------------------------------------------- break 2: wall-clock steps


def test_break2_wall_clock_step_an_hour_ahead_restarts_nobody(agentd, monkeypatch):
    """The machine's clock is not stepped (other tests share the box): every agentd process and every agent
    runs with tests/support/wallclock, which moves time.time() by the offset in a file while the monotonic
    clock runs on, as an NTP step does."""
    offset = agentd.base / "wall-offset"
    offset.write_text("0")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(WALLCLOCK_SHIM), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("AGENTD_TEST_WALL_OFFSET_FILE", str(offset))
    agentd.extra = {"resources": {"interval": 0.5}}
    agentd.write_config(_heartbeating_agents(agentd))
    agentd.start()
    pids, worker_pids = _settle(agentd, ["h", "s", "q"])
    offset.write_text("3606")  # more than heartbeat_timeout, as in the issue
    _assert_nothing_lost(agentd, pids, worker_pids)
    offset.write_text("-3600")  # and back past where it was
    _assert_nothing_lost(agentd, pids, worker_pids)


# ----------------------------------------------------------------------------- break 4: run_dir removed


def _refusal(proc: subprocess.CompletedProcess) -> str:
    """The one line agentd prints when it refuses to start (the config's log_level debug adds others)."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("agentd: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _second_agentd(agentd, config_path=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "supervisor.parent.agentd_cli", "run", "-c", str(config_path or agentd.config_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env=dict(os.environ, **{TAG_VAR: agentd.tag}),
    )


def test_break4_second_agentd_refuses_after_rm_rf_run_dir_naming_the_first(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    agentd.start()
    pid = agentd.wait_state("a", "running")["pid"]
    shutil.rmtree(agentd.run_dir)
    second = _second_agentd(agentd)
    assert second.returncode == 1, second.stderr
    assert _refusal(second).startswith(f"agentd: agentd is already running (pid {agentd.proc.pid}) with run_dir"), second.stderr
    assert not agentd.run_dir.exists(), "the refused agentd touched run_dir"
    _only_agents(agentd, [pid])
    assert agentd.proc.poll() is None
    # Another config with its own run_dir but the same data_dir is refused the same way.
    other = agentd.base / "other.yaml"
    doc = yaml.safe_load(agentd.config_path.read_text())
    doc["daemon"]["run_dir"] = str(agentd.base / "run2")
    other.write_text(yaml.safe_dump(doc))
    second = _second_agentd(agentd, other)
    assert second.returncode == 1 and f"(pid {agentd.proc.pid}) with data_dir" in _refusal(second), second.stderr
    _only_agents(agentd, [pid])


# ----------------------------------------------------------------------------- break 11: no restart floor


def test_break11_zero_backoff_unlimited_retries_is_floored_and_rate_limited(agentd):
    agentd.write_config([agentd.helper_agent("crashy", "crash-on-start",
                                             restart={"backoff_steps": ["0s"], "max_retries": 0, "start_limit_burst": 5})])
    began = time.monotonic()
    agentd.start()
    st = agentd.wait_state("crashy", "failed", timeout=60)
    elapsed = time.monotonic() - began
    starts = [m for m in read_markers(agentd.marker("crashy")) if m[0] == "START"]
    assert len(starts) == 6, starts  # the first start and 5 automatic ones, then the limit
    assert elapsed >= 5.0, f"6 starts in {elapsed:.1f}s: the 1 s floor was not kept"
    assert "5 automatic starts within 60s (restart.start_limit_burst 5)" in st["reason"], st


# ----------------------------------------------------------------------------- break 7: lost metadata


def _metadata_path(agentd, agent_id):
    return agentd.data_dir / "metadata" / f"{agent_id}.json"


def _recorded(agentd, agent_id, pid):
    def ok():
        try:
            return json.loads(_metadata_path(agentd, agent_id).read_text()).get("pid") == pid
        except (OSError, ValueError):
            return False
    wait_until(ok, timeout=20, message=f"metadata of {agent_id} naming pid {pid}")


def test_break7_corrupt_or_missing_metadata_adopts_the_live_copy_instead_of_a_second(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved"), agentd.helper_agent("b", "fork-children", "--children", "2")])
    agentd.start()
    pids = {i: agentd.wait_state(i, "running")["pid"] for i in ("a", "b")}
    wait_until(lambda: len([m for m in read_markers(agentd.marker("b")) if m[0] == "CHILD"]) == 2, timeout=20)
    for agent_id, pid in pids.items():
        _recorded(agentd, agent_id, pid)
    before = sorted(agentd.agent_pids())
    agentd.kill9()
    _metadata_path(agentd, "a").write_text('{"id": "a", "pid": ')  # torn by a crash, or a disk error
    _metadata_path(agentd, "b").unlink()  # or lost outright
    agentd.start()
    for agent_id, pid in pids.items():
        st = agentd.wait_state(agent_id, "running")
        assert (st["pid"], st["restarts"]) == (pid, 0), st
    _only_agents(agentd, before)
    assert all(len([m for m in read_markers(agentd.marker(i)) if m[0] == "START"]) == 1 for i in pids)
    assert "carries its identity; adopted it instead of starting a second copy" in agentd.log_text()
    assert list((agentd.data_dir / "metadata").glob("a.json.corrupt-*")), "the torn file was not set aside"
    # Adopted by identity, it is supervised like any other agent.
    os.kill(pids["a"], signal.SIGKILL)
    st = wait_until(lambda: (s := agentd.status("a"))["pid"] not in (None, pids["a"]) and s["state"] == "running" and s, timeout=30)
    assert len([p for p in agentd.agent_pids() if p == st["pid"]]) == 1


def test_break7_stale_metadata_after_an_unwritable_data_dir_finds_the_newer_process(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    agentd.start()
    first = agentd.wait_state("a", "running")["pid"]
    _recorded(agentd, "a", first)
    stale = _metadata_path(agentd, "a").read_text()  # what a data_dir that stopped taking writes keeps
    os.kill(first, signal.SIGKILL)
    second = wait_until(lambda: (s := agentd.status("a"))["pid"] not in (None, first) and s["state"] == "running" and s["pid"], timeout=30)
    agentd.kill9()
    _metadata_path(agentd, "a").write_text(stale)
    agentd.start()
    st = agentd.wait_state("a", "running")
    assert st["pid"] == second, st
    _only_agents(agentd, [second])


# ----------------------------------------------------------------------------- break 6: crash mid-change


def test_break6_kill9_during_a_reload_restart_applies_the_change_on_readoption(agentd):
    # The old process ignores the first SIGTERM, so the reload's restart is still under way when agentd dies.
    agent = agentd.helper_agent("a", "well-behaved", "--ignore-terms", "1", "--after", "1", stop_timeout=120)
    agentd.write_config([agent])
    agentd.start()
    old = agentd.wait_state("a", "running")["pid"]
    wait_until(lambda: read_markers(agentd.marker("a")), timeout=10)
    agent["args"] = [*agent["args"][:-2], "--after", "2"]  # a changed argument
    agentd.write_config([agent])
    agentd.call("reload")
    wait_until(lambda: json.loads(_metadata_path(agentd, "a").read_text())["status"] == "stopping", timeout=20)
    agentd.kill9()
    assert agentd.agent_pids() == [old]
    agentd.start()
    st = wait_until(lambda: (s := agentd.status("a"))["pid"] not in (None, old) and s["state"] == "running" and s, timeout=60,
                    message="the change applied")
    cmdline = open(f"/proc/{st['pid']}/cmdline", "rb").read().split(b"\0")
    assert cmdline[-3:-1] == [b"--after", b"2"], cmdline
    _only_agents(agentd, [st["pid"]])
    assert "was started with another args than the configuration says" in agentd.log_text()
    plan = agentd.call("reload", {"dry_run": True})["plan"]
    assert plan["changed"] == [] and plan["added"] == [] and plan["removed"] == []


# ----------------------------------------------------------------------------- breaks 8 and 9: secrets


def test_break8_no_secret_on_any_command_line(agentd):
    token = "tok-" + agentd.tag
    agentd.write_config([agentd.helper_agent("a", "well-behaved")], manager_api={"listen": "127.0.0.1:0", "token": token})
    agentd.start()
    agentd.wait_state("a", "running")
    wait_until(lambda: (w := agentd.workers()["manager-api"])["state"] == "running" and w["last_beat_age_s"] is not None,
               timeout=30, message="manager-api worker up (it read its settings)")
    for pid in processes_tagged(agentd.tag):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        assert token.encode() not in cmdline and b"--settings\0" not in cmdline, cmdline


def test_break9_manager_api_without_token_is_refused_on_loopback_too(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved", user="no-such-user-x")], manager_api={"listen": "127.0.0.1:9000"})
    checked = subprocess.run([sys.executable, "-m", "supervisor.parent.agentd_cli", "check-config", str(agentd.config_path)],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 1
    lines = checked.stderr.strip().splitlines()
    assert len(lines) == 1 and "manager_api.listen: '127.0.0.1:9000' has neither a token nor TLS" in lines[0], checked.stderr
    agentd.write_config(manager_api={"listen": "127.0.0.1:9000", "token": "t"})
    checked = subprocess.run([sys.executable, "-m", "supervisor.parent.agentd_cli", "check-config", "-q", str(agentd.config_path)],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0
    assert "warning: agent a: user 'no-such-user-x' does not exist on this machine" in checked.stderr, checked.stderr


# ----------------------------------------------------------------------------- break 10: paths trusted blindly

NOBODY = 65534


def _run_agentd_once(agentd, **daemon) -> subprocess.CompletedProcess:
    """Start agentd on a config with these daemon settings and return when it exits (refusals are immediate)."""
    doc = yaml.safe_load(agentd.config_path.read_text())
    doc["daemon"].update({k: str(v) for k, v in daemon.items()})
    path = agentd.base / "other.yaml"
    path.write_text(yaml.safe_dump(doc))
    return _second_agentd(agentd, path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own directories as another user")
def test_break10_directories_another_user_controls_are_refused_in_one_line(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    theirs = agentd.base / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    refused = _run_agentd_once(agentd, run_dir=theirs)
    assert refused.returncode == 1 and "daemon.run_dir" in _refusal(refused) and "is owned by" in _refusal(refused)
    open_to_all = agentd.base / "open"
    open_to_all.mkdir()
    os.chmod(open_to_all, 0o777)
    refused = _run_agentd_once(agentd, data_dir=open_to_all)
    assert refused.returncode == 1 and "daemon.data_dir" in _refusal(refused) and "world-writable (mode 0777)" in _refusal(refused)
    assert not agentd.agent_pids()
    # A shared run_dir of ours keeps its mode (and sticky bit): agentd never chmods an existing directory.
    agentd.run_dir.mkdir(exist_ok=True)
    os.chmod(agentd.run_dir, 0o1770)
    agentd.start()
    agentd.wait_state("a", "running")
    assert oct(os.stat(agentd.run_dir).st_mode & 0o7777) == oct(0o1770)


def test_break10_planted_pid_file_symlink_is_not_followed(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    victim = agentd.base / "victim"
    victim.write_text("precious\n")
    agentd.run_dir.mkdir()
    (agentd.run_dir / "agentd.pid").symlink_to(victim)
    refused = _second_agentd(agentd)
    assert refused.returncode == 1 and "agentd.pid is a symbolic link; agentd does not follow it" in _refusal(refused)
    assert victim.read_text() == "precious\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the chown happens only for agents with a user")
def test_break10_work_dir_symlink_is_not_followed_by_chown(agentd):
    target = agentd.base / "etc-like"
    target.mkdir()
    link = agentd.base / "work-link"
    link.symlink_to(target)
    agentd.write_config([agentd.helper_agent("a", "well-behaved", user="nobody", work_dir=str(link))])
    agentd.start()
    wait_until(lambda: agentd.status("a")["state"] in ("running", "failed"), timeout=30)
    assert os.stat(target).st_uid == 0, "root chowned the symlink's target to the agent's user"


def test_break10_heartbeat_socket_of_another_agentd_or_a_plain_file_is_never_removed(agentd):
    shared = agentd.base / "hb.sock"
    agentd.write_config([agentd.helper_agent("s", "heartbeat-socket", "--interval", "0.2", health_check=FAST)],
                        heartbeat={"unix": {"path": str(shared)}})
    agentd.start()
    agentd.wait_state("s", "running")
    other = {k: agentd.base / f"{k}2" for k in ("run_dir", "data_dir", "log_dir")}
    refused = _run_agentd_once(agentd, **other)
    assert refused.returncode == 1 and f"another process (pid {agentd.proc.pid}) is listening on it" in _refusal(refused), refused.stderr
    assert shared.is_socket()
    hb = agentd.status("s")["heartbeat_age_s"]
    wait_until(lambda: (agentd.status("s")["heartbeat_age_s"] or 99) < 1, timeout=10, message=f"heartbeats still flowing ({hb})")
    plain = agentd.base / "plain"
    plain.write_text("not a socket\n")
    doc = yaml.safe_load(agentd.config_path.read_text())
    doc["heartbeat"]["unix"]["path"] = str(plain)
    doc["daemon"].update({k: str(v) for k, v in other.items()})
    (agentd.base / "plain.yaml").write_text(yaml.safe_dump(doc))
    refused = subprocess.run([sys.executable, "-m", "supervisor.parent.agentd_cli", "run", "-c", str(agentd.base / "plain.yaml")],
                             cwd=ROOT, capture_output=True, text=True, timeout=60, env=dict(os.environ, **{TAG_VAR: agentd.tag}))
    assert refused.returncode == 1 and "exists and is not a socket; agentd does not remove it" in refused.stderr, refused.stderr
    assert plain.read_text() == "not a socket\n"


# ----------------------------------------------------------------------------- break 12: the smaller items


def test_break12_history_db_not_world_readable_and_deep_metadata_set_aside(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved"), agentd.helper_agent("deep", "well-behaved")])
    (agentd.data_dir / "metadata").mkdir(parents=True)
    os.chmod(agentd.data_dir, 0o750)
    (agentd.data_dir / "metadata" / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    agentd.start()
    agentd.wait_state("a", "running")
    agentd.wait_state("deep", "running")
    assert list((agentd.data_dir / "metadata").glob("deep.json.corrupt-*"))
    db = agentd.data_dir / "history.db"
    wait_until(db.exists, timeout=20)
    assert os.stat(db).st_mode & 0o007 == 0, oct(os.stat(db).st_mode)


# ----------------------------------------------------------------------------- break 5: control flood


def test_break5_control_flood_gets_busy_bounded_memory_and_costs_no_agent(agentd):
    import threading
    import uuid

    import psutil
    import zmq

    agentd.extra = {"resources": {"interval": 0.5}}
    agentd.write_config(_heartbeating_agents(agentd))
    agentd.start()
    pids, worker_pids = _settle(agentd, ["h", "s", "q"])
    parent = psutil.Process(agentd.proc.pid)
    rss_before = parent.memory_info().rss
    stop, replies, peak = threading.Event(), {"busy": 0, "ok": 0}, [0]

    def flood() -> None:
        ctx = zmq.Context()
        socks = [ctx.socket(zmq.DEALER) for _ in range(4)]
        try:
            for sock in socks:
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.SNDHWM, 100_000)
                sock.connect(f"ipc://{agentd.run_dir / 'control.ipc'}")
            big = "x" * 200_000  # large arguments cost parsing and memory, and are refused as bad requests
            while not stop.is_set():
                for sock in socks:
                    for verb, args in (("events", {"after": 10**9, "wait": 30}), ("ping", {}), ("status", {"ids": [big]})):
                        msg = {"v": 1, "id": uuid.uuid4().hex[:16], "verb": verb, "args": args}
                        try:
                            sock.send(json.dumps(msg).encode(), zmq.NOBLOCK)
                        except zmq.Again:
                            pass
                    while sock.poll(0):
                        reply = json.loads(sock.recv())
                        replies["busy" if (reply.get("error") or {}).get("code") == "busy" else "ok"] += 1
                peak[0] = max(peak[0], parent.memory_info().rss)
        finally:
            ctx.destroy(linger=0)

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        deadline = time.monotonic() + 15
        slowest = 0.0
        while time.monotonic() < deadline:
            began = time.monotonic()
            result = agentd.agentctl("status", timeout=30)  # another client: it is answered during the flood
            slowest = max(slowest, time.monotonic() - began)
            assert result.returncode in (0, 1), result.stderr
            assert result.returncode == 0 or "busy" in result.stderr, result.stderr
    finally:
        stop.set()
        flooder.join(30)
    assert replies["busy"] > 0, replies
    assert peak[0] - rss_before < 150 * 1024 * 1024, f"parent grew by {(peak[0] - rss_before) >> 20} MiB under the flood"
    assert slowest < 10, f"agentctl status took {slowest:.1f}s during the flood"
    _assert_nothing_lost(agentd, pids, worker_pids)
    assert agentd.call("workers")["parent"]["control_busy"] > 0


# ----------------------------------------------------------------------------- break 3: a full log disk


@pytest.fixture
def small_log_fs(agentd):
    """log_dir on a 16 MiB tmpfs of the test's own, so it can be filled without touching anyone else's disk."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs for log_dir")
    agentd.log_dir.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0750", "tmpfs", str(agentd.log_dir)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield agentd.log_dir
    finally:
        agentd.cleanup()  # agents and agentd hold files on it
        subprocess.run(["umount", "-l", str(agentd.log_dir)], capture_output=True)


def test_break3_full_log_disk_truncates_in_place_promptly_and_recovers(agentd, small_log_fs):
    agentd.write_config([
        agentd.helper_agent("flood", "spew-output", "--rate", "20000", log={"max_size": "2MiB", "keep": 3, "compress": False}),
        agentd.helper_agent("quiet", "spew-output", "--rate", "20", log={"max_size": "2MiB", "keep": 3, "compress": False}),
    ])
    filler = small_log_fs / "filler"
    filler.write_bytes(b"\0" * (12 << 20))  # what is left cannot hold a live file plus its rotated copy
    agentd.start()
    pids = {i: agentd.wait_state(i, "running")["pid"] for i in ("flood", "quiet")}

    def truncated():
        return [e for e in agentd.call("events", {"ids": ["flood"]})["events"] if "truncated in place" in e["reason"]]
    wait_until(truncated, timeout=60, message="an event saying the flood's log was truncated in place")
    flood_log = small_log_fs / "flood" / "agent.log"
    quiet_log = small_log_fs / "quiet" / "agent.log"
    # The cap holds within about a second of output (20,000 lines/s of ~100 bytes is ~2 MiB/s).
    for _ in range(10):
        assert flood_log.stat().st_size < 8 << 20
        time.sleep(0.3)
    # The other agent keeps logging on the same disk.
    size = quiet_log.stat().st_size
    wait_until(lambda: quiet_log.stat().st_size > size or quiet_log.stat().st_size < size, timeout=20, message="quiet agent still logging")
    # Space comes back: rotation copies again, with nothing for the operator to do.
    filler.unlink()
    wait_until(lambda: (small_log_fs / "flood" / "agent.log.1").exists(), timeout=30, message="a normal rotation after recovery")
    for agent_id, pid in pids.items():
        st = agentd.status(agent_id)
        assert (st["pid"], st["restarts"]) == (pid, 0), st


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs for data_dir")
def test_break12_first_start_on_a_full_data_dir_is_one_line(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    agentd.data_dir.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0750", "tmpfs", str(agentd.data_dir)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        filler = agentd.data_dir / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        refused = _second_agentd(agentd)
        assert refused.returncode == 1, refused.stderr
        assert "Traceback" not in refused.stderr
        assert "cannot store the node id" in _refusal(refused) and "No space left on device" in _refusal(refused)
        assert not agentd.agent_pids()
    finally:
        agentd.cleanup()
        subprocess.run(["umount", "-l", str(agentd.data_dir)], capture_output=True)
