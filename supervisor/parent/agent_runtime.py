"""What agentd knows about one agent at run time, and how that maps to and from its metadata record.

`AgentRuntime` holds the fields; its subclass `lifecycle.AgentProcess` holds the transitions that
change them. The record mapping lives here so the machine reads as transitions only
(docs/agentd.md, Files agentd writes).
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Callable

from supervisor.common.metadata_store import AgentRecord, ExitRecord, iso_utc, parse_iso
from supervisor.config.agent import AgentSpec
from supervisor.parent.process_handle import ProcessHandle, ProcessOps
from supervisor.wire.states import UP_STATES, AgentState

if TYPE_CHECKING:
    from supervisor.parent.lifecycle import AgentProcess

TransitionCallback = Callable[["AgentProcess", AgentState, AgentState, str], None]


class AgentRuntime:
    """The runtime fields of one supervised agent, restored from and saved to its AgentRecord."""

    def __init__(
        self,
        spec: AgentSpec,
        ops: ProcessOps,
        on_transition: TransitionCallback | None = None,
        record: AgentRecord | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec
        self.ops = ops
        self.on_transition = on_transition or (lambda *a: None)
        self.wall = wall
        self.state = AgentState.STOPPED
        self.reason = "not started"
        self.handle: ProcessHandle | None = None
        self.generation = 0
        self.restart_count = 0
        self.total_restarts = 0
        self.operator_stopped = False
        self.removed = False
        self.last_exit: ExitRecord | None = None
        self.last_restart_reason: str | None = None
        self.last_restart_wall: float | None = None
        # Whether the current process came from a restart (so its reason describes it) or from a plain start.
        self.started_by_restart = False
        self.last_heartbeat_wall: float | None = None
        self.last_heartbeat_mono: float | None = None
        self.reported: dict[str, object] = {}  # version/cpu/memory/status from heartbeats
        self.config_problem: str | None = None  # why the last change of config_file was refused
        self.health: str | None = None
        self.health_detail: str = ""
        self.restarts_by_kind: dict[str, int] = {}  # exit, operator, config, no_heartbeat, over_threshold, ...
        self.pending_kind = "exit"
        self.backoff_until: float | None = None
        self.stop_deadline: float | None = None
        self.kill_sent_at: float | None = None
        # How the current (or, once over, the last) stop went beyond the stop signal: "" or e.g.
        # "SIGKILL after 10s (still running after SIGTERM)"; agentctl shows it live and in the result.
        self.stop_note = ""
        self.kill_warned = False
        # What to do once the tree is gone: None (stay stopped), "start", "policy" or "remove".
        self.after_stop: str | None = None
        self.pending_reason = ""
        self.pending_forced = False
        self.pending_clean = False
        # sd_notify (supervisor/parent/notify_socket.py): STATUS= text, and RELOADING=1/STOPPING=1 until READY=1.
        self.notify_status: str | None = None
        self.notify_phase: str | None = None
        self.ready_deadline: float | None = None  # `ready: notify`: READY=1 is due by then
        self.auto_starts: deque[float] = deque()  # monotonic times of recent automatic starts (start limit)
        self.dirty = False  # a change worth persisting at once
        self.hb_dirty = False  # heartbeat-only changes, persisted coalesced
        if record is not None:
            self._restore(record)

    def _restore(self, record: AgentRecord) -> None:
        self.restart_count = record.restart_count
        self.last_restart_wall = parse_iso(record.last_restart)
        # The last heartbeat survives an agentd restart, so a re-adopted agent is judged from it
        # rather than from its (possibly long past) start.
        self.last_heartbeat_wall = parse_iso(record.last_heartbeat)
        self.total_restarts = record.total_restarts
        self.operator_stopped = record.operator_stopped
        self.last_exit = record.last_exit
        self.last_restart_reason = record.last_restart_reason
        self.started_by_restart = record.started_by_restart
        self.health = record.health
        self.notify_status = record.notify_status
        if record.version:
            self.reported["version"] = record.version
        if record.status == AgentState.FAILED:
            self.state = AgentState.FAILED
            self.reason = "failed before agentd restarted"

    def _count_restart(self, reason: str, kind: str) -> None:
        self.total_restarts += 1
        self.restarts_by_kind[kind] = self.restarts_by_kind.get(kind, 0) + 1
        self.last_restart_reason = reason
        self.last_restart_wall = self.wall()

    def heartbeat_age(self, now: float) -> float | None:
        """Seconds since the last heartbeat was received (monotonic, so wall-clock jumps do not matter)."""
        if self.last_heartbeat_mono is None:
            return None
        return max(0.0, now - self.last_heartbeat_mono)

    def uptime(self, now: float) -> float | None:
        """Seconds since the current process started, while one runs."""
        if self.handle is None or self.state not in UP_STATES:
            return None
        return max(0.0, now - self.handle.started_mono)

    def to_record(self) -> AgentRecord:
        """The metadata document for this agent (docs/agentd.md, Files agentd writes)."""
        h = self.handle if self.state in (AgentState.STARTING, AgentState.RUNNING, AgentState.STOPPING) else None
        return AgentRecord(
            id=self.spec.id,
            type=self.spec.type,
            version=self.reported.get("version"),
            status=self.state.value,
            health=self.health,
            pid=h.pid if h else None,
            create_time=h.create_time if h else None,
            start_ticks=h.start_ticks if h else None,
            boot_id=h.boot_id or None if h else None,
            pgid=h.pgid if h else None,
            cgroup=h.cgroup if h else None,
            notify_status=self.notify_status if h else None,
            start_time=iso_utc(h.started_wall) if h else None,
            restart_count=self.restart_count,
            total_restarts=self.total_restarts,
            last_restart=iso_utc(self.last_restart_wall) if self.last_restart_wall else None,
            last_restart_reason=self.last_restart_reason,
            started_by_restart=self.started_by_restart,
            last_exit=self.last_exit,
            last_heartbeat=iso_utc(self.last_heartbeat_wall) if self.last_heartbeat_wall else None,
            cpu=self.reported.get("cpu"),
            memory=self.reported.get("memory"),
            operator_stopped=self.operator_stopped,
            launch=h.launch if h else None,
            stop_signal=self.spec.stop_signal,
            stop_timeout=self.spec.stop_timeout,
        )
