"""The parent's worker processes: spawn, watch (pidfd + liveness beats), respawn with backoff, report.

The default workers are forked by the zygote (supervisor/parent/zygote.py), and are our children all
the same; the others, and all of them once the zygote is gone, are plain subprocesses running
`python -m workers.<kind>` (docs/decisions.md, "Worker memory: a zygote"). Listening sockets (HTTP port,
heartbeat.sock) are created by the parent and passed down at the same descriptor numbers either way, so a
respawned worker inherits the backlog and clients never see a refused connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from supervisor.parent.exit_watch import ExitWatch, watch_exit
from supervisor.parent.process_handle import describe_exit
from supervisor.wire.messages import WorkerBeat
from supervisor.common.backoff import step_delay
from supervisor.wire.verbs.workers import WorkerInfo
from supervisor.common.metadata_store import iso_utc
from supervisor.parent.process_spawn import SYSTEMD_ONLY_ENV
from supervisor.common.stall_watch import Stall, StallWatch
from supervisor.parent.zygote import ZYGOTE_KINDS, ChildProcess, Zygote, ZygoteError

log = logging.getLogger(__name__)

RESPAWN_STEPS = [0.1, 0.5, 1.0, 2.0, 5.0]  # the last repeats
STARTUP_ERROR_CODE = 2  # a worker's "cannot start" (bad settings, missing TLS file): retried slowly
STARTUP_ERROR_RETRY = 30.0
RESPAWN_RESET_AFTER = 30.0  # a worker that ran this long starts again from the first step
SILENCE_TIMEOUT = 10.0  # no liveness beat for this long: the worker is stuck and gets SIGKILL
START_GRACE = 15.0  # a fresh worker may take this long before its first beat (imports on a busy box)
# An intake whose beats say it accepted heartbeats that never reached us, with none arriving for this long,
# is wedged (issue 8: it answered 200 and beat on while forwarding nothing) and is replaced.
FORWARD_STALL = 5.0
STOP_TIMEOUT = 5.0
CHECK_MAX_SLEEP = 5.0  # a safety net: run_checks computes when it is next needed


@dataclass
class WorkerSpec:
    """How to run one worker process."""

    name: str
    kind: str  # module under workers/
    args: list[str] = field(default_factory=list)
    pass_fds: tuple[int, ...] = ()


@dataclass
class _Worker:
    spec: WorkerSpec
    popen: subprocess.Popen | ChildProcess | None = None
    watch: ExitWatch | None = None
    started_mono: float = 0.0
    last_beat_mono: float | None = None
    beat_every: float | None = None  # the latest beat's promise: the next one within this many seconds
    silent_since: float = 0.0  # silence is counted from here: the last beat, moved on by our own stalls
    restarts: int = 0
    consecutive: int = 0
    causes: Counter = field(default_factory=Counter)
    last_exit: str | None = None
    last_exit_time: float | None = None
    respawn_at: float | None = None
    killing_cause: str | None = None
    counters: dict[str, int] = field(default_factory=dict)
    queue_depth: int = 0
    info: dict[str, str] = field(default_factory=dict)
    heartbeats_received: int = 0  # heartbeat items that reached the parent from this incarnation
    stalled_since: float | None = None  # owes us heartbeats and none came since (monotonic)
    received_at_stall: int = 0


def _settings_off_argv(argv: list[str], name: str) -> tuple[list[str], int | None]:
    """Move `--settings JSON` into a memfd the worker inherits: settings hold secrets (manager_api.token,
    TLS key paths) that argv would show to every local user through `ps`."""
    if "--settings" not in argv:
        return argv, None
    i = argv.index("--settings")
    fd = os.memfd_create(f"agentd-{name}-settings", os.MFD_CLOEXEC)
    try:
        data = argv[i + 1].encode()
        while data:
            data = data[os.write(fd, data):]
    except BaseException:
        os.close(fd)
        raise
    return [*argv[:i], "--settings-fd", str(fd), *argv[i + 2:]], fd


class WorkerPool:
    """Keeps every configured worker running; the parent's event loop drives it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, run_dir: Path, specs: list[WorkerSpec], log_level: str, log_format: str, on_respawn=None,
                 stalls: StallWatch | None = None, zygote: Zygote | None = None) -> None:
        self.loop = loop
        self.zygote = zygote
        if zygote is not None:
            zygote.attach(loop)
        self.run_dir = run_dir
        self.log_level = log_level
        self.log_format = log_format
        self.workers = {s.name: _Worker(s) for s in specs}
        self.on_respawn = on_respawn or (lambda name, cause: None)
        self.stopping = False
        self.stalls = stalls
        if stalls is not None:
            stalls.listeners.append(self._credit_stall)
        self._respawn_scheduled = asyncio.Event()  # wakes run_checks for a respawn sooner than it planned

    # ----------------------------------------------------------------- spawn / exit

    def start_all(self) -> None:
        for worker in self.workers.values():
            self._spawn(worker)

    def _spawn(self, worker: _Worker) -> None:
        spec = worker.spec
        argv = [
            sys.executable, "-m", f"workers.{spec.kind}",
            "--run-dir", str(self.run_dir), "--name", spec.name,
            "--log-level", self.log_level, "--log-format", self.log_format, *spec.args,
        ]
        # Workers do not talk to systemd: only agentd's main process does (NotifyAccess=main would drop it anyway).
        env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_ONLY_ENV}
        env["AGENTD_PARENT_PID"] = str(os.getpid())
        pass_fds, settings_fd = spec.pass_fds, None
        try:
            argv, settings_fd = _settings_off_argv(argv, spec.name)
            if settings_fd is not None:
                pass_fds = (*pass_fds, settings_fd)
            popen = self._fork(spec, argv, env, pass_fds)
            if popen is None:
                popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, pass_fds=pass_fds, env=env, close_fds=True)
        except OSError as exc:
            log.error("worker %s: cannot start: %s", spec.name, exc)
            self._schedule_respawn(worker, f"cannot start: {exc}")
            return
        finally:
            if settings_fd is not None:
                os.close(settings_fd)
        worker.popen = popen
        worker.started_mono = worker.silent_since = time.monotonic()
        worker.last_beat_mono = worker.beat_every = None
        worker.heartbeats_received = 0
        worker.stalled_since = None
        worker.respawn_at = None
        worker.killing_cause = None
        worker.watch = watch_exit(self.loop, popen.pid, popen, lambda code, sig, w=worker, p=popen: self._exited(w, p, code, sig))
        log.info("worker %s: started pid %d%s", spec.name, popen.pid, " (forked by the zygote)" if isinstance(popen, ChildProcess) else "")

    def _fork(self, spec: WorkerSpec, argv: list[str], env: dict[str, str], pass_fds: tuple[int, ...]) -> ChildProcess | None:
        """The worker forked by the zygote, or None: start it as a plain subprocess."""
        if self.zygote is None or not self.zygote.usable or spec.kind not in ZYGOTE_KINDS:
            return None
        try:
            return self.zygote.spawn(spec.name, f"workers.{spec.kind}", argv[3:], env, pass_fds)  # argv[3:]: after `python -m workers.<kind>`
        except ZygoteError as exc:
            log.warning("worker %s: %s; starting it as a plain subprocess", spec.name, exc)
            return None

    def _exited(self, worker: _Worker, popen: subprocess.Popen | ChildProcess, code: int | None, signum: int | None) -> None:
        if worker.popen is not popen:
            return
        worker.popen = None
        worker.watch = None
        what = describe_exit(code, signum)
        cause = worker.killing_cause or what
        worker.last_exit = cause if cause == what else f"{cause} ({what})"
        worker.last_exit_time = time.time()
        if self.stopping:
            return
        if code == STARTUP_ERROR_CODE and worker.killing_cause is None:
            # Its own log line says what is wrong; retrying every few seconds would only repeat it.
            log.error("worker %s cannot start (exit code 2, see its log line above); retrying in %.0fs", worker.spec.name, STARTUP_ERROR_RETRY)
            self._schedule_respawn(worker, cause, delay=STARTUP_ERROR_RETRY)
            return
        log.warning("worker %s (pid %d) exited: %s; respawning", worker.spec.name, popen.pid, worker.last_exit)
        self._schedule_respawn(worker, cause)

    def _schedule_respawn(self, worker: _Worker, cause: str, delay: float | None = None) -> None:
        now = time.monotonic()
        if worker.started_mono and now - worker.started_mono >= RESPAWN_RESET_AFTER:
            worker.consecutive = 0
        if delay is None:
            delay = step_delay(RESPAWN_STEPS, worker.consecutive)
        worker.consecutive += 1
        worker.restarts += 1
        worker.causes[cause.split(" (")[0]] += 1
        worker.respawn_at = now + delay
        self._respawn_scheduled.set()
        self.on_respawn(worker.spec.name, cause)

    # ----------------------------------------------------------------- liveness

    def on_beat(self, beat: WorkerBeat) -> None:
        worker = self.workers.get(beat.worker)
        if worker is None or worker.popen is None or worker.popen.pid != beat.pid:
            return  # a beat from a previous incarnation still in the queue
        now = time.monotonic()
        if self.stalls is not None:
            self.stalls.observe(now)  # beats queued across our stall are handled before the stall ticker runs
        worker.last_beat_mono = worker.silent_since = now
        worker.beat_every = beat.every
        worker.counters = beat.counters
        worker.queue_depth = beat.queue_depth
        worker.info = beat.info
        self._watch_forwarding(worker, beat, now)

    def on_heartbeats(self, name: str, count: int) -> None:
        """A batch of `count` heartbeats arrived from worker `name` (the forwarding watch counts them)."""
        worker = self.workers.get(name)
        if worker is not None:
            worker.heartbeats_received += count

    def _watch_forwarding(self, worker: _Worker, beat: WorkerBeat, now: float) -> None:
        # Beats and batches share the worker's one PUSH socket, so by the time a beat is handled every batch
        # sent before it has been too: what it accepted and we have not seen is queued there, or lost.
        owed = beat.counters.get("accepted", 0) > worker.heartbeats_received
        if not owed:
            worker.stalled_since = None
            return
        if worker.stalled_since is None or worker.heartbeats_received != worker.received_at_stall:
            worker.stalled_since, worker.received_at_stall = now, worker.heartbeats_received
            return
        if now - worker.stalled_since > FORWARD_STALL and worker.killing_cause is None and worker.popen is not None:
            self._kill(worker, f"forwarding stalled: {beat.counters.get('accepted', 0) - worker.heartbeats_received} accepted "
                               f"heartbeats not received for {now - worker.stalled_since:.0f}s")

    @staticmethod
    def _kill(worker: _Worker, cause: str) -> None:
        """SIGKILL a live worker that stopped doing its job; its exit reports `cause` and respawns it."""
        assert worker.popen is not None
        worker.killing_cause = cause
        log.error("worker %s (pid %d): %s; killing it", worker.spec.name, worker.popen.pid, cause)
        try:
            worker.popen.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass

    def forwarding_stalled(self, name: str) -> bool:
        """The worker owes us heartbeats and has sent none for a while (it counts as an intake outage)."""
        worker = self.workers.get(name)
        return worker is not None and worker.stalled_since is not None and time.monotonic() - worker.stalled_since > 1.0

    def check(self, now: float) -> None:
        """Respawn what is due; SIGKILL workers that went silent (the exit path respawns them)."""
        if self.stalls is not None:
            self.stalls.observe(now)  # a stall of ours that just ended is credited before anyone is judged
        for worker in self.workers.values():
            if worker.popen is None:
                if worker.respawn_at is not None and now >= worker.respawn_at and not self.stopping:
                    self._spawn(worker)
                continue
            silent_for = now - worker.silent_since
            limit = SILENCE_TIMEOUT if worker.last_beat_mono is not None else START_GRACE
            if silent_for > limit and worker.killing_cause is None:
                self._kill(worker, f"silent for {silent_for:.0f}s (no liveness beat)")

    def _credit_stall(self, stall: Stall) -> None:
        """Worker silence is judged net of our own stall: we could not read their beats meanwhile."""
        for worker in self.workers.values():
            if worker.popen is not None:
                worker.silent_since = min(stall.end, worker.silent_since + stall.duration)
                if worker.stalled_since is not None:
                    worker.stalled_since = min(stall.end, worker.stalled_since + stall.duration)

    def next_due(self, now: float) -> float:
        """When `check` next has something to do: a respawn, or a worker's silence deadline."""
        due = now + CHECK_MAX_SLEEP
        for worker in self.workers.values():
            if worker.popen is None:
                if worker.respawn_at is not None:
                    due = min(due, worker.respawn_at)
            elif worker.killing_cause is None:
                due = min(due, worker.silent_since + (SILENCE_TIMEOUT if worker.last_beat_mono is not None else START_GRACE))
        return due

    async def run_checks(self) -> None:
        # Sleeps until something is due instead of waking ten times a second: an idle pool costs
        # (almost) nothing. A worker's exit schedules its respawn and wakes this loop at once.
        while True:
            self._respawn_scheduled.clear()
            # A little past the due time: check() acts only once a deadline has strictly passed.
            delay = max(0.0, self.next_due(time.monotonic()) + 0.01 - time.monotonic())
            try:
                await asyncio.wait_for(self._respawn_scheduled.wait(), delay)
            except TimeoutError:
                pass
            self.check(time.monotonic())

    # ----------------------------------------------------------------- stop

    async def stop_all(self) -> None:
        """SIGTERM every worker, SIGKILL what is left after a few seconds."""
        self.stopping = True
        live = [w for w in self.workers.values() if w.popen is not None]
        for worker in live:
            worker.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(w.popen is not None for w in live) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for worker in live:
            if worker.popen is not None:
                log.warning("worker %s did not exit on SIGTERM; killing it", worker.spec.name)
                worker.popen.kill()
                worker.popen.wait()
                if worker.watch is not None:
                    worker.watch.cancel()
                worker.popen = None

    # ----------------------------------------------------------------- views

    def describe(self) -> list[WorkerInfo]:
        now = time.monotonic()
        out = []
        for w in self.workers.values():
            running = w.popen is not None
            out.append(WorkerInfo(
                name=w.spec.name,
                kind=w.spec.kind,
                state="running" if running else ("restarting" if w.respawn_at is not None else "stopped"),
                pid=w.popen.pid if running else None,
                uptime_s=round(now - w.started_mono, 3) if running else None,
                restarts=w.restarts,
                restart_causes=dict(w.causes),
                last_exit=w.last_exit,
                last_exit_time=iso_utc(w.last_exit_time) if w.last_exit_time else None,
                last_beat_age_s=round(now - w.last_beat_mono, 3) if running and w.last_beat_mono is not None else None,
                beat_every_s=w.beat_every if running else None,
                counters=w.counters,
                queue_depth=w.queue_depth,
                info=w.info,
            ))
        return out
