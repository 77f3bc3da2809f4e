"""Spawning an agent's process: the command check, its user and environment, work dir, log pipes, cgroup entry.

Agents run in their own session (pgid = pid) with stdout/stderr on their log file, so they outlive the
daemon (docs/configuration.md, "agents:"; docs/architecture.md, "Exit detection"). `AgentSpawner.launch`
only starts the process; `process_ops.RealProcessOps.spawn` turns it into a watched `ProcessHandle`.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from supervisor.common.agent_files import agent_log_path
from supervisor.common.cgroups import CONTROLLER_OF, AgentCgroup, Tracking, limit_values
from supervisor.config.agent import AgentSpec
from supervisor.parent.agent_config_check import check_agent_config
from supervisor.parent.heartbeat_secrets import ENV_VAR as HEARTBEAT_TOKEN_ENV
from supervisor.parent.log_files import open_agent_log
from supervisor.parent.process_handle import SpawnError

log = logging.getLogger("supervisor.parent.process_ops")  # the lines keep the logger they always had

# Enter the cgroup, then become the agent; 125 (like env(1)) when the move fails.
CGROUP_EXEC = 'echo 0 > "$1" || exit 125; shift; exec "$@"'
# systemd's variables for agentd itself: an agent must never report to agentd's service manager.
SYSTEMD_ONLY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "INVOCATION_ID")
LOG_WRITER = Path(__file__).with_name("log_writer.py")


def validate_command(spec: AgentSpec) -> None:
    """Refuse before forking anything that cannot be exec'd, or whose config_file fails its type's check."""
    path = Path(spec.binary_path)
    if not path.is_absolute():
        raise SpawnError(f"binary_path {path} is not an absolute path")
    if not path.exists():
        raise SpawnError(f"binary_path {path} does not exist")
    if path.is_dir():
        raise SpawnError(f"binary_path {path} is a directory")
    if not os.access(path, os.X_OK):
        raise SpawnError(f"binary_path {path} is not executable")
    problem = check_agent_config(spec)
    if problem is not None:
        raise SpawnError(problem)


def _move_into_cgroup(procs_fd: int, pid: int) -> None:
    """Move the new process into its cgroup from here too: the shell's own move (CGROUP_EXEC) keeps the
    agent's command from running outside it, this one makes it a member before spawn returns, so no
    sample, stop or membership check in between finds the cgroup without its main process."""
    try:
        os.write(procs_fd, str(pid).encode())
    except ProcessLookupError:
        pass  # the shell already exited (exit 125 or a failed exec): its exit is reported as usual
    except OSError as exc:  # the shell's own move decides (it exits 125 if the move cannot be made)
        log.warning("cannot move pid %d into its cgroup from agentd: %s", pid, exc.strerror or exc)


@dataclass
class Launched:
    """A freshly started agent process: what `RealProcessOps.spawn` needs to watch and describe it."""

    popen: subprocess.Popen
    argv: list[str]
    cgroup: AgentCgroup | None
    mono: float  # when Popen returned: the process has exec'd (or failed to)
    wall: float


class AgentSpawner:
    """Starts agents' processes with their credentials, environment, log pipes and cgroup."""

    def __init__(self, log_dir: Path, agent_env: dict[str, str], tracking: Tracking,
                 notify_path: Callable[[str], "Path | None"]) -> None:
        self.log_dir = log_dir
        self.agent_env = agent_env
        self.tracking = tracking
        self.notify_path = notify_path
        self._warned_not_root: set[str] = set()
        self._log_writers: list[subprocess.Popen] = []  # log.format: stamped; polled to reap the ones that ended
        self._log_writers_lock = threading.Lock()  # launches may run in threads (RealProcessOps.prelaunch)
        # agent id -> its heartbeat secret (supervisor/parent/heartbeat_secrets.py); set by the daemon.
        self.heartbeat_secret: Callable[[str], str] | None = None

    def launch(self, spec: AgentSpec) -> Launched:
        """Start the agent's process; SpawnError (with every descriptor closed) when it cannot be."""
        validate_command(spec)
        kwargs = self.credentials(spec)
        log_fd = self._prepare_work_dir_and_log(spec, kwargs)
        env = self.environment(spec)
        try:
            out_fd, err_fd = (log_fd, log_fd) if spec.log.format == "plain" else self._start_log_writer(spec, log_fd, env)
        except OSError as exc:
            os.close(log_fd)
            raise SpawnError(f"cannot start the log writer: {exc.strerror or exc}") from exc
        argv = [str(spec.binary_path), *spec.effective_args()]
        try:
            cgroup, procs_fd = self._prepare_cgroup(spec)
        except SpawnError:
            for fd in {log_fd, out_fd, err_fd}:
                os.close(fd)  # the log writer sees end of file and exits
            raise
        popen = self._popen(spec, argv, env, (log_fd, out_fd, err_fd), kwargs, cgroup, procs_fd)
        return Launched(popen, argv, cgroup, time.monotonic(), time.time())

    def can_launch_in_thread(self, spec: AgentSpec) -> bool:
        """False when the launch needs preexec_fn (another user, in cgroup mode): that runs Python in a fork
        of a parent whose other threads may hold locks (the subprocess docs), so it stays on the loop's thread."""
        try:
            return not (self.credentials(spec) and self.tracking.agent(spec.id) is not None)
        except SpawnError:
            return False  # launched where it is refused, with its error, as before

    def _prepare_work_dir_and_log(self, spec: AgentSpec, kwargs: dict) -> int:
        try:
            if not os.path.isdir(spec.work_dir):  # a stat, not a raised FileExistsError: cheaper for 200 starts
                Path(spec.work_dir).mkdir(parents=True, exist_ok=True)
            if "user" in kwargs:
                # Not through a symlink: the agent's user could point work_dir at any directory for root to chown.
                os.chown(spec.work_dir, kwargs["user"], kwargs.get("group", -1), follow_symlinks=False)
            return open_agent_log(agent_log_path(self.log_dir, spec.id))
        except OSError as exc:
            raise SpawnError(f"cannot prepare work dir or log file: {exc}") from exc

    def _popen(self, spec: AgentSpec, argv: list[str], env: dict[str, str], fds: tuple[int, int, int], kwargs: dict,
               cgroup: AgentCgroup | None, procs_fd: int | None) -> subprocess.Popen:
        """Fork and exec, in the cgroup if there is one; closes `fds` (log, stdout, stderr) and `procs_fd`."""
        log_fd, out_fd, err_fd = fds
        run, preexec, move_after = argv, None, None
        if procs_fd is not None and not kwargs:
            # Same user as agentd: a shell moves itself into the cgroup and execs the agent (same pid),
            # so subprocess keeps its vfork fast path; preexec_fn would fork the whole parent.
            move_after, procs_fd = procs_fd, None
            run = ["/bin/sh", "-c", CGROUP_EXEC, "agentd-cgroup-exec", str(cgroup.path / "cgroup.procs"), *argv]
        elif procs_fd is not None:
            def preexec(fd=procs_fd) -> None:
                os.write(fd, b"0")  # after the uid change: the fd carries agentd's right to move it
        try:
            popen = subprocess.Popen(
                run,
                cwd=spec.work_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out_fd,
                stderr=err_fd,
                start_new_session=True,
                close_fds=True,
                restore_signals=True,
                preexec_fn=preexec,
                **kwargs,
            )
            if move_after is not None:
                _move_into_cgroup(move_after, popen.pid)
            return popen
        except subprocess.SubprocessError as exc:  # the preexec write failed
            raise SpawnError(f"cannot move the new process into cgroup {cgroup.path}: {exc}") from exc
        except OSError as exc:
            raise SpawnError(f"exec of {argv[0]} failed: {exc.strerror or exc}") from exc
        finally:
            for fd in {log_fd, out_fd, err_fd}:
                os.close(fd)
            for fd in (procs_fd, move_after):
                if fd is not None:
                    os.close(fd)

    def environment(self, spec: AgentSpec) -> dict[str, str]:
        """The agent's environment (docs/configuration.md): agentd's own without systemd's, then the agent's."""
        env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_ONLY_ENV}
        env.update(spec.env)
        env.update(self.agent_env)
        env["AGENTD_AGENT_ID"] = spec.id
        if self.heartbeat_secret is not None and HEARTBEAT_TOKEN_ENV not in spec.env:
            # What proves an HTTP heartbeat is this agent's when the kernel cannot (docs/decisions.md).
            env[HEARTBEAT_TOKEN_ENV] = spec.heartbeat.token or self.heartbeat_secret(spec.id)
        notify = self.notify_path(spec.id)
        if notify is not None:
            env["NOTIFY_SOCKET"] = str(notify)
            timeout = spec.health_check.heartbeat_timeout
            if timeout:
                # No WATCHDOG_PID: the pid is not known before fork, and sd_watchdog_enabled() then
                # accepts any process; the sender check is agentd's (supervisor/parent/notify_apply.py).
                env["WATCHDOG_USEC"] = str(int(timeout * 1_000_000))
        return env

    def _prepare_cgroup(self, spec: AgentSpec) -> tuple[AgentCgroup | None, int | None]:
        cgroup = self.tracking.agent(spec.id)
        if cgroup is None:
            return None, None
        try:
            cgroup.create()
            if cgroup.populated():
                # Stops wait until the cgroup is empty, so this is a process that outlived them all.
                pids = cgroup.pids()
                cgroup.kill()
                raise SpawnError(f"cgroup {cgroup.path} still held processes {pids} of an earlier run; killed them")
            limits = limit_values(spec.limits.memory_max, spec.limits.cpu_max, spec.limits.pids_max)
            missing = sorted({CONTROLLER_OF[k] for k in limits} - self.tracking.controllers)
            if missing:
                log.warning("%s: limits need the %s controller(s), not enabled in %s; not applied", spec.id, ", ".join(missing), self.tracking.base)
            problems = cgroup.set_limits({k: v for k, v in limits.items() if CONTROLLER_OF[k] in self.tracking.controllers})
            if problems:
                raise SpawnError(f"cannot set limits in {cgroup.path}: {'; '.join(problems)}")
            return cgroup, cgroup.open_procs()
        except OSError as exc:
            raise SpawnError(f"cannot prepare cgroup {cgroup.path}: {exc.strerror or exc}") from exc

    def _start_log_writer(self, spec: AgentSpec, log_fd: int, agent_env: dict[str, str]) -> tuple[int, int]:
        """Start the agent's log writer (log.format: stamped); returns the write ends for the agent's stdout
        and stderr. The writer has a session of its own and no agent identity, so stops, re-adoption and the
        identity scan never take it for the agent; it ends when the agent's last process closes its output."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        # The agent's environment without agentd's own variables (identity, heartbeat, notify socket).
        env = {k: v for k, v in agent_env.items() if not k.startswith("AGENTD_") and k != "NOTIFY_SOCKET" and k != "WATCHDOG_USEC"}
        with self._log_writers_lock:
            self._log_writers = [w for w in self._log_writers if w.poll() is None]  # reap the ones that ended
        try:
            writer = subprocess.Popen(
                [sys.executable, "-I", str(LOG_WRITER), str(agent_log_path(self.log_dir, spec.id)), str(out_r), str(err_r)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log_fd, pass_fds=(out_r, err_r),
                start_new_session=True, env=env,
            )
        except OSError:
            for fd in (out_w, err_w):
                os.close(fd)
            raise
        finally:
            os.close(out_r)
            os.close(err_r)
        with self._log_writers_lock:
            self._log_writers.append(writer)
        return out_w, err_w

    def credentials(self, spec: AgentSpec) -> dict:
        """Popen's user/group/extra_groups for the agent; empty when it runs as agentd's own user."""
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
