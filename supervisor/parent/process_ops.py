"""The real OS side of the lifecycle: spawned and adopted agents watched with pidfds, signalled, inspected.

`RealProcessOps` is the `ProcessOps` the daemon gives the state machine. It puts together spawning
(process_spawn.py), process trees (process_trees.py) and identity checks (process_identity.py), and owns
exit detection: an exit is seen at once through a pidfd registered with the asyncio loop, never by
polling (docs/architecture.md, "Exit detection").
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable

from supervisor.common.cgroups import MOUNTINFO, AgentCgroup, Tracking, cgroup2_mounts
from supervisor.common.proc_table import boot_id, boot_time, start_ticks
from supervisor.config.agent import AgentSpec
from supervisor.parent.exit_watch import ExitWatch, watch_exit
from supervisor.parent.process_handle import ProcessHandle, SpawnError
from supervisor.parent.process_identity import adopted_handle, cgroup_leftovers, group_leftovers, process_matches, runs_command
from supervisor.parent.process_spawn import SYSTEMD_ONLY_ENV, AgentSpawner, Launched, validate_command
from supervisor.parent.process_trees import ProcessTrees

__all__ = ["RealProcessOps", "SYSTEMD_ONLY_ENV", "process_matches", "validate_command"]

log = logging.getLogger(__name__)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Threads that start agents at once at daemon start-up: fork+exec of one agent leaves the GIL to the
# others; 200 spawns went from 1.3-3.1 to 0.7-0.8 ms each with 8 on 2 cores (docs/performance.md).
SPAWN_THREADS = 8
AgentExitCallback = Callable[[str, int, "int | None", "int | None"], None]


class RealProcessOps:
    """ProcessOps for real processes, bound to the daemon's asyncio loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, log_dir: Path, agent_env: dict[str, str], on_exit: AgentExitCallback,
        tracking: Tracking | None = None, notify_path: Callable[[str], "Path | None"] | None = None,
    ) -> None:
        self.loop = loop
        self.tracking = tracking or Tracking("process-group", "not configured")
        self.spawner = AgentSpawner(log_dir, agent_env, self.tracking, notify_path or (lambda agent_id: None))
        self.trees = ProcessTrees(cgroup2_mounts(Path(MOUNTINFO).read_text()) if Path(MOUNTINFO).exists() else [])
        self.table = self.trees.table  # one /proc scan serves every agent stopping in the same tick
        self._retired: dict[int, ExitWatch] = {}  # watches of former main processes (MAINPID=), kept to reap them
        self._prelaunched: dict[str, tuple[AgentSpec, Future]] = {}  # agent id -> a launch started by prelaunch()
        self._spawn_pool: ThreadPoolExecutor | None = None
        self.on_exit = on_exit
        self.boot_id = boot_id()
        self.boot_time = boot_time()

    @property
    def heartbeat_secret(self) -> Callable[[str], str] | None:
        """agent id -> its heartbeat secret (supervisor/parent/heartbeat_secrets.py); set by the daemon."""
        return self.spawner.heartbeat_secret

    @heartbeat_secret.setter
    def heartbeat_secret(self, derive: Callable[[str], str] | None) -> None:
        self.spawner.heartbeat_secret = derive

    # ----------------------------------------------------------------- spawn / adopt

    def prelaunch(self, specs: list[AgentSpec]) -> None:
        """Start these agents' processes from threads, at once; the `spawn` of each then takes its process
        instead of starting one. Launches that need preexec_fn are left to `spawn`, on the loop's thread."""
        for spec in specs:
            if spec.id in self._prelaunched or not self.spawner.can_launch_in_thread(spec):
                continue
            if self._spawn_pool is None:
                self._spawn_pool = ThreadPoolExecutor(max_workers=SPAWN_THREADS, thread_name_prefix="agentd-spawn")
            self._prelaunched[spec.id] = (spec, self._spawn_pool.submit(self.spawner.launch, spec))

    def drop_prelaunched(self) -> None:
        """Kill and reap any prelaunched process no `spawn` took (an agent that did not start after all);
        the threads end."""
        for spec, future in self._prelaunched.values():
            self._kill_unwanted(spec, future)
        self._prelaunched.clear()
        if self._spawn_pool is not None:
            self._spawn_pool.shutdown(wait=False)
            self._spawn_pool = None

    def _kill_unwanted(self, spec: AgentSpec, future: Future) -> None:
        try:
            popen = future.result().popen
        except Exception:  # noqa: BLE001 - a launch that failed left no process
            return
        log.warning("%s: started ahead but not wanted any more; killed pid %d", spec.id, popen.pid)
        popen.kill()
        popen.wait()

    def _launch(self, spec: AgentSpec) -> Launched:
        entry = self._prelaunched.pop(spec.id, None)
        if entry is not None and entry[0] is spec:
            return entry[1].result()  # its SpawnError, if it failed
        if entry is not None:
            self._kill_unwanted(*entry)  # started for a spec since replaced: never two copies of an agent
        if self._prelaunched and not self.spawner.can_launch_in_thread(spec):
            wait([future for _, future in self._prelaunched.values()])  # no fork with preexec_fn while threads fork
        return self.spawner.launch(spec)

    def spawn(self, spec: AgentSpec, generation: int, now: float) -> ProcessHandle:
        """Start the agent's process (or take the one `prelaunch` started) and watch it; SpawnError when it
        cannot be started or watched."""
        launched = self._launch(spec)
        popen = launched.popen
        handle = self._spawned_handle(launched, generation, now)
        if not self._watch(spec.id, handle, popen):
            popen.kill()
            popen.wait()
            raise SpawnError("cannot watch the new process (out of file descriptors?); killed it")
        log.info("%s: started pid %d: %s", spec.id, popen.pid, " ".join(launched.argv))
        return handle

    def _spawned_handle(self, launched: Launched, generation: int, now: float) -> ProcessHandle:
        pid = launched.popen.pid
        # Our unreaped child: its stat is readable even if it already exited.
        ticks = start_ticks(pid)
        # What psutil's create_time() computes, without building a psutil.Process per spawn.
        create_time = self.boot_time + ticks / CLOCK_TICKS if ticks is not None else time.time()
        ticks = ticks or 0
        return ProcessHandle(
            pid=pid,
            pgid=pid,
            create_time=create_time,
            start_ticks=ticks,
            generation=generation,
            started_mono=max(now, launched.mono),  # fork+exec can take a while on a loaded box
            started_wall=launched.wall,
            tree={pid: ticks},
            boot_id=self.boot_id,
            cgroup=str(launched.cgroup.path) if launched.cgroup else None,
            table_stamp=self.table.mark(),  # snapshots from before the spawn do not list it
        )

    def cgroup_of(self, agent_id: str) -> AgentCgroup | None:
        """The agent's cgroup in cgroup mode; None in process-group mode."""
        return self.tracking.agent(agent_id)

    def adopt(self, agent_id: str, record, generation: int, now: float) -> ProcessHandle | None:
        """Watch a process left by a previous agentd, if it is still the one recorded (pid + start ticks + boot)."""
        handle = adopted_handle(record, generation, now, self.boot_id, self.table)
        if handle is None:
            return None
        cgroup = self.trees.recorded_cgroup(record) or self.cgroup_of(agent_id)
        if cgroup is not None and cgroup.contains(record.pid):
            handle.cgroup = str(cgroup.path)  # where it was started, even if cgroups.root changed since
        elif cgroup is not None:
            log.warning("%s: re-adopted pid %d is not in cgroup %s (started in process-group mode?); tracked by process group", agent_id, record.pid, cgroup.path)
        if not self._watch(agent_id, handle, None):
            return None
        return handle

    def runs_configured_command(self, pid: int, spec: AgentSpec) -> bool:
        """Whether `pid` runs the configured command line, as the user configured, with the configured env."""
        return runs_command(pid, spec, self.agent_uid(spec))

    def agent_uid(self, spec: AgentSpec) -> int:
        """The uid the agent runs as."""
        try:
            return self.spawner.credentials(spec).get("user", os.geteuid())
        except SpawnError:
            return os.geteuid()

    def cgroup_leftovers(self, agent_id: str, record, generation: int, now: float) -> ProcessHandle | None:
        """In cgroup mode, a handle on whatever still runs in the agent's cgroup (process_identity.cgroup_leftovers)."""
        cgroup = (self.trees.recorded_cgroup(record) if record is not None else None) or self.cgroup_of(agent_id)
        return cgroup_leftovers(agent_id, cgroup, record, generation, now, self.boot_id)

    def leftovers(self, agent_id: str, record, generation: int, now: float) -> ProcessHandle | None:
        """The recorded main process is gone but members of its group may live on: a handle to stop them."""
        if self.cgroup_of(agent_id) is not None or (record is not None and self.trees.recorded_cgroup(record) is not None):
            found = self.cgroup_leftovers(agent_id, record, generation, now)
            if found is not None or record is None:
                return found
        return group_leftovers(agent_id, self.table, record, generation, now, self.boot_id)

    # ----------------------------------------------------------------- exit detection

    def _watch(self, agent_id: str, handle: ProcessHandle, popen: subprocess.Popen | None) -> bool:
        pid = handle.pid

        def exited(code: int | None, signum: int | None) -> None:
            self._retired.pop(pid, None)
            if handle.pid != pid:
                return  # a former main process (MAINPID= moved on): reaped, not the agent's exit
            handle.table_stamp = self.table.mark()  # a snapshot from before the exit still lists it
            self.on_exit(agent_id, handle.generation, code, signum)

        handle.os_state = watch_exit(self.loop, handle.pid, popen, exited)
        return handle.os_state is not None

    def collect_exit(self, handle: ProcessHandle) -> None:
        """Deliver an exit that has happened but that the loop has not handled yet."""
        if isinstance(handle.os_state, ExitWatch):
            handle.os_state.deliver_if_exited()

    def forget(self, handle: ProcessHandle) -> None:
        """Stop watching (daemon shutdown leaves agents running)."""
        if isinstance(handle.os_state, ExitWatch):
            handle.os_state.cancel()

    # ----------------------------------------------------------------- membership (sd_notify senders)

    def is_member(self, handle: ProcessHandle, pid: int) -> bool | None:
        """Whether `pid` belongs to the agent (process_trees.ProcessTrees.is_member); None when it is gone."""
        return self.trees.is_member(handle, pid)

    def set_main_pid(self, agent_id: str, handle: ProcessHandle, pid: int) -> str | None:
        """MAINPID=: watch `pid` as the agent's main process; returns why not, or None when done."""
        if pid == handle.pid:
            return None
        if self.is_member(handle, pid) is not True:
            return f"MAINPID={pid} is not a live process of the agent"
        ticks = start_ticks(pid)
        old_pid, old_watch = handle.pid, handle.os_state
        if ticks is None:
            return f"MAINPID={pid} is gone"
        create_time = self.boot_time + ticks / CLOCK_TICKS
        handle.pid, handle.start_ticks, handle.create_time = pid, ticks, create_time
        handle.tree[pid] = ticks or 0
        if not self._watch(agent_id, handle, None):
            handle.pid, handle.os_state = old_pid, old_watch
            return f"cannot watch MAINPID={pid}"
        if isinstance(old_watch, ExitWatch) and old_watch.pidfd is not None:
            if old_watch.popen is not None:
                self._retired[old_pid] = old_watch  # still our child: its exit must be reaped
            else:
                old_watch.cancel()
        handle.adopted = True  # not our child: its exit status is unknown, the tree check decides
        log.info("%s: main process is now pid %d (MAINPID=, was %d)", agent_id, pid, old_pid)
        return None

    def main_moved(self, handle: ProcessHandle) -> bool:
        """True when the exit just reported was of a former main process (a MAINPID= came first)."""
        return isinstance(handle.os_state, ExitWatch) and handle.os_state.pidfd is not None

    def remove_cgroup(self, agent_id: str) -> None:
        """rmdir an agent's cgroup once nothing runs in it (after removal from the config)."""
        cgroup = self.cgroup_of(agent_id)
        if cgroup is not None and cgroup.exists():
            try:
                if not cgroup.remove():
                    log.warning("%s: cgroup %s still holds processes; left in place", agent_id, cgroup.path)
            except OSError as exc:
                log.warning("%s: cannot remove cgroup %s: %s", agent_id, cgroup.path, exc)

    # ----------------------------------------------------------------- signals and trees

    def signal_main(self, handle: ProcessHandle, signum: int) -> bool:
        """Signal only the main process (a reload signal); False when it is gone."""
        # Only the main process: a reload signal's default action (SIGHUP: exit) would kill children that
        # do not handle it. The identity check keeps a recycled pid from getting it.
        if not process_matches(handle.pid, handle.start_ticks, handle.boot_id or None):
            return False
        try:
            os.kill(handle.pid, signum)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def signal_tree(self, handle: ProcessHandle, signum: int) -> None:
        """Signal every process of the agent (process_trees.ProcessTrees.signal_tree)."""
        self.trees.signal_tree(handle, signum)

    def tree_alive(self, handle: ProcessHandle) -> bool:
        """Whether any process of the agent is left (process_trees.ProcessTrees.tree_alive)."""
        return self.trees.tree_alive(handle)
