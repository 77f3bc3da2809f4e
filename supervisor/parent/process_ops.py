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
import sys
import time
from pathlib import Path
from typing import Callable

from supervisor.common.cgroups import CONTROLLER_OF, MOUNTINFO, AgentCgroup, Tracking, cgroup2_mounts, cgroup_name, limit_values
from supervisor.parent.agent_config_check import check_agent_config
from supervisor.config.agent import AgentSpec
from supervisor.parent.exit_watch import ExitWatch, watch_exit
from supervisor.parent.heartbeat_secrets import ENV_VAR as HEARTBEAT_TOKEN_ENV
from supervisor.parent.process_handle import ProcessHandle, SpawnError
from supervisor.common.metadata_store import parse_iso
from supervisor.parent.log_files import open_agent_log
from supervisor.common.proc_table import ProcessTable, boot_id, boot_time, is_same_process, read_stat, start_ticks
from supervisor.common.agent_files import agent_log_path

log = logging.getLogger(__name__)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Enter the cgroup, then become the agent; 125 (like env(1)) when the move fails.
CGROUP_EXEC = 'echo 0 > "$1" || exit 125; shift; exec "$@"'
AgentExitCallback = Callable[[str, int, "int | None", "int | None"], None]
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


def process_matches(pid: int, ticks: int | None, recorded_boot: str | None = None) -> bool:
    """True when `pid` is alive, not a zombie, and started at `ticks` (clock ticks since boot)."""
    return is_same_process(pid, ticks, recorded_boot)


