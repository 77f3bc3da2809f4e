"""agentctl: see and steer agentd over its control socket.

Exit codes: 0 success; 1 agentd reported a failure; 2 bad usage; 3 agentd is not running or not
reachable; 4 agentd did not finish in time (it may still be working); 5 (`status` only) some agent
shown is failed.

This module is the click group, its global options and the small verbs; the commands live by group in
agent_commands.py, log_commands.py and resource_commands.py, and what they share in cli_context.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from supervisor.common import timefmt
from supervisor.ctl import agent_commands, log_commands, resource_commands
from supervisor.ctl.agentctl_main import DEFAULT_RUN_DIR, EXIT_FAILED, fail
from supervisor.ctl.cli_context import command_ctx, json_option, resolve_target
from supervisor.ctl.control_client import ClientError, DaemonTimeout
from supervisor.ctl.status_view import render_ping
from supervisor.ctl.tables import printable
from supervisor.wire.verbs import ping as ping_verb
from supervisor.wire.verbs import shutdown as shutdown_verb
from supervisor.wire.verbs import version as version_verb
from supervisor.wire.version import __version__


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
    c = command_ctx(click_ctx, as_json)
    result = c.call(ping_verb)
    c.emit(result, render_ping(result.model_dump(mode="json")))


@cli.command()
@json_option
@click.pass_context
def version(click_ctx: click.Context, as_json: bool) -> None:
    """Show agentctl's and agentd's versions."""
    c = command_ctx(click_ctx, as_json)
    error = None
    try:
        result = c.validated(version_verb, c.client.call(version_verb.NAME)).model_dump(mode="json")
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
    c = command_ctx(click_ctx, as_json)
    result = c.call(shutdown_verb, shutdown_verb.Args(stop_agents=stop_agents))
    c.emit(result, f"agentd: {result.message}")


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


for command in (agent_commands.status, agent_commands.start, agent_commands.stop, agent_commands.restart, agent_commands.signal_cmd,
                agent_commands.reload, log_commands.logs, log_commands.events, resource_commands.workers, resource_commands.top,
                resource_commands.history):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    try:
        cli(args=hoist_global_options(sys.argv[1:]), prog_name="agentctl")
    except DaemonTimeout as exc:  # pragma: no cover - calls go through Ctx.call
        fail(str(exc), exc.exit_code)


if __name__ == "__main__":
    main()
