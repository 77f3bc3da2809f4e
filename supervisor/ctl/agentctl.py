"""agentctl: see and steer agentd over its control socket.

Exit codes: 0 success; 1 agentd reported a failure; 2 bad usage; 3 agentd is not running or not
reachable; 4 agentd did not finish in time (it may still be working); 5 (`status` only) some agent
shown is failed.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from supervisor.wire.version import __version__
from supervisor.common import timefmt
from supervisor.common.log_reading import read_log
from supervisor.ctl.agentctl_main import DEFAULT_CONFIG, DEFAULT_RUN_DIR, EXIT_AGENT_FAILED, EXIT_FAILED, EXIT_PENDING, fail
from supervisor.config.errors import ConfigError
from supervisor.config.loading import load_config
from supervisor.ctl.control_client import ClientError, ControlClient, DaemonTimeout, DaemonUnavailable
from supervisor.ctl.status_view import render_action, render_ping, render_status
from supervisor.ctl.tables import printable, render_table
from supervisor.config.units import format_bytes, format_duration
from supervisor.wire.verbs import events as events_verb
from supervisor.wire.verbs import logs as logs_verb
from supervisor.wire.verbs import reload as reload_verb
from supervisor.wire.verbs import send_signal as signal_verb
from supervisor.wire.verbs import shutdown as shutdown_verb
from supervisor.wire.verbs import status as status_verb
from supervisor.wire.verbs.agent_actions import ActionArgs, ActionResultList



class Ctx:
    """What every command needs: how to reach the daemon, where its files are, and how to print."""

    def __init__(self, run_dir: Path, timeout: float, as_json: bool, source: str = "", dirs: "DaemonDirs | None" = None) -> None:
        self.client = ControlClient(run_dir, timeout)
        self.timeout = timeout
        self.as_json = as_json
        self.source = source  # how run_dir was chosen, for "not running" messages
        self.dirs = dirs  # data_dir and log_dir from the config, when one was read: enables offline views

    def call(self, verb: str, args: Any = None, timeout: float | None = None) -> dict[str, Any]:
        try:
            return self.client.call(verb, args, timeout)
        except DaemonUnavailable as exc:
            fail(self.unavailable_message(exc), exc.exit_code, self.as_json, getattr(exc, "code", None))
        except ClientError as exc:
            fail(str(exc), exc.exit_code, self.as_json, getattr(exc, "code", None))

    def try_call(self, verb: str, args: Any = None) -> dict[str, Any] | DaemonUnavailable:
        """Like call, but hands back 'not running' for the caller to fall back to what is on disk."""
        try:
            return self.client.call(verb, args)
        except DaemonUnavailable as exc:
            return exc
        except ClientError as exc:
            fail(str(exc), exc.exit_code, self.as_json, getattr(exc, "code", None))

    def unavailable_message(self, exc: Exception) -> str:
        return f"{exc} [{self.source}]" if self.source else str(exc)

    def offline_note(self, exc: Exception, what: str) -> None:
        """Say on stderr that agentd is down and that what follows comes from its files."""
        click.echo(f"agentctl: {self.unavailable_message(exc)}; showing {what}", err=True)

    def emit(self, result: dict[str, Any], human: str) -> None:
        click.echo(json.dumps(result, indent=2) if self.as_json else printable(human))  # JSON escapes controls itself


@dataclass(frozen=True)
class DaemonDirs:
    """Where agentd keeps its files, from its config: what agentctl reads while agentd is down."""

    data_dir: Path
    log_dir: Path


@dataclass(frozen=True)
class Target:
    """Which agentd to talk to, and how that was decided (said in "not running" messages)."""

    run_dir: Path
    timeout: float | None
    source: str
    dirs: DaemonDirs | None = None


def _config_choice(config: str | None, run_dir: str | None) -> tuple[str | None, str]:
    """The config file to read, if any, and why: -c, then $AGENTD_CONFIG, then DEFAULT_CONFIG if present."""
    if config:
        return config, f"config {config} from -c"
    if run_dir:
        return None, f"--run-dir {run_dir}"
    if os.environ.get("AGENTD_CONFIG"):
        return os.environ["AGENTD_CONFIG"], f"config {os.environ['AGENTD_CONFIG']} from $AGENTD_CONFIG"
    if os.environ.get("AGENTD_RUN_DIR"):
        return None, f"run_dir {os.environ['AGENTD_RUN_DIR']} from $AGENTD_RUN_DIR"
    if Path(DEFAULT_CONFIG).is_file():
        return DEFAULT_CONFIG, f"default config {DEFAULT_CONFIG}"
    return None, f"default run_dir {DEFAULT_RUN_DIR}; no -c, $AGENTD_CONFIG or {DEFAULT_CONFIG}"


def resolve_target(config: str | None, run_dir: str | None) -> Target:
    """Where agentd is: -c FILE, --run-dir, $AGENTD_CONFIG, $AGENTD_RUN_DIR, /etc/agentd/agentd.yaml, /run/agentd."""
    path, source = _config_choice(config, run_dir)
    if path:
        try:
            cfg = load_config(path)
            dirs = DaemonDirs(Path(cfg.daemon.data_dir), Path(cfg.daemon.log_dir))
            return Target(Path(cfg.daemon.run_dir), cfg.control.request_timeout, source, dirs)
        except ConfigError as exc:
            # A broken file must not lock the operator out: `reload` is how they see the daemon's
            # verdict on it. Take run_dir from the raw YAML when it can be read at all.
            found = _raw_run_dir(Path(path))
            if found is None:
                fail(f"cannot read the config to find agentd (use --run-dir):\n{exc}", 2)
            click.echo(f"agentctl: warning: {path} has errors; using its daemon.run_dir {found}", err=True)
            return Target(found, None, source)
    return Target(Path(run_dir or os.environ.get("AGENTD_RUN_DIR") or DEFAULT_RUN_DIR), None, source)


def _raw_run_dir(path: Path) -> Path | None:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    daemon = doc.get("daemon") if isinstance(doc, dict) else None
    raw = daemon.get("run_dir") if isinstance(daemon, dict) else None
    if raw is None:
        return Path(DEFAULT_RUN_DIR) if isinstance(doc, dict) else None
    return (path.resolve().parent / str(raw)).resolve()


def complete_agent_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of agent ids: from agentd when it answers within a second, else from its config."""
    root = ctx.find_root().params
    try:
        target = resolve_target(root.get("config"), root.get("run_dir"))
        ids = [a["id"] for a in ControlClient(target.run_dir, 1.0).call("status", {}, timeout=1.0)["agents"]]
    except (SystemExit, Exception):  # completion must never print an error (or exit) into the shell
        ids = _ids_from_config(root.get("config"))
    return [i for i in ids if i.startswith(incomplete)]


