"""The zygote (docs/decisions.md, "Worker memory: a zygote"): workers it forks are the parent's children,
with their environment and descriptors; killed workers come back from it with their exit status; a dead
zygote leaves the pool spawning plain subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.daemon import is_zygote_forked
from tests.support.processes import pid_alive
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]

# Forks a zygote the way agentd does (single-threaded, before any ZeroMQ context), asks it for the probe
# with a memfd and a socket at fixed numbers, and reports what it saw of the child.
DRIVER = textwrap.dedent("""
    import ctypes, json, os, signal, socket, sys
    from supervisor.parent.zygote import fork_zygote, own_children
    out, code = sys.argv[1], sys.argv[2]
    zygote = fork_zygote()
    zygote.configure(["tests.support.zygote_probe"], "info", "text")
    memfd = os.memfd_create("probe-settings", os.MFD_CLOEXEC)
    os.write(memfd, b'{"token": "t"}')
    ours, theirs = socket.socketpair()
    env = {"PROBE": "yes", "AGENTD_PARENT_PID": str(os.getpid())}
    child = zygote.spawn("probe", "tests.support.zygote_probe", [out, str(memfd), str(theirs.fileno()), code], env,
                         (memfd, theirs.fileno()))
    ours.sendall(b"hello")
    echo = ours.recv(100).decode()
    status = child.wait(30)
    second = zygote.spawn("probe", "tests.support.zygote_probe", [out + ".2", str(memfd), str(theirs.fileno())], env,
                          (memfd, theirs.fileno()))
    second.kill()
    killed = second.wait(30)
    subreaper = ctypes.c_int(-1)
    ctypes.CDLL(None).prctl(37, ctypes.byref(subreaper), 0, 0, 0)  # PR_GET_CHILD_SUBREAPER
    print(json.dumps({"pid": child.pid, "status": status, "echo": echo, "killed": killed, "zygote": zygote.pid,
                      "subreaper": subreaper.value, "memfd": memfd, "sock": theirs.fileno(),
                      "children": sorted(own_children())}))
    zygote.close()
