"""The zygote: a process the parent forks before it has a ZeroMQ context or a thread, which imports what the
workers share and then forks each worker on request, so their pages are shared (docs/decisions.md,
"Worker memory: a zygote"). The parent side is supervisor/parent/zygote.py.

A worker is forked twice (zygote -> intermediate -> worker) and the intermediate exits at once; the parent,
a child subreaper for the duration of the request, becomes the worker's parent. So the parent reaps it
and reads its exit status as for any child, and the worker's PR_SET_PDEATHSIG (set in its main, after
the move) names the parent. The worker waits for a go byte the zygote writes once the intermediate is
reaped, so it never runs before it is the parent's child, nor at all if the zygote dies first.

Workers stay ordinary programs: a forked one runs the same `main(argv)` as `python -m workers.<kind>`.
"""

from __future__ import annotations

import array
import atexit
import ctypes
import fcntl
import gc
import importlib
import logging
import os
import signal
import socket
import sys
import traceback
from typing import NoReturn

from supervisor.common.logging_setup import setup_logging
from supervisor.wire.zygote import SpawnReply, SpawnRequest, ZygoteReady, ZygoteSetup

log = logging.getLogger("workers.zygote")

PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1
MAX_MESSAGE = 1 << 20
MAX_FDS = 16


def set_process_name(name: str) -> None:
    """/proc/<pid>/comm (15 bytes): a forked process keeps the parent's command line, so this is how `ps`
    and the tests tell the zygote and its workers from agents that are between fork and exec."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def comm_for(worker_name: str) -> str:
    """A forked worker's process name: `agentd-health`, `agentd-http-0`, `agentd-unix`."""
    return "agentd-" + worker_name.removeprefix("heartbeat-")


def serve(sock: socket.socket, parent_pid: int) -> NoReturn:
    """The zygote's whole life, in the process the parent just forked: never returns."""
    code = 1
    gc.disable()  # until the workers: no holes among the preloaded objects (each worker enables it again)
    try:
        _leave_parent_state(sock, parent_pid)
        data, fds = _receive(sock)
        for fd in fds:
            os.close(fd)
        if not data:
            os._exit(0)  # the parent stopped before it had read its config
        setup = ZygoteSetup.model_validate_json(data)
        setup_logging(setup.log_level, setup.log_format, process_name="agentd-zygote")
        _preload_and_announce(sock, setup.preload)
        code = _serve_requests(sock)
    except ConnectionError:
        code = 0  # the parent went away (a failed start-up): nothing to report, it said why itself
    except BaseException:  # noqa: BLE001 - nothing may unwind into the parent's stack we were forked from
        traceback.print_exc()
    finally:
        os._exit(code)


def _leave_parent_state(sock: socket.socket, parent_pid: int) -> None:
    set_process_name("agentd-zygote")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(0)
    # The terminal's Ctrl-C and hang-up reach the whole process group; the parent decides what happens,
    # and the zygote ends with it (end of file on its socket, or the death signal).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # The parent's log handlers (daemon.log_file) are closed through their objects, so nothing closes
    # their descriptor numbers again later, when they may belong to a worker's socket.
    for handler in logging.getLogger().handlers[:]:
        handler.close()
        logging.getLogger().removeHandler(handler)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    _close_all_but(0, 1, 2, sock.fileno())


def _close_all_but(*keep: int) -> None:
    low = 0
    for fd in sorted(set(keep)):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0 else 1 << 20)


def _preload_and_announce(sock: socket.socket, preload: list[str]) -> None:
    done, failed = [], {}
    for module in preload:
        try:
            importlib.import_module(module)
            done.append(module)
        except Exception as exc:  # noqa: BLE001 - the worker imports it itself and reports the failure
            failed[module] = f"{type(exc).__name__}: {exc}"
            log.warning("zygote: cannot preload %s: %s", module, failed[module])
    # Objects that exist now are never scanned by the cyclic GC again, in the zygote or in its workers:
    # a collection writes into every object it looks at, which would copy shared pages into each worker.
    # No collection first: the holes it frees would be filled by each worker's allocations (the gc docs).
    gc.freeze()
    sock.send(ZygoteReady(pid=os.getpid(), preloaded=done, failed=failed).model_dump_json().encode())


