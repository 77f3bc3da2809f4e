"""The agentd parent: one asyncio loop that owns the registry, drives every agent and serves control.

Start-up order: directories, pid lock, metadata, re-adopt or start agents, control endpoint, then
ready. The loop wakes on any event (exit via pidfd, control request, signal) or at the earliest
timer any agent asked for; it never sleeps on process work. The concerns it wires together live in
their own modules (docs/architecture.md, "Module map"): daemon_resources, agent_sweep, agent_events,
adoption, heartbeat_apply, heartbeat_feed, notify_apply, reload_apply, log_upkeep, shutdown,
control_dispatch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from supervisor.common.agent_files import agent_log_path
from supervisor.common.cgroups import CgroupError, Tracking, detect as detect_tracking
from supervisor.common.pidfile import write_plain_pid
from supervisor.common.stall_watch import StallWatch
from supervisor.config.agent import AgentSpec
from supervisor.config.schema import Config
from supervisor.parent.adoption import Adoption
from supervisor.parent.agent_changes import AgentChanges
from supervisor.parent.agent_events import AgentEvents
from supervisor.parent.agent_sweep import AgentSweep
from supervisor.parent.background import keep_running
from supervisor.parent.agent_identity import NODE_VAR, find_marked
from supervisor.parent.config_watch import ConfigWatch
from supervisor.parent.control_server import ControlServer
from supervisor.parent.daemon_resources import DaemonResources
from supervisor.parent.event_intake import EventIntake
from supervisor.parent.event_log import EventLog
from supervisor.parent.heartbeat_apply import HeartbeatApplier, VerdictApplier
from supervisor.parent.heartbeat_feed import HeartbeatFeed, IntakeGrace, intake_outage
from supervisor.parent.heartbeat_secrets import HeartbeatSecrets
from supervisor.parent.history_store import HistoryStore
from supervisor.parent.lifecycle import AgentProcess
from supervisor.parent.log_upkeep import LogUpkeep
from supervisor.parent.notify_apply import NotifyApplier
from supervisor.parent.notify_socket import NotifyHub
from supervisor.parent.process_ops import RealProcessOps
from supervisor.parent.registry import Registry
from supervisor.parent.reload_apply import ConfigReload
from supervisor.parent.sd_notify import Watchdog, sd_notify
from supervisor.parent.shutdown import Shutdown, let_go, let_manager_sync, stop_every_agent
from supervisor.parent.state_feed import StateFeed
from supervisor.parent.worker_pool import WorkerPool
from supervisor.parent.worker_specs import heartbeat_env, open_intake_sockets, worker_specs
from supervisor.parent.zygote import Zygote
from supervisor.wire import ipc
from supervisor.wire.messages import HealthReport, HeartbeatBatch, ResourceSamples, Verdict, WorkerBeat
from supervisor.wire.protocol import Reply, Request
from supervisor.wire.verbs.status import DaemonStatus
from supervisor.wire.version import __version__

if TYPE_CHECKING:
    from supervisor.parent.verbs.context import VerbContext

log = logging.getLogger(__name__)

# The supervision loop's longest sleep. Every timer an agent has is in its tick's due time and every event
# sets `_wake`, so nothing depends on this; it is a safety net, and a short one was a wake-up a second of
# ticking 200 idle agents (issue 11: idle cost).
SUPERVISE_SAFETY_NET = 10.0


class Daemon:
    """The parent process: registry, lifecycle driver, metadata owner, control server."""

    def __init__(self, config: Config, config_path: Path | None, zygote: Zygote | None = None) -> None:
        self.zygote = zygote  # forked before this process had a ZeroMQ context or a thread (agentd_cli.py)
        self.config_path = config_path
        self.res = DaemonResources(config.daemon)  # locks, directories, metadata, ZeroMQ contexts, closers
        self.pid = os.getpid()
        self.started_mono = time.monotonic()
        self.registry = Registry()
        self.events = EventLog()
        self._wake = asyncio.Event()
        self.changes = AgentChanges(self.now)  # what verbs waiting for agents to settle wait on
        self.shutdown = Shutdown(config.shutdown.stop_agents, self.wake)
        self.reloads = ConfigReload(config, config_path, self.registry, lambda spec: self._new_agent(spec, self.res.store.load(spec.id)),
                                    self._publish, self._reloaded, self.now)
        self.sweep = AgentSweep(self.registry, lambda record: self.res.writer.save(record), self._retire)
        self.agent_events = AgentEvents(self.registry, self.events, self._publish, self.changes.fire, self.wake, self.after_action, self.now,
                                        lambda agent_id: self.notify.drain(agent_id), lambda handle: self.ops.main_moved(handle))
        self._tasks: list[asyncio.Task] = []
        self.heartbeat_counters: Counter[str] = Counter()
        # Heartbeat deadlines never end before start + timeout: while agentd was down (or starting),
        # nobody could take heartbeats in, and that is not the agents' fault.
        self.grace = IntakeGrace(self.started_mono, time.time())
        # Our own loop stalls (SIGSTOP, VM pause, swap): nobody is blamed for silence across them.
        self.stalls = StallWatch("agentd")
        self.watchdog = Watchdog()  # WatchdogSec= in the unit sets WATCHDOG_USEC; without it this does nothing
        self.stalls.listeners.append(lambda stall: self.grace.after_stall(stall.end, self.wall()))
        self.heartbeats = HeartbeatApplier(self.registry, self.now, self.wall, self._publish, self.sweep.persist,
                                           lambda worker, count: self.pool.on_heartbeats(worker, count), self.heartbeat_counters)
        self.verdicts = VerdictApplier(self.registry, self.stalls, self.now, self.after_action, self.heartbeat_counters)
        self.log_upkeep = LogUpkeep(self.res.log_dir, self.registry, self.events, lambda: self.config.agent_defaults.log.max_age)
        # Made by run(), in start-up order, once directories, locks and the loop are there.
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

    @property
    def config(self) -> Config:
        """The config in force (reload replaces it; restart-only sections stay as started, reload_apply.py)."""
        return self.reloads.config

    # ----------------------------------------------------------------- clocks and small views

    now = staticmethod(time.monotonic)
    wall = staticmethod(time.time)

    def uptime(self) -> float:
        return self.now() - self.started_mono

    def status_info(self) -> DaemonStatus:
        return DaemonStatus(pid=self.pid, version=__version__, uptime_s=round(self.uptime(), 3),
                            config=str(self.config_path) if self.config_path else None, run_dir=str(self.res.run_dir),
                            tracking=self.tracking.mode, tracking_detail=self.tracking.describe(), restart_required=self.reloads.restart_required)

    def intake_counters(self) -> dict[str, int]:
        return {
            **self.heartbeat_counters, **{f"events_{k}": v for k, v in self.intake.counters.items()}, **self.stalls.counters(),
            **{f"notify_{k}": v for k, v in self.notify.counters.items()}, "control_busy": self.control.busy,
        }

    # ----------------------------------------------------------------- run

    async def run(self) -> int:
        """Run until shutdown; returns the process exit code."""
        loop = asyncio.get_running_loop()
        self.res.acquire(loop)  # InstanceLocked and AlreadyRunning propagate to the CLI with their messages
        try:
            self._start(loop)
            log.info("agentd %s running (pid %d, %d agents, %d workers, run_dir %s)", __version__, self.pid, len(self.registry), len(self.pool.workers), self.res.run_dir)
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
        res, closers = self.res, self.res.closers
        if self.config.daemon.pid_file is not None:
            closers.append(write_plain_pid(self.config.daemon.pid_file, self.pid))
        sockets = open_intake_sockets(self.config.heartbeat, res.data_dir, closers)
        env = heartbeat_env(sockets.http_address, sockets.unix_path)
        env[NODE_VAR] = res.node_id  # with AGENTD_AGENT_ID: a live copy is found even without metadata
        self.tracking = detect_tracking(self.config.cgroups.mode, self.config.cgroups.root)
        if unmet := self.tracking.unmet(self.config.cgroups.mode):
            raise CgroupError(unmet)
        log.info("process tracking: %s", self.tracking.describe())
        self.notify = NotifyHub(loop, res.run_dir / "notify", lambda *datagram: self.notices.apply(*datagram))
        closers.append(self.notify.close_all)
        self.ops = RealProcessOps(loop, res.log_dir, env, self.agent_events.on_exit, self.tracking, self.notify.path)
        self.ops.heartbeat_secret = HeartbeatSecrets(res.data_dir).for_agent
        self.notices = NotifyApplier(self.registry, self.ops, self.notify.counters, self.notify.uid, self._publish, self.after_action, self.now, self.wall)
        self.control = ControlServer(res.zctx, res.run_dir / ipc.CONTROL, self._dispatch, self.config.control.group)
        closers.append(self.control.close)
        self.history = HistoryStore(res.data_dir / "history.db", self.config.history.retention)
        closers.append(self.history.close)
        self.intake = EventIntake(res.zctx, res.run_dir / ipc.EVENTS, self._on_worker_message)
        closers.append(self.intake.close)
        adoption = Adoption(self.ops, self.registry, self._new_agent, res.writer.delete,
                            lambda: find_marked(res.node_id, {s.id for s in self.config.agents}), res.data_dir, self.wall)
        adoption.load(self.config.agents, res.store.load_all(), self.now())
        self.sweep.persist()
        self.config_watch = ConfigWatch(loop, self.agent_events.on_config_file_change)
        closers.append(self.config_watch.close)
        self.config_watch.update(self.config.agents)
        # After the agents: no worker is there yet to hear 200 start-up transitions (each costs
        # a model and a send); workers take a snapshot when they join.
        self.state_feed = StateFeed(res.sync_zctx, res.run_dir / ipc.STATE)
        closers.append(self.state_feed.close)
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Read the setting when the signal comes: a reload may have changed it.
            loop.add_signal_handler(sig, lambda name=signal.Signals(sig).name: self.shutdown.request(self.config.shutdown.stop_agents, name))
        loop.add_signal_handler(signal.SIGHUP, self.reloads.from_signal)
        feed = HeartbeatFeed(self.grace, lambda: (self.heartbeats.times(), self.heartbeats.times_mono()), lambda: self.stalls.last_end,
                             lambda: intake_outage(self.pool.describe(), self.pool.forwarding_stalled), self.state_feed.heartbeat_times,
                             lambda: self.sweep.persist(heartbeats_too=True), self.config.metadata.flush_interval, self.now, self.wall)
        self._tasks = [keep_running(factory, name) for factory, name in (
            (self.control.serve, "control"), (self.intake.serve, "events"), (self.log_upkeep.rotate_forever, "log-rotation"),
            (self.log_upkeep.prune_forever, "log-retention"), (feed.run, "heartbeat-feed"), (self.stalls.run, "stall-watch"))]
        # Workers start once the endpoints they connect to are up. Heartbeats sent while one was down
        # were lost through no fault of the agents: a respawn extends their grace.
        self.pool = WorkerPool(loop, res.run_dir, worker_specs(self.config, sockets, res.node_id, res.data_dir), self.config.daemon.log_level,
                               self.config.daemon.log_format, lambda name, cause: self.grace.on_worker_respawn(name, self.now(), self.wall()), stalls=self.stalls,
                               zygote=self.zygote)
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
        if self.zygote is not None:
            self.zygote.close()
        self.res.release(loop)

    def _new_agent(self, spec: AgentSpec, record=None) -> AgentProcess:
        self.notify.open(spec.id, self.ops.agent_uid(spec))
        agent = AgentProcess(spec, self.ops, on_transition=self.agent_events.on_transition, record=record)
        agent.generation = self.sweep.generation_of(spec.id)
        return agent

    # ----------------------------------------------------------------- the supervision loop

    async def _supervise(self, done: Callable[[], bool], cap: float = SUPERVISE_SAFETY_NET) -> None:
        """Tick every agent, persist, and wait for a wake-up or the earliest due time (at most `cap`) until `done()`."""
        watchdog = self.watchdog
        while not done():
            next_due = self.sweep.tick_all(self.now())
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

    def _retire(self, agent_id: str) -> None:
        """An agent whose removal finished leaves: its record, notify socket, cgroup and feed entry go."""
        self.res.writer.delete(agent_id)
        self.notify.close(agent_id)
        self.ops.remove_cgroup(agent_id)
        if self.state_feed is not None:
            self.state_feed.agent_removed(agent_id)

    def wake(self) -> None:
        self._wake.set()

    def after_action(self) -> None:
        """Called after acting on agents: persist now, and let the loop run their timers."""
        self.sweep.persist()
        self.wake()

    # ----------------------------------------------------------------- events from agents and workers

    def _publish(self, agent: AgentProcess) -> None:
        if self.state_feed is not None:
            self.state_feed.agent_changed(agent)

    def _on_worker_message(self, msg) -> None:
        if isinstance(msg, HeartbeatBatch):
            self.heartbeats.apply(msg)
        elif isinstance(msg, WorkerBeat):
            self.pool.on_beat(msg)
        elif isinstance(msg, Verdict):
            self.verdicts.apply(msg)
        elif isinstance(msg, HealthReport):
            self.verdicts.report(msg)
        elif isinstance(msg, ResourceSamples):
            self.history.add(msg.samples)

    # ----------------------------------------------------------------- control, reload, shutdown

    async def _dispatch(self, request: Request) -> Reply:
        from supervisor.parent.control_dispatch import dispatch  # loaded by _verb_context, before any request
        return await dispatch(request, self.verb_context, self.shutdown)

    def _verb_context(self) -> VerbContext:
        # The verbs load here, after the start-up spawns, and not on the first request (docs/performance.md).
        from supervisor.parent import control_dispatch  # noqa: F401
        from supervisor.parent.verbs.context import VerbContext
        return VerbContext(
            pid=self.pid, config_path=self.config_path, registry=self.registry, events=self.events, history=self.history, signals=self.ops,
            pool=self.pool, heartbeats=self.heartbeats, grace=self.grace, stalls=self.stalls, now=self.now, uptime=self.uptime,
            log_path=partial(agent_log_path, self.res.log_dir), status_info=self.status_info, intake_counters=self.intake_counters, feed_seq=lambda: self.state_feed.seq,
            manager_address=lambda: self.config.manager.address, stop_agents_on_shutdown=lambda: self.config.shutdown.stop_agents,
            after_action=self.after_action, records_written=self.res.writer.wait_written, wait_for_agents=self.changes.wait_for, reload=self.reloads.reload, request_shutdown=self.shutdown.request)

    def _reloaded(self, new: Config) -> None:
        if self.config_watch is not None:
            self.config_watch.update(new.agents)
        self.after_action()

    async def _shutdown_sequence(self) -> None:
        if self.shutdown.stop_agents:
            await stop_every_agent(list(self.registry), self.now(), self.sweep.persist, self.changes.wait_for, lambda fut: self._supervise(fut.done, 0.5))
            if self.config.manager.address:
                await let_manager_sync(self.pool.describe, since=self.wall(), now=self.now)
        let_go(self.registry, self.ops.forget, lambda: self.sweep.persist(heartbeats_too=True))
        self.res.writer.flush()