def _ids_from_config(config: str | None) -> list[str]:
    path, _ = _config_choice(config, None)
    if not path:
        return []
    try:
        return [a.id for a in load_config(path).agents]
    except Exception:
        return []


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def _ctx(click_ctx: click.Context, as_json: bool) -> Ctx:
    obj = click_ctx.obj
    return Ctx(obj["run_dir"], obj["timeout"], as_json or obj["json"], obj.get("source", ""), obj.get("dirs"))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", type=click.Path(dir_okay=False), help="agentd config file (to find its run_dir).")
@click.option("--run-dir", type=click.Path(file_okay=False), help="agentd's run_dir (default /run/agentd).")
@click.option("--timeout", type=click.FloatRange(0.1, 86400), default=10.0, show_default=True, help="Seconds to wait for agentd (default: control.request_timeout from -c FILE, else 10).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--utc", is_flag=True, envvar="AGENTCTL_UTC", help="Show times in UTC (default: local time with its offset).")
@click.version_option(__version__, prog_name="agentctl")
@click.pass_context
def cli(ctx: click.Context, config: str | None, run_dir: str | None, timeout: float, as_json: bool, utc: bool) -> None:
    """See and steer agentd: status, start, stop, restart, reload, logs, events."""
    timefmt.use_utc(utc)
    if ctx.invoked_subcommand == "heartbeat":
        # Run by agents, which talk to the intake, not to control.ipc: no config needed.
        ctx.obj = {"run_dir": Path(DEFAULT_RUN_DIR), "timeout": timeout, "json": as_json}
        return
    target = resolve_target(config, run_dir)
    if target.timeout is not None and ctx.get_parameter_source("timeout").name == "DEFAULT":
        timeout = target.timeout
    ctx.obj = {"run_dir": target.run_dir, "timeout": timeout, "json": as_json, "source": target.source, "dirs": target.dirs}


# ----------------------------------------------------------------------------- status


