"""One agent's lifecycle state machine, driven by events and by `tick(now)`.

The machine makes no OS calls itself: it asks a `ProcessOps` facade to spawn, signal and inspect
process trees, and takes the monotonic time as an argument. Tests drive it with a fake facade and
a hand-moved clock; the daemon drives it with `process_ops.RealProcessOps` and `time.monotonic()`.
"""

from __future__ import annotations

import logging
import signal as signal_mod
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol

from supervisor.config.schema import AgentSpec
from supervisor.parent.launch_spec import launch_of
from supervisor.common.metadata_store import AgentRecord, ExitRecord, iso_utc, parse_iso
from supervisor.parent.restart_policy import decide
from supervisor.wire.states import DOWN_STATES, UP_STATES, AgentState

log = logging.getLogger(__name__)

# While stopping, how often to look whether the tree is gone, and how long after SIGKILL before we
# say loudly that something survived it (a process in uninterruptible sleep, usually).
STOP_POLL_INTERVAL = 0.1
KILL_GRACE = 5.0
# Below any configured restart.min_interval: an agent that dies at once costs at most 10 starts a second.
MIN_RESTART_FLOOR = 0.1


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


@dataclass(frozen=True)
class ActionResult:
    """Outcome of an operator action on one agent, as reported back to agentctl."""

    ok: bool
    message: str


TransitionCallback = Callable[["AgentProcess", AgentState, AgentState, str], None]


def _signal_name(signum: int | None) -> str | None:
    if signum is None:
        return None
    try:
        return signal_mod.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_exit(code: int | None, signum: int | None) -> str:
    """'exit code 3', 'killed by SIGKILL' or 'exit status unknown'."""
    if signum is not None:
        return f"killed by {_signal_name(signum)}"
    if code is not None:
        return f"exit code {code}"
    return "exit status unknown"


