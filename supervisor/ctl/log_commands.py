"""agentctl's commands on what agents did: logs (tail, follow, search; from the files while agentd is down)
and events (state changes, followed with -f)."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import click

from supervisor.common import timefmt
from supervisor.common.log_reading import read_log
from supervisor.ctl.agentctl_main import fail
from supervisor.ctl.cli_context import Ctx, command_ctx, complete_agent_ids, json_option
from supervisor.ctl.control_client import DaemonUnavailable
from supervisor.ctl.tables import printable
from supervisor.wire.verbs import events as events_verb
from supervisor.wire.verbs import logs as logs_verb
from supervisor.wire.verbs import status as status_verb


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


@click.command()
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
    c = command_ctx(click_ctx, as_json)
    if all_ and ids:
        fail("logs: give agent ids or --all, not both", 2, c.as_json)
    if all_:
        ids = tuple(a.id for a in c.call(status_verb, status_verb.Args()).agents)
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
            c.emit(result if len(ids) == 1 else {"id": agent_id, **result.model_dump(mode="json")}, "")
        else:
            _write(_prefixed(result.text, prefix[agent_id]), c.as_json, result.model_dump(mode="json"))
        offsets[agent_id] = result.offset
    while follow:
        try:
            time.sleep(0.5)
            for agent_id, reader in readers.items():
                result = reader.read(logs_verb.Args(id=agent_id, offset=offsets[agent_id]))
                if result.rotated:
                    _write(f"{prefix[agent_id]}--- log rotated ---\n", c.as_json, None)
                text = result.text
                if whole_lines:
                    done, sep, partial[agent_id] = (partial[agent_id] + text).rpartition("\n")
                    text = done + sep
                if pattern is not None:
                    text = "".join(line for line in text.splitlines(keepends=True) if matcher.search(line))
                _write(_prefixed(text, prefix[agent_id]), c.as_json, {**result.model_dump(mode="json"), "text": text})
                offsets[agent_id] = result.offset
        except KeyboardInterrupt:
            return


class _LogReader:
    """Reads an agent's log through agentd, or straight from log_dir while agentd is down (also mid-follow)."""

    def __init__(self, c: Ctx, agent_id: str) -> None:
        self.c = c
        self.agent_id = agent_id
        self.offline = False

    def read(self, args: logs_verb.Args) -> logs_verb.Result:
        if not self.offline:
            result = self.c.try_call(logs_verb, args)
            if not isinstance(result, DaemonUnavailable):
                return result
            self._go_offline(result)
        return read_log(_offline_log_path(self.c.dirs.log_dir, self.agent_id), args)

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


def _write(text: str, as_json: bool, result: dict[str, Any] | None) -> None:
    if as_json:
        if result is not None and result["text"]:
            click.echo(json.dumps(result))
        return
    sys.stdout.write(text)
    sys.stdout.flush()


# ----------------------------------------------------------------------------- events


def _event_line(e: events_verb.AgentEvent) -> str:
    return f"{timefmt.show(e.time, ms=True)}  {e.agent_id}  {e.old} -> {e.new}  {e.reason}"


@click.command()
@click.argument("ids", nargs=-1, shell_complete=complete_agent_ids)
@click.option("-n", "--limit", default=50, show_default=True, type=click.IntRange(1, 10_000), help="How many past events.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing events as they happen.")
@json_option
@click.pass_context
def events(click_ctx: click.Context, ids: tuple[str, ...], limit: int, follow: bool, as_json: bool) -> None:
    """Show agent state changes and why they happened."""
    c = command_ctx(click_ctx, as_json)
    result = c.call(events_verb, events_verb.Args(ids=list(ids), limit=limit))
    if c.as_json and not follow:
        c.emit(result, "")
        return
    _print_events(result.events, c.as_json)
    after = result.last_seq
    while follow:
        try:
            result = c.call(events_verb, events_verb.Args(ids=list(ids), after=after, wait=20), timeout=c.timeout + 20)
        except KeyboardInterrupt:
            return
        _print_events(result.events, c.as_json)
        after = result.last_seq


def _print_events(items: list[events_verb.AgentEvent], as_json: bool) -> None:
    for e in items:
        click.echo(json.dumps(e.model_dump(mode="json")) if as_json else printable(_event_line(e), keep=""))