@cli.command()
@click.argument("ids", nargs=-1, shell_complete=complete_agent_ids)
@click.option("--type", "types", multiple=True, type=click.Choice(["filebeat", "telegraf", "node_exporter", "custom"]), help="Only agents of this type (repeatable).")
@click.option("--failed", "failed_only", is_flag=True, help="Show only failed agents.")
@json_option
@click.pass_context
def status(click_ctx: click.Context, ids: tuple[str, ...], types: tuple[str, ...], failed_only: bool, as_json: bool) -> None:
    """Show agents: state, pid, uptime, restarts, health, heartbeat age.

    Exits 5 when any agent shown is failed, so scripts and monitoring can tell without parsing.
    """
    c = _ctx(click_ctx, as_json)
    result = c.try_call(status_verb.NAME, status_verb.Args(ids=list(ids), types=list(types)))
    if isinstance(result, DaemonUnavailable):
        _offline_status(c, result, list(ids), types, failed_only)
    if failed_only:
        result["agents"] = [a for a in result["agents"] if a["state"] == "failed"]
    if failed_only and not result["agents"] and not c.as_json:
        c.emit(result, "no failed agents")
    elif types and not result["agents"] and not c.as_json:
        c.emit(result, f"no agents of type {', '.join(types)}")
    else:
        c.emit(result, render_status(result))
    if len(ids) == 1 and not c.as_json:
        _recent_log_lines(c, ids[0])
    if any(a["state"] == "failed" for a in result["agents"]):
        sys.exit(EXIT_AGENT_FAILED)


STATUS_LOG_LINES = 10


def _recent_log_lines(c: Ctx, agent_id: str) -> None:
    """`status ID` ends with the agent's last log lines, as `systemctl status` does."""
    found = c.try_call(logs_verb.NAME, logs_verb.Args(id=agent_id, lines=STATUS_LOG_LINES))
    if isinstance(found, DaemonUnavailable):
        return
    text = found.get("text", "")
    click.echo(printable(f"\n{found.get('path', 'log')}, last {STATUS_LOG_LINES} lines:\n" + (text.rstrip("\n") or "(empty)")))


def _offline_status(c: Ctx, down: DaemonUnavailable, ids: list[str], types: tuple[str, ...], failed_only: bool) -> None:
    """agentd is down: show its last metadata with each pid checked live, then exit 3 (it is not running)."""
    if c.dirs is None:
        fail(c.unavailable_message(down) + "; give -c FILE to see what it left on disk", down.exit_code, c.as_json)
    from supervisor.ctl.offline import read_status

    found = read_status(c.dirs.data_dir, ids)
    agents = [a for a in found.agents if (not types or a.type in types) and (not failed_only or a.recorded_state == "failed")]
    found.agents = agents
    if c.as_json:
        click.echo(json.dumps({"ok": False, "error": {"code": "not_running", "message": c.unavailable_message(down)}, **found.model_dump(mode="json")}, indent=2))
        sys.exit(down.exit_code)
    c.offline_note(down, f"its last records in {found.metadata_dir} (OFFLINE: nothing is supervised; pids checked now)")
    rows = [[a.id, a.type, f"{a.recorded_state} (recorded)", a.pid, a.process, a.last_heartbeat or "-", a.restarts, a.problem or a.last_exit or ""]
            for a in agents]
    header = ["ID", "TYPE", "STATE", "PID", "PROCESS NOW", "LAST HEARTBEAT", "RESTARTS", "LAST EXIT"]
    click.echo(printable(render_table(header, rows) if rows else "no agent records"))
    sys.exit(down.exit_code)


# ----------------------------------------------------------------------------- start / stop / restart


def _action(click_ctx: click.Context, verb: str, ids: tuple[str, ...], all_: bool, no_wait: bool, as_json: bool, force: bool = False) -> None:
    c = _ctx(click_ctx, as_json)
    if not ids and not all_:
        fail(f"{verb}: name at least one agent id, or use --all", 2, c.as_json)
    if ids and all_:
        fail(f"{verb}: give agent ids or --all, not both", 2, c.as_json)
    # The daemon answers a little before our own deadline, so "still working" arrives as an answer.
    server_wait = min(3600.0, max(1.0, c.timeout - 2.0))
    args = ActionArgs(ids=list(ids), all=all_, wait=not no_wait, timeout=server_wait, force=force)
    if no_wait or c.as_json:
        result = ActionResultList.model_validate(c.call(verb, args, timeout=c.timeout))
    else:
        result = ActionResultList.model_validate(_call_with_progress(c, verb, args, list(ids)))
    dumped = result.model_dump(mode="json")
    c.emit(dumped, render_action(dumped))
    if any(not r.ok for r in result.results):
        sys.exit(EXIT_FAILED)
    if result.pending:
        sys.exit(EXIT_PENDING)


def _call_with_progress(c: Ctx, verb: str, args: ActionArgs, ids: list[str]) -> dict[str, Any]:
    from supervisor.ctl.progress import call_with_progress

    try:
        return call_with_progress(c.client, verb, args, ids, c.timeout)
    except ClientError as exc:
        fail(str(exc), exc.exit_code, c.as_json, getattr(exc, "code", None))