class RealProcessOps:
    """ProcessOps for real processes, bound to the daemon's asyncio loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, log_dir: Path, agent_env: dict[str, str], on_exit: AgentExitCallback,
        tracking: Tracking | None = None, notify_path: Callable[[str], "Path | None"] | None = None,
    ) -> None:
        self.loop = loop
        self.tracking = tracking or Tracking("process-group", "not configured")
        self.notify_path = notify_path or (lambda agent_id: None)
        self._mounts = cgroup2_mounts(Path(MOUNTINFO).read_text()) if Path(MOUNTINFO).exists() else []
        self._retired: dict[int, ExitWatch] = {}  # watches of former main processes (MAINPID=), kept to reap them
        self._log_writers: list[subprocess.Popen] = []  # log.format: stamped; polled to reap the ones that ended
        self.log_dir = log_dir
        self.agent_env = agent_env
        self.on_exit = on_exit
        self._warned_not_root: set[str] = set()
        self.table = ProcessTable()  # one /proc scan serves every agent stopping in the same tick
        self.boot_id = boot_id()
        self.boot_time = boot_time()
        # agent id -> its heartbeat secret (supervisor/parent/heartbeat_secrets.py); set by the daemon.
        self.heartbeat_secret: Callable[[str], str] | None = None

    # ----------------------------------------------------------------- spawn / adopt

    def spawn(self, spec: AgentSpec, generation: int, now: float) -> ProcessHandle:
        validate_command(spec)
        kwargs = self._credentials(spec)
        try:
            if not os.path.isdir(spec.work_dir):  # a stat, not a raised FileExistsError: cheaper for 200 starts
                Path(spec.work_dir).mkdir(parents=True, exist_ok=True)
            if "user" in kwargs:
                # Not through a symlink: the agent's user could point work_dir at any directory for root to chown.
                os.chown(spec.work_dir, kwargs["user"], kwargs.get("group", -1), follow_symlinks=False)
            log_fd = open_agent_log(agent_log_path(self.log_dir, spec.id))
        except OSError as exc:
            raise SpawnError(f"cannot prepare work dir or log file: {exc}") from exc
        env = self._environment(spec)
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
        run, preexec = argv, None
        if procs_fd is not None and not kwargs:
            # Same user as agentd: a shell moves itself into the cgroup and execs the agent (same pid),
            # so subprocess keeps its vfork fast path; preexec_fn would fork the whole parent.
            os.close(procs_fd)
            procs_fd = None
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
        except subprocess.SubprocessError as exc:  # the preexec write failed
            raise SpawnError(f"cannot move the new process into cgroup {cgroup.path}: {exc}") from exc
        except OSError as exc:
            raise SpawnError(f"exec of {argv[0]} failed: {exc.strerror or exc}") from exc
        finally:
            for fd in {log_fd, out_fd, err_fd}:
                os.close(fd)
            if procs_fd is not None:
                os.close(procs_fd)
        # Our unreaped child: its stat is readable even if it already exited.
        ticks = start_ticks(popen.pid)
        # What psutil's create_time() computes, without building a psutil.Process per spawn.
        create_time = self.boot_time + ticks / CLOCK_TICKS if ticks is not None else time.time()
        ticks = ticks or 0
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
            cgroup=str(cgroup.path) if cgroup else None,
            table_stamp=self.table.mark(),  # snapshots from before the spawn do not list it
        )
        if not self._watch(spec.id, handle, popen):
            popen.kill()
            popen.wait()
            raise SpawnError("cannot watch the new process (out of file descriptors?); killed it")
        log.info("%s: started pid %d: %s", spec.id, popen.pid, " ".join(argv))
        return handle

    def _environment(self, spec: AgentSpec) -> dict[str, str]:
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
                # accepts any process; the sender check is agentd's (supervisor/parent/daemon.py).
                env["WATCHDOG_USEC"] = str(int(timeout * 1_000_000))
        return env

    def cgroup_of(self, agent_id: str) -> AgentCgroup | None:
        """The agent's cgroup in cgroup mode; None in process-group mode."""
        return self.tracking.agent(agent_id)

    def _prepare_cgroup(self, spec: AgentSpec) -> tuple[AgentCgroup | None, int | None]:
        cgroup = self.cgroup_of(spec.id)
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
            table_stamp=self.table.mark(),
        )
        cgroup = self._recorded_cgroup(record) or self.cgroup_of(agent_id)
        if cgroup is not None and cgroup.contains(record.pid):
            handle.cgroup = str(cgroup.path)  # where it was started, even if cgroups.root changed since
        elif cgroup is not None:
            log.warning("%s: re-adopted pid %d is not in cgroup %s (started in process-group mode?); tracked by process group", agent_id, record.pid, cgroup.path)
        if not self._watch(agent_id, handle, None):
            return None
        return handle

    def runs_configured_command(self, pid: int, spec: AgentSpec) -> bool:
        """Whether `pid` runs the configured command line, as the user configured, with the configured env."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(item.decode(errors="replace").partition("=")[::2] for item in f.read().split(b"\0") if item)
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            return False
        want_argv = [str(spec.binary_path), *spec.effective_args()]
        # A script's kernel argv starts with its interpreter: compare the tail.
        argv_ok = argv == want_argv or (len(argv) > len(want_argv) and argv[-len(want_argv):] == want_argv)
        return argv_ok and all(env.get(k) == v for k, v in spec.env.items()) and uid == self.agent_uid(spec)

    def agent_uid(self, spec: AgentSpec) -> int:
        """The uid the agent runs as."""
        try:
            return self._credentials(spec).get("user", os.geteuid())
        except SpawnError:
            return os.geteuid()

    def _start_log_writer(self, spec: AgentSpec, log_fd: int, agent_env: dict[str, str]) -> tuple[int, int]:
        """Start the agent's log writer (log.format: stamped); returns the write ends for the agent's stdout
        and stderr. The writer has a session of its own and no agent identity, so stops, re-adoption and the
        identity scan never take it for the agent; it ends when the agent's last process closes its output."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        # The agent's environment without agentd's own variables (identity, heartbeat, notify socket).
        env = {k: v for k, v in agent_env.items() if not k.startswith("AGENTD_") and k != "NOTIFY_SOCKET" and k != "WATCHDOG_USEC"}
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
        self._log_writers.append(writer)
        return out_w, err_w

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
        pid = handle.pid

        def exited(code: int | None, signum: int | None) -> None:
            self._retired.pop(pid, None)
            if handle.pid != pid:
                return  # a former main process (MAINPID= moved on): reaped, not the agent's exit
            handle.table_stamp = self.table.mark()  # a snapshot from before the exit still lists it
            self.on_exit(agent_id, handle.generation, code, signum)

        handle.os_state = watch_exit(self.loop, handle.pid, popen, exited)
        return handle.os_state is not None

    def signal_main(self, handle: ProcessHandle, signum: int) -> None:
        """Signal the main process only; through its pidfd when we hold one, so a reused pid is never hit."""
        watch = handle.os_state
        if isinstance(watch, ExitWatch) and watch.pidfd is not None:
            signal.pidfd_send_signal(watch.pidfd, signum)
        else:
            os.kill(handle.pid, signum)

    def collect_exit(self, handle: ProcessHandle) -> None:
        if isinstance(handle.os_state, ExitWatch):
            handle.os_state.deliver_if_exited()

    def forget(self, handle: ProcessHandle) -> None:
        """Stop watching (daemon shutdown leaves agents running)."""
        if isinstance(handle.os_state, ExitWatch):
            handle.os_state.cancel()

    # ----------------------------------------------------------------- membership (sd_notify senders)

    def is_member(self, handle: ProcessHandle, pid: int) -> bool | None:
        """Whether `pid` belongs to the agent: in its cgroup, else in its tree or process group.
        None when the process is already gone, so membership cannot be checked."""
        info = read_stat(pid)
        if info is None or info.zombie:
            return None
        if handle.cgroup is not None:
            cgroup = self._cgroup(handle)
            return cgroup.contains(pid)
        if pid == handle.pid or info.pgid == handle.pgid:
            return True
        self.table.invalidate()
        return pid in self._refresh_tree(handle)

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

    # ----------------------------------------------------------------- trees

    def _refresh_tree(self, handle: ProcessHandle) -> dict[int, int]:
        """Every live process of the agent: recorded ones, their descendants, group members, from a
        snapshot taken after the last signal sent to this tree and after its main process's exit."""
        self.table.fresh_for(handle.table_stamp)
        live = self.table.tree(handle.tree, handle.pgid)
        handle.tree.update(live)
        for pid in [p for p in handle.tree if p not in live and p != handle.pid]:
            del handle.tree[pid]  # gone: keeps the map bounded however much the tree churns
        return live

    def _cgroup_at(self, path: Path) -> AgentCgroup | None:
        """The cgroup at a directory of any cgroup2 mount; None when it is in none (or gone)."""
        mounts = [m for m in self._mounts if m.path in path.parents]
        if not mounts or not path.is_dir():
            return None
        mount = max(mounts, key=lambda m: len(m.path.parts))
        return AgentCgroup(path, cgroup_name(mount, path))

    def _recorded_cgroup(self, record) -> AgentCgroup | None:
        return self._cgroup_at(Path(record.cgroup)) if getattr(record, "cgroup", None) else None

    def _cgroup(self, handle: ProcessHandle) -> AgentCgroup:
        path = Path(handle.cgroup)
        return self._cgroup_at(path) or AgentCgroup(path, "")

    def signal_main(self, handle: ProcessHandle, signum: int) -> bool:
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
        if handle.cgroup is not None:
            cgroup = self._cgroup(handle)
            # Every member, wherever it forked or setsid'd to; SIGKILL through cgroup.kill, which no fork outruns.
            if signum == signal.SIGKILL:
                cgroup.kill()
            else:
                sent = cgroup.signal(signum)
                log.debug("sent %s to %d processes in %s", signal.Signals(signum).name, sent, cgroup.path)
            return
        # List first, so a dying parent cannot hide its children. Agents signalled in the same loop
        # pass (stop --all, shutdown) share one snapshot: signals to other trees do not change this one.
        live = self._refresh_tree(handle)
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
        handle.table_stamp = self.table.mark()
        log.debug("sent %s to pgid %d and %d processes", signal.Signals(signum).name, handle.pgid, len(live))

    def tree_alive(self, handle: ProcessHandle) -> bool:
        if not handle.exited and not handle.adopted:
            return True  # our child has not been reaped yet
        if handle.cgroup is not None:
            return self._cgroup(handle).populated()  # cgroup.events: empty means every process is gone
        if handle.exited and self._surely_gone(handle):
            return False
        return bool(self._refresh_tree(handle))

    def _surely_gone(self, handle: ProcessHandle) -> bool:
        """No process is left in the agent's group, and none it was seen with still exists: the whole
        tree is gone without a /proc scan. A scan could find nothing more: the children of a process
        that died are re-parented away from the tree, so only recorded pids and the group lead to them.
        This keeps kill -9 -> restart, and stop of 200 agents, free of scans of every process."""
        try:
            os.killpg(handle.pgid, 0)
            return False  # some member (perhaps a zombie) is still there: look properly
        except ProcessLookupError:
            pass
        except PermissionError:
            return False
        for pid, ticks in handle.tree.items():
            info = read_stat(pid)
            if info is not None and info.start_ticks == ticks:
                return False  # a recorded process (live, or a zombie whose children are ours) remains
        return True

    def cgroup_leftovers(self, agent_id: str, record, generation: int, now: float) -> ProcessHandle | None:
        """In cgroup mode, whatever still runs in the agent's cgroup is the agent's, recorded or not:
        a handle to stop it before a new generation starts (so none runs twice)."""
        cgroup = (self._recorded_cgroup(record) if record is not None else None) or self.cgroup_of(agent_id)
        if cgroup is None or not cgroup.exists() or not cgroup.populated():
            return None
        members = {p: t for p in cgroup.pids() if (t := start_ticks(p)) is not None}
        pid = (record.pid if record is not None and record.pid else None) or min(members, default=0)
        handle = ProcessHandle(
            pid=pid, pgid=(record.pgid if record is not None and record.pgid else pid), create_time=time.time(), start_ticks=members.get(pid),
            generation=generation, started_mono=now, started_wall=time.time(), adopted=True, exited=True, tree=members,
            boot_id=self.boot_id, cgroup=str(cgroup.path),
        )
        log.warning("%s: %d processes live on in its cgroup %s without a main process agentd knows: stopping them first", agent_id, len(members), cgroup.path)
        return handle

    def leftovers(self, agent_id: str, record, generation: int, now: float) -> ProcessHandle | None:
        """The recorded main process is gone but members of its group may live on: a handle to stop them."""
        if self.cgroup_of(agent_id) is not None or (record is not None and self._recorded_cgroup(record) is not None):
            found = self.cgroup_leftovers(agent_id, record, generation, now)
            if found is not None or record is None:
                return found
        if record is None or not record.pgid or record.start_ticks is None or (record.boot_id and record.boot_id != self.boot_id):
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