def _serve_requests(sock: socket.socket) -> int:
    while True:
        try:
            data, fds = _receive(sock)
        except ConnectionError:
            return 0
        if not data:
            return 0  # the parent closed its end: it is stopping
        try:
            request = SpawnRequest.model_validate_json(data)
            if len(fds) != len(request.fds):
                raise ValueError(f"{len(fds)} descriptors received for {len(request.fds)} named")
            reply, start = _fork_worker(request, fds, sock)
        except Exception as exc:  # noqa: BLE001 - a bad request is answered, not fatal
            reply, start = SpawnReply(error=f"{type(exc).__name__}: {exc}"), None
        finally:
            for fd in fds:
                os.close(fd)
        sock.send(reply.model_dump_json().encode())
        if start is not None:
            # After the reply: once the worker runs, the parent already knows its pid.
            os.write(start, b"g")
            os.close(start)


def _receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    fds = array.array("i")
    data, ancdata, _flags, _addr = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def _fork_worker(request: SpawnRequest, fds: list[int], sock: socket.socket) -> tuple[SpawnReply, int]:
    """Fork the intermediate, which forks the worker and exits; returns the worker's pid and the go pipe."""
    pid_r, pid_w = os.pipe()
    go_r, go_w = os.pipe()
    try:
        middle = os.fork()
    except OSError:
        for fd in (pid_r, pid_w, go_r, go_w):
            os.close(fd)
        raise
    if middle == 0:
        try:
            os.close(pid_r)
            os.close(go_w)
            set_process_name(comm_for(request.name))  # inherited by the worker from its first instruction
            worker = os.fork()
            if worker == 0:
                os.close(pid_w)
                _become_worker(request, fds, go_r, sock)
            os.write(pid_w, str(worker).encode())
        finally:
            os._exit(0)
    os.close(pid_w)
    os.close(go_r)
    try:
        os.waitpid(middle, 0)  # reaped: the worker has been moved to the parent (it is the subreaper)
        raw = os.read(pid_r, 32)
    finally:
        os.close(pid_r)
    if not raw:
        os.close(go_w)
        return SpawnReply(error="the intermediate process exited before it forked the worker"), None
    return SpawnReply(pid=int(raw)), go_w


def _become_worker(request: SpawnRequest, fds: list[int], go: int, sock: socket.socket) -> NoReturn:
    code = 1
    try:
        sock.close()
        if os.read(go, 1) != b"g":
            os._exit(0)  # the zygote died before the parent learnt of us: never run
        os.close(go)
        _place_fds(fds, request.fds)
        os.environ.clear()
        os.environ.update(request.env)
        gc.enable()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        atexit._clear()  # the parent's exit handlers are not the worker's
        atexit.register(logging.shutdown)
        module = importlib.import_module(request.module)
        sys.argv = [module.__file__ or request.module, *request.argv]
        code = _run_main(module, request.argv)
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001 - what an uncaught exception does in `python -m`: traceback, exit 1
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _run_main(module, argv: list[str]) -> int:
    """`sys.exit(main(argv))` as the interpreter would turn it into an exit status."""
    try:
        result = module.main(argv)
    except SystemExit as exc:
        result = exc.code
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)  # Python's own exit on an unhandled Ctrl-C
        raise
    if result is None:
        return 0
    if isinstance(result, int):
        return result & 0xFF
    print(result, file=sys.stderr)
    return 1


def _place_fds(received: list[int], targets: list[int]) -> None:
    """Each received descriptor onto its target number, all others closed (as subprocess's pass_fds)."""
    # First above every number involved, so no dup2 below lands on a descriptor still to be moved.
    floor = max([2, *received, *targets]) + 1
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in received]
    for fd in received:
        os.close(fd)
    for fd, target in zip(moved, targets):
        os.dup2(fd, target)
        os.close(fd)
    _close_all_but(0, 1, 2, *targets)