def _action_command(verb: str, help_text: str, default_timeout: float, with_force: bool = False):
    @click.argument("ids", nargs=-1, shell_complete=complete_agent_ids)
    @click.option("--all", "all_", is_flag=True, help="Every configured agent.")
    @click.option("--no-wait", is_flag=True, help="Return at once instead of waiting for agents to settle.")
    @json_option
    @click.pass_context
    def command(click_ctx: click.Context, ids: tuple[str, ...], all_: bool, no_wait: bool, as_json: bool, force: bool = False) -> None:
        if click_ctx.parent.get_parameter_source("timeout").name == "DEFAULT":
            click_ctx.obj["timeout"] = default_timeout
        _action(click_ctx, verb, ids, all_, no_wait, as_json, force)

    command.__doc__ = help_text
    if with_force:
        command = click.option("--force", is_flag=True, help="SIGKILL the whole tree at once (no stop_signal, no stop_timeout).")(command)
    return cli.command(name=verb)(command)


# Stop waits out stop_timeout (30 s by default) and then SIGKILL; give it room by default.
_action_command("start", "Start agents (revives failed ones, clears an operator stop).", 30.0)
_action_command("stop", "Stop agents' whole process trees; they stay stopped until started.", 60.0, with_force=True)
_action_command("restart", "Restart agents (stop the whole tree, then start).", 60.0)


@cli.command(name="signal")
@click.argument("words", nargs=-1, metavar="ID... SIG", shell_complete=complete_agent_ids)
@click.option("--all", "all_", is_flag=True, help="Every configured agent that runs.")
@click.option("--tree", is_flag=True, help="Signal every process of the agent, not only its main process.")
@json_option
@click.pass_context
def signal_cmd(click_ctx: click.Context, words: tuple[str, ...], all_: bool, tree: bool, as_json: bool) -> None:
    """Send a signal (HUP, USR1, 10, ...) to agents' main processes, e.g. `agentctl signal filebeat HUP`.

    A signal that ends the agent counts as an exit: the restart policy applies. Use `stop` to stop.
    """
    c = _ctx(click_ctx, as_json)
    if not words:
        fail("signal: give agent ids and a signal, e.g. `agentctl signal filebeat HUP`", 2, c.as_json)
    *ids, sig = words
    if not ids and not all_:
        fail("signal: name at least one agent id before the signal, or use --all", 2, c.as_json)
    if ids and all_:
        fail("signal: give agent ids or --all, not both", 2, c.as_json)
    try:
        signal_verb.parse_signal(sig)
    except ValueError as exc:
        fail(f"signal: {exc}", 2, c.as_json)
    args = signal_verb.Args(ids=ids, all=all_, signal=sig, tree=tree)
    result = signal_verb.Result.model_validate(c.call(signal_verb.NAME, args))
    rows = [[r.id, r.pid, ("ok" if r.ok else "FAILED") + ": " + r.message] for r in result.results]
    c.emit(result.model_dump(mode="json"), render_table(["ID", "PID", "RESULT"], rows) if rows else "no agents")
    if any(not r.ok for r in result.results):
        sys.exit(EXIT_FAILED)


# ----------------------------------------------------------------------------- reload


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only show what would change.")
@json_option
@click.pass_context
def reload(click_ctx: click.Context, dry_run: bool, as_json: bool) -> None:
    """Re-read the config: add, remove and restart only changed agents."""
    c = _ctx(click_ctx, as_json)
    result = c.call(reload_verb.NAME, reload_verb.Args(dry_run=dry_run))
    plan = result["plan"]
    lines = [("would apply" if dry_run else "applied") + f" {result['config']}:"]
    for agent_id in plan["added"]:
        lines.append(f"  + {agent_id} (added{'' if dry_run else ', starting'})")
    for agent_id in plan["removed"]:
        lines.append(f"  - {agent_id} (removed{'' if dry_run else ', stopping'})")
    for change in plan["changed"]:
        lines.append(f"  ~ {change['id']} (changed: {', '.join(change['fields'])})")
    if not (plan["added"] or plan["removed"] or plan["changed"]):
        lines.append("  no agent changes")
    lines.append(f"  = {len(plan['unchanged'])} unchanged")
    for section in plan["restart_required"]:
        lines.append(f"  ! '{section}' changed: takes effect only after agentd restarts")
    for warning in plan["warnings"]:
        lines.append(f"  warning: {warning}")
    c.emit(result, "\n".join(lines))


# ----------------------------------------------------------------------------- logs


