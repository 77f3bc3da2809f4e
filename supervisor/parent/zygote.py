"""The parent's side of the zygote (workers/zygote.py): fork it before any ZeroMQ context or thread exists,
ask it for workers, and fall back to plain subprocesses for good once it is gone (docs/decisions.md,
"Worker memory: a zygote").

Each request makes the parent a child subreaper (PR_SET_CHILD_SUBREAPER) only until the zygote answers,
so the worker, orphaned by the zygote's intermediate process, becomes the parent's child. Outside that
window agents' orphans go to init as before; one orphaned inside it is found among the parent's new
children by its earlier start time, and reaped when it exits.
"""

from __future__ import annotations

import array
import asyncio
import ctypes
import gc
import importlib
import logging
import os
import signal
import socket
import threading
import time

from supervisor.common.proc_table import read_stat
from supervisor.parent.exit_watch import ExitWatch, watch_exit
from supervisor.parent.process_handle import describe_exit
from supervisor.wire.zygote import SpawnReply, SpawnRequest, ZygoteReady, ZygoteSetup

log = logging.getLogger(__name__)

# Forked from the zygote: the default workers. The Manager's workers (sync, manager-api) run gRPC, whose
# core starts threads and keeps fork handlers of its own; they stay plain subprocesses.
ZYGOTE_KINDS = ("health", "heartbeat_http", "heartbeat_unix")
READY_TIMEOUT = 10.0  # the zygote's imports, on a busy box; it had the parent's start-up as a head start
REPLY_TIMEOUT = 5.0  # two forks
CLOSE_TIMEOUT = 2.0
PR_SET_CHILD_SUBREAPER = 36
MAX_MESSAGE = 1 << 16
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ZygoteError(Exception):
    """The zygote could not fork a worker; the pool starts it as a plain subprocess instead."""


class ChildProcess:
    """A child of ours that subprocess did not start (the zygote forked it): the part of Popen that the
    pool and ExitWatch use. Only this object reaps it, so its exit status is never lost."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"pid {self.pid} still running after {timeout}s")
            if deadline is None:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
            else:
                time.sleep(0.005)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:  # never a reaped pid: it may belong to someone else by now
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _ticks_now() -> int:
    """Clock ticks since boot, the clock of a process's start time in /proc/<pid>/stat."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * CLOCK_TICKS)


def _started_before(pid: int, ticks: int) -> bool:
    stat = read_stat(pid)
    return stat is not None and stat.start_ticks < ticks