""")


def test_a_forked_worker_is_our_child_with_its_environment_descriptors_and_exit_status(tmp_path):
    out = tmp_path / "probe.json"
    run = subprocess.run([sys.executable, "-c", DRIVER, str(out), "7"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "NOTIFY_SOCKET": "/nonexistent/notify", "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr
    driver = json.loads(run.stdout.splitlines()[-1])
    probe = json.loads(out.read_text())
    assert probe["pid"] == driver["pid"]
    assert driver["status"] == 7  # read by the driver's own waitpid: the worker was its child
    assert driver["killed"] == -signal.SIGKILL
    assert probe["ppid"] != driver["zygote"] and probe["env"]["AGENTD_PARENT_PID"] == str(probe["ppid"])
    assert probe["env"] == {"PROBE": "yes", "AGENTD_PARENT_PID": str(probe["ppid"])}  # exactly what was asked: no NOTIFY_SOCKET
    assert probe["settings"] == '{"token": "t"}' and probe["message"] == "hello" and driver["echo"] == "echo:hello"
    # Exactly stdio and the two descriptors, at the numbers the parent named (the listdir adds its own).
    assert len(set(probe["fds"]) - {0, 1, 2, driver["memfd"], driver["sock"]}) == 1, probe["fds"]
    assert {driver["memfd"], driver["sock"]} <= set(probe["fds"])
    assert probe["comm"] == "agentd-probe" and probe["argv"][1:] == [str(out), str(driver["memfd"]), str(driver["sock"]), "7"]
    assert driver["subreaper"] == 0  # only for the length of a request
    assert driver["pid"] not in driver["children"]  # reaped


def _workers(agentd):
    return {w["name"]: w for w in agentd.call("workers")["workers"]}


def _forked_and_running(agentd, name, not_pid=None):
    def ready():
        w = _workers(agentd)[name]
        return w if w["state"] == "running" and w["pid"] != not_pid and w["last_beat_age_s"] is not None else None
    return wait_until(ready, timeout=30, message=f"{name} running and beating")


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def _zygote_pid(agentd) -> int:
    kids = Path(f"/proc/{agentd.proc.pid}/task/{agentd.proc.pid}/children").read_text().split()
    found = [int(p) for p in kids if Path(f"/proc/{p}/comm").read_text().strip() == "agentd-zygote"]
    assert len(found) == 1, kids
    return found[0]


def _heartbeat_agent(agentd):
    return agentd.helper_agent("a", "heartbeat-http", "--interval", "0.2", health_check={"heartbeat_timeout": "30s"})


def _http_200s(agentd) -> int:
    from tests.support.wait import read_markers

    return len([m for m in read_markers(agentd.marker("a")) if m[0] == "HEARTBEAT" and m[2] == "200"])


def test_default_workers_are_forked_children_of_agentd_and_a_killed_one_comes_back_from_the_zygote(agentd):
    agentd.write_config([_heartbeat_agent(agentd)])
    agentd.start()
    names = ("heartbeat-http-0", "heartbeat-unix", "health")
    workers = {n: _forked_and_running(agentd, n) for n in names}
    zygote = _zygote_pid(agentd)
    for w in workers.values():
        assert is_zygote_forked(w["pid"]) and _ppid(w["pid"]) == agentd.proc.pid, w
    agentd.wait_state("a", "running", timeout=30)  # its heartbeats arrived through the forked HTTP intake

    old = workers["heartbeat-http-0"]["pid"]
    os.kill(old, signal.SIGKILL)
    back = _forked_and_running(agentd, "heartbeat-http-0", not_pid=old)
    assert back["restarts"] == 1 and "killed by SIGKILL" in back["last_exit"]
    assert is_zygote_forked(back["pid"]) and _ppid(back["pid"]) == agentd.proc.pid
    assert f"worker heartbeat-http-0 (pid {old}) exited: killed by SIGKILL; respawning" in agentd.log_text()
    assert _zygote_pid(agentd) == zygote
    count = _http_200s(agentd)
    wait_until(lambda: _http_200s(agentd) > count + 3, timeout=20, message="heartbeats through the respawned intake")
    assert agentd.status("a")["restarts"] == 0

    # The zygote and its workers die with agentd.
    agentd.kill9()
    for pid in (zygote, back["pid"], workers["health"]["pid"]):
        wait_until(lambda p=pid: not pid_alive(p), timeout=30, message=f"pid {pid} to exit with agentd")


def test_after_the_zygote_is_killed_workers_are_respawned_as_plain_subprocesses(agentd):
    agentd.write_config([_heartbeat_agent(agentd)])
    agentd.start()
    before = {n: _forked_and_running(agentd, n) for n in ("heartbeat-http-0", "health")}
    zygote = _zygote_pid(agentd)
    os.kill(zygote, signal.SIGKILL)
    wait_until(lambda: f"zygote (pid {zygote}) exited: killed by SIGKILL" in agentd.log_text(), timeout=20,
               message="the zygote's death logged")
    wait_until(lambda: not pid_alive(zygote) and not Path(f"/proc/{zygote}").exists(), timeout=20, message="zygote reaped")
    # Its workers are agentd's, not its own: they run on.
    assert {n: w["pid"] for n, w in _workers(agentd).items() if n in before} == {n: w["pid"] for n, w in before.items()}

    old = before["heartbeat-http-0"]["pid"]
    os.kill(old, signal.SIGKILL)
    back = _forked_and_running(agentd, "heartbeat-http-0", not_pid=old)
    assert "killed by SIGKILL" in back["last_exit"]
    assert not is_zygote_forked(back["pid"])
    assert b"workers.heartbeat_http" in Path(f"/proc/{back['pid']}/cmdline").read_bytes()
    count = _http_200s(agentd)
    wait_until(lambda: _http_200s(agentd) > count + 3, timeout=20, message="heartbeats through the plain intake")
    # A stopped (mute) forked worker is still found by its silence and replaced.
    health = before["health"]["pid"]
    os.kill(health, signal.SIGSTOP)
    try:
        replaced = wait_until(lambda: (w := _workers(agentd)["health"])["pid"] not in (None, health) and w, timeout=40,
                              message="stopped health worker replaced")
    finally:
        if pid_alive(health):
            os.kill(health, signal.SIGKILL)
    assert "silent" in replaced["last_exit"]
