"""agentctl's quick path (supervisor/ctl/agentctl_main.py): it takes exactly the command lines the click CLI
would read the same way, and prints what the click CLI prints.

The tests here use real processes; the unit ones are in tests/unit/test_agentctl_quick.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str, module: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_quick_and_full_paths_print_the_same(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved"), agentd.helper_agent("b", "well-behaved")])
    agentd.start()
    agentd.wait_state("a", "running")
    agentd.wait_state("b", "running")
    base = ["--run-dir", str(agentd.run_dir)]
    for argv in (["status", "--json"], ["--json", "status", "b"]):
        quick = json.loads(run(*base, *argv, module="supervisor.ctl.agentctl_main").stdout)
        full = json.loads(run(*base, *argv, module="supervisor.ctl.agentctl").stdout)
        for doc in (quick, full):
            doc["daemon"].pop("uptime_s")
            for a in doc["agents"]:
                for key in ("uptime_s", "last_restart_age_s", "health", "health_detail"):  # move between the two calls
                    a.pop(key)
        assert quick == full
    quick, full = run(*base, "status", module="supervisor.ctl.agentctl_main"), run(*base, "status", module="supervisor.ctl.agentctl")
    assert quick.returncode == full.returncode == 0
    assert [line.split()[:3] for line in quick.stdout.splitlines()] == [line.split()[:3] for line in full.stdout.splitlines()]
    ping = run(*base, "ping", module="supervisor.ctl.agentctl_main")
    assert ping.returncode == 0 and ping.stdout.startswith(f"agentd is running (pid {agentd.proc.pid}, up ")
    for argv in (["status", "nope"], ["--json", "status", "nope"]):
        quick, full = run(*base, *argv, module="supervisor.ctl.agentctl_main"), run(*base, *argv, module="supervisor.ctl.agentctl")
        assert (quick.returncode, quick.stdout, quick.stderr) == (full.returncode, full.stdout, full.stderr)
        assert quick.returncode == 1 and "no agent 'nope'; known: a, b" in quick.stdout + quick.stderr


def test_quick_and_full_actions_print_the_same(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved"), agentd.helper_agent("b", "well-behaved")])
    agentd.start()
    agentd.wait_state("b", "running")
    base = ["--run-dir", str(agentd.run_dir)]
    first = json.loads(run(*base, "stop", "b", "--json", module="supervisor.ctl.agentctl_main").stdout)
    assert [(r["id"], r["state"], r["ok"]) for r in first["results"]] == [("b", "stopped", True)], first
    for argv in (["stop", "b", "--no-wait"], ["--json", "stop", "b"], ["start", "nope", "--json"]):  # "already stopped" twice
        quick, full = run(*base, *argv, module="supervisor.ctl.agentctl_main"), run(*base, *argv, module="supervisor.ctl.agentctl")
        assert (quick.returncode, quick.stdout, quick.stderr) == (full.returncode, full.stdout, full.stderr), argv
    assert run(*base, "start", "nope", "--no-wait", module="supervisor.ctl.agentctl_main").returncode == 1
    again = run(*base, "start", "--all", "--no-wait", module="supervisor.ctl.agentctl_main")
    assert again.returncode == 0 and "ok: " in again.stdout
    agentd.wait_state("b", "running")


PROGRESS_LINE = re.compile(r"^\d\d:\d\d:\d\d\S* \S+: ")  # supervisor/ctl/progress.py, not a terminal


def test_quick_and_full_actions_print_the_same_while_waiting(agentd):
    """Waiting with a person watching: the same final table and exit code on both paths, with progress."""
    stubborn = agentd.helper_agent("stubborn", "ignore-term", stop_timeout=1)
    agentd.write_config([stubborn, agentd.helper_agent("meek", "well-behaved")])
    agentd.start()
    agentd.wait_state("stubborn", "running")
    agentd.wait_state("meek", "running")
    base = ["--run-dir", str(agentd.run_dir)]
    for module in ("supervisor.ctl.agentctl_main", "supervisor.ctl.agentctl"):
        stopped = run(*base, "stop", "--all", module=module)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert any(PROGRESS_LINE.match(ln) and "stubborn: stopping" in ln for ln in stopped.stdout.splitlines()), stopped.stdout
        final = [ln for ln in stopped.stdout.splitlines() if not PROGRESS_LINE.match(ln)]
        assert "stopped (SIGKILL after 1s" in "\n".join(final), stopped.stdout
        started = run(*base, "start", "--all", module=module)
        assert started.returncode == 0, started.stdout + started.stderr
        agentd.wait_state("stubborn", "running")
    assert run(*base, "stop", "meek", module="supervisor.ctl.agentctl_main").returncode == 0
    for argv in (["stop", "meek"], ["stop", "--force", "meek"], ["start", "nope"]):  # "already stopped"; exit 1
        quick, full = run(*base, *argv, module="supervisor.ctl.agentctl_main"), run(*base, *argv, module="supervisor.ctl.agentctl")
        assert (quick.returncode, quick.stdout, quick.stderr) == (full.returncode, full.stdout, full.stderr), argv


def test_quick_path_against_no_daemon_says_so_like_the_full_cli(tmp_path):
    for argv in (["status"], ["--json", "ping"], ["stop", "--all"]):
        quick = run("--run-dir", str(tmp_path), *argv, module="supervisor.ctl.agentctl_main")
        full = run("--run-dir", str(tmp_path), *argv, module="supervisor.ctl.agentctl")
        assert quick.returncode == full.returncode == 3
        assert (quick.stdout, quick.stderr) == (full.stdout, full.stderr)
