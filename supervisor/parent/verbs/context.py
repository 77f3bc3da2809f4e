"""What a verb may use of the parent: the one narrow, typed interface every handler gets instead of the
daemon (docs/architecture.md, "Control protocol").

The daemon builds it once its pieces exist; a test builds one from fakes. A verb that needs something
new adds a field here, so what the verbs reach stays visible in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Protocol

from supervisor.common.stall_watch import StallWatch
from supervisor.parent.event_log import EventLog
from supervisor.parent.heartbeat_apply import HeartbeatApplier
from supervisor.parent.heartbeat_feed import IntakeGrace
from supervisor.parent.history_store import HistoryStore
from supervisor.parent.lifecycle import AgentProcess, ProcessHandle
from supervisor.parent.registry import Registry
from supervisor.wire.verbs.reload import ReloadPlan
from supervisor.wire.verbs.status import DaemonStatus
from supervisor.wire.verbs.workers import WorkerInfo


class AgentSignals(Protocol):
    """Signalling an agent's main process or whole tree (process_ops.RealProcessOps)."""

    def signal_tree(self, handle: ProcessHandle, signum: int) -> None: ...

    def signal_main(self, handle: ProcessHandle, signum: int) -> bool: ...


class Workers(Protocol):
    """The worker pool as verbs see it: its workers' state (worker_pool.WorkerPool)."""

    def describe(self) -> list[WorkerInfo]: ...


@dataclass(frozen=True)
class VerbContext:
    """Exactly what the verbs in supervisor/parent/verbs/ read and call."""

    pid: int
    config_path: Path | None
    registry: Registry
    events: EventLog
    history: HistoryStore
    signals: AgentSignals
    pool: Workers
    heartbeats: HeartbeatApplier  # last heartbeat times, for the workers' snapshot
    grace: IntakeGrace  # since when heartbeat deadlines count
    stalls: StallWatch  # agentd's own stalls
    now: Callable[[], float]  # monotonic
    uptime: Callable[[], float]
    log_path: Callable[[str], Path]  # an agent's live log file, configured or not
    status_info: Callable[[], DaemonStatus]
    intake_counters: Callable[[], dict[str, int]]
    feed_seq: Callable[[], int]  # the state feed's last sequence number
    manager_address: Callable[[], str | None]  # as configured now (reload may change it)
    stop_agents_on_shutdown: Callable[[], bool]  # shutdown.stop_agents as configured now
    after_action: Callable[[], None]  # persist now and let the loop run the agents' timers
    records_written: Callable[[list[str], float], bool]  # blocking: these agents' records on disk within timeout
    wait_for_agents: Callable[[list[AgentProcess], Callable[[AgentProcess], bool], float], Awaitable[None]]
    reload: Callable[[bool], ReloadPlan]  # dry_run -> the plan (applied unless dry_run)
    request_shutdown: Callable[[bool, str], None]  # (stop_agents, why)
