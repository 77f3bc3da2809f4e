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
from .metadata_store import parse_iso
from .log_files import open_agent_log
from .proc_table import ProcessTable, boot_id, is_same_process, read_stat, start_ticks

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


def process_matches(pid: int, ticks: int | None, recorded_boot: str | None = None) -> bool:
    """True when `pid` is alive, not a zombie, and started at `ticks` (clock ticks since boot)."""
    return is_same_process(pid, ticks, recorded_boot)


class RealProcessOps:
    """ProcessOps for real processes, bound to the daemon's asyncio loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, log_dir: Path, agent_env: dict[str, str], on_exit: AgentExitCallback) -> None:
        self.loop = loop
        self.log_dir = log_dir
        self.agent_env = agent_env
        self.on_exit = on_exit
        self._warned_not_root: set[str] = set()
        self.table = ProcessTable()  # one /proc scan serves every agent stopping in the same tick
        self.boot_id = boot_id()

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
        # Our unreaped child: its stat is readable even if it already exited.
        ticks = start_ticks(popen.pid) or 0
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            create_time = time.time()
        handle = ProcessHandle(
            pid=popen.pid,
            pgid=popen.pid,
            create_time=create_time,
            start_ticks=ticks,
            generation=generation,
            started_mono=max(now, time.monotonic()),  # fork+exec can take a while on a loaded box
            started_wall=time.time(),
            tree={popen.pid: ticks},
            boot_id=self.boot_id,
        )
        if not self._watch(spec.id, handle, popen):
            popen.kill()
            popen.wait()
            raise SpawnError("cannot watch the new process (out of file descriptors?); killed it")
        log.info("%s: started pid %d: %s", spec.id, popen.pid, " ".join(argv))
        return handle

    def adopt(self, agent_id: str, record, generation: int, now: float) -> ProcessHandle | None:
        """Watch a process left by a previous agentd, if it is still the one recorded (pid + start ticks + boot)."""
        if not process_matches(record.pid, record.start_ticks, record.boot_id):
            return None
        try:
            pgid = os.getpgid(record.pid)
        except ProcessLookupError:
            return None
        create_time = record.create_time or time.time()
        handle = ProcessHandle(
            pid=record.pid,
            pgid=pgid,
            create_time=create_time,
            start_ticks=record.start_ticks,
            generation=generation,
            started_mono=now - max(0.0, time.time() - create_time),
            started_wall=parse_iso(record.start_time) or create_time,
            adopted=True,
            tree={record.pid: record.start_ticks},
            boot_id=self.boot_id,
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

    def collect_exit(self, handle: ProcessHandle) -> None:
        if isinstance(handle.os_state, ExitWatch):
            handle.os_state.deliver_if_exited()

    def forget(self, handle: ProcessHandle) -> None:
        """Stop watching (daemon shutdown leaves agents running)."""
        if isinstance(handle.os_state, ExitWatch):
            handle.os_state.cancel()

    # ----------------------------------------------------------------- trees

    def _refresh_tree(self, handle: ProcessHandle) -> dict[int, int]:
        """Every live process of the agent: recorded ones, their descendants, group members."""
        live = self.table.tree(handle.tree, handle.pgid)
        handle.tree.update(live)
        for pid in [p for p in handle.tree if p not in live and p != handle.pid]:
            del handle.tree[pid]  # gone: keeps the map bounded however much the tree churns
        return live

    def signal_tree(self, handle: ProcessHandle, signum: int) -> None:
        self.table.invalidate()
        live = self._refresh_tree(handle)  # list first, so a dying parent cannot hide its children
        try:
            os.killpg(handle.pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass
        group = {p for p, info in ((p, read_stat(p)) for p in live) if info is not None and info.pgid == handle.pgid}
        for pid in live:
            if pid not in group:  # escaped the group (setsid): signal it by pid
                try:
                    os.kill(pid, signum)
                except (ProcessLookupError, PermissionError):
                    continue
        self.table.invalidate()
        log.debug("sent %s to pgid %d and %d processes", signal.Signals(signum).name, handle.pgid, len(live))

    def tree_alive(self, handle: ProcessHandle) -> bool:
        if not handle.exited and not handle.adopted:
            return True  # our child has not been reaped yet
        return bool(self._refresh_tree(handle))

    def leftovers(self, agent_id: str, record, generation: int, now: float) -> ProcessHandle | None:
        """The recorded main process is gone but members of its group may live on: a handle to stop them."""
        if not record.pgid or record.start_ticks is None or (record.boot_id and record.boot_id != self.boot_id):
            return None
        leader = read_stat(record.pgid)
        if leader is not None and not leader.zombie and leader.start_ticks != record.start_ticks:
            # The group's id is a live process's pid again, so it is a new group: the kernel does not
            # hand out a pid still in use as a process group id, so the old group had emptied first.
            return None
        self.table.invalidate()
        members = {p: t for p, t in self.table.tree({}, record.pgid).items() if t >= record.start_ticks}
        if not members:
            return None
        handle = ProcessHandle(
            pid=record.pid, pgid=record.pgid, create_time=record.create_time or time.time(), start_ticks=record.start_ticks,
            generation=generation, started_mono=now, started_wall=time.time(), adopted=True, exited=True, tree=members,
            boot_id=self.boot_id,
        )
        log.warning("%s: main process %d is gone but %d processes of its group live on: stopping them first", agent_id, record.pid, len(members))
        return handle
