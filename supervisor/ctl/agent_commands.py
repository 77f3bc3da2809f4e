"""agentctl's commands on agents: status, start, stop, restart, signal and reload."""

from __future__ import annotations

import json
import sys

import click

from supervisor.ctl.agentctl_main import EXIT_FAILED, exit_code, fail
from supervisor.ctl.cli_context import Ctx, command_ctx, complete_agent_ids, json_option
from supervisor.ctl.control_client import ClientError, DaemonUnavailable
from supervisor.ctl.status_view import render_action, render_status
from supervisor.ctl.tables import printable, render_table
from supervisor.wire.verbs import VerbContract
from supervisor.wire.verbs import logs as logs_verb
from supervisor.wire.verbs import reload as reload_verb
from supervisor.wire.verbs import restart as restart_verb
from supervisor.wire.verbs import send_signal as signal_verb
from supervisor.wire.verbs import start as start_verb
from supervisor.wire.verbs import status as status_verb
from supervisor.wire.verbs import stop as stop_verb
from supervisor.wire.verbs.agent_actions import ActionArgs, ActionResultList


# ----------------------------------------------------------------------------- status


@click.command()
@click.argument("ids", nargs=-1, shell_complete=complete_agent_ids)
@click.option("--type", "types", multiple=True, type=click.Choice(["filebeat", "telegraf", "node_exporter", "custom"]), help="Only agents of this type (repeatable).")
@click.option("--failed", "failed_only", is_flag=True, help="Show only failed agents.")
@json_option
@click.pass_context
def status(click_ctx: click.Context, ids: tuple[str, ...], types: tuple[str, ...], failed_only: bool, as_json: bool) -> None:
    """Show agents: state, pid, uptime, restarts, health, heartbeat age.

    Exits 5 when any agent shown is failed, so scripts and monitoring can tell without parsing.
    """
    c = command_ctx(click_ctx, as_json)
    result = c.try_call(status_verb, status_verb.Args(ids=list(ids), types=list(types)))
    if isinstance(result, DaemonUnavailable):
        _offline_status(c, result, list(ids), types, failed_only)
    if failed_only:
        result.agents = [a for a in result.agents if a.state == "failed"]
    shown = result.model_dump(mode="json")
    if failed_only and not result.agents and not c.as_json:
        c.emit(shown, "no failed agents")
    elif types and not result.agents and not c.as_json:
        c.emit(shown, f"no agents of type {', '.join(types)}")
    else:
        c.emit(shown, render_status(shown))
    if len(ids) == 1 and not c.as_json:
        _recent_log_lines(c, ids[0])
    code = exit_code(status_verb.NAME, shown)
    if code:
        sys.exit(code)


STATUS_LOG_LINES = 10


def _recent_log_lines(c: Ctx, agent_id: str) -> None:
    """`status ID` ends with the agent's last log lines, as `systemctl status` does."""
    found = c.try_call(logs_verb, logs_verb.Args(id=agent_id, lines=STATUS_LOG_LINES))
    if isinstance(found, DaemonUnavailable):
        return
    click.echo(printable(f"\n{found.path}, last {STATUS_LOG_LINES} lines:\n" + (found.text.rstrip("\n") or "(empty)")))


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


def _action(click_ctx: click.Context, verb: VerbContract, ids: tuple[str, ...], all_: bool, no_wait: bool, as_json: bool, force: bool = False) -> None:
    c = command_ctx(click_ctx, as_json)
    if not ids and not all_:
        fail(f"{verb.NAME}: name at least one agent id, or use --all", 2, c.as_json)
    if ids and all_:
        fail(f"{verb.NAME}: give agent ids or --all, not both", 2, c.as_json)
    # The daemon answers a little before our own deadline, so "still working" arrives as an answer.
    server_wait = min(3600.0, max(1.0, c.timeout - 2.0))
    args = ActionArgs(ids=list(ids), all=all_, wait=not no_wait, timeout=server_wait, force=force)
    if no_wait or c.as_json:
        result = c.call(verb, args, timeout=c.timeout)
    else:
        result = _call_with_progress(c, verb, args, list(ids))
    dumped = result.model_dump(mode="json")
    c.emit(dumped, render_action(dumped))
    code = exit_code(verb.NAME, dumped)
    if code:
        sys.exit(code)


def _call_with_progress(c: Ctx, verb: VerbContract, args: ActionArgs, ids: list[str]) -> ActionResultList:
    from supervisor.ctl.progress import call_with_progress

    try:
        return c.validated(verb, call_with_progress(c.client, verb.NAME, args, ids, c.timeout))
    except ClientError as exc:
        fail(str(exc), exc.exit_code, c.as_json, getattr(exc, "code", None))


def _action_command(verb: VerbContract, help_text: str, default_timeout: float, with_force: bool = False):
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
    return click.command(name=verb.NAME)(command)


# Stop waits out stop_timeout (30 s by default) and then SIGKILL; give it room by default.
start = _action_command(start_verb, "Start agents (revives failed ones, clears an operator stop).", 30.0)
stop = _action_command(stop_verb, "Stop agents' whole process trees; they stay stopped until started.", 60.0, with_force=True)
restart = _action_command(restart_verb, "Restart agents (stop the whole tree, then start).", 60.0)


@click.command(name="signal")
@click.argument("words", nargs=-1, metavar="ID... SIG", shell_complete=complete_agent_ids)
@click.option("--all", "all_", is_flag=True, help="Every configured agent that runs.")
@click.option("--tree", is_flag=True, help="Signal every process of the agent, not only its main process.")
@json_option
@click.pass_context
def signal_cmd(click_ctx: click.Context, words: tuple[str, ...], all_: bool, tree: bool, as_json: bool) -> None:
    """Send a signal (HUP, USR1, 10, ...) to agents' main processes, e.g. `agentctl signal filebeat HUP`.

    A signal that ends the agent counts as an exit: the restart policy applies. Use `stop` to stop.
    """
    c = command_ctx(click_ctx, as_json)
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
    result = c.call(signal_verb, args)
    rows = [[r.id, r.pid, ("ok" if r.ok else "FAILED") + ": " + r.message] for r in result.results]
    c.emit(result, render_table(["ID", "PID", "RESULT"], rows) if rows else "no agents")
    if any(not r.ok for r in result.results):
        sys.exit(EXIT_FAILED)


# ----------------------------------------------------------------------------- reload


@click.command()
@click.option("--dry-run", is_flag=True, help="Only show what would change.")
@json_option
@click.pass_context
def reload(click_ctx: click.Context, dry_run: bool, as_json: bool) -> None:
    """Re-read the config: add, remove and restart only changed agents."""
    c = command_ctx(click_ctx, as_json)
    result = c.call(reload_verb, reload_verb.Args(dry_run=dry_run))
    plan = result.plan
    lines = [("would apply" if dry_run else "applied") + f" {result.config}:"]
    for agent_id in plan.added:
        lines.append(f"  + {agent_id} (added{'' if dry_run else ', starting'})")
    for agent_id in plan.removed:
        lines.append(f"  - {agent_id} (removed{'' if dry_run else ', stopping'})")
    for change in plan.changed:
        lines.append(f"  ~ {change.id} (changed: {', '.join(change.fields)})")
    if plan.empty:
        lines.append("  no agent changes")
    lines.append(f"  = {len(plan.unchanged)} unchanged")
    for section in plan.restart_required:
        lines.append(f"  ! '{section}' changed: takes effect only after agentd restarts")
    for warning in plan.warnings:
        lines.append(f"  warning: {warning}")
    c.emit(result, "\n".join(lines))
