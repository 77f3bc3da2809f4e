"""agentctl's quick path (supervisor/ctl/agentctl_main.py): it takes exactly the command lines the click CLI
would read the same way, and prints what the click CLI prints."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from supervisor.ctl.agentctl import cli
from supervisor.ctl.agentctl_main import ACTION_TIMEOUTS, DEFAULT_RUN_DIR, QuickCall, quick_call, request_args
from supervisor.wire.protocol import PROTOCOL_VERSION, Request
from supervisor.wire.verbs import status as status_verb
from supervisor.wire.verbs.agent_actions import ActionArgs

ROOT = Path(__file__).resolve().parents[2]


def click_reading(argv: list[str], env: dict[str, str]) -> QuickCall:
    """How the click CLI reads a command line the quick path took (the same fields)."""
    ctx = cli.make_context("agentctl", list(argv))
    params = ctx.params
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # click 8.2 deprecates protected_args, still fills it
        name, *rest = [*ctx.protected_args, *ctx.args]
    sub = cli.get_command(ctx, name)
    sub_ctx = sub.make_context(name, rest, parent=ctx)
    run_dir = params["run_dir"] or env.get("AGENTD_RUN_DIR") or DEFAULT_RUN_DIR
    timeout = params["timeout"]
    if name in ACTION_TIMEOUTS and ctx.get_parameter_source("timeout").name == "DEFAULT":
        timeout = ACTION_TIMEOUTS[name]
    sp = sub_ctx.params
    flags = {flag for flag, key in (("--all", "all_"), ("--no-wait", "no_wait"), ("--force", "force")) if sp.get(key)}
    return QuickCall(Path(run_dir), timeout, params["as_json"] or sp["as_json"], name, list(sp.get("ids", ())), frozenset(flags))


GLOBAL_CHOICES = [[], ["--json"], ["--run-dir", "/tmp/x"], ["--run-dir=/tmp/y"], ["--timeout", "2.5"], ["--timeout=30"]]
TAIL_CHOICES = [["status"], ["status", "a", "b"], ["status", "--json"], ["status", "a", "--json", "b"], ["ping"], ["ping", "--json"],
                ["stop", "--all", "--no-wait"], ["stop", "a", "b", "--no-wait"], ["stop", "--force", "a", "--json"],
                ["stop", "--all", "--json", "--no-wait", "--force"], ["start", "a", "--json"], ["start", "--no-wait", "--all"],
                ["restart", "--all", "--no-wait"], ["restart", "a", "--json"],
                ["stop", "--all"], ["stop", "--force", "a", "b"], ["start", "a"], ["restart", "--all"]]


@pytest.mark.parametrize("globals_", [list(itertools.chain(*c)) for n in range(3) for c in itertools.combinations(GLOBAL_CHOICES, n)])
@pytest.mark.parametrize("tail", TAIL_CHOICES)
def test_quick_path_reads_a_command_line_as_click_does(globals_, tail):
    argv = [*globals_, *tail]
    env = {"AGENTD_RUN_DIR": "/tmp/from-env"}
    call = quick_call(argv, env)
    assert call is not None, argv
    assert call == click_reading(argv, env)
    if call.verb in ACTION_TIMEOUTS:  # what the click CLI would send (supervisor/ctl/agentctl.py, _action)
        sent = ActionArgs(ids=call.ids, all="--all" in call.flags, wait="--no-wait" not in call.flags,
                          timeout=min(3600.0, max(1.0, call.timeout - 2.0)), force="--force" in call.flags)
        assert request_args(call) == sent.model_dump(mode="json", exclude_defaults=True)


@pytest.mark.parametrize("argv, env", [
    (["-c", "agentd.yaml", "status"], {}),  # the run dir is in the config
    (["--config=agentd.yaml", "status"], {}),
    (["status"], {"AGENTD_CONFIG": "agentd.yaml"}),
    (["--help"], {}),
    (["status", "--help"], {}),
    (["status", "-h"], {}),
    (["--version"], {}),
    (["logs", "a"], {}),
    (["top"], {}),
    (["ping", "extra"], {}),
    ([], {}),
    (["--json"], {}),
    (["--run-dir"], {}),
    (["--timeout", "0"], {}),  # out of click's range: click says so
    (["--timeout", "nan", "status"], {}),
    (["--timeout", "soon", "status"], {}),
    (["--run-dir", "", "status"], {}),
    (["--run-dir", __file__, "status"], {}),  # a file: click says so
    (["--bogus", "status"], {}),
    (["status", "--", "a"], {}),
    (["stop"], {}),  # neither ids nor --all
    (["stop", "a", "--all"], {}),  # both
    (["start", "--force", "a", "--json"], {}),  # --force is stop's
    (["restart", "--bogus", "a", "--json"], {}),
])
def test_anything_else_goes_to_the_click_cli(argv, env):
    assert quick_call(argv, env) is None


def test_run_dir_from_the_command_line_wins_over_the_environment():
    assert quick_call(["--run-dir", "/r", "status"], {"AGENTD_CONFIG": "x.yaml", "AGENTD_RUN_DIR": "/e"}).run_dir == Path("/r")
    assert quick_call(["status"], {}).run_dir == Path(DEFAULT_RUN_DIR)


def test_the_quick_request_is_a_valid_request_and_status_args():
    # What ControlClient.call sends for the quick path's status with ids.
    request = Request.model_validate({"v": PROTOCOL_VERSION, "id": "0123456789abcdef", "verb": "status", "args": {"ids": ["a"]}})
    assert status_verb.Args.model_validate(request.args).ids == ["a"]


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
