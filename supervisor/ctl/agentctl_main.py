"""agentctl's entry point: the everyday verbs on a quick path, everything else through the click CLI.

An operator runs `agentctl status` all day, so it must answer in well under 100 ms. The full CLI
(supervisor/ctl/agentctl.py) imports click, pydantic and the config schema, which alone take several
times that. The quick path imports only the control client, ZeroMQ and the table code. It takes only
plain command lines: `[--run-dir DIR] [--timeout S] [--json] VERB ...` where VERB is `status [ID...]`,
`ping`, or `start|stop|restart ID...|--all [--no-wait]` (`stop` also `--force`; waiting for a person, each
agent's progress is shown as the click CLI shows it, supervisor/ctl/progress.py), with the run dir from
--run-dir, $AGENTD_RUN_DIR or /run/agentd. Anything else (-c FILE or $AGENTD_CONFIG, --help, other
verbs or options, a wrong combination) goes to the click CLI, which also gives the error messages.
See docs/decisions.md, "A quick path for agentctl status".
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Mapping, NamedTuple, NoReturn

DEFAULT_RUN_DIR = "/run/agentd"
DEFAULT_CONFIG = "/etc/agentd/agentd.yaml"  # read when present and nothing else says where agentd is
# Verb -> the flags it may take on the quick path. start/stop/restart default to a longer --timeout (the
# click CLI's: stop waits out stop_timeout, then SIGKILL).
QUICK_VERBS = {"status": (), "ping": (), "start": ("--all", "--no-wait"), "stop": ("--all", "--no-wait", "--force"),
               "restart": ("--all", "--no-wait")}
ACTION_TIMEOUTS = {"start": 30.0, "stop": 60.0, "restart": 60.0}
DEFAULT_TIMEOUT = 10.0
EXIT_FAILED = 1
EXIT_PENDING = 4
EXIT_AGENT_FAILED = 5  # `status`: the daemon answered, and at least one agent shown is failed
TIMEOUT_RANGE = (0.1, 86400.0)  # the click CLI's --timeout range


class QuickCall(NamedTuple):
    """A command line the quick path can serve."""

    run_dir: Path
    timeout: float
    as_json: bool
    verb: str
    ids: list[str]
    flags: frozenset[str] = frozenset()  # --all, --no-wait, --force


def fail(message: str, code: int, as_json: bool = False, error_code: str | None = None) -> NoReturn:
    """Print a one-line (or, for config errors, multi-line) error and exit."""
    if as_json:
        print(json.dumps({"ok": False, "error": {"code": error_code or "client_error", "message": message}}), flush=True)
    else:
        from supervisor.ctl.tables import printable

        print(printable(f"agentctl: {message}"), file=sys.stderr, flush=True)
    sys.exit(code)


def exit_code(verb: str, result: dict) -> int:
    """What agentctl exits with once `result` is shown: `status` 5 when an agent shown is failed; an action 1
    when it failed for some agent, 4 when some agent had not settled in time; else 0."""
    if verb == "status":
        return EXIT_AGENT_FAILED if any(a["state"] == "failed" for a in result["agents"]) else 0
    if verb in ACTION_TIMEOUTS:
        if any(not r["ok"] for r in result["results"]):
            return EXIT_FAILED
        return EXIT_PENDING if result.get("pending") else 0
    return 0


def quick_call(argv: list[str], env: Mapping[str, str]) -> QuickCall | None:
    """The quick call `argv` asks for, or None when the full CLI must handle it."""
    run_dir: str | None = None
    timeout: float | None = None
    as_json = False
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if arg == "--json":
            as_json = True
        elif name in ("--run-dir", "--timeout"):
            if not eq:
                i += 1
                if i == len(argv):
                    return None
                value = argv[i]
            if name == "--run-dir":
                run_dir = value
            else:
                try:
                    timeout = float(value)
                except ValueError:
                    return None
                if not TIMEOUT_RANGE[0] <= timeout <= TIMEOUT_RANGE[1]:
                    return None
        else:
            return None
        i += 1
    if i == len(argv) or argv[i] not in QUICK_VERBS:
        return None
    verb, ids, flags = argv[i], [], set()
    for arg in argv[i + 1:]:
        if arg == "--json":
            as_json = True
        elif arg in QUICK_VERBS[verb]:
            flags.add(arg)
        elif arg.startswith("-"):
            return None
        else:
            ids.append(arg)
    if verb == "ping" and ids:
        return None
    if verb == "status" and len(ids) == 1 and not as_json:
        return None  # `status ID` ends with the agent's last log lines: the full CLI shows them
    if verb in ACTION_TIMEOUTS:
        if bool(ids) == ("--all" in flags):
            return None  # neither or both: the click CLI says how to call it
        timeout = ACTION_TIMEOUTS[verb] if timeout is None else timeout
    if run_dir is None:
        if env.get("AGENTD_CONFIG"):
            return None  # the run dir is in the config, which only the full CLI reads
        run_dir = env.get("AGENTD_RUN_DIR")
        if not run_dir:
            if os.path.isfile(DEFAULT_CONFIG):
                return None  # likewise: the full CLI reads /etc/agentd/agentd.yaml
            run_dir = DEFAULT_RUN_DIR
    if not run_dir or os.path.isfile(run_dir):
        return None  # the click CLI says what is wrong with it
    return QuickCall(Path(run_dir), DEFAULT_TIMEOUT if timeout is None else timeout, as_json, verb, ids, frozenset(flags))


def request_args(call: QuickCall) -> dict | None:
    """The verb's Args as the click CLI sends them (its pydantic model without defaults): status's
    {"ids"}, or ActionArgs (supervisor/wire/verbs/agent_actions.py) for start/stop/restart."""
    if call.verb not in ACTION_TIMEOUTS:
        return {"ids": call.ids} if call.ids else None
    args: dict = {}
    if call.ids:
        args["ids"] = call.ids
    if "--all" in call.flags:
        args["all"] = True
    if "--no-wait" in call.flags:
        args["wait"] = False
    # The daemon answers a little before our own deadline, so "still working" arrives as an answer.
    server_wait = min(3600.0, max(1.0, call.timeout - 2.0))
    if server_wait != 50.0:
        args["timeout"] = server_wait
    if "--force" in call.flags:
        args["force"] = True
    return args


def run_quick(call: QuickCall) -> None:
    """Send the request and print the answer exactly as the full CLI would."""
    from supervisor.ctl.control_client import ClientError, ControlClient, DaemonUnavailable
    from supervisor.ctl.status_view import render_action, render_ping, render_status
    from supervisor.ctl.tables import printable

    client = ControlClient(call.run_dir, call.timeout)
    try:
        if call.verb in ACTION_TIMEOUTS and "--no-wait" not in call.flags and not call.as_json:
            client.check_reachable()  # as below: when agentd is not there, the full CLI says so
            result = _progress_call(client, call)
        else:
            result = client.call(call.verb, request_args(call), timeout=call.timeout)
    except DaemonUnavailable:
        # Nothing was sent (the client checks before it connects). The full CLI says how agentd was
        # looked for, and shows what it left on disk when it can: let it answer.
        from supervisor.ctl.agentctl import main as full_cli

        full_cli()
        return
    except ClientError as exc:
        fail(str(exc), exc.exit_code, call.as_json, getattr(exc, "code", None))
    if call.as_json:
        text = json.dumps(result, indent=2)  # JSON escapes control characters itself
    else:
        render = {"status": render_status, "ping": render_ping}.get(call.verb, render_action)
        text = printable(render(result))
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    code = exit_code(call.verb, result)
    if code:
        sys.exit(code)


def _progress_call(client, call: QuickCall) -> dict:
    """The action with each agent's progress shown while it runs; a failure after the start is the
    click CLI's message (supervisor/ctl/agent_commands.py, _call_with_progress)."""
    from supervisor.ctl.control_client import ClientError
    from supervisor.ctl.progress import call_with_progress

    try:
        return call_with_progress(client, call.verb, request_args(call), call.ids, call.timeout)
    except ClientError as exc:
        fail(str(exc), exc.exit_code, call.as_json, getattr(exc, "code", None))


def main() -> None:
    """Console-script entry point."""
    call = quick_call(sys.argv[1:], os.environ)
    if call is not None:
        try:
            run_quick(call)
        except KeyboardInterrupt:
            print("\nAborted!", file=sys.stderr, flush=True)  # what click prints on Ctrl-C, and its exit code
            sys.exit(1)
        return
    from supervisor.ctl.agentctl import main as full_cli

    full_cli()


if __name__ == "__main__":
    main()
