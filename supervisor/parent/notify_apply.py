"""Applying an agent's sd_notify datagrams: only a process of that agent is heard (docs/architecture.md,
"sd_notify for agents").

The sender check and MAINPID= go through the process facade; the clock and the outputs are passed in.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Callable, Protocol

from supervisor.common.rate_limited_log import RateLimitedLog
from supervisor.parent.lifecycle import AgentProcess, ProcessHandle
from supervisor.parent.notify_socket import Sender, parse_notify
from supervisor.parent.registry import Registry
from supervisor.wire.states import PROCESS_STATES

log = logging.getLogger("supervisor.parent.daemon")  # the parent's log lines keep their logger name


class NotifyOps(Protocol):
    """The process calls the sender check needs; see process_ops.RealProcessOps."""

    def is_member(self, handle: ProcessHandle, pid: int) -> bool | None: ...

    def set_main_pid(self, agent_id: str, handle: ProcessHandle, pid: int) -> str | None: ...


class NotifyApplier:
    """Checks who sent a datagram, then hands the message to the agent's state machine."""

    def __init__(self, registry: Registry, ops: NotifyOps, counters: Counter[str], socket_uid: Callable[[str], int],
                 publish: Callable[[AgentProcess], None], after_action: Callable[[], None],
                 now: Callable[[], float], wall: Callable[[], float]) -> None:
        self.registry = registry
        self.ops = ops
        self.counters = counters  # notify_socket.NotifyHub.counters
        self.socket_uid = socket_uid  # the uid owning the agent's notify socket
        self.publish = publish
        self.after_action = after_action
        self.now, self.wall = now, wall
        self._log = RateLimitedLog(log, 10.0)

    def apply(self, agent_id: str, sender: Sender | None, data: bytes) -> None:
        """An sd_notify datagram on an agent's socket: act on it only if a process of that agent sent it."""
        agent = self.registry.find(agent_id)
        if agent is None or agent.handle is None or agent.state not in PROCESS_STATES:
            self.counters["dropped_not_running"] += 1
            return
        if sender is None:
            self.counters["dropped_no_credentials"] += 1
            return
        if not self._from_the_agent(agent, sender):
            self.counters["dropped_foreign_sender"] += 1
            self._log("%s: sd_notify message from pid %d (uid %d), which is not a process of this agent; dropped", agent_id, sender.pid, sender.uid)
            return
        msg = parse_notify(data)
        if msg.problems:
            self.counters["bad_assignments"] += 1
            self._log("%s: sd_notify message from pid %d: %s", agent_id, sender.pid, "; ".join(msg.problems))
        now, wall = self.now(), self.wall()
        if msg.mainpid is not None:
            why = self.ops.set_main_pid(agent_id, agent.handle, msg.mainpid)
            if why:
                self._log("%s: %s; main process stays pid %d", agent_id, why, agent.handle.pid)
            else:
                agent.dirty = True
                self.publish(agent)  # heartbeat intakes check senders against the main pid
        old_status = agent.notify_status
        agent.on_notify(now, wall, msg)
        if msg.watchdog:
            self.counters["watchdog"] += 1
        if msg.status is not None and msg.status != old_status:
            log.info("%s: STATUS=%s", agent_id, msg.status)
        if msg.stopping or msg.reloading:
            log.info("%s: %s", agent_id, "STOPPING=1" if msg.stopping else "RELOADING=1")
        self.after_action()

    def _from_the_agent(self, agent: AgentProcess, sender: Sender) -> bool:
        member = self.ops.is_member(agent.handle, sender.pid)
        if member is None:
            # Gone before we looked (a one-shot sender): the kernel-checked uid must be the agent's
            # (the socket is 0600 and owned by it) or root.
            member = sender.uid in (0, self.socket_uid(agent.spec.id))
            self.counters["unverified_exited_sender"] += 1
        return member
