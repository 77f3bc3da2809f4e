"""agentctl's quick path (supervisor/ctl/agentctl_main.py): it takes exactly the command lines the click CLI
would read the same way, and prints what the click CLI prints.

The tests here start no process; the ones with real processes are in tests/system/test_agentctl_quick.py."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import pytest

from supervisor.ctl.agentctl import cli
from supervisor.ctl.agentctl_main import ACTION_TIMEOUTS, DEFAULT_RUN_DIR, QuickCall, quick_call, request_args
from supervisor.wire.protocol import PROTOCOL_VERSION, Request
from supervisor.wire.verbs import status as status_verb
from supervisor.wire.verbs.agent_actions import ActionArgs


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
