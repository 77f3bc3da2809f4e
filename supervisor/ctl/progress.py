"""Live progress of a long start/stop/restart in agentctl: one line per agent, redrawn on a terminal,
plain lines (one per change) when the output is a file or a pipe.

The action itself runs as one request; progress comes from `status` polled beside it, so what agentd
does and what agentctl shows cannot drift apart. Free of click and pydantic: agentctl's quick path
(supervisor/ctl/agentctl_main.py) waits through it too.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from supervisor.common import timefmt
from supervisor.common.human_format import format_duration
from supervisor.wire.states import UP_STATES

POLL_INTERVAL = 0.3  # seconds between status polls while the action runs


def describe(agent: dict[str, Any]) -> str:
    """'stopping 3.2s', 'stopping 12s: SIGKILL after 10s (...)', 'running (pid 42)'."""
    state = agent["state"]
    if state == "stopping":
        text = f"stopping {format_duration(agent.get('stop_elapsed_s') or 0)}"
        return f"{text}: {agent['stop_note']}" if agent.get("stop_note") else text
    if state in UP_STATES and agent.get("pid"):
        return f"{state} (pid {agent['pid']})"
    return state


class Progress:
    """Shows where each agent of one action is while it runs; quiet until `delay` has passed."""

    def __init__(self, verb: str, out: TextIO | None = None, delay: float = 0.5) -> None:
        self.verb = verb
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.started = time.monotonic()
        self.delay = delay
        self.last: dict[str, tuple] = {}
        self.drawn = 0

    def update(self, agents: list[dict[str, Any]]) -> None:
        if time.monotonic() - self.started < self.delay:
            return
        if self.tty:
            self._redraw({a["id"]: describe(a) for a in agents})
            return
        for agent in agents:  # a line per change of state, pid or stop note; elapsed time alone is no news
            key = (agent["state"], agent.get("pid"), agent.get("stop_note"))
            if self.last.get(agent["id"]) != key:
                self.last[agent["id"]] = key
                self.out.write(f"{timefmt.clock(time.time())} {agent['id']}: {describe(agent)}\n")
        self.out.flush()

    def _redraw(self, lines: dict[str, str]) -> None:
        elapsed = format_duration(time.monotonic() - self.started)
        block = [f"{self.verb}: {elapsed}"] + [f"  {agent_id:<20} {text}" for agent_id, text in lines.items()]
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}F")  # back to the first line of the previous frame
        self.out.write("".join(f"\x1b[2K{line}\n" for line in block))
        self.out.flush()
        self.drawn = len(block)

    def finish(self) -> None:
        """Clear the live block on a terminal, so the final table stands alone."""
        if self.tty and self.drawn:
            self.out.write(f"\x1b[{self.drawn}F\x1b[J")
            self.out.flush()
            self.drawn = 0


def call_with_progress(client, verb: str, args: Any, ids: list[str], timeout: float, out: TextIO | None = None) -> dict[str, Any]:
    """Run the action `verb` in a thread and show each agent's progress from `status` until it answers.

    Returns the action's result; raises its ClientError. No status is polled before Progress would show
    anything, so a stop that is over within the delay costs agentd no status requests."""
    import threading

    from supervisor.ctl.control_client import ClientError

    outcome: dict[str, Any] = {}

    def act() -> None:
        try:
            outcome["result"] = client.call(verb, args, timeout=timeout)
        except ClientError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=act, daemon=True)
    worker.start()
    progress = Progress(verb, out)
    try:
        worker.join(progress.delay)
        while worker.is_alive():
            try:
                agents = client.call("status", {"ids": ids} if ids else None, timeout=2.0)["agents"]
            except ClientError:
                pass  # progress is best effort; the action's own answer decides
            else:
                progress.update(agents)
            worker.join(POLL_INTERVAL)
    finally:
        progress.finish()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