def _time_arg(text: str | None, name: str) -> float | None:
    """A duration back from now (`1h`) or a date and time (`2026-11-28T12:00`, local unless it has a zone)."""
    from datetime import datetime

    from supervisor.config.units import parse_duration

    if text is None:
        return None
    try:
        return time.time() - parse_duration(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise click.BadParameter(f"expected a duration back from now (30m, 2h) or a time (2026-11-28T12:00), got {text!r}", param_hint=name) from None


def _prefixed(text: str, prefix: str) -> str:
    if not prefix or not text:
        return text
    return "".join(f"{prefix}{line}\n" for line in text.splitlines())


@cli.command()
@click.argument("ids", nargs=-1, shell_complete=complete_agent_ids)
@click.option("--all", "all_", is_flag=True, help="Every configured agent.")
@click.option("-n", "--lines", default=50, show_default=True, type=click.IntRange(0, 100_000), help="Lines to show (or matches, when searching).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output; several agents are merged, each line prefixed with its agent.")
@click.option("--grep", "pattern", help="Only lines matching this regular expression (searches the rotated copies too).")
@click.option("--since", help="Only lines from this time on: a duration back (1h) or a time (2026-11-28T12:00).")
@click.option("--until", help="Only lines up to this time.")
@json_option
@click.pass_context
def logs(click_ctx: click.Context, ids: tuple[str, ...], all_: bool, lines: int, follow: bool, pattern: str | None,
         since: str | None, until: str | None, as_json: bool) -> None:
    """Show agents' output (stdout and stderr): tail, follow, or search by pattern and time."""
    c = _ctx(click_ctx, as_json)
    if all_ and ids:
        fail("logs: give agent ids or --all, not both", 2, c.as_json)
    if all_:
        ids = tuple(a["id"] for a in c.call(status_verb.NAME, status_verb.Args())["agents"])
    if not ids:
        fail("logs: name at least one agent id, or use --all", 2, c.as_json)
    if pattern is not None:
        try:
            matcher = re.compile(pattern)
        except re.error as exc:
            raise click.BadParameter(f"not a regular expression: {exc}", param_hint="--grep") from None
    search = {"grep": pattern, "since": _time_arg(since, "--since"), "until": _time_arg(until, "--until")}
    search = {k: v for k, v in search.items() if v is not None}
    readers = {agent_id: _LogReader(c, agent_id) for agent_id in ids}
    width = max(len(i) for i in ids)
    prefix = {agent_id: f"{agent_id.ljust(width)} | " if len(ids) > 1 else "" for agent_id in ids}
    offsets, partial = {}, dict.fromkeys(ids, "")
    whole_lines = len(ids) > 1 or pattern is not None  # prefixes and matching need complete lines
    for agent_id, reader in readers.items():
        result = reader.read(logs_verb.Args(id=agent_id, lines=lines, **search))
        if c.as_json and not follow:
            c.emit(result if len(ids) == 1 else {"id": agent_id, **result}, "")
        else:
            _write(_prefixed(result["text"], prefix[agent_id]), c.as_json, result)
        offsets[agent_id] = result["offset"]
    while follow:
        try:
            time.sleep(0.5)
            for agent_id, reader in readers.items():
                result = reader.read(logs_verb.Args(id=agent_id, offset=offsets[agent_id]))
                if result["rotated"]:
                    _write(f"{prefix[agent_id]}--- log rotated ---\n", c.as_json, None)
                text = result["text"]
                if whole_lines:
                    done, sep, partial[agent_id] = (partial[agent_id] + text).rpartition("\n")
                    text = done + sep
                if pattern is not None:
                    text = "".join(line for line in text.splitlines(keepends=True) if matcher.search(line))
                _write(_prefixed(text, prefix[agent_id]), c.as_json, {**result, "text": text})
                offsets[agent_id] = result["offset"]
        except KeyboardInterrupt:
            return


class _LogReader:
    """Reads an agent's log through agentd, or straight from log_dir while agentd is down (also mid-follow)."""

    def __init__(self, c: Ctx, agent_id: str) -> None:
        self.c = c
        self.agent_id = agent_id
        self.offline = False

    def read(self, args: Any) -> dict[str, Any]:
        if not self.offline:
            result = self.c.try_call(logs_verb.NAME, args)
            if not isinstance(result, DaemonUnavailable):
                return result
            self._go_offline(result)
        path = _offline_log_path(self.c.dirs.log_dir, self.agent_id)
        return read_log(path, args).model_dump(mode="json")

    def _go_offline(self, down: DaemonUnavailable) -> None:
        if self.c.dirs is None:
            fail(self.c.unavailable_message(down) + "; give -c FILE to read the log files it left", down.exit_code, self.c.as_json)
        path = _offline_log_path(self.c.dirs.log_dir, self.agent_id)
        if not path.exists():
            fail(f"{self.c.unavailable_message(down)}; and there is no log file at {path}", down.exit_code, self.c.as_json)
        self.offline = True
        self.c.offline_note(down, f"{path} directly")


def _offline_log_path(log_dir: Path, agent_id: str) -> Path:
    from supervisor.ctl.offline import log_path

    return log_path(log_dir, agent_id)


def _write(text: str, as_json: bool, result: dict | None) -> None:
    if as_json:
        if result is not None and result["text"]:
            click.echo(json.dumps(result))
        return
    sys.stdout.write(text)
    sys.stdout.flush()


# ----------------------------------------------------------------------------- events


def _event_line(e: dict[str, Any]) -> str:
    return f"{timefmt.show(e['time'], ms=True)}  {e['agent_id']}  {e['old']} -> {e['new']}  {e['reason']}"


@cli.command()
@click.argument("ids", nargs=-1, shell_complete=complete_agent_ids)
@click.option("-n", "--limit", default=50, show_default=True, type=click.IntRange(1, 10_000), help="How many past events.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing events as they happen.")
@json_option
@click.pass_context
def events(click_ctx: click.Context, ids: tuple[str, ...], limit: int, follow: bool, as_json: bool) -> None:
    """Show agent state changes and why they happened."""
    c = _ctx(click_ctx, as_json)
    result = c.call(events_verb.NAME, events_verb.Args(ids=list(ids), limit=limit))
    if c.as_json and not follow:
        c.emit(result, "")
        return
    _print_events(result["events"], c.as_json)
    after = result["last_seq"]
    while follow:
        try:
            result = c.call(events_verb.NAME, events_verb.Args(ids=list(ids), after=after, wait=20), timeout=c.timeout + 20)
        except KeyboardInterrupt:
            return
        _print_events(result["events"], c.as_json)
        after = result["last_seq"]


def _print_events(items: list[dict[str, Any]], as_json: bool) -> None:
    for e in items:
        click.echo(json.dumps(e) if as_json else printable(_event_line(e), keep=""))


# ----------------------------------------------------------------------------- workers


def render_workers(result: dict[str, Any]) -> str:
    rows = []
    for w in result["workers"]:
        c = w["counters"]
        rejected = sum(v for k, v in c.items() if k.startswith("rejected"))
        dropped = sum(v for k, v in c.items() if k.startswith("dropped"))
        causes = ", ".join(f"{k} ×{v}" for k, v in w["restart_causes"].items())
        rows.append([
            w["name"], w["state"], w["pid"], format_duration(w["uptime_s"]) if w["uptime_s"] is not None else None,
            w["restarts"], c.get("received", 0), c.get("accepted", 0), rejected, dropped, w["queue_depth"],
            (f"last exit: {w['last_exit']}" + (f" [{causes}]" if causes else "")) if w["last_exit"] else "",
        ])
    table = render_table(["WORKER", "STATE", "PID", "UPTIME", "RESTARTS", "RECEIVED", "ACCEPTED", "REJECTED", "DROPPED", "QUEUE", "INFO"], rows) if rows else "no workers"
    parent = result["parent"]
    applied = parent.get("applied", 0)
    dropped = {k: v for k, v in parent.items() if k.startswith("dropped")}
    summary = f"parent: {applied} heartbeats applied" + (", dropped: " + ", ".join(f"{k[8:]} {v}" for k, v in dropped.items()) if dropped else "")
    return f"{table}\n{summary}"


@cli.command()
@json_option
@click.pass_context
def workers(click_ctx: click.Context, as_json: bool) -> None:
    """Show agentd's worker processes: pid, uptime, restarts, counters."""
    c = _ctx(click_ctx, as_json)
    result = c.call("workers")
    c.emit(result, render_workers(result))


# ----------------------------------------------------------------------------- top / history

SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float | None], width: int = 30) -> str:
    """A tiny inline chart of the last `width` values; gaps show as spaces."""
    values = values[-width:]
    known = [v for v in values if v is not None]
    if not known:
        return ""
    lo, hi = min(known), max(known)
    span = (hi - lo) or 1.0
    return "".join(" " if v is None else SPARK[min(len(SPARK) - 1, int((v - lo) / span * (len(SPARK) - 1) + 0.5))] for v in values)


