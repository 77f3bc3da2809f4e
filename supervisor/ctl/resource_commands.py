"""agentctl's commands on resources: workers (agentd's own processes), top (live view) and history (samples)."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from supervisor.common import timefmt
from supervisor.config.units import format_bytes, format_duration
from supervisor.ctl.agentctl_main import fail
from supervisor.ctl.cli_context import Ctx, command_ctx, complete_agent_ids, json_option
from supervisor.ctl.control_client import DaemonUnavailable
from supervisor.ctl.tables import printable, render_table
from supervisor.wire.verbs import history as history_verb
from supervisor.wire.verbs import top as top_verb
from supervisor.wire.verbs import workers as workers_verb


# ----------------------------------------------------------------------------- workers


def render_workers(result: workers_verb.Result) -> str:
    """The `agentctl workers` table and the parent's intake line."""
    rows = []
    for w in result.workers:
        c = w.counters
        rejected = sum(v for k, v in c.items() if k.startswith("rejected"))
        dropped = sum(v for k, v in c.items() if k.startswith("dropped"))
        causes = ", ".join(f"{k} ×{v}" for k, v in w.restart_causes.items())
        rows.append([
            w.name, w.state, w.pid, format_duration(w.uptime_s) if w.uptime_s is not None else None,
            w.restarts, c.get("received", 0), c.get("accepted", 0), rejected, dropped, w.queue_depth,
            (f"last exit: {w.last_exit}" + (f" [{causes}]" if causes else "")) if w.last_exit else "",
        ])
    table = render_table(["WORKER", "STATE", "PID", "UPTIME", "RESTARTS", "RECEIVED", "ACCEPTED", "REJECTED", "DROPPED", "QUEUE", "INFO"], rows) if rows else "no workers"
    parent = result.parent
    applied = parent.get("applied", 0)
    dropped = {k: v for k, v in parent.items() if k.startswith("dropped")}
    summary = f"parent: {applied} heartbeats applied" + (", dropped: " + ", ".join(f"{k[8:]} {v}" for k, v in dropped.items()) if dropped else "")
    return f"{table}\n{summary}"


@click.command()
@json_option
@click.pass_context
def workers(click_ctx: click.Context, as_json: bool) -> None:
    """Show agentd's worker processes: pid, uptime, restarts, counters."""
    c = command_ctx(click_ctx, as_json)
    result = c.call(workers_verb)
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


def render_top(result: top_verb.Result) -> str:
    """One frame of `agentctl top`: the agents, then agentd's own processes."""
    rows = []
    for item in result.agents:
        a, smp = item.status, item.sample
        hb = format_duration(a.heartbeat_age_s) if a.heartbeat_age_s is not None else None
        rows.append([
            a.id, a.state, a.health, a.pid, _pct(smp.cpu if smp else None), format_bytes(smp.rss) if smp else None,
            smp.fds if smp else None, smp.procs if smp else None, hb, a.restarts,
        ])
    agents = render_table(["ID", "STATE", "HEALTH", "PID", "CPU", "RSS", "FDS", "PROCS", "HB AGE", "RESTARTS"], rows) if rows else "no agents configured"
    own = [[s.agent_id[7:], _pct(s.cpu), format_bytes(s.rss), s.fds, s.threads] for s in result.agentd]
    own_table = render_table(["AGENTD", "CPU", "RSS", "FDS", "THREADS"], own) if own else "agentd: no samples yet (the health worker samples every resources.interval)"
    return f"{agents}\n\n{own_table}"


@click.command()
@click.option("--once", is_flag=True, help="Print one frame and exit.")
@click.option("-d", "--interval", default=2.0, show_default=True, type=click.FloatRange(0.2, 3600), help="Seconds between refreshes.")
@json_option
@click.pass_context
def top(click_ctx: click.Context, once: bool, interval: float, as_json: bool) -> None:
    """Live view of agents (state, health, cpu, rss, fds, heartbeat age) and agentd itself."""
    c = command_ctx(click_ctx, as_json)
    if c.as_json or once or not sys.stdout.isatty():
        result = c.call(top_verb)
        c.emit(result, render_top(result))
        return
    try:
        while True:
            result = c.call(top_verb)
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


@click.command()
@click.argument("agent_id", shell_complete=complete_agent_ids)
@click.option("--since", default="1h", show_default=True, help="How far back (30m, 1h, 2d).")
@click.option("--limit", default=2000, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--every", help="Aggregate into windows (5m, 1h): average and maximum per window.")
@json_option
@click.pass_context
def history(click_ctx: click.Context, agent_id: str, since: str, limit: int, every: str | None, as_json: bool) -> None:
    """An agent's resource samples (or agentd/<process>), with sparklines."""
    c = command_ctx(click_ctx, as_json)
    seconds = _since_seconds(since)
    window = _since_seconds(every) if every is not None else None
    if window is not None and window < 1:
        raise click.BadParameter("must be at least 1s", param_hint="--every")
    answer = c.try_call(history_verb, history_verb.Args(id=agent_id, since=seconds, limit=limit, every=window))
    if isinstance(answer, DaemonUnavailable):
        result = _offline_history(c, answer, agent_id, seconds, limit, every)
    else:
        result = answer.model_dump(mode="json")  # rendered like the offline rows: the shape --json prints
    if every is not None:
        windows = result["windows"] or []
        if c.as_json or not windows:
            c.emit(result, f"no samples for {agent_id} in the last {since}")
            return
        click.echo(printable(f"{agent_id}: {len(windows)} windows of {every} (last {since})\n" + _windows_table(windows)))
        return
    samples = result["samples"]
    if c.as_json:
        c.emit(result, "")
        return
    if not samples:
        click.echo(f"no samples for {agent_id} in the last {since}")
        return
    click.echo(printable(_samples_view(agent_id, since, samples)))


def _offline_history(c: Ctx, down: DaemonUnavailable, agent_id: str, seconds: float, limit: int, every: str | None) -> dict[str, Any]:
    """agentd is down: the raw samples from its history.db, read-only (--every needs agentd)."""
    if c.dirs is None:
        fail(c.unavailable_message(down) + "; give -c FILE to read the history it left", down.exit_code, c.as_json)
    if every is not None:
        fail(c.unavailable_message(down) + "; --every needs agentd (without it, the raw samples are shown)", down.exit_code, c.as_json)
    from supervisor.ctl.offline import read_history

    c.offline_note(down, f"{c.dirs.data_dir / 'history.db'} read-only")
    return {"agent_id": agent_id, "since": time.time() - seconds, "samples": read_history(c.dirs.data_dir, agent_id, seconds, limit), "offline": True}


def _windows_table(windows: list[dict[str, Any]]) -> str:
    rows = [[timefmt.show(w["start"]), w["samples"], _pct(w["cpu_avg"]), _pct(w["cpu_max"]),
             format_bytes(int(w["rss_avg"])) if w["rss_avg"] is not None else None, format_bytes(w["rss_max"]),
             f"{w['fds_avg']:.0f}" if w["fds_avg"] is not None else None, w["fds_max"]] for w in windows]
    return render_table(["WINDOW", "SAMPLES", "CPU AVG", "CPU MAX", "RSS AVG", "RSS MAX", "FDS AVG", "FDS MAX"], rows)


def _samples_view(agent_id: str, since: str, samples: list[dict[str, Any]]) -> str:
    """Sparklines of cpu, rss and fds, then the last 50 samples as a table."""
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
    return "\n".join(lines)
