"""How one agent moves between states: every transition, the stop sequence, restart scheduling, timers.

`AgentTransitions` is the machinery under `lifecycle.AgentProcess`, which adds the events and
requests that drive it. Like the rest of the machine it makes no OS calls itself (`ProcessOps`, see
process_handle.py) and takes the monotonic time as an argument (docs/architecture.md, "State machine
and restart policy", "How stop works").
"""

from __future__ import annotations

import logging
import signal as signal_mod
from dataclasses import dataclass

from supervisor.config.health_check import default_startup_grace
from supervisor.parent.agent_runtime import AgentRuntime
from supervisor.parent.launch_spec import launch_of
from supervisor.parent.process_handle import SpawnError
from supervisor.parent.restart_policy import decide, floored_delay, start_limit_hit
from supervisor.wire.states import DOWN_STATES, UP_STATES, AgentState

# Logged under lifecycle's name: the state machine's lines keep the logger they always had.
log = logging.getLogger("supervisor.parent.lifecycle")

# While stopping, how often to look whether the tree is gone, and how long after SIGKILL before we
# say loudly that something survived it (a process in uninterruptible sleep, usually).
STOP_POLL_INTERVAL = 0.1
KILL_GRACE = 5.0


@dataclass(frozen=True)
class ActionResult:
    """Outcome of an operator action on one agent, as reported back to agentctl."""

    ok: bool
    message: str


class AgentTransitions(AgentRuntime):
    """The state changes every event and request of `lifecycle.AgentProcess` is made of."""

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
            grace = self.spec.health_check.startup_grace
            if grace is None:  # AgentSpec resolves it; an explicit 0 allows no time (docs/configuration.md)
                grace = default_startup_grace(self.spec.health_check.heartbeat_timeout)
            self.ready_deadline = self.handle.started_mono + grace
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
        policy = self.spec.restart
        decision = decide(policy, self.restart_count, clean_exit=clean_exit, forced=forced)
        if decision.action == "stay_stopped":
            # never_is_failure: nothing ran, so staying down is not a stop but a failure.
            self._set(AgentState.FAILED if never_is_failure else AgentState.STOPPED, f"{reason}; {decision.why}")
            return
        gave_up = decision.why if decision.action == "give_up" else start_limit_hit(policy, self.auto_starts, now)
        if gave_up:
            self._set(AgentState.FAILED, f"{reason}; {gave_up}")
            return
        delay = floored_delay(policy, decision.delay, self.handle.started_mono if self.handle else None, now)
        self.restart_count += 1
        self._count_restart(reason, self.pending_kind)
        self.backoff_until = now + delay
        self.auto_starts.append(self.backoff_until)
        self._set(AgentState.RESTARTING, f"{reason}; restart {self.restart_count} in {delay:.3g}s")