def _pct(value: float | None) -> str | None:
    return None if value is None else f"{value:.1f}%"


def render_top(result: dict[str, Any]) -> str:
    rows = []
    for item in result["agents"]:
        a, smp = item["status"], item["sample"] or {}
        hb = format_duration(a["heartbeat_age_s"]) if a["heartbeat_age_s"] is not None else None
        rows.append([
            a["id"], a["state"], a["health"], a["pid"], _pct(smp.get("cpu")), format_bytes(smp.get("rss")) if smp else None,
            smp.get("fds"), smp.get("procs"), hb, a["restarts"],
        ])
    agents = render_table(["ID", "STATE", "HEALTH", "PID", "CPU", "RSS", "FDS", "PROCS", "HB AGE", "RESTARTS"], rows) if rows else "no agents configured"
    own = [[s["agent_id"][7:], _pct(s.get("cpu")), format_bytes(s.get("rss")), s.get("fds"), s.get("threads")] for s in result["agentd"]]
    own_table = render_table(["AGENTD", "CPU", "RSS", "FDS", "THREADS"], own) if own else "agentd: no samples yet (the health worker samples every resources.interval)"
    return f"{agents}\n\n{own_table}"


@cli.command()
@click.option("--once", is_flag=True, help="Print one frame and exit.")
@click.option("-d", "--interval", default=2.0, show_default=True, type=click.FloatRange(0.2, 3600), help="Seconds between refreshes.")
@json_option
@click.pass_context
def top(click_ctx: click.Context, once: bool, interval: float, as_json: bool) -> None:
    """Live view of agents (state, health, cpu, rss, fds, heartbeat age) and agentd itself."""
    c = _ctx(click_ctx, as_json)
    if c.as_json or once or not sys.stdout.isatty():
        result = c.call("top")
        c.emit(result, render_top(result))
        return
    try:
        while True:
            result = c.call("top")
            stamp = timefmt.clock(time.time())
            sys.stdout.write("\x1b[H\x1b[2J" + f"agentd top — {stamp} — every {interval:g}s, Ctrl-C to quit\n\n" + render_top(result) + "\n")
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return


