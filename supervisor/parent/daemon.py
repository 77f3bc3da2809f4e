"""The agentd parent: one asyncio loop that owns the registry, drives every agent and serves control.

Start-up order: directories, pid lock, metadata, re-adopt or start agents, control endpoint, then
ready. The loop wakes on any event (exit via pidfd, control request, signal) or at the earliest
timer any agent asked for; it never sleeps on process work. The concerns it wires together live in
their own modules (docs/architecture.md, "Module map"): adoption, heartbeat_apply, heartbeat_feed,
notify_apply, reload_apply, log_upkeep, shutdown, control_dispatch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import zmq
import zmq.asyncio

from supervisor.common.agent_files import agent_log_path
from supervisor.common.cgroups import CgroupError, Tracking, detect as detect_tracking
from supervisor.common.metadata_store import MetadataStore, iso_utc
from supervisor.common.node_identity import node_id
from supervisor.common.pidfile import PidFile, write_plain_pid
from supervisor.common.stall_watch import StallWatch
from supervisor.config.agent import AgentSpec
from supervisor.config.schema import Config
from supervisor.parent.adoption import Adoption
from supervisor.parent.agent_changes import AgentChanges
from supervisor.parent.background import keep_running
from supervisor.parent.agent_identity import NODE_VAR, find_marked
from supervisor.parent.config_watch import ConfigWatch
from supervisor.parent.control_dispatch import dispatch
from supervisor.parent.control_server import ControlServer
from supervisor.parent.event_intake import EventIntake
from supervisor.parent.event_log import EventLog
from supervisor.parent.heartbeat_apply import HeartbeatApplier, VerdictApplier
from supervisor.parent.heartbeat_feed import HeartbeatFeed, IntakeGrace, intake_outage
from supervisor.parent.heartbeat_secrets import HeartbeatSecrets
from supervisor.parent.history_store import HistoryStore
from supervisor.parent.instance_lock import InstanceLock
from supervisor.parent.lifecycle import AgentProcess
from supervisor.parent.log_upkeep import LogUpkeep
from supervisor.parent.metadata_writer import MetadataWriter
from supervisor.parent.notify_apply import NotifyApplier
from supervisor.parent.notify_socket import NotifyHub
from supervisor.parent.process_ops import RealProcessOps
from supervisor.parent.registry import Registry
from supervisor.parent.reload_apply import apply_plan, plan_with_launch_changes, read_new_config
from supervisor.parent.safe_paths import prepare_dir
from supervisor.parent.sd_notify import Watchdog, sd_notify
from supervisor.parent.shutdown import Shutdown, let_manager_sync, stop_every_agent
from supervisor.parent.state_feed import StateFeed
from supervisor.parent.verbs.context import VerbContext
from supervisor.parent.worker_pool import WorkerPool
from supervisor.parent.worker_specs import IntakeSockets, heartbeat_env, open_intake_sockets, worker_specs
from supervisor.wire import ipc
from supervisor.wire.messages import HealthReport, HeartbeatBatch, ResourceSamples, Verdict, WorkerBeat
from supervisor.wire.protocol import ControlError, Reply, Request
from supervisor.wire.states import AgentState
from supervisor.wire.verbs.reload import ReloadPlan
from supervisor.wire.verbs.status import DaemonStatus
from supervisor.wire.version import __version__

log = logging.getLogger(__name__)


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
        self.changes = AgentChanges(self.now)  # what verbs waiting for agents to settle wait on
        self.shutdown = Shutdown(config.shutdown.stop_agents, self.wake)
        self._tasks: list[asyncio.Task] = []
        self._closers: list = []
        self.heartbeat_counters: Counter[str] = Counter()
        # Heartbeat deadlines never end before start + timeout: while agentd was down (or starting),
        # nobody could take heartbeats in, and that is not the agents' fault.
        self.grace = IntakeGrace(self.started_mono, time.time())
        # Our own loop stalls (SIGSTOP, VM pause, swap): nobody is blamed for silence across them.
        self.stalls = StallWatch("agentd")
        self.watchdog = Watchdog()  # WatchdogSec= in the unit sets WATCHDOG_USEC; without it this does nothing
        self.stalls.listeners.append(lambda stall: self.grace.after_stall(stall.end, self.wall()))
        self.heartbeats = HeartbeatApplier(self.registry, self.now, self.wall, self._publish, self._persist_dirty,
                                           lambda worker, count: self.pool.on_heartbeats(worker, count), self.heartbeat_counters)
        self.verdicts = VerdictApplier(self.registry, self.stalls, self.now, self.after_action, self.heartbeat_counters)
        self.log_upkeep = LogUpkeep(self.log_dir, self.registry, self.events, lambda: self.config.agent_defaults.log.max_age)
        # Last generation of each agent removed while this agentd runs: a re-added agent continues from it,
        # so a verdict or heartbeat still in flight about the removed process never fits its successor.
        self._removed_generations: dict[str, int] = {}
        # Before touching any directory: a second agentd must not even chmod the first one's run_dir.
        self.instance_lock = InstanceLock({"run_dir": self.run_dir, "data_dir": self.data_dir, "log_dir": self.log_dir})
        self.pidfile = PidFile(self.run_dir / "agentd.pid")
        self.zctx = zmq.asyncio.Context()
        self.sync_zctx = zmq.Context()
        # Made by run(), in start-up order, once directories, locks and the loop are there.
        self.node_id = ""
        self.store: MetadataStore | None = None
        self.writer: MetadataWriter | None = None
        self.sockets = IntakeSockets()
        self.tracking: Tracking | None = None
        self.notify: NotifyHub | None = None
        self.notices: NotifyApplier | None = None
        self.ops: RealProcessOps | None = None
        self.control: ControlServer | None = None
        self.history: HistoryStore | None = None
        self.intake: EventIntake | None = None
        self.config_watch: ConfigWatch | None = None
        self.state_feed: StateFeed | None = None
        self.pool: WorkerPool | None = None
        self.verb_context: VerbContext | None = None  # what control verbs get instead of the daemon

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
        return DaemonStatus(pid=self.pid, version=__version__, uptime_s=round(self.uptime(), 3),
                            config=str(self.config_path) if self.config_path else None, run_dir=str(self.run_dir),
                            tracking=self.tracking.mode, tracking_detail=self.tracking.describe(), restart_required=self.restart_required)

    def intake_counters(self) -> dict[str, int]:
        return {
            **self.heartbeat_counters, **{f"events_{k}": v for k, v in self.intake.counters.items()}, **self.stalls.counters(),
            **{f"notify_{k}": v for k, v in self.notify.counters.items()}, "control_busy": self.control.busy,
        }

    # ----------------------------------------------------------------- run

    async def run(self) -> int:
        """Run until shutdown; returns the process exit code."""
        loop = asyncio.get_running_loop()
        self.instance_lock.acquire()  # InstanceLocked names the other agentd's pid
        self.instance_lock.serve(loop)
        self._prepare_dirs()
        self.pidfile.acquire()  # AlreadyRunning propagates to the CLI with its message
        self.node_id = node_id(self.config.daemon.id, self.data_dir)
        self.store = MetadataStore(self.data_dir / "metadata")
        self.writer = MetadataWriter(self.store)
        try:
            self._start(loop)
            log.info("agentd %s running (pid %d, %d agents, %d workers, run_dir %s)", __version__, self.pid, len(self.registry), len(self.pool.workers), self.run_dir)
            sd_notify("READY=1\nSTATUS=supervising %d agents" % len(self.registry))
            await self._supervise(self.shutdown.requested.is_set)
            sd_notify("STOPPING=1")
            await self._shutdown_sequence()  # workers still run: the Manager hears of agents stopped now
            await self.pool.stop_all()
        finally:
            await self._close(loop)
        log.info("agentd stopped")
        return 0

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Everything between the locks and ready; each piece registers how it is closed."""
        if self.config.daemon.pid_file is not None:
            self._closers.append(write_plain_pid(self.config.daemon.pid_file, self.pid))
        self.sockets = open_intake_sockets(self.config.heartbeat, self.data_dir, self._closers)
        env = heartbeat_env(self.sockets.http_address, self.sockets.unix_path)
        env[NODE_VAR] = self.node_id  # with AGENTD_AGENT_ID: a live copy is found even without metadata
        self.tracking = detect_tracking(self.config.cgroups.mode, self.config.cgroups.root)
        if self.config.cgroups.mode == "required" and self.tracking.mode != "cgroup":
            raise CgroupError(f"cgroups.mode is required, but {self.tracking.reason}")
        log.info("process tracking: %s", self.tracking.describe())
        self.notify = NotifyHub(loop, self.run_dir / "notify", lambda *datagram: self.notices.apply(*datagram))
        self._closers.append(self.notify.close_all)
        self.ops = RealProcessOps(loop, self.log_dir, env, self._on_exit, self.tracking, self.notify.path)
        self.ops.heartbeat_secret = HeartbeatSecrets(self.data_dir).for_agent
        self.notices = NotifyApplier(self.registry, self.ops, self.notify.counters, self.notify.uid, self._publish, self.after_action, self.now, self.wall)
        self.control = ControlServer(self.zctx, self.run_dir / ipc.CONTROL, self._dispatch, self.config.control.group)
        self._closers.append(self.control.close)
        self.history = HistoryStore(self.data_dir / "history.db", self.config.history.retention)
        self._closers.append(self.history.close)
        self.intake = EventIntake(self.zctx, self.run_dir / ipc.EVENTS, self._on_worker_message)
        self._closers.append(self.intake.close)
        adoption = Adoption(self.ops, self.registry, self._new_agent, self.writer.delete,
                            lambda: find_marked(self.node_id, {s.id for s in self.config.agents}), self.data_dir, self.wall)
        adoption.load(self.config.agents, self.store.load_all(), self.now())
        self._persist_dirty()
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
        feed = HeartbeatFeed(self.grace, lambda: (self.heartbeats.times(), self.heartbeats.times_mono()), lambda: self.stalls.last_end,
                             lambda: intake_outage(self.pool.describe(), self.pool.forwarding_stalled), self.state_feed.heartbeat_times,
                             lambda: self._persist_dirty(heartbeats_too=True), self.config.metadata.flush_interval, self.now, self.wall)
        self._tasks = [keep_running(factory, name) for factory, name in (
            (self.control.serve, "control"), (self.intake.serve, "events"), (self.log_upkeep.rotate_forever, "log-rotation"),
            (self.log_upkeep.prune_forever, "log-retention"), (feed.run, "heartbeat-feed"), (self.stalls.run, "stall-watch"))]
        # Workers start once the endpoints they connect to are up.
        self.pool = WorkerPool(loop, self.run_dir, worker_specs(self.config, self.sockets, self.node_id, self.data_dir),
                               self.config.daemon.log_level, self.config.daemon.log_format, self._on_worker_respawn, stalls=self.stalls)
        self.pool.start_all()
        self._tasks.append(keep_running(self.pool.run_checks, "worker-checks"))
        self.verb_context = self._verb_context()  # before the loop runs the control task: requests need it

    async def _close(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        for task in self._tasks:
            task.cancel()
        if self.pool is not None and not self.pool.stopping:
            await self.pool.stop_all()
        for close in reversed(self._closers):
            close()
        self.writer.close()
        # destroy, not term: a socket left open by a failed start-up must not hang the exit.
        self.zctx.destroy(linger=0)
        self.sync_zctx.destroy(linger=0)
        self.pidfile.release()
        self.instance_lock.release(loop)

    def _prepare_dirs(self) -> None:
        # A new run_dir is 0755 so agents running as other users can reach the heartbeat socket; the
        # control socket inside it is born 0600. Existing directories keep their mode, and are refused
        # if another user controls them (supervisor/parent/safe_paths.py).
        prepare_dir(self.run_dir, "daemon.run_dir", 0o755)
        prepare_dir(self.data_dir, "daemon.data_dir", 0o750)
        prepare_dir(self.log_dir, "daemon.log_dir", 0o750)

    def _new_agent(self, spec: AgentSpec, record=None) -> AgentProcess:
        self.notify.open(spec.id, self.ops.agent_uid(spec))
        agent = AgentProcess(spec, self.ops, on_transition=self._on_transition, record=record)
        agent.generation = self._removed_generations.get(spec.id, 0)
        return agent

    # ----------------------------------------------------------------- the supervision loop

    async def _supervise(self, done: Callable[[], bool], cap: float = 1.0) -> None:
        """Tick every agent, persist, and wait for a wake-up or the earliest due time (at most `cap`) until `done()`."""
        watchdog = self.watchdog
        while not done():
            next_due = self._tick_all()
            # Only from here: pings stop when supervision does (docs/operations.md); a long stop of every agent is still supervision.
            watchdog.tick(time.monotonic())
            self._wake.clear()
            timeout = cap if next_due is None else min(cap, max(0.0, next_due - self.now()))
            ping_due = watchdog.due_in(time.monotonic())
            if ping_due is not None:
                timeout = min(timeout, ping_due)
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

    def after_action(self) -> None:
        """Called after acting on agents: persist now, and let the loop run their timers."""
        self._persist_dirty()
        self.wake()

    # ----------------------------------------------------------------- events from agents and workers

    def _publish(self, agent: AgentProcess) -> None:
        if self.state_feed is not None:
            self.state_feed.agent_changed(agent)

    def _on_transition(self, agent: AgentProcess, old: AgentState, new: AgentState, reason: str) -> None:
        self.events.append(iso_utc(), agent.spec.id, old.value, new.value, reason)
        level = logging.WARNING if new in (AgentState.FAILED, AgentState.RESTARTING) else logging.INFO
        log.log(level, "%s: %s -> %s: %s", agent.spec.id, old.value, new.value, reason)
        self._publish(agent)
        self.changes.fire()
        self.wake()

    def _on_exit(self, agent_id: str, generation: int, code: int | None, signum: int | None) -> None:
        agent = self.registry.find(agent_id)
        if agent is None:
            return
        self.notify.drain(agent_id)  # a MAINPID= hand-over sent before this exit comes first
        if agent.handle is not None and agent.handle.generation == generation and self.ops.main_moved(agent.handle):
            return  # the process that exited is no longer the main one
        agent.on_exit(self.now(), generation, code, signum)
        self.after_action()

    def _on_config_file_change(self, agent_id: str, problem: str | None) -> None:
        """An agent's config_file changed (config_watch.py): apply it by its on_config_change, or refuse it."""
        agent = self.registry.find(agent_id)
        if agent is None:
            return
        result = agent.config_file_changed(self.now(), problem)
        level = logging.WARNING if problem is not None else logging.INFO
        log.log(level, "%s: config_file changed: %s", agent_id, result.message)
        self.after_action()

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

    # ----------------------------------------------------------------- control, reload, shutdown

    async def _dispatch(self, request: Request) -> Reply:
        return await dispatch(request, self.verb_context, self.shutdown)

    def _verb_context(self) -> VerbContext:
        return VerbContext(
            pid=self.pid, config_path=self.config_path, registry=self.registry, events=self.events, history=self.history, signals=self.ops,
            pool=self.pool, heartbeats=self.heartbeats, grace=self.grace, stalls=self.stalls, now=self.now, uptime=self.uptime,
            log_path=self.log_path, status_info=self.status_info, intake_counters=self.intake_counters, feed_seq=lambda: self.state_feed.seq,
            manager_address=lambda: self.config.manager.address, stop_agents_on_shutdown=lambda: self.config.shutdown.stop_agents,
            after_action=self.after_action, records_written=self.writer.wait_written, wait_for_agents=self.changes.wait_for, reload=self.reload, request_shutdown=self.request_shutdown)

    def reload(self, dry_run: bool = False) -> ReloadPlan:
        """Re-read the config file and apply the per-agent diff (or only compute it)."""
        new = read_new_config(self.config_path)
        plan = plan_with_launch_changes(self.registry, self.config, new, self.started_config)
        if dry_run:
            return plan
        apply_plan(plan, new, self.registry, lambda spec: self._new_agent(spec, self.store.load(spec.id)), self._publish, self.now())
        self.restart_required = list(plan.restart_required)
        self.config = new
        if self.config_watch is not None:
            self.config_watch.update(new.agents)
        self.after_action()
        return plan

    def _reload_from_signal(self) -> None:
        log.info("SIGHUP: reloading %s", self.config_path)
        try:
            self.reload()
        except ControlError as exc:
            log.error("SIGHUP reload failed: %s", exc.message)

    def request_shutdown(self, stop_agents: bool, why: str) -> None:
        """Begin an orderly exit; agents keep running unless `stop_agents`."""
        self.shutdown.request(stop_agents, why)

    async def _shutdown_sequence(self) -> None:
        if self.shutdown.stop_agents:
            await stop_every_agent(list(self.registry), self.now(), self._persist_dirty, self.changes.wait_for, lambda fut: self._supervise(fut.done, 0.5))
            if self.config.manager.address:
                await let_manager_sync(self.pool.describe, since=self.wall(), now=self.now)
        for agent in self.registry:
            if agent.handle is not None:
                self.ops.forget(agent.handle)
            agent.dirty = True
        self._persist_dirty(heartbeats_too=True)
        self.writer.flush()
