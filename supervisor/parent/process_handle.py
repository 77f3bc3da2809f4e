"""What the lifecycle state machine knows of an OS process: the handle, and the `ProcessOps` calls it makes.

The machine (lifecycle.py) never touches the OS; process_ops.RealProcessOps implements `ProcessOps`
and tests pass a fake (docs/architecture.md, "State machine and restart policy").
"""

from __future__ import annotations

import signal as signal_mod
from dataclasses import dataclass, field
from typing import Protocol

from supervisor.config.agent import AgentSpec


class SpawnError(Exception):
    """The agent's command cannot be started (bad path, permissions, exec failure)."""


@dataclass
class ProcessHandle:
    """One spawned (or adopted) agent process and the tree it grew."""

    pid: int
    pgid: int
    create_time: float
    generation: int
    started_mono: float
    started_wall: float
    adopted: bool = False
    exited: bool = False
    start_ticks: int | None = None  # /proc start time in clock ticks: identity that survives clock steps
    boot_id: str = ""
    # pid -> start ticks of every live process seen in the tree, so stop can wait for all of them.
    tree: dict[int, int] = field(default_factory=dict)
    cgroup: str | None = None  # the agent's cgroup directory, in cgroup mode (supervisor/common/cgroups.py)
    os_state: object = None  # owned by the ProcessOps implementation (Popen, pidfd, ...)
    launch: dict[str, str] | None = None  # what it was started with (launch_spec.launch_of); None if unknown
    table_stamp: int = 0  # owned by ProcessOps: the last event (signal, exit) a process-table snapshot must postdate


class ProcessOps(Protocol):
    """The OS calls the state machine needs; see process_ops.RealProcessOps."""

    def spawn(self, spec: AgentSpec, generation: int, now: float) -> ProcessHandle: ...

    def signal_tree(self, handle: ProcessHandle, signum: int) -> None: ...

    def signal_main(self, handle: ProcessHandle, signum: int) -> bool:
        """Signal only the agent's main process (a reload signal); False when it is gone."""
        ...

    def tree_alive(self, handle: ProcessHandle) -> bool: ...

    def collect_exit(self, handle: ProcessHandle) -> None:
        """Deliver the exit of a process that has ended but whose exit the loop has not yet handled."""
        ...


def signal_name(signum: int | None) -> str | None:
    """'SIGTERM' for 15, 'signal 99' for a number with no name, None for None."""
    if signum is None:
        return None
    try:
        return signal_mod.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_exit(code: int | None, signum: int | None) -> str:
    """'exit code 3', 'killed by SIGKILL' or 'exit status unknown'."""
    if signum is not None:
        return f"killed by {signal_name(signum)}"
    if code is not None:
        return f"exit code {code}"
    return "exit status unknown"