def _since_seconds(text: str) -> float:
    from supervisor.config.units import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    if seconds <= 0:
        raise click.BadParameter(f"must be longer than 0, e.g. 30m or 2h (got {text!r})", param_hint="--since")
    return seconds


@cli.command()
@click.argument("agent_id", shell_complete=complete_agent_ids)
@click.option("--since", default="1h", show_default=True, help="How far back (30m, 1h, 2d).")
@click.option("--limit", default=2000, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--every", help="Aggregate into windows (5m, 1h): average and maximum per window.")
@json_option
@click.pass_context
def history(click_ctx: click.Context, agent_id: str, since: str, limit: int, every: str | None, as_json: bool) -> None:
    """An agent's resource samples (or agentd/<process>), with sparklines."""
    c = _ctx(click_ctx, as_json)
    seconds = _since_seconds(since)
    args: dict = {"id": agent_id, "since": seconds, "limit": limit}
    if every is not None:
        args["every"] = _since_seconds(every)
        if args["every"] < 1:
            raise click.BadParameter("must be at least 1s", param_hint="--every")
    result = c.try_call("history", args)
    if isinstance(result, DaemonUnavailable):
        if c.dirs is None:
            fail(c.unavailable_message(result) + "; give -c FILE to read the history it left", result.exit_code, c.as_json)
        if every is not None:
            fail(c.unavailable_message(result) + "; --every needs agentd (without it, the raw samples are shown)", result.exit_code, c.as_json)
        from supervisor.ctl.offline import read_history

        c.offline_note(result, f"{c.dirs.data_dir / 'history.db'} read-only")
        result = {"agent_id": agent_id, "since": time.time() - seconds, "samples": read_history(c.dirs.data_dir, agent_id, seconds, limit), "offline": True}
    if every is not None:
        windows = result["windows"] or []
        if c.as_json or not windows:
            c.emit(result, f"no samples for {agent_id} in the last {since}")
            return
        rows = [[timefmt.show(w["start"]), w["samples"], _pct(w["cpu_avg"]), _pct(w["cpu_max"]),
                 format_bytes(int(w["rss_avg"])) if w["rss_avg"] is not None else None, format_bytes(w["rss_max"]),
                 f"{w['fds_avg']:.0f}" if w["fds_avg"] is not None else None, w["fds_max"]] for w in windows]
        click.echo(printable(f"{agent_id}: {len(windows)} windows of {every} (last {since})\n"
                             + render_table(["WINDOW", "SAMPLES", "CPU AVG", "CPU MAX", "RSS AVG", "RSS MAX", "FDS AVG", "FDS MAX"], rows)))
        return
    samples = result["samples"]
    if c.as_json:
        c.emit(result, "")
        return
    if not samples:
        click.echo(f"no samples for {agent_id} in the last {since}")
        return
    cpu = [s["cpu"] for s in samples]
    rss = [s["rss"] for s in samples]
    fds = [s["fds"] for s in samples]
    lines = [
        f"{agent_id}: {len(samples)} samples since {timefmt.show(samples[0]['ts'])} (last {since})",
        f"  cpu  {sparkline(cpu)}  last {_pct(cpu[-1]) or '-'}  max {_pct(max((v for v in cpu if v is not None), default=None)) or '-'}",
        f"  rss  {sparkline(rss)}  last {format_bytes(rss[-1])}  max {format_bytes(max(rss))}",
        f"  fds  {sparkline(fds)}  last {fds[-1] if fds[-1] is not None else '-'}",
        "",
    ]
    rows = [[timefmt.show(s["ts"]), _pct(s["cpu"]), format_bytes(s["rss"]), format_bytes(s["vms"]),
             s["fds"], s["threads"], s["procs"], s["read_bytes"], s["write_bytes"]] for s in samples[-50:]]
    lines.append(render_table(["TIME", "CPU", "RSS", "VMS", "FDS", "THREADS", "PROCS", "READ_B", "WRITE_B"], rows))
    if len(samples) > 50:
        lines.append(f"(last 50 of {len(samples)} rows; --json for all)")
    click.echo(printable("\n".join(lines)))


# ----------------------------------------------------------------------------- heartbeat (for scripts)


@cli.command()
@click.argument("agent_id", required=False)
@click.option("--status", "hb_status", help="Free-text status to report.")
@click.option("--agent-version", help="Version to report.")
@click.option("--socket", "socket_path", help="Heartbeat socket (default $AGENTD_HEARTBEAT_SOCKET).")
@click.option("--url", help="Heartbeat URL (default $AGENTD_HEARTBEAT_URL).")
@click.option("--token", envvar="AGENTD_HEARTBEAT_TOKEN", help="Bearer token for HTTP (or $AGENTD_HEARTBEAT_TOKEN).")
def heartbeat(agent_id: str | None, hb_status: str | None, agent_version: str | None, socket_path: str | None, url: str | None, token: str | None) -> None:
    """Send one heartbeat for AGENT_ID (default $AGENTD_AGENT_ID); for scripts run by an agent."""
    from supervisor.ctl.heartbeat_client import HeartbeatError, send_heartbeat

    try:
        message = send_heartbeat(agent_id, socket_path=socket_path, url=url, token=token, status=hb_status, version=agent_version)
    except HeartbeatError as exc:
        fail(str(exc), EXIT_FAILED)
    click.echo(printable(message))


# ----------------------------------------------------------------------------- small verbs


@cli.command()
@json_option
@click.pass_context
def ping(click_ctx: click.Context, as_json: bool) -> None:
    """Check that agentd answers."""
    c = _ctx(click_ctx, as_json)
    result = c.call("ping")
    c.emit(result, render_ping(result))


@cli.command()
@json_option
@click.pass_context
def version(click_ctx: click.Context, as_json: bool) -> None:
    """Show agentctl's and agentd's versions."""
    c = _ctx(click_ctx, as_json)
    error = None
    try:
        result = c.client.call("version")
    except ClientError as exc:
        result, error = {"version": None, "protocol": None, "error": str(exc)}, exc
    result["agentctl"] = __version__
    daemon = result["version"] or f"unknown ({result.get('error')})"
    c.emit(result, f"agentctl {__version__}\nagentd   {daemon}")
    if error is not None:
        sys.exit(error.exit_code)


@cli.command()
@click.option("--stop-agents", is_flag=True, help="Stop every agent before exiting.")
@json_option
@click.pass_context
def shutdown(click_ctx: click.Context, stop_agents: bool, as_json: bool) -> None:
    """Stop agentd; agents keep running unless --stop-agents."""
    c = _ctx(click_ctx, as_json)
    result = c.call(shutdown_verb.NAME, shutdown_verb.Args(stop_agents=stop_agents))
    c.emit(result, f"agentd: {result['message']}")


_GLOBAL_OPTIONS = {"-c", "--config", "--run-dir", "--timeout"}  # each takes a value


def hoist_global_options(argv: list[str]) -> list[str]:
    """`agentctl status -c FILE` means `agentctl -c FILE status`: global options may come anywhere."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg.startswith("--") and arg.split("=", 1)[0] in _GLOBAL_OPTIONS and "=" in arg:
            front.append(arg)
            i += 1
        elif arg in _GLOBAL_OPTIONS and i + 1 < len(argv):
            front += [arg, argv[i + 1]]
            i += 2
        else:
            rest.append(arg)
            i += 1
    return front + rest


def main() -> None:
    """Console-script entry point."""
    try:
        cli(args=hoist_global_options(sys.argv[1:]), prog_name="agentctl")
    except DaemonTimeout as exc:  # pragma: no cover - calls go through Ctx.call
        fail(str(exc), exc.exit_code)


if __name__ == "__main__":
    main()
