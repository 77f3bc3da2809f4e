"""The real OS side of the lifecycle: spawn agents, watch them with pidfds, signal and inspect trees.

Agents run in their own session (pgid = pid) with stdout/stderr on their log file, so they outlive
the daemon. Exits are seen at once through a pidfd registered with the asyncio loop, never by polling.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import pwd
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import psutil

from .config import AgentSpec
from .exit_watch import ExitWatch, watch_exit
from .lifecycle import ProcessHandle, SpawnError
from .log_files import open_agent_log

log = logging.getLogger(__name__)

AgentExitCallback = Callable[[str, int, "int | None", "int | None"], None]


def agent_log_path(log_dir: Path, agent_id: str) -> Path:
    """Where an agent's stdout and stderr go."""
    return log_dir / agent_id / "agent.log"


def validate_command(spec: AgentSpec) -> None:
    """Refuse before forking anything that cannot be exec'd, with a message an operator can act on."""
    path = Path(spec.binary_path)
    if not path.is_absolute():
        raise SpawnError(f"binary_path {path} is not an absolute path")
    if not path.exists():
        raise SpawnError(f"binary_path {path} does not exist")
    if path.is_dir():
        raise SpawnError(f"binary_path {path} is a directory")
    if not os.access(path, os.X_OK):
        raise SpawnError(f"binary_path {path} is not executable")


def _same_process(proc: psutil.Process, create_time: float) -> bool:
    try:
        return abs(proc.create_time() - create_time) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def process_matches(pid: int, create_time: float | None) -> bool:
    """True when `pid` is alive, not a zombie, and is the process that was created at `create_time`."""
    if not pid or create_time is None:
        return False
    try:
        return _same_process(psutil.Process(pid), create_time)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


