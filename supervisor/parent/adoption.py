"""Start-up: re-adopt what the previous agentd left running, stop leftovers, start the rest
(docs/architecture.md, "Re-adoption").

No OS calls of its own: the process facade (`process_ops.RealProcessOps`), the scan for processes
carrying an agent's identity and the clock are passed in, so tests drive it with fakes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Protocol

from supervisor.common.metadata_store import AgentRecord, ExitRecord, iso_utc
from supervisor.config.agent import AgentSpec
from supervisor.parent.agent_identity import main_process
from supervisor.parent.launch_spec import launch_diff, launch_of
from supervisor.parent.lifecycle import AgentProcess, ProcessHandle
from supervisor.parent.registry import Registry
from supervisor.wire.states import PROCESS_STATES, UP_STATES, AgentState

log = logging.getLogger("supervisor.parent.daemon")  # the parent's log lines keep their logger name


class AdoptionOps(Protocol):
    """The process calls adoption needs; see process_ops.RealProcessOps."""

    boot_id: str

    def adopt(self, agent_id: str, record, generation: int, now: float) -> ProcessHandle | None: ...

    def leftovers(self, agent_id: str, record, generation: int, now: float) -> ProcessHandle | None: ...

    def cgroup_leftovers(self, agent_id: str, record, generation: int, now: float) -> ProcessHandle | None: ...

    def runs_configured_command(self, pid: int, spec: AgentSpec) -> bool: ...

    def prelaunch(self, specs: list[AgentSpec]) -> None:
        """Start these agents' processes at once; each one's `spawn` then takes its process."""
        ...

    def drop_prelaunched(self) -> None:
        """Kill any prelaunched process that no `spawn` took."""
        ...


def apply_launch_change(agent: AgentProcess, now: float) -> None:
    """A re-adopted process started with another command, env or user than configured (a reload whose
    restart agentd did not live to finish, or a config edited while it was down): apply it now."""
    if agent.handle is None or agent.state not in UP_STATES or agent.operator_stopped:
        return
    fields = launch_diff(agent.handle.launch, agent.spec)
    if fields:
        log.warning("%s: pid %d was started with another %s than the configuration says; restarting it with the configuration",
                    agent.spec.id, agent.handle.pid, ", ".join(fields))
        agent.update_spec(agent.spec, now)


class Adoption:
    """Builds the registry at start-up from the config and the metadata the previous agentd left."""

    def __init__(self, ops: AdoptionOps, registry: Registry, new_agent: Callable[..., AgentProcess], delete_record: Callable[[str], None],
                 scan_marked: Callable[[], dict], data_dir: Path, wall: Callable[[], float]) -> None:
        self.ops = ops
        self.registry = registry
        self.new_agent = new_agent  # (spec, record) -> AgentProcess, with its notify socket open
        self.delete_record = delete_record
        self.scan_marked = scan_marked  # agent id -> processes carrying its identity (agent_identity.find_marked)
        self.data_dir = data_dir
        self.wall = wall
        self._marked: dict | None = None  # scanned once, on first need

    def load(self, specs: list[AgentSpec], records: dict[str, AgentRecord], now: float) -> None:
        """Re-adopt what the previous agentd left running; start the rest unless told not to."""
        rest = []
        for spec in specs:
            record = records.pop(spec.id, None)
            agent = self.new_agent(spec, record)
            self.registry.add(agent)
            if record is not None and record.pid and record.status in PROCESS_STATES:
                if self._adopt(agent, record, now):
                    continue
            elif self._adopt_marked(agent, now) or self._stop_cgroup_leftovers(agent, record, now):
                continue
            if agent.operator_stopped and agent.state == AgentState.STOPPED:
                agent.reason = "stopped by operator (before agentd restarted)"
            rest.append(agent)
            if agent.wants_start():
                # Launched in a thread while the next agents are checked; started in config order below
                # (docs/performance.md, "Lifecycle"). The identity scan has run: it precedes any start.
                self.ops.prelaunch([spec])
        for agent in rest:
            agent.start_if_wanted(now, "agentd start")
        self.ops.drop_prelaunched()
        for agent_id, record in records.items():
            if record.pid and record.status == AgentState.STOPPING:
                self._finish_orphan(agent_id, record, now)
            elif record.pid and record.status in PROCESS_STATES:
                # Not ours to kill on a guess: the config may simply be the wrong file.
                log.warning("metadata for %s (not in the config) says pid %s may still run; agentd does not manage it", agent_id, record.pid)

    def _adopt(self, agent: AgentProcess, record, now: float) -> bool:
        """Take over the recorded process (or stop the leftovers of a vanished one); True if handled."""
        spec = agent.spec
        handle = self.ops.adopt(spec.id, record, agent.generation + 1, now)
        if handle is not None:
            handle.launch = record.launch
            agent.adopt(handle, now, record.status)
            log.info("%s: re-adopted pid %d left by the previous agentd", spec.id, record.pid)
            if not spec.enabled and agent.state in UP_STATES:
                agent.stop(now, reason="disabled in the configuration", operator=False)
            apply_launch_change(agent, now)
            return True
        log.warning("%s: recorded pid %s is gone or now belongs to another program; treating the agent as exited", spec.id, record.pid)
        agent.last_exit = ExitRecord(code=None, signal=None, time=iso_utc(), reason="process vanished while agentd was down")
        leftovers = self.ops.leftovers(spec.id, record, agent.generation + 1, now)
        if leftovers is None:
            return self._adopt_marked(agent, now)  # a newer process that the stale record does not know
        agent.stop_leftovers(leftovers, now)  # starts the agent (if wanted) once they are gone
        return True

    def _adopt_marked(self, agent: AgentProcess, now: float) -> bool:
        """No usable record: adopt a live process carrying the agent's identity, or stop such processes
        before anything starts (supervisor/parent/agent_identity.py). True if it handled the agent."""
        if self._marked is None:
            self._marked = self.scan_marked()
        marked = self._marked.pop(agent.spec.id, [])
        if not marked:
            return False
        main = main_process(marked)
        tree = {m.pid: m.start_ticks for m in marked}
        if main is not None:
            record = AgentRecord(id=agent.spec.id, status="running", pid=main.pid, pgid=main.pgid, start_ticks=main.start_ticks, boot_id=self.ops.boot_id)
            handle = self.ops.adopt(agent.spec.id, record, agent.generation + 1, now)
            if handle is not None:
                handle.tree.update(tree)
                matches = self.ops.runs_configured_command(main.pid, agent.spec)
                handle.launch = launch_of(agent.spec) if matches else {"args": "unknown"}
                agent.adopt(handle, now, "running")
                log.warning("%s: no usable metadata, but pid %d carries its identity; adopted it instead of starting a second copy", agent.spec.id, main.pid)
                apply_launch_change(agent, now)
                return True
        log.warning("%s: no usable metadata, and processes %s carry its identity without a main process; stopping them before it starts",
                    agent.spec.id, sorted(tree))
        leftovers = ProcessHandle(pid=min(tree), pgid=marked[0].pgid, create_time=0.0, generation=agent.generation + 1, started_mono=now,
                                  started_wall=self.wall(), adopted=True, exited=True, tree=tree, boot_id=self.ops.boot_id)
        agent.stop_leftovers(leftovers, now)
        return True

    def _stop_cgroup_leftovers(self, agent: AgentProcess, record, now: float) -> bool:
        """Processes in the agent's cgroup that no record accounts for (metadata lost): stop them first."""
        leftovers = self.ops.cgroup_leftovers(agent.spec.id, record, agent.generation + 1, now)
        if leftovers is None:
            return False
        agent.stop_leftovers(leftovers, now)
        return True

    def _finish_orphan(self, agent_id: str, record, now: float) -> None:
        """A removal (or stop) that an agentd restart interrupted, of an agent no longer configured:
        finish it, so the process does not live on unmanaged."""
        # The real spec is gone with the config; stop defaults suffice.
        spec = AgentSpec.model_validate({
            "id": agent_id, "type": record.type, "binary_path": "/bin/false", "work_dir": str(self.data_dir / "work" / agent_id),
            "stop_signal": record.stop_signal or "TERM", "stop_timeout": record.stop_timeout if record.stop_timeout is not None else 30,
        })
        agent = self.new_agent(spec, record)
        handle = self.ops.adopt(agent_id, record, agent.generation + 1, now)
        if handle is None:
            self.delete_record(agent_id)
            return
        log.warning("%s (pid %d) is no longer in the configuration but still runs; stopping it", agent_id, record.pid)
        self.registry.add(agent)
        agent.adopt(handle, now, record.status)
        agent.remove(now)