class AgentProcess:
    """The runtime state of one supervised agent (docs/agentd.md, Agent states)."""

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

    # ----------------------------------------------------------------- restore / adopt

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

    def adopt(self, handle: ProcessHandle, now: float, recorded_state: str) -> None:
        """Take over a process that outlived the previous agentd."""
        self.generation = handle.generation
        self.handle = handle
        if self.last_heartbeat_wall is not None:
            self.last_heartbeat_mono = now - max(0.0, self.wall() - self.last_heartbeat_wall)
        if self.operator_stopped:
            # The previous agentd died while carrying out an operator stop: finish it.
            self._set(AgentState.RUNNING, f"re-adopted pid {handle.pid}")
            self.stop(now, reason="operator stop (resumed after agentd restart)")
            return
        waits = self.spec.expects_heartbeat or self.spec.ready == "notify"
        new = AgentState.STARTING if recorded_state == AgentState.STARTING and waits else AgentState.RUNNING
        self._set(new, f"re-adopted pid {handle.pid} after agentd restart")

    def stop_leftovers(self, handle: ProcessHandle, now: float) -> None:
        """The recorded main process vanished while agentd was down but its group lives on: stop
        those processes before anything starts, so a new generation never runs beside the old one."""
        self.generation = handle.generation
        self.handle = handle
        self.state = AgentState.RUNNING  # what the record said; _begin_stop records the transition
        wanted = self.spec.enabled and not self.operator_stopped
        self._begin_stop(now, "leftover processes of a vanished main process", after="start" if wanted else None)

    # ----------------------------------------------------------------- operator actions

    def start(self, now: float, reason: str = "operator start") -> ActionResult:
        """Operator start: always revives, even a failed agent, and clears the operator stop."""
        self.operator_stopped = False
        self.dirty = True
        if self.state in UP_STATES:
            return ActionResult(True, f"already {self.state.value} (pid {self.handle.pid})")
        if self.state == AgentState.STOPPING:
            if self.after_stop == "remove":
                return ActionResult(False, "is being removed by a reload")
            self.after_stop = "start"
            self.pending_reason = reason
            return ActionResult(True, "will start once the old process tree is gone")
        # stopped, failed, restarting: start now with a fresh retry budget.
        self.restart_count = 0
        self.auto_starts.clear()
        self.backoff_until = None
        return self._spawn(now, reason)

    def stop(self, now: float, reason: str = "operator stop", operator: bool = True, force: bool = False) -> ActionResult:
        """Stop the agent's whole tree; an operator stop keeps it down until an operator starts it.

        `force` sends SIGKILL to the tree at once (`agentctl stop --force`), also to a tree already stopping."""
        if operator:
            self.operator_stopped = True
            self.dirty = True
        if self.state in DOWN_STATES:
            if self.state == AgentState.FAILED and operator:
                self._set(AgentState.STOPPED, reason)
            return ActionResult(True, f"already {self.state.value}")
        if self.state == AgentState.RESTARTING:
            self.backoff_until = None
            self._set(AgentState.STOPPED, f"{reason} (pending restart cancelled)")
            return ActionResult(True, "stopped (pending restart cancelled)")
        if self.state == AgentState.STOPPING:
            if self.after_stop != "remove":
                self.after_stop = None
            if force and self.kill_sent_at is None and self.handle is not None:
                self.ops.signal_tree(self.handle, signal_mod.SIGKILL)
                self.kill_sent_at = now
                self.stop_note = "SIGKILL at once (--force)"
                self.dirty = True
                return ActionResult(True, "already stopping; sent SIGKILL")
            return ActionResult(True, "already stopping")
        self._begin_stop(now, reason + (" (SIGKILL)" if force else ""), after=None, kill=force)
        return ActionResult(True, "stopping")

    def restart(self, now: float, reason: str = "operator restart") -> ActionResult:
        """Stop then start; an operator restart also clears an operator stop."""
        self.operator_stopped = False
        self.dirty = True
        if self.state in UP_STATES:
            self._count_restart(reason, "operator")
            self._begin_stop(now, reason, after="start")
            return ActionResult(True, "restarting")
        return self.start(now, reason)

    def remove(self, now: float) -> ActionResult:
        """Stop for good because the agent left the configuration."""
        if self.state in DOWN_STATES or self.state == AgentState.RESTARTING:
            self.backoff_until = None
            self.removed = True
            self._set(AgentState.STOPPED, "removed from configuration")
            return ActionResult(True, "removed")
        if self.state == AgentState.STOPPING:
            self.after_stop = "remove"
            return ActionResult(True, "will be removed once stopped")
        self._begin_stop(now, "removed from configuration", after="remove")
        return ActionResult(True, "stopping to remove")

    def cancel_remove(self, spec: AgentSpec) -> ActionResult:
        """A reload put back an agent whose removal is still stopping it: keep it, start it once stopped."""
        self.spec = spec
        self.removed = False
        if self.after_stop == "remove":
            self.after_stop = "start" if spec.enabled and not self.operator_stopped else None
            self.pending_reason = "re-added by reload"
        return ActionResult(True, "re-added")

    def update_spec(self, spec: AgentSpec, now: float) -> ActionResult:
        """Take a changed spec from reload; restarts a running agent, never starts an operator-stopped one."""
        self.spec = spec
        self.dirty = True
        if not spec.enabled:
            if self.state in DOWN_STATES:
                return ActionResult(True, "updated (disabled)")
            return self.stop(now, reason="disabled by reload", operator=False)
        if self.state in UP_STATES:
            self._count_restart("configuration changed", "config")
            self._begin_stop(now, "configuration changed", after="start")
            return ActionResult(True, "restarting with the new configuration")
        if self.state == AgentState.STOPPING:
            return ActionResult(True, "updated; takes effect at the next start")
        if self.state == AgentState.RESTARTING:
            return ActionResult(True, "updated; used by the pending restart")
        if self.operator_stopped:
            return ActionResult(True, "updated; stays stopped (stopped by operator)")
        return self.start_if_wanted(now, "enabled by reload") or ActionResult(True, "updated")

    def start_if_wanted(self, now: float, reason: str) -> ActionResult | None:
        """Start at daemon start-up or after reload unless disabled, failed or operator-stopped."""
        if not self.spec.enabled or self.operator_stopped or self.state != AgentState.STOPPED:
            return None
        return self._spawn(now, reason)

    # ----------------------------------------------------------------- events from the world

    def on_exit(self, now: float, generation: int, code: int | None, signum: int | None) -> None:
        """The main process of `generation` exited; a stale generation is ignored."""
        handle = self.handle
        if handle is None or generation != handle.generation or handle.exited:
            log.debug("%s: ignoring exit of stale generation %s", self.spec.id, generation)
            return
        handle.exited = True
        what = describe_exit(code, signum)
        self.last_exit = ExitRecord(code=code, signal=_signal_name(signum), time=iso_utc(self.wall()), reason=None)
        self.dirty = True
        if self.state == AgentState.STOPPING:
            self.last_exit.reason = self.pending_reason or "stopped"
            return  # tick() finishes the stop once the whole tree is gone
        uptime = now - handle.started_mono
        reason = f"exited unexpectedly ({what}) after {uptime:.1f}s"
        if self.notify_phase == "stopping":
            reason = f"exited after announcing STOPPING=1 ({what}) after {uptime:.1f}s"
        self.last_exit.reason = reason
        if self.state not in UP_STATES:
            return
        if self.ops.tree_alive(handle):
            # The main process died but its children linger: clean them up before any restart
            # so the next generation never runs beside the old one.
            self._begin_stop(now, reason + "; stopping leftover processes", after="policy", clean=code == 0, kind="exit")
            return
        self.pending_kind = "exit"
        self._after_failure(now, reason, forced=False, clean_exit=(code == 0 and signum is None))

    def on_heartbeat(self, now: float, wall: float, fields: dict[str, object] | None = None) -> None:
        """A valid heartbeat arrived; the first one makes a starting agent running."""
        self.last_heartbeat_mono = now
        self.last_heartbeat_wall = wall
        if fields:
            self.reported.update({k: v for k, v in fields.items() if v is not None})
        self.hb_dirty = True  # persisted at most once per metadata.flush_interval
        if self.state == AgentState.STARTING and self.spec.ready != "notify":
            self._set(AgentState.RUNNING, "first heartbeat received")

    def on_notify(self, now: float, wall: float, msg) -> None:
        """An sd_notify message from a verified member of this agent (a notify_socket.NotifyMessage)."""
        if self.handle is None or self.state not in (AgentState.STARTING, AgentState.RUNNING, AgentState.STOPPING):
            return
        if msg.status is not None and msg.status != self.notify_status:
            self.notify_status = msg.status
            self.hb_dirty = True
        if msg.extend_timeout_usec is not None:
            until = now + msg.extend_timeout_usec / 1e6
            if self.state == AgentState.STARTING and self.ready_deadline is not None:
                self.ready_deadline = max(self.ready_deadline, until)
            elif self.state == AgentState.STOPPING and self.kill_sent_at is None and self.stop_deadline is not None:
                self.stop_deadline = max(self.stop_deadline, until)
        if msg.reloading:
            self.notify_phase = "reloading"
        if msg.stopping:
            self.notify_phase = "stopping"
        if msg.ready:
            if self.notify_phase == "reloading":
                self.notify_phase = None
            if self.state == AgentState.STARTING:
                self.ready_deadline = None
                self._set(AgentState.RUNNING, "READY=1 received")
        if msg.watchdog:
            self.on_heartbeat(now, wall)
        if msg.watchdog_trigger and self.state in UP_STATES and not self.operator_stopped:
            reason = "watchdog: the agent asked for it (WATCHDOG=trigger)"
            self.health, self.health_detail = "watchdog", "WATCHDOG=trigger"
            if self.spec.restart.policy != "never":
                self._begin_stop(now, reason, after="policy", forced=True, kind="watchdog")

    def verdict(self, now: float, generation: int, reason: str) -> ActionResult:
        """A health verdict ("no_heartbeat: ...") asks for a restart; stale generations and operator stops win."""
        if self.handle is not None and generation == self.handle.generation:
            # The health worker can see a process gone from /proc before the loop reads its pidfd: the
            # exit (a clean one may mean "stay stopped") decides, not a `dead` verdict that raced it.
            self.ops.collect_exit(self.handle)
        handle = self.handle
        if handle is None or generation != handle.generation:
            return ActionResult(False, "stale verdict (process has since been replaced)")
        if self.operator_stopped or self.state not in UP_STATES:
            return ActionResult(False, f"ignored: agent is {self.state.value}")
        kind, _, detail = reason.partition(": ")
        self.health, self.health_detail = kind, detail
        self.dirty = True
        if self.spec.restart.policy == "never":
            return ActionResult(False, "not restarted: restart policy is 'never'")
        self._begin_stop(now, reason, after="policy", forced=True, kind=kind)
        return ActionResult(True, "restarting")

    def config_file_changed(self, now: float, problem: str | None) -> ActionResult:
        """The agent's config_file changed on disk: apply it (reload signal or restart), or refuse an invalid one."""
        action = self.spec.config_change_action
        if problem is not None:
            self.config_problem = problem
            return ActionResult(False, f"not applied, the agent keeps running as it is: {problem}")
        self.config_problem = None
        if action == "none" or self.state not in UP_STATES or self.handle is None:
            return ActionResult(False, f"nothing to do: agent is {self.state.value} (the next start reads the file)")
        if action == "reload":
            name = self.spec.reload_signal or "HUP"
            if not self.ops.signal_main(self.handle, getattr(signal_mod, "SIG" + name)):
                return ActionResult(False, "not applied: the main process is gone")
            return ActionResult(True, f"sent SIG{name} to pid {self.handle.pid}")
        self._count_restart("config_file changed", "config")
        self._begin_stop(now, "config_file changed", after="start")
        return ActionResult(True, "restarting with the new config_file")

    def set_health(self, generation: int, health: str, detail: str) -> None:
        """The health worker's latest judgement of this generation (no action; verdicts act)."""
        if self.handle is None or generation != self.handle.generation or self.state not in UP_STATES:
            return
        if health in ("starting", "unknown"):
            health = None  # not judged yet: show nothing rather than echo the state
        if (health, detail) != (self.health, self.health_detail):
            self.health, self.health_detail = health, detail
            self.hb_dirty = True

    # ----------------------------------------------------------------- timers

    def tick(self, now: float) -> float | None:
        """Advance timers; returns the monotonic time this agent next needs a tick, if any."""
        if self.state == AgentState.RESTARTING:
            if self.backoff_until is not None and now >= self.backoff_until:
                self._spawn(now, self.last_restart_reason or "restart")
            else:
                return self.backoff_until
        if self.state == AgentState.STARTING and self.handle is not None:
            if self.spec.ready == "notify":
                return self._tick_not_ready(now)
            if self.spec.expects_heartbeat:
                return None  # the first heartbeat (or the health worker's verdict) moves it on
            ready_at = self.handle.started_mono + self.spec.start_seconds
            if now >= ready_at:
                # On a busy loop the exit of a process that died within start_seconds can still be
                # waiting behind this timer: take it first, so a crash during start is never "running".
                self.ops.collect_exit(self.handle)
                if self.state != AgentState.STARTING:
                    return now
                self._set(AgentState.RUNNING, f"alive for {self.spec.start_seconds:g}s")
            else:
                return ready_at
        if self.state == AgentState.RUNNING and self.handle is not None:
            if self.restart_count:
                reset_at = self.handle.started_mono + self.spec.restart.reset_after
                if now >= reset_at:
                    self.restart_count = 0
                    self.dirty = True
                    return None
                return reset_at
            return None
        if self.state == AgentState.STOPPING:
            return self._tick_stopping(now)
        return None

    def _tick_not_ready(self, now: float) -> float | None:
        """`ready: notify`: no READY=1 by startup_grace (plus EXTEND_TIMEOUT_USEC) is a failed start."""
        assert self.handle is not None
        if self.ready_deadline is None:
            self.ready_deadline = self.handle.started_mono + (self.spec.health_check.startup_grace or 30.0)
        if now < self.ready_deadline:
            return self.ready_deadline
        waited = now - self.handle.started_mono
        self.ready_deadline = None
        self._begin_stop(now, f"not_ready: no READY=1 within {waited:.0f}s of start", after="policy", forced=True, kind="not_ready")
        return now

    def _tick_stopping(self, now: float) -> float | None:
        handle = self.handle
        assert handle is not None
        if handle.exited and not self.ops.tree_alive(handle):
            self._finish_stop(now)
            return now  # the follow-up (start, backoff) may need a tick right away
        if self.kill_sent_at is None and self.stop_deadline is not None and now >= self.stop_deadline:
            log.warning("%s: still running %.0fs after SIG%s; sending SIGKILL to its tree", self.spec.id, self.spec.stop_timeout, self.spec.stop_signal)
            self.ops.signal_tree(handle, signal_mod.SIGKILL)
            self.kill_sent_at = now
            self.stop_note = f"SIGKILL after {self.spec.stop_timeout:g}s (still running after SIG{self.spec.stop_signal})"
            self.dirty = True  # shown live by status and by agentctl's progress view
        elif self.kill_sent_at is not None and not self.kill_warned and now >= self.kill_sent_at + KILL_GRACE:
            self.kill_warned = True
            log.error("%s: processes survive SIGKILL for %.0fs (uninterruptible sleep?); still waiting", self.spec.id, KILL_GRACE)
        return now + STOP_POLL_INTERVAL

    # ----------------------------------------------------------------- internals

    def _set(self, new: AgentState, reason: str) -> None:
        old = self.state
        self.state = new
        if new in DOWN_STATES:
            # Nothing runs, so nothing is judged: say why instead of keeping a stale "healthy".
            self.health, self.health_detail = ("operator_stopped" if self.operator_stopped else new.value), ""
        elif new not in UP_STATES and self.health == "healthy":
            self.health, self.health_detail = None, ""  # a verdict's kind stays visible while restarting
        self.reason = reason
        self.dirty = True
        self.on_transition(self, old, new, reason)

    def _spawn(self, now: float, reason: str) -> ActionResult:
        # From restarting (a backoff ran out) or stopping (a restart's stop finished); not from stopped/failed.
        by_restart = self.state in (AgentState.RESTARTING, AgentState.STOPPING)
        self.generation += 1
        try:
            handle = self.ops.spawn(self.spec, self.generation, now)
        except SpawnError as exc:
            # A binary missing for a while (an upgrade, a late mount) is retried under the restart policy,
            # as the original daemon did; `failed` comes only once max_retries is spent (docs/migration.md).
            self.handle = None
            self.pending_kind = "spawn"
            self._after_failure(now, f"cannot start: {exc}", forced=True, clean_exit=False, never_is_failure=True)
            return ActionResult(False, self.reason)
        handle.launch = launch_of(self.spec)
        self.handle = handle
        self.started_by_restart = by_restart
        self.backoff_until = None
        self.stop_deadline = None
        self.kill_sent_at = None
        self.kill_warned = False
        self.after_stop = None
        self.health = None
        self.health_detail = ""
        self.last_heartbeat_mono = None
        self.last_heartbeat_wall = None
        self.notify_status = self.notify_phase = None
        self.ready_deadline = None
        self._set(AgentState.STARTING, f"{reason} (pid {handle.pid})")
        return ActionResult(True, f"started (pid {handle.pid})")

    def _begin_stop(self, now: float, reason: str, after: str | None, forced: bool = False, clean: bool = False, kind: str = "exit", kill: bool = False) -> None:
        handle = self.handle
        assert handle is not None
        self.after_stop = after
        self.pending_kind = kind
        self.pending_reason = reason
        self.pending_forced = forced
        self.pending_clean = clean
        self.stop_deadline = now + self.spec.stop_timeout
        self.kill_sent_at = now if kill else None
        self.stop_note = "SIGKILL at once (--force)" if kill else ""
        self.kill_warned = False
        signum = signal_mod.SIGKILL if kill else getattr(signal_mod, "SIG" + self.spec.stop_signal)
        self.ops.signal_tree(handle, signum)
        self._set(AgentState.STOPPING, reason)

    def _finish_stop(self, now: float) -> None:
        after, reason = self.after_stop, self.pending_reason
        self.after_stop = None
        self.stop_deadline = None
        self.kill_sent_at = None
        if after == "remove":
            self.removed = True
            self._set(AgentState.STOPPED, "removed from configuration")
        elif after == "start" and not self.operator_stopped:
            self._spawn(now, reason)
        elif after == "policy" and not self.operator_stopped:
            self._after_failure(now, reason, forced=self.pending_forced, clean_exit=self.pending_clean)
        else:
            self._set(AgentState.STOPPED, reason)

    def _after_failure(self, now: float, reason: str, forced: bool, clean_exit: bool, never_is_failure: bool = False) -> None:
        decision = decide(self.spec.restart, self.restart_count, clean_exit=clean_exit, forced=forced)
        if decision.action == "stay_stopped" and never_is_failure:
            self._set(AgentState.FAILED, f"{reason}; {decision.why}")  # nothing ran: not a stop but a failure
            return
        if decision.action == "stay_stopped":
            self._set(AgentState.STOPPED, f"{reason}; {decision.why}")
            return
        if decision.action == "give_up":
            self._set(AgentState.FAILED, f"{reason}; {decision.why}")
            return
        limited = self._start_limit_hit(now)
        if limited:
            self._set(AgentState.FAILED, f"{reason}; {limited}")
            return
        delay = decision.delay
        if self.handle is not None:
            # The floor: however short the backoff step, two starts are min_interval apart.
            floor = max(MIN_RESTART_FLOOR, self.spec.restart.min_interval)
            delay = max(delay, self.handle.started_mono + floor - now)
        self.restart_count += 1
        self._count_restart(reason, self.pending_kind)
        self.backoff_until = now + delay
        self.auto_starts.append(self.backoff_until)
        self._set(AgentState.RESTARTING, f"{reason}; restart {self.restart_count} in {delay:.3g}s")

    def _start_limit_hit(self, now: float) -> str | None:
        """Why the next automatic start would break restart.start_limit_burst, or None."""
        policy = self.spec.restart
        window = self.auto_starts
        while window and window[0] <= now - policy.start_limit_interval:
            window.popleft()
        if policy.start_limit_burst and len(window) >= policy.start_limit_burst:
            return (f"gave up: {len(window)} automatic starts within {policy.start_limit_interval:g}s "
                    f"(restart.start_limit_burst {policy.start_limit_burst}); agentctl start revives it")
        return None

    def _count_restart(self, reason: str, kind: str) -> None:
        self.total_restarts += 1
        self.restarts_by_kind[kind] = self.restarts_by_kind.get(kind, 0) + 1
        self.last_restart_reason = reason
        self.last_restart_wall = self.wall()

    # ----------------------------------------------------------------- views

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