class RealProcessOps:
    """ProcessOps for real processes, bound to the daemon's asyncio loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, log_dir: Path, agent_env: dict[str, str], on_exit: AgentExitCallback) -> None:
        self.loop = loop
        self.log_dir = log_dir
        self.agent_env = agent_env
        self.on_exit = on_exit
        self._warned_not_root: set[str] = set()

    # ----------------------------------------------------------------- spawn / adopt

    def spawn(self, spec: AgentSpec, generation: int, now: float) -> ProcessHandle:
        validate_command(spec)
        kwargs = self._credentials(spec)
        try:
            Path(spec.work_dir).mkdir(parents=True, exist_ok=True)
            if "user" in kwargs:
                os.chown(spec.work_dir, kwargs["user"], kwargs.get("group", -1))
            log_fd = open_agent_log(agent_log_path(self.log_dir, spec.id))
        except OSError as exc:
            raise SpawnError(f"cannot prepare work dir or log file: {exc}") from exc
        env = dict(os.environ)
        env.update(spec.env)
        env.update(self.agent_env)
        env["AGENTD_AGENT_ID"] = spec.id
        argv = [str(spec.binary_path), *spec.effective_args()]
        try:
            popen = subprocess.Popen(
                argv,
                cwd=spec.work_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                start_new_session=True,
                close_fds=True,
                restore_signals=True,
                **kwargs,
            )
        except OSError as exc:
            raise SpawnError(f"exec of {argv[0]} failed: {exc.strerror or exc}") from exc
        finally:
            os.close(log_fd)
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            create_time = time.time()
        handle = ProcessHandle(
            pid=popen.pid,
            pgid=popen.pid,
            create_time=create_time,
            generation=generation,
            started_mono=now,
            started_wall=time.time(),
            tree={popen.pid: create_time},
        )
        self._watch(spec.id, handle, popen)
        log.info("%s: started pid %d: %s", spec.id, popen.pid, " ".join(argv))
        return handle

    def adopt(self, agent_id: str, pid: int, create_time: float, pgid: int | None, generation: int, now: float, started_wall: float | None) -> ProcessHandle | None:
        """Watch a process left by a previous agentd, if it is still the one recorded."""
        if not process_matches(pid, create_time):
            return None
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            return None
        handle = ProcessHandle(
            pid=pid,
            pgid=pgid,
            create_time=create_time,
            generation=generation,
            started_mono=now - max(0.0, time.time() - create_time),
            started_wall=started_wall or create_time,
            adopted=True,
            tree={pid: create_time},
        )
        if not self._watch(agent_id, handle, None):
            return None
        return handle

    def _credentials(self, spec: AgentSpec) -> dict:
        if not (spec.user or spec.group):
            return {}
        if os.geteuid() != 0:
            if spec.id not in self._warned_not_root:
                self._warned_not_root.add(spec.id)
                log.warning("%s: user/group ignored: agentd is not running as root, so the agent runs as uid %d", spec.id, os.geteuid())
            return {}
        kwargs: dict = {}
        try:
            if spec.user:
                pw = pwd.getpwuid(int(spec.user)) if spec.user.isdigit() else pwd.getpwnam(spec.user)
                kwargs["user"] = pw.pw_uid
                kwargs["group"] = pw.pw_gid
                kwargs["extra_groups"] = [g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem]
            if spec.group:
                kwargs["group"] = int(spec.group) if spec.group.isdigit() else grp.getgrnam(spec.group).gr_gid
        except KeyError as exc:
            raise SpawnError(f"unknown user or group: {exc.args[0]}") from exc
        return kwargs

    # ----------------------------------------------------------------- exit detection

    def _watch(self, agent_id: str, handle: ProcessHandle, popen: subprocess.Popen | None) -> bool:
        def exited(code: int | None, signum: int | None) -> None:
            self.on_exit(agent_id, handle.generation, code, signum)

        handle.os_state = watch_exit(self.loop, handle.pid, popen, exited)
        return handle.os_state is not None

    def forget(self, handle: ProcessHandle) -> None:
        """Stop watching (daemon shutdown leaves agents running)."""
        if isinstance(handle.os_state, ExitWatch):
            handle.os_state.cancel()

    # ----------------------------------------------------------------- trees

    def _refresh_tree(self, handle: ProcessHandle) -> list[psutil.Process]:
        """Every live process of the agent: recorded ones, descendants of the main, group members."""
        live: dict[int, psutil.Process] = {}
        for pid, ctime in list(handle.tree.items()):
            try:
                proc = psutil.Process(pid)
            except psutil.NoSuchProcess:
                del handle.tree[pid]
                continue
            if not _same_process(proc, ctime):
                del handle.tree[pid]
                continue
            live[pid] = proc
            try:
                for child in proc.children(recursive=True):
                    live.setdefault(child.pid, child)
            except psutil.Error:
                pass
        for proc in _group_members(handle.pgid):
            live.setdefault(proc.pid, proc)
        for pid, proc in list(live.items()):
            try:
                handle.tree.setdefault(pid, proc.create_time())
            except psutil.Error:
                live.pop(pid)
        return list(live.values())

    def signal_tree(self, handle: ProcessHandle, signum: int) -> None:
        procs = self._refresh_tree(handle)  # list first, so a dying parent cannot hide its children
        try:
            os.killpg(handle.pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass
        for proc in procs:
            try:
                if os.getpgid(proc.pid) != handle.pgid:
                    proc.send_signal(signum)
            except (ProcessLookupError, psutil.Error):
                continue
        log.debug("sent %s to pgid %d and %d processes", signal.Signals(signum).name, handle.pgid, len(procs))

    def tree_alive(self, handle: ProcessHandle) -> bool:
        for pid, ctime in list(handle.tree.items()):
            if pid == handle.pid and not handle.exited and not handle.adopted:
                return True
            if process_matches(pid, ctime):
                return True
        # Cheap checks found nothing; look once more for group members we never saw.
        return bool(self._refresh_tree(handle))
