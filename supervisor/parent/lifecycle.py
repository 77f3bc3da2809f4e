"""One agent's lifecycle state machine, driven by events and by `tick(now)`.

The machine makes no OS calls itself: it asks a `ProcessOps` facade (process_handle.py) to spawn,
signal and inspect process trees, and takes the monotonic time as an argument. Tests drive it with a
fake facade and a hand-moved clock; the daemon drives it with `process_ops.RealProcessOps` and
`time.monotonic()`. Three layers, one concept each: agent_runtime.py holds the fields and their
metadata record, agent_transitions.py the state changes and timers (`tick`), and this module the
events and requests that drive them.
"""

from __future__ import annotations

import logging
import signal as signal_mod

from supervisor.common.metadata_store import ExitRecord, iso_utc
from supervisor.config.agent import AgentSpec
from supervisor.parent.agent_transitions import ActionResult, AgentTransitions
from supervisor.parent.process_handle import ProcessHandle, describe_exit, signal_name
from supervisor.wire.states import DOWN_STATES, UP_STATES, AgentState

log = logging.getLogger(__name__)


class AgentProcess(AgentTransitions):
    """The runtime state of one supervised agent (docs/agentd.md, Agent states)."""

    # ----------------------------------------------------------------- adopt

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
        if not self.wants_start():
            return None
        return self._spawn(now, reason)

    def wants_start(self) -> bool:
        """Whether `start_if_wanted` would start a process now."""
        return self.spec.enabled and not self.operator_stopped and self.state == AgentState.STOPPED

    # ----------------------------------------------------------------- events from the world

    def on_exit(self, now: float, generation: int, code: int | None, signum: int | None) -> None:
        """The main process of `generation` exited; a stale generation is ignored."""
        handle = self.handle
        if handle is None or generation != handle.generation or handle.exited:
            log.debug("%s: ignoring exit of stale generation %s", self.spec.id, generation)
            return
        handle.exited = True
        what = describe_exit(code, signum)
        self.last_exit = ExitRecord(code=code, signal=signal_name(signum), time=iso_utc(self.wall()), reason=None)
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
        if kind == "dead" and self.ops.tree_alive(handle):
            # The parent is the authority on liveness: its own watch on the process outranks a sample
            # that missed it. The health worker judges again (health_judge.DEAD_RECHECK).
            return ActionResult(False, f"refused: process {handle.pid} is alive by agentd's own watch on it")
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
