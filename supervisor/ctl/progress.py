"""Live progress of a long start/stop/restart in agentctl: one line per agent, redrawn on a terminal,
plain lines (one per change) when the output is a file or a pipe.

The action itself runs as one request; progress comes from `status` polled beside it, so what agentd
does and what agentctl shows cannot drift apart.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from supervisor.common import timefmt
from supervisor.config.units import format_duration


def describe(agent: dict[str, Any]) -> str:
    """'stopping 3.2s', 'stopping 12s: SIGKILL after 10s (...)', 'running (pid 42)'."""
    state = agent["state"]
    if state == "stopping":
        text = f"stopping {format_duration(agent.get('stop_elapsed_s') or 0)}"
        return f"{text}: {agent['stop_note']}" if agent.get("stop_note") else text
    if state in ("running", "starting") and agent.get("pid"):
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
