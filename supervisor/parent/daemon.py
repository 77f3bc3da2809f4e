"""The agentd parent: one asyncio loop that owns the registry, drives every agent and serves control.

Start-up order: directories, pid lock, metadata, re-adopt or start agents, control endpoint, then
ready. The loop wakes on any event (exit via pidfd, control request, signal) or at the earliest
timer any agent asked for; it never sleeps on process work.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
import os
import signal
import time
from pathlib import Path

import zmq
import zmq.asyncio
from pydantic import ValidationError

from supervisor.wire.version import __version__
from supervisor.common.cgroups import CgroupError, detect as detect_tracking
from supervisor.config.errors import ConfigError
from supervisor.config.loading import load_config
from supervisor.config.schema import Config
from supervisor.parent.control_server import ControlServer
from supervisor.parent.event_intake import EventIntake
from supervisor.parent.event_log import EventLog
from supervisor.wire import ipc
from supervisor.parent.listeners import HTTP_PORT_FILE, read_port, remember_port, bound_address, tcp_listener, unix_listener
from supervisor.parent.heartbeat_apply import HeartbeatApplier, VerdictApplier
from supervisor.parent.heartbeat_feed import HeartbeatFeed, IntakeGrace, intake_outage
from supervisor.parent.heartbeat_secrets import HeartbeatSecrets
from supervisor.wire.messages import HealthReport, HeartbeatBatch, ResourceSamples, Verdict, WorkerBeat
from supervisor.parent.lifecycle import AgentProcess, ProcessHandle
from supervisor.parent.log_files import TRUNCATED_FOR_SPACE, prune_old_logs, rotate_by_settings
from supervisor.common.metadata_store import AgentRecord, ExitRecord, MetadataStore, iso_utc, parse_iso
from supervisor.parent.metadata_writer import MetadataWriter
from supervisor.parent.history_store import HistoryStore
from supervisor.common.node_identity import node_id
from supervisor.parent.notify_socket import NotifyHub, Sender, parse_notify
from supervisor.common.rate_limited_log import RateLimitedLog
from supervisor.parent.agent_identity import NODE_VAR, find_marked, main_process
from supervisor.parent.instance_lock import InstanceLock
from supervisor.parent.launch_spec import launch_diff, launch_of
from supervisor.parent.config_watch import ConfigWatch
from supervisor.common.pidfile import PidFile, write_plain_pid
from supervisor.common.agent_files import agent_log_path
from supervisor.parent.process_ops import RealProcessOps
from supervisor.wire.protocol import PROTOCOL_VERSION, ControlError, ErrorCode, Reply, Request, error_reply
from supervisor.parent.registry import Registry
from supervisor.parent.reload_plan import AgentChange, ReloadPlan, plan_reload
from supervisor.parent.safe_paths import prepare_dir
from supervisor.parent.sd_notify import Watchdog, sd_notify
from supervisor.common.stall_watch import StallWatch
from supervisor.parent.state_feed import StateFeed
from supervisor.wire.states import DOWN_STATES, PROCESS_STATES, UP_STATES, AgentState
from supervisor.config.errors import describe_validation_error
from supervisor.parent.verbs import VERBS
from supervisor.wire.verbs.status import DaemonStatus
from supervisor.parent.worker_pool import WorkerPool, WorkerSpec

log = logging.getLogger(__name__)

LOG_ROTATE_CHECK_INTERVAL = 5.0  # rotation by age (log.interval)
LOG_SIZE_CHECK_INTERVAL = 1.0  # log.max_size is enforced this promptly (issue 10)
LOG_PRUNE_FIRST_DELAY = 2.0  # soon after start, so a node that was down a month is cleaned up at once
LOG_PRUNE_INTERVAL = 3600.0
# Verbs still answered while shutting down, so an operator can watch it happen.
SHUTDOWN_VERBS = frozenset({"ping", "version", "status", "events", "logs"})


def heartbeat_env(http_address: str | None, unix_path: Path | None) -> dict[str, str]:
    """The AGENTD_HEARTBEAT_* variables every agent gets, from the addresses actually bound."""
    env = {}
    if http_address:
        host, _, port = http_address.rpartition(":")
        host = host.strip("[]")
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        env["AGENTD_HEARTBEAT_URL"] = f"http://{host}:{port}/heartbeat"
    if unix_path:
        env["AGENTD_HEARTBEAT_SOCKET"] = str(unix_path)
    return env


class Daemon:
    """The parent process: registry, lifecycle driver, metadata owner, control server."""

    def __init__(self, config: Config, config_path: Path | None) -> None:
        self.config = config
        self.started_config = config  # restart-only sections (docs/configuration.md: heartbeat, control, ...) stay as started
        self.restart_required: list[str] = []  # sections changed by reload that wait for an agentd restart
        self.config_path = config_path
        self.run_dir = Path(config.daemon.run_dir)
        self.data_dir = Path(config.daemon.data_dir)
        self.log_dir = Path(config.daemon.log_dir)
        self.pid = os.getpid()
        self.started_mono = time.monotonic()
        self.registry = Registry()
        self.events = EventLog()
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._shutdown = asyncio.Event()
        self._stop_agents_on_exit = config.shutdown.stop_agents
        self._shutting_down = False
        self._tasks: list[asyncio.Task] = []
        self.heartbeat_counters: Counter[str] = Counter()
        # Heartbeat deadlines never end before start + timeout: while agentd was down (or starting),
        # nobody could take heartbeats in, and that is not the agents' fault.
        self.grace = IntakeGrace(self.started_mono, time.time())
        # Our own loop stalls (SIGSTOP, VM pause, swap): nobody is blamed for silence across them.
        self.stalls = StallWatch("agentd")
        self.watchdog = Watchdog()  # WatchdogSec= in the unit sets WATCHDOG_USEC; without it this does nothing
        self.stalls.listeners.append(lambda stall: self.grace.after_stall(stall.end, self.wall()))
        self.state_feed: StateFeed | None = None
        self.heartbeats = HeartbeatApplier(self.registry, self.now, self.wall, self._publish, self._persist_dirty,
                                           lambda worker, count: self.pool.on_heartbeats(worker, count), self.heartbeat_counters)
        self.verdicts = VerdictApplier(self.registry, self.stalls, self.now, self.after_action, self.heartbeat_counters)
        self._marked: dict | None = None  # agent id -> processes carrying its identity, scanned once at start
        # Last generation of each agent removed while this agentd runs: a re-added agent continues from it,
        # so a verdict or heartbeat still in flight about the removed process never fits its successor.
        self._removed_generations: dict[str, int] = {}
        self._notify_log = RateLimitedLog(log, 10.0)

    # ----------------------------------------------------------------- clocks and small views

    @staticmethod
    def now() -> float:
        return time.monotonic()

    @staticmethod
    def wall() -> float:
        return time.time()

    def uptime(self) -> float:
        return self.now() - self.started_mono

    def log_path(self, agent_id: str) -> Path:
        return agent_log_path(self.log_dir, agent_id)

    def status_info(self) -> DaemonStatus:
        return DaemonStatus(
            pid=self.pid,
            version=__version__,
            uptime_s=round(self.uptime(), 3),
            config=str(self.config_path) if self.config_path else None,
            run_dir=str(self.run_dir),
            tracking=self.tracking.mode,
            tracking_detail=self.tracking.describe(),
            restart_required=self.restart_required,
        )

    # ----------------------------------------------------------------- run

    async def run(self) -> int:
        """Run until shutdown; returns the process exit code."""
        loop = asyncio.get_running_loop()
        # Before touching any directory: a second agentd must not even chmod the first one's run_dir.
        self.instance_lock = InstanceLock({"run_dir": self.run_dir, "data_dir": self.data_dir, "log_dir": self.log_dir})
        self.instance_lock.acquire()  # InstanceLocked names the other agentd's pid
        self.instance_lock.serve(loop)
        self._prepare_dirs()
        self.pidfile = PidFile(self.run_dir / "agentd.pid")
        self.pidfile.acquire()  # AlreadyRunning propagates to the CLI with its message
        self.node_id = node_id(self.config.daemon.id, self.data_dir)
        self.store = MetadataStore(self.data_dir / "metadata")
        self.writer = MetadataWriter(self.store)
        self.zctx = zmq.asyncio.Context()
        self.sync_zctx = zmq.Context()
        self._closers: list = []
        self._log_started: dict[str, float] = {}  # agent id -> when this daemon first saw its log (log.interval)
        try:
            if self.config.daemon.pid_file is not None:
                self._closers.append(write_plain_pid(self.config.daemon.pid_file, self.pid))
            env = self._open_listeners()
            env[NODE_VAR] = self.node_id  # with AGENTD_AGENT_ID: a live copy is found even without metadata
            self.tracking = detect_tracking(self.config.cgroups.mode, self.config.cgroups.root)
            if self.config.cgroups.mode == "required" and self.tracking.mode != "cgroup":
                raise CgroupError(f"cgroups.mode is required, but {self.tracking.reason}")
            log.info("process tracking: %s", self.tracking.describe())
            self.notify = NotifyHub(loop, self.run_dir / "notify", self._on_notify)
            self._closers.append(self.notify.close_all)
            self.ops = RealProcessOps(loop, self.log_dir, env, self._on_exit, self.tracking, self.notify.path)
            self.ops.heartbeat_secret = HeartbeatSecrets(self.data_dir).for_agent
            self.control = ControlServer(self.zctx, self.run_dir / ipc.CONTROL, self._dispatch, self.config.control.group)
            self._closers.append(self.control.close)
            self.history = HistoryStore(self.data_dir / "history.db", self.config.history.retention)
            self._closers.append(self.history.close)
            self.intake = EventIntake(self.zctx, self.run_dir / ipc.EVENTS, self._on_worker_message)
            self._closers.append(self.intake.close)
            self._load_agents()
            self.config_watch = ConfigWatch(loop, self._on_config_file_change)
            self._closers.append(self.config_watch.close)
            self.config_watch.update(self.config.agents)
            # After the agents: no worker is there yet to hear 200 start-up transitions (each costs
            # a model and a send); workers take a snapshot when they join.
            self.state_feed = StateFeed(self.sync_zctx, self.run_dir / ipc.STATE)
            self._closers.append(self.state_feed.close)
            for sig in (signal.SIGTERM, signal.SIGINT):
                # Read the setting when the signal comes: a reload may have changed it.
                loop.add_signal_handler(sig, lambda name=signal.Signals(sig).name: self.request_shutdown(self.config.shutdown.stop_agents, name))
            loop.add_signal_handler(signal.SIGHUP, self._reload_from_signal)
            self._tasks = [
                self._keep_running(self.control.serve, "control"),
                self._keep_running(self.intake.serve, "events"),
                self._keep_running(self._rotate_logs_forever, "log-rotation"),
                self._keep_running(self._prune_logs_forever, "log-retention"),
                self._keep_running(self._heartbeat_feed().run, "heartbeat-feed"),
                self._keep_running(self.stalls.run, "stall-watch"),
            ]
            # Workers start once the endpoints they connect to are up.
            self.pool = WorkerPool(loop, self.run_dir, self._worker_specs(), self.config.daemon.log_level, self.config.daemon.log_format, self._on_worker_respawn, stalls=self.stalls)
            self.pool.start_all()
            self._tasks.append(self._keep_running(self.pool.run_checks, "worker-checks"))
            log.info("agentd %s running (pid %d, %d agents, %d workers, run_dir %s)", __version__, self.pid, len(self.registry), len(self.pool.workers), self.run_dir)
            sd_notify("READY=1\nSTATUS=supervising %d agents" % len(self.registry))
            await self._supervise()
            sd_notify("STOPPING=1")
            await self._shutdown_sequence()  # workers still run: the Manager hears of agents stopped now
            await self.pool.stop_all()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            for task in self._tasks:
                task.cancel()
            if getattr(self, "pool", None) is not None and not self.pool.stopping:
                await self.pool.stop_all()
            for close in reversed(self._closers):
                close()
            self.writer.close()
            # destroy, not term: a socket left open by a failed start-up must not hang the exit.
            self.zctx.destroy(linger=0)
            self.sync_zctx.destroy(linger=0)
            self.pidfile.release()
            self.instance_lock.release(loop)
        log.info("agentd stopped")
        return 0

    def _keep_running(self, factory, name: str) -> asyncio.Task:
        """Run a background loop; if it ever dies of a bug, log it and start it again after a second."""

        async def guarded() -> None:
            while True:
                try:
                    await factory()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("background task %s failed; restarting it", name)
                    await asyncio.sleep(1.0)

        return asyncio.create_task(guarded(), name=name)

    def _open_listeners(self) -> dict[str, str]:
        """Bind the intake sockets the workers will inherit; returns the agents' heartbeat env."""
        hb = self.config.heartbeat
        self.http_sock = self.unix_sock = None
        self.http_address = None
        if hb.http.enabled:
            port_file = self.data_dir / HTTP_PORT_FILE
            self.http_sock = tcp_listener(hb.http.listen, read_port(port_file))
            self._closers.append(self.http_sock.close)
            self.http_address = bound_address(self.http_sock)
            remember_port(port_file, self.http_sock.getsockname()[1])
            log.info("heartbeat HTTP intake on %s", self.http_address)
        if hb.unix.enabled:
            self.unix_sock = unix_listener(hb.unix.path)
            self._closers.append(self.unix_sock.close)
            self._closers.append(lambda: Path(hb.unix.path).unlink(missing_ok=True))
        return heartbeat_env(self.http_address, hb.unix.path if self.unix_sock else None)

    def _worker_specs(self) -> list[WorkerSpec]:
        hb = self.config.heartbeat
        specs = []
        if self.http_sock is not None:
            fd = self.http_sock.fileno()
            settings = hb.http.model_dump_json()
            for i in range(hb.http.processes):
                specs.append(WorkerSpec(f"heartbeat-http-{i}", "heartbeat_http", ["--settings", settings, "--listen-fd", str(fd)], (fd,)))
        if self.unix_sock is not None:
            fd = self.unix_sock.fileno()
            specs.append(WorkerSpec("heartbeat-unix", "heartbeat_unix", ["--settings", hb.unix.model_dump_json(), "--listen-fd", str(fd)], (fd,)))
        health_settings = json.dumps({"resources": self.config.resources.model_dump(mode="json")})
        specs.append(WorkerSpec("health", "health", ["--settings", health_settings]))
        if self.config.manager.address:
            sync_settings = json.dumps({"manager": self.config.manager.model_dump(mode="json"), "node_id": self.node_id, "data_dir": str(self.data_dir),
                                        "collectors": self.config.collectors.model_dump(mode="json"), "api_listen": self.config.manager_api.listen})
            specs.append(WorkerSpec("sync", "sync", ["--settings", sync_settings]))
        if self.config.manager_api.listen:
            api_settings = json.dumps({"manager_api": self.config.manager_api.model_dump(mode="json"), "node_id": self.node_id})
            specs.append(WorkerSpec("manager-api", "manager_api", ["--settings", api_settings]))
        return specs

    def _prepare_dirs(self) -> None:
        # A new run_dir is 0755 so agents running as other users can reach the heartbeat socket; the
        # control socket inside it is born 0600. Existing directories keep their mode, and are refused
        # if another user controls them (supervisor/parent/safe_paths.py).
        prepare_dir(self.run_dir, "daemon.run_dir", 0o755)
        prepare_dir(self.data_dir, "daemon.data_dir", 0o750)
        prepare_dir(self.log_dir, "daemon.log_dir", 0o750)

    def _load_agents(self) -> None:
        """Re-adopt what the previous agentd left running; start the rest unless told not to."""
        records = self.store.load_all()
        now = self.now()
        for spec in self.config.agents:
            record = records.pop(spec.id, None)
            agent = self._new_agent(spec, record)
            self.registry.add(agent)
            if record is not None and record.pid and record.status in PROCESS_STATES:
                if self._adopt(agent, record, now):
                    continue
            elif self._adopt_marked(agent, now) or self._stop_cgroup_leftovers(agent, record, now):
                continue
            if agent.operator_stopped and agent.state == AgentState.STOPPED:
                agent.reason = "stopped by operator (before agentd restarted)"
            agent.start_if_wanted(now, "agentd start")
        for agent_id, record in records.items():
            if record.pid and record.status == AgentState.STOPPING:
                self._finish_orphan(agent_id, record, now)
            elif record.pid and record.status in PROCESS_STATES:
                # Not ours to kill on a guess: the config may simply be the wrong file.
                log.warning("metadata for %s (not in the config) says pid %s may still run; agentd does not manage it", agent_id, record.pid)
        self._persist_dirty()

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
            self._apply_launch_change(agent, now)
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
            self._marked = find_marked(self.node_id, {s.id for s in self.config.agents})
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
                self._apply_launch_change(agent, now)
                return True
        log.warning("%s: no usable metadata, and processes %s carry its identity without a main process; stopping them before it starts",
                    agent.spec.id, sorted(tree))
        leftovers = ProcessHandle(pid=min(tree), pgid=marked[0].pgid, create_time=0.0, generation=agent.generation + 1, started_mono=now,
                                  started_wall=self.wall(), adopted=True, exited=True, tree=tree, boot_id=self.ops.boot_id)
        agent.stop_leftovers(leftovers, now)
        return True

    def _apply_launch_change(self, agent: AgentProcess, now: float) -> None:
        """A re-adopted process started with another command, env or user than configured (a reload whose
        restart agentd did not live to finish, or a config edited while it was down): apply it now."""
        if agent.handle is None or agent.state not in UP_STATES or agent.operator_stopped:
            return
        fields = launch_diff(agent.handle.launch, agent.spec)
        if fields:
            log.warning("%s: pid %d was started with another %s than the configuration says; restarting it with the configuration",
                        agent.spec.id, agent.handle.pid, ", ".join(fields))
            agent.update_spec(agent.spec, now)

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
        from supervisor.config.agent import AgentSpec  # the real spec is gone with the config; stop defaults suffice

        spec = AgentSpec.model_validate({
            "id": agent_id, "type": record.type, "binary_path": "/bin/false", "work_dir": str(self.data_dir / "work" / agent_id),
            "stop_signal": record.stop_signal or "TERM", "stop_timeout": record.stop_timeout if record.stop_timeout is not None else 30,
        })
        agent = self._new_agent(spec, record)
        handle = self.ops.adopt(agent_id, record, agent.generation + 1, now)
        if handle is None:
            self.writer.delete(agent_id)
            return
        log.warning("%s (pid %d) is no longer in the configuration but still runs; stopping it", agent_id, record.pid)
        self.registry.add(agent)
        agent.adopt(handle, now, record.status)
        agent.remove(now)

    def _new_agent(self, spec, record=None) -> AgentProcess:
        self.notify.open(spec.id, self.ops.agent_uid(spec))
        agent = AgentProcess(spec, self.ops, on_transition=self._on_transition, record=record)
        agent.generation = self._removed_generations.get(spec.id, 0)
        return agent

    # ----------------------------------------------------------------- the supervision loop

    async def _supervise(self) -> None:
        watchdog = self.watchdog
        while not self._shutdown.is_set():
            next_due = self._tick_all()
            watchdog.tick(time.monotonic())  # only from here: pings stop when supervision does (docs/operations.md)
            self._wake.clear()
            timeout = 1.0 if next_due is None else min(1.0, max(0.0, next_due - self.now()))
            ping_due = watchdog.due_in(time.monotonic())
            if ping_due is not None:
                timeout = min(timeout, ping_due)
            if timeout > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    pass

    def _tick_all(self) -> float | None:
        now = self.now()
        due = None
        for agent in self.registry:
            when = agent.tick(now)
            if agent.removed:
                self._removed_generations[agent.spec.id] = agent.generation
                self.registry.discard(agent.spec.id)
                self.writer.delete(agent.spec.id)
                self.notify.close(agent.spec.id)
                self.ops.remove_cgroup(agent.spec.id)
                if self.state_feed is not None:
                    self.state_feed.agent_removed(agent.spec.id)
                agent.dirty = False
                continue
            if when is not None:
                due = when if due is None else min(due, when)
        self._persist_dirty()
        return due

    def _persist_dirty(self, heartbeats_too: bool = False) -> None:
        for agent in self.registry:
            if agent.dirty or (heartbeats_too and agent.hb_dirty):
                agent.dirty = agent.hb_dirty = False
                self.writer.save(agent.to_record())

    def wake(self) -> None:
        self._wake.set()

    def _on_config_file_change(self, agent_id: str, problem: str | None) -> None:
        """An agent's config_file changed (config_watch.py): apply it by its on_config_change, or refuse it."""
        agent = self.registry.find(agent_id)
        if agent is None:
            return
        result = agent.config_file_changed(self.now(), problem)
        level = logging.WARNING if problem is not None else logging.INFO
        log.log(level, "%s: config_file changed: %s", agent_id, result.message)
        self.after_action()

    def after_action(self) -> None:
        """Called by verbs after acting on agents: persist now, and let the loop run their timers."""
        self._persist_dirty()
        self.wake()

    def _on_transition(self, agent: AgentProcess, old: AgentState, new: AgentState, reason: str) -> None:
        self.events.append(iso_utc(), agent.spec.id, old.value, new.value, reason)
        level = logging.WARNING if new in (AgentState.FAILED, AgentState.RESTARTING) else logging.INFO
        log.log(level, "%s: %s -> %s: %s", agent.spec.id, old.value, new.value, reason)
        if self.state_feed is not None:
            self.state_feed.agent_changed(agent)
        self._changed.set()
        self._changed = asyncio.Event()
        self.wake()

    def _on_exit(self, agent_id: str, generation: int, code: int | None, signum: int | None) -> None:
        agent = self.registry.find(agent_id)
        if agent is None:
            return
        self.notify.drain(agent_id)  # a MAINPID= hand-over sent before this exit comes first
        if agent.handle is not None and agent.handle.generation == generation and self.ops.main_moved(agent.handle):
            return  # the process that exited is no longer the main one
        agent.on_exit(self.now(), generation, code, signum)
        self._persist_dirty()
        self.wake()

    async def wait_for_agents(self, agents: list[AgentProcess], settled, timeout: float) -> None:
        """Wait until `settled(agent)` holds for every agent or `timeout` passes; never blocks the loop.

        One waiter for all of them: one waiter per agent made each of 200 transitions wake 200 coroutines."""
        deadline = self.now() + timeout
        waiting = [a for a in agents if not settled(a)]
        while waiting:
            remaining = deadline - self.now()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return
            waiting = [a for a in waiting if not settled(a)]

    # ----------------------------------------------------------------- control

    async def _dispatch(self, request: Request) -> Reply:
        if request.v != PROTOCOL_VERSION:
            return error_reply(request.id, ErrorCode.UNSUPPORTED_VERSION, f"protocol version {request.v} is not supported (agentd speaks {PROTOCOL_VERSION}); use the agentctl that came with this agentd")
        verb = VERBS.get(request.verb)
        if verb is None:
            return error_reply(request.id, ErrorCode.UNKNOWN_VERB, f"unknown command '{request.verb}'; known: {', '.join(sorted(VERBS))}")
        if self._shutting_down and request.verb not in SHUTDOWN_VERBS:
            return error_reply(request.id, ErrorCode.SHUTTING_DOWN, "agentd is shutting down")
        try:
            args = verb.Args.model_validate(request.args)
        except ValidationError as exc:
            return error_reply(request.id, ErrorCode.BAD_REQUEST, f"{request.verb}: {describe_validation_error(exc)}")
        try:
            result = await verb.handle(self, args)
        except ControlError as exc:
            return error_reply(request.id, exc.code, exc.message)
        except Exception:
            log.exception("control: %s failed", request.verb)
            return error_reply(request.id, ErrorCode.INTERNAL, f"internal error while running '{request.verb}'; see the agentd log")
        return Reply(id=request.id, ok=True, result=result.model_dump(mode="json"))

    # ----------------------------------------------------------------- heartbeats and workers

    def _on_notify(self, agent_id: str, sender: Sender | None, data: bytes) -> None:
        """An sd_notify datagram on an agent's socket: act on it only if a process of that agent sent it."""
        counters = self.notify.counters
        agent = self.registry.find(agent_id)
        if agent is None or agent.handle is None or agent.state not in PROCESS_STATES:
            counters["dropped_not_running"] += 1
            return
        if sender is None:
            counters["dropped_no_credentials"] += 1
            return
        member = self.ops.is_member(agent.handle, sender.pid)
        if member is None:
            # Gone before we looked (a one-shot sender): the kernel-checked uid must be the agent's
            # (the socket is 0600 and owned by it) or root.
            member = sender.uid in (0, self.notify.uid(agent_id))
            counters["unverified_exited_sender"] += 1
        if not member:
            counters["dropped_foreign_sender"] += 1
            self._notify_log("%s: sd_notify message from pid %d (uid %d), which is not a process of this agent; dropped", agent_id, sender.pid, sender.uid)
            return
        msg = parse_notify(data)
        if msg.problems:
            counters["bad_assignments"] += 1
            self._notify_log("%s: sd_notify message from pid %d: %s", agent_id, sender.pid, "; ".join(msg.problems))
        now, wall = self.now(), self.wall()
        if msg.mainpid is not None:
            why = self.ops.set_main_pid(agent_id, agent.handle, msg.mainpid)
            if why:
                self._notify_log("%s: %s; main process stays pid %d", agent_id, why, agent.handle.pid)
            else:
                agent.dirty = True
                if self.state_feed is not None:
                    self.state_feed.agent_changed(agent)  # heartbeat intakes check senders against the main pid
        old_status = agent.notify_status
        agent.on_notify(now, wall, msg)
        if msg.watchdog:
            counters["watchdog"] += 1
        if msg.status is not None and msg.status != old_status:
            log.info("%s: STATUS=%s", agent_id, msg.status)
        if msg.stopping or msg.reloading:
            log.info("%s: %s", agent_id, "STOPPING=1" if msg.stopping else "RELOADING=1")
        self._persist_dirty()
        self.wake()

    def _publish(self, agent: AgentProcess) -> None:
        if self.state_feed is not None:
            self.state_feed.agent_changed(agent)

    def intake_counters(self) -> dict[str, int]:
        return {
            **self.heartbeat_counters, **{f"events_{k}": v for k, v in self.intake.counters.items()}, **self.stalls.counters(),
            **{f"notify_{k}": v for k, v in self.notify.counters.items()}, "control_busy": self.control.busy,
        }

    def _on_worker_message(self, msg) -> None:
        if isinstance(msg, HeartbeatBatch):
            self.heartbeats.apply(msg)
        elif isinstance(msg, WorkerBeat):
            self.pool.on_beat(msg)
        elif isinstance(msg, Verdict):
            self.verdicts.apply(msg)
        elif isinstance(msg, HealthReport):
            for agent_id, health in msg.agents.items():
                agent = self.registry.find(agent_id)
                if agent is not None:
                    agent.set_health(health.generation, health.health, health.detail)
        elif isinstance(msg, ResourceSamples):
            self.history.add(msg.samples)

    def _on_worker_respawn(self, name: str, cause: str) -> None:
        # Heartbeats sent during the outage were lost through no fault of the agents.
        self.grace.on_worker_respawn(name, self.now(), self.wall())

    def _heartbeat_feed(self) -> HeartbeatFeed:
        return HeartbeatFeed(
            self.grace, lambda: (self.heartbeats.times(), self.heartbeats.times_mono()), lambda: self.stalls.last_end,
            lambda: intake_outage(self.pool.describe(), self.pool.forwarding_stalled), self.state_feed.heartbeat_times,
            lambda: self._persist_dirty(heartbeats_too=True), self.config.metadata.flush_interval, self.now, self.wall)

    # ----------------------------------------------------------------- reload

    def reload(self, dry_run: bool = False) -> ReloadPlan:
        """Re-read the config file and apply the per-agent diff (or only compute it)."""
        if self.config_path is None:
            raise ControlError(ErrorCode.FAILED, "agentd was started without a config file; nothing to reload")
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            raise ControlError(ErrorCode.INVALID_CONFIG, f"config not reloaded, nothing changed:\n{exc}") from None
        plan = plan_reload(self.config, new, in_force=self.started_config)
        self._add_pending_launch_changes(plan, new)
        if dry_run:
            return plan
        now = self.now()
        specs = {s.id: s for s in new.agents}
        for agent_id in plan.removed:
            self.registry.get(agent_id).remove(now)
        for change in plan.changed:
            self.registry.get(change.id).update_spec(specs[change.id], now)
        for agent_id in plan.added:
            existing = self.registry.find(agent_id)
            if existing is not None:  # re-added while a previous removal is still stopping it
                existing.cancel_remove(specs[agent_id])
                continue
            agent = self._new_agent(specs[agent_id], self.store.load(agent_id))
            self.registry.add(agent)
            agent.start_if_wanted(now, "added by reload")
        for agent_id in plan.unchanged:
            self.registry.get(agent_id).spec = specs[agent_id]
        for agent_id in [*plan.added, *(c.id for c in plan.changed)]:
            agent = self.registry.find(agent_id)
            if agent is not None and self.state_feed is not None:
                self.state_feed.agent_changed(agent)  # new token or health settings, even without a transition
        self.restart_required = list(plan.restart_required)
        if plan.restart_required:
            log.warning("reload: changes to %s take effect only after agentd restarts", ", ".join(plan.restart_required))
        self.config = new
        if getattr(self, "config_watch", None) is not None:
            self.config_watch.update(new.agents)
        log.info(
            "reload: added %s, removed %s, changed %s, unchanged %d",
            plan.added or "none", plan.removed or "none", [c.id for c in plan.changed] or "none", len(plan.unchanged),
        )
        self.after_action()
        return plan

    def _add_pending_launch_changes(self, plan: ReloadPlan, new: Config) -> None:
        """An agent whose process runs another command than its (unchanged) spec says is changed too."""
        specs = {s.id: s for s in new.agents}
        for agent_id in list(plan.unchanged):
            agent = self.registry.find(agent_id)
            if agent is None or agent.handle is None or agent.state not in UP_STATES:
                continue
            fields = launch_diff(agent.handle.launch, specs[agent_id])
            if fields:
                plan.unchanged.remove(agent_id)
                plan.changed.append(AgentChange(id=agent_id, fields=[f"{f} (of the running process)" for f in fields]))

    def _reload_from_signal(self) -> None:
        log.info("SIGHUP: reloading %s", self.config_path)
        try:
            self.reload()
        except ControlError as exc:
            log.error("SIGHUP reload failed: %s", exc.message)

    # ----------------------------------------------------------------- shutdown

    def request_shutdown(self, stop_agents: bool, why: str) -> None:
        """Begin an orderly exit; agents keep running unless `stop_agents`."""
        if self._shutting_down:
            return
        log.info("shutting down (%s); agents %s", why, "will be stopped" if stop_agents else "keep running")
        self._shutting_down = True
        self._stop_agents_on_exit = stop_agents
        self._shutdown.set()
        self.wake()

    async def _shutdown_sequence(self) -> None:
        if self._stop_agents_on_exit:
            now = self.now()
            agents = list(self.registry)
            for agent in agents:
                agent.stop(now, reason="agentd shutdown", operator=False)
            self._persist_dirty()
            limit = max((a.spec.stop_timeout for a in agents), default=0) + 10
            waiter = asyncio.ensure_future(self.wait_for_agents(agents, lambda a: a.state in DOWN_STATES, limit))
            ticker = asyncio.create_task(self._supervise_until(waiter))
            await waiter
            ticker.cancel()
            await self._let_manager_sync(since=self.wall())
        for agent in self.registry:
            if agent.handle is not None:
                self.ops.forget(agent.handle)
            agent.dirty = True
        self._persist_dirty(heartbeats_too=True)
        self.writer.flush()

    async def _let_manager_sync(self, since: float, limit: float = 15.0) -> None:
        """Give the sync worker some seconds to report the final states before workers stop.

        It returns as soon as the worker says nothing is pending; the limit is for a busy machine, where
        the worker's debounce and its 1 s reports alone took more than the 5 s this used to allow."""
        if not self.config.manager.address:
            return
        deadline = self.now() + limit
        while self.now() < deadline:
            sync = next((w for w in self.pool.describe() if w.name == "sync"), None)
            if sync is None or sync.state != "running" or sync.info.get("connected") != "yes":
                return  # nobody to tell right now; the next agentd re-sends everything anyway
            last = parse_iso(sync.info.get("last_sync"))
            if sync.info.get("pending") == "0" and last is not None and last > since + 0.5:
                return
            await asyncio.sleep(0.1)

    async def _supervise_until(self, fut: asyncio.Future) -> None:
        while not fut.done():
            next_due = self._tick_all()
            self.watchdog.tick(time.monotonic())  # a long stop of every agent is still supervision
            self._wake.clear()
            timeout = 0.5 if next_due is None else min(0.5, max(0.0, next_due - self.now()))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    # ----------------------------------------------------------------- log rotation

    async def _prune_logs_forever(self) -> None:
        """Log retention (log.max_age, 30 days by default), also for agents no longer configured; in the executor."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(LOG_PRUNE_FIRST_DELAY)
        while True:
            max_age = {agent.spec.id: agent.spec.log.max_age for agent in self.registry}
            try:
                removed = await loop.run_in_executor(None, prune_old_logs, self.log_dir, max_age, self.config.agent_defaults.log.max_age, time.time())
            except OSError as exc:
                log.error("log retention: %s", exc)
            else:
                for path in removed:
                    log.info("log retention: removed %s (older than log.max_age)", path)
            await asyncio.sleep(LOG_PRUNE_INTERVAL)

    async def _rotate_logs_forever(self) -> None:
        """Every second, rotate the logs that reached log.max_size; every 5 s, by age (log.interval) too."""
        loop = asyncio.get_running_loop()
        age_every = max(1, round(LOG_ROTATE_CHECK_INTERVAL / LOG_SIZE_CHECK_INTERVAL))
        rounds = 0
        while True:
            await asyncio.sleep(LOG_SIZE_CHECK_INTERVAL)
            rounds += 1
            # One executor job per round, not one per agent: an idle node with 200 agents would
            # otherwise hand 40 jobs a second to the thread pool. It stays off the loop (a hung
            # filesystem must not stall supervision).
            now = time.time()
            # When this daemon first saw each file: the start of its content for log.interval, until a rotation.
            jobs = [(a.spec.id, self.log_path(a.spec.id), a.spec.log, self._log_started.setdefault(a.spec.id, now)) for a in self.registry]
            for agent_id, path, outcome in await loop.run_in_executor(None, _rotation_round, jobs, rounds % age_every == 0):
                if isinstance(outcome, OSError):
                    log.error("%s: log rotation failed: %s", agent_id, outcome)
                    continue
                self._log_started[agent_id] = time.time()
                agent = self.registry.find(agent_id)
                if outcome == TRUNCATED_FOR_SPACE and agent is not None:
                    why = f"log {path} truncated in place: no room on its disk for a rotated copy; its oldest output is lost"
                    self.events.append(iso_utc(), agent_id, agent.state.value, agent.state.value, why)
                    log.warning("%s: %s", agent_id, why)
                else:
                    log.info("%s: rotated %s", agent_id, path)


def _rotation_round(jobs, by_age: bool) -> list[tuple[str, Path, "bool | str | OSError"]]:
    """Rotate every log that is due (size every round, interval when `by_age`); returns the rotated ones
    (True, or TRUNCATED_FOR_SPACE) and the failures."""
    out: list[tuple[str, Path, "bool | str | OSError"]] = []
    for agent_id, path, settings, started in jobs:
        try:
            if not by_age and os.stat(path).st_size < settings.max_size:
                continue  # the cheap check that lets size be enforced every second
            rotated = rotate_by_settings(path, settings.max_size, settings.keep, settings.compress, settings.interval, started, time.time())
            if rotated:
                out.append((agent_id, path, rotated))
        except FileNotFoundError:
            continue
        except OSError as exc:
            out.append((agent_id, path, exc))
    return out