def _zygote_forked(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().startswith("agentd-")  # workers/zygote.py names what it forks
    except OSError:
        return False


def own_children() -> set[int]:
    """This process's children, from /proc/self/task/*/children."""
    found: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                found.update(int(p) for p in f.read().split())
        except OSError:
            pass
    return found


def fork_zygote() -> "Zygote | None":
    """Fork the zygote, which waits for `Zygote.configure`; None (workers are then plain subprocesses)
    when this process already runs a second thread, or cannot fork."""
    if threading.active_count() != 1:
        log.warning("not forking a zygote: %d threads already run; workers are plain subprocesses", threading.active_count())
        return None
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # What exists now (the interpreter's and our imports' objects) stays out of the cyclic GC's scans in
    # both processes: a scan writes into every object it visits, copying pages they otherwise share.
    gc.freeze()
    parent = os.getpid()
    try:
        pid = os.fork()
    except OSError as exc:
        ours.close()
        theirs.close()
        log.warning("cannot fork a zygote: %s; workers are plain subprocesses", exc)
        return None
    if pid == 0:
        try:
            ours.close()
            # By name, as `python -m workers.<kind>` names a worker: the parent never imports worker code.
            importlib.import_module("workers.zygote").serve(theirs, parent)
        finally:
            os._exit(1)
    theirs.close()
    return Zygote(pid, ours)


class Zygote:
    """The running zygote: `spawn` forks a worker that is our child; once it fails, `usable` is False."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.process = ChildProcess(pid)
        self.sock: socket.socket | None = sock
        self.ready: ZygoteReady | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.watch: ExitWatch | None = None
        self.strays: dict[int, ExitWatch | None] = {}

    def configure(self, preload: list[str], log_level: str, log_format: str) -> None:
        """Let the zygote import `preload` (`workers.<kind>`) while we go on starting up."""
        if self.sock is None:
            return
        try:
            self.sock.send(ZygoteSetup(preload=preload, log_level=log_level, log_format=log_format).model_dump_json().encode())
        except OSError as exc:
            self._give_up(f"cannot send its setup: {exc}")
            return
        log.info("zygote (pid %d) preloading %s", self.pid, ", ".join(preload))

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def usable(self) -> bool:
        return self.sock is not None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch the zygote's exit on `loop` (and reap orphans found at a spawn there)."""
        self.loop = loop
        self.watch = watch_exit(loop, self.pid, self.process, self._exited)
        if self.watch is None:
            self._give_up("it is gone")

    def spawn(self, name: str, module: str, argv: list[str], env: dict[str, str], fds: tuple[int, ...]) -> ChildProcess:
        """Fork worker `name`, running `module`.main(argv), with `fds` at the same numbers; ZygoteError
        when there is no worker (the zygote is given up if it failed, not if it refused)."""
        if self.sock is None:
            raise ZygoteError("no zygote")
        request = SpawnRequest(name=name, module=module, argv=argv, env=env, fds=list(fds))
        arrived: set[int] = set()
        window = 0
        try:
            if self.ready is None:
                self.ready = ZygoteReady.model_validate_json(self._receive(READY_TIMEOUT))
                log.info("zygote (pid %d) ready: %s preloaded%s", self.pid, ", ".join(self.ready.preloaded) or "nothing",
                         "".join(f"; {m} failed: {why}" for m, why in self.ready.failed.items()))
            before, window = own_children(), _ticks_now()
            _prctl(PR_SET_CHILD_SUBREAPER, 1)
            try:
                ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
                self.sock.sendmsg([request.model_dump_json().encode()], ancillary)
                reply = SpawnReply.model_validate_json(self._receive(REPLY_TIMEOUT))
            finally:
                _prctl(PR_SET_CHILD_SUBREAPER, 0)
                arrived = own_children() - before
        except (OSError, ValueError) as exc:  # a timeout is an OSError; a garbled message a ValueError
            self._give_up(f"{type(exc).__name__}: {exc}")
            # A worker forked before the failure never runs (no go byte), but is ours to reap.
            self._reap_later({pid for pid in arrived if _started_before(pid, window) or _zygote_forked(pid)})
            raise ZygoteError(f"the zygote failed: {exc}") from None
        # Orphans that moved to us started before the request, unlike the worker or anything another thread
        # of ours (the start-up spawns) forked meanwhile, which its own Popen reaps.
        self._reap_later({pid for pid in arrived if _started_before(pid, window)})
        if reply.pid is None:
            raise ZygoteError(reply.error or "no pid in the reply")
        return ChildProcess(reply.pid)

    def _receive(self, timeout: float) -> bytes:
        self.sock.settimeout(timeout)
        data = self.sock.recv(MAX_MESSAGE)
        if not data:
            raise ConnectionResetError("the zygote closed its socket")
        return data

    def _reap_later(self, pids: set[int]) -> None:
        """Orphans that became our children during a spawn: nobody else will reap them."""
        for pid in pids:
            log.info("pid %d was orphaned while a worker was forked and is now agentd's child; it is reaped when it exits", pid)
            child = ChildProcess(pid)
            if self.loop is None:
                continue  # no loop to watch on (tests of the pool without one); reaped when we exit
            self.strays[pid] = watch_exit(self.loop, pid, child, lambda code, signum, p=pid: self.strays.pop(p, None))
            if self.strays[pid] is None:
                child.poll()
                self.strays.pop(pid, None)

    def _exited(self, code: int | None, signum: int | None) -> None:
        self.watch = None
        if self.sock is not None:
            log.error("zygote (pid %d) exited: %s; workers are started as plain subprocesses from now on", self.pid, describe_exit(code, signum))
            self.sock.close()
            self.sock = None

    def _give_up(self, why: str) -> None:
        if self.sock is None:
            return
        log.error("zygote (pid %d) failed (%s); killing it, workers are started as plain subprocesses from now on", self.pid, why)
        self.sock.close()
        self.sock = None
        try:
            self.process.kill()
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """End the zygote (end of file on its socket, SIGKILL if it lingers) and reap it."""
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        try:
            self.process.wait(CLOSE_TIMEOUT)
        except TimeoutError:
            self.process.kill()
            self.process.wait()
        except ChildProcessError:
            pass  # already reaped
        for watch in self.strays.values():
            if watch is not None:
                watch.cancel()
        self.strays.clear()
