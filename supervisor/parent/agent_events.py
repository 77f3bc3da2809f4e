"""What the loop does when an agent tells it something: a transition of its state machine, the exit of
its main process (pidfd), a change of its config_file (docs/architecture.md, "The event loop").

No OS calls of its own: the notify drain and the main-process check are passed in, like the clock,
the state feed and the loop's wake-up.
"""

from __future__ import annotations

import logging
from typing import Callable

from supervisor.common.metadata_store import iso_utc
from supervisor.parent.event_log import EventLog
from supervisor.parent.lifecycle import AgentProcess
from supervisor.parent.process_handle import ProcessHandle
from supervisor.parent.registry import Registry
from supervisor.wire.states import AgentState

log = logging.getLogger("supervisor.parent.daemon")  # the parent's log lines keep their logger name


class AgentEvents:
    """`on_transition`, `on_exit` and `on_config_file_change`, each applied to the registry's agent."""

    def __init__(self, registry: Registry, events: EventLog, publish: Callable[[AgentProcess], None], changed: Callable[[], None],
                 wake: Callable[[], None], after_action: Callable[[], None], now: Callable[[], float],
                 drain_notify: Callable[[str], None], main_moved: Callable[[ProcessHandle], bool]) -> None:
        self.registry = registry
        self.events = events
        self._publish = publish
        self._changed = changed
        self._wake = wake
        self._after_action = after_action
        self._now = now
        self._drain_notify = drain_notify
        self._main_moved = main_moved

    def on_transition(self, agent: AgentProcess, old: AgentState, new: AgentState, reason: str) -> None:
        """Every transition: the event log, a log line, the state feed, the waiting verbs, the loop."""
        self.events.append(iso_utc(), agent.spec.id, old.value, new.value, reason)
        level = logging.WARNING if new in (AgentState.FAILED, AgentState.RESTARTING) else logging.INFO
        log.log(level, "%s: %s -> %s: %s", agent.spec.id, old.value, new.value, reason)
        self._publish(agent)
        self._changed()
        self._wake()

    def on_exit(self, agent_id: str, generation: int, code: int | None, signum: int | None) -> None:
        """A watched main process exited; ignored when its agent is gone or the main process moved on."""
        agent = self.registry.find(agent_id)
        if agent is None:
            return
        self._drain_notify(agent_id)  # a MAINPID= hand-over sent before this exit comes first
        if agent.handle is not None and agent.handle.generation == generation and self._main_moved(agent.handle):
            return  # the process that exited is no longer the main one
        agent.on_exit(self._now(), generation, code, signum)
        self._after_action()

    def on_config_file_change(self, agent_id: str, problem: str | None) -> None:
        """An agent's config_file changed (config_watch.py): apply it by its on_config_change, or refuse it."""
        agent = self.registry.find(agent_id)
        if agent is None:
            return
        result = agent.config_file_changed(self._now(), problem)
        level = logging.WARNING if problem is not None else logging.INFO
        log.log(level, "%s: config_file changed: %s", agent_id, result.message)
        self._after_action()
