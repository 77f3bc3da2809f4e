"""A cgroup v2 per agent: finding a writable hierarchy, creating, listing, killing and measuring cgroups.

Where agentd may create cgroups (a delegated subtree from systemd's `Delegate=yes`, or the configured
`cgroups.root`), every agent runs in `<base>/agent-<id>`. Membership in a cgroup cannot be escaped
by forking or `setsid`, so stop, re-adoption and resource figures see every process. Elsewhere agentd
keeps tracking process groups and ancestry (docs/architecture.md, "Process tracking").
"""

from __future__ import annotations

import errno
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MOUNTINFO = "/proc/self/mountinfo"
SELF_CGROUP = "/proc/self/cgroup"
# Domain controllers agentd enables for agents when its parent cgroup offers them.
WANTED_CONTROLLERS = ("cpu", "memory", "pids", "io")
AGENT_PREFIX = "agent-"
SUPERVISOR_LEAF = "supervisor"
AGENTS_DIR = "agents"


class CgroupError(RuntimeError):
    """cgroups are required by the configuration but cannot be used; the message says why."""


# ----------------------------------------------------------------------------- parsers


@dataclass(frozen=True)
class Mount:
    """One cgroup2 mount: where it is, and which cgroup its root is (not "/" inside a cgroup namespace)."""

    path: Path
    root: str


def _unescape(text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(text):
        code = text[i + 1 : i + 4]
        if text[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def cgroup2_mounts(mountinfo: str) -> list[Mount]:
    """Every cgroup2 mount listed in a /proc/<pid>/mountinfo text, in order; malformed lines are skipped."""
    mounts = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or not tail or tail[0] != "cgroup2":
            continue
        mounts.append(Mount(Path(_unescape(fields[4])), _unescape(fields[3])))
    return mounts


def unified_path(proc_cgroup: str) -> str | None:
    """The cgroup v2 path ("0::/a/b" line) in a /proc/<pid>/cgroup text; None when there is none."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            path = line[3:].strip()
            return path if path.startswith("/") else None
    return None


def flat_keyed(text: str) -> dict[str, int]:
    """A flat-keyed cgroup file (cgroup.events, cpu.stat): "key value" lines; lines that are not are skipped."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def pid_cgroup(pid: int) -> str | None:
    """The cgroup v2 path of a process, or None when it is gone."""
    text = _read(Path(f"/proc/{pid}/cgroup"))
    return unified_path(text) if text is not None else None


# ----------------------------------------------------------------------------- one agent's cgroup


@dataclass(frozen=True)
class AgentCgroup:
    """The cgroup of one agent: `path` on the filesystem, `name` its cgroup path as /proc/<pid>/cgroup shows it."""

    path: Path
    name: str

    def exists(self) -> bool:
        return self.path.is_dir()

    def create(self) -> None:
        self.path.mkdir(exist_ok=True)

    def open_procs(self) -> int:
        """An fd on cgroup.procs, opened by agentd: the kernel checks the opener's rights, so a child
        that has already dropped to the agent's user can still move itself in with it."""
        return os.open(self.path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)

    def _dirs(self) -> list[Path]:
        """This cgroup and every cgroup below it (an agent running as root may make its own)."""
        out = []
        for top, dirs, _ in os.walk(self.path):
            out.append(Path(top))
        return out

    def pids(self) -> list[int]:
        """Every process in the cgroup and below it."""
        pids: list[int] = []
        for d in self._dirs():
            text = _read(d / "cgroup.procs")
            if text:
                pids.extend(int(p) for p in text.split())
        return pids

    def populated(self) -> bool:
        """True while any process lives in the cgroup or below (cgroup.events); a gone cgroup is empty."""
        text = _read(self.path / "cgroup.events")
        if text is None:
            return self.exists() and bool(self.pids())
        return flat_keyed(text).get("populated", 0) == 1

    def signal(self, signum: int) -> int:
        """Send `signum` to every member; returns how many got it."""
        sent = 0
        for pid in self.pids():
            try:
                os.kill(pid, signum)
                sent += 1
            except (ProcessLookupError, PermissionError):
                continue
        return sent

    def kill(self) -> None:
        """SIGKILL every member at once with cgroup.kill (Linux 5.14+), which no fork can outrun."""
        try:
            (self.path / "cgroup.kill").write_text("1")
            return
        except FileNotFoundError:
            if not self.exists():
                return
        except OSError as exc:
            log.warning("%s: cgroup.kill failed (%s); killing members one by one", self.path, exc)
        self.signal(signal.SIGKILL)

    def remove(self) -> bool:
        """rmdir the cgroup (deepest first); False while it still holds processes."""
        for d in reversed(self._dirs()):
            try:
                d.rmdir()
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
                    return False
                raise
        return True

    def contains(self, pid: int) -> bool:
        """True when `pid` is in this cgroup or below it."""
        got = pid_cgroup(pid)
        return got is not None and (got == self.name or got.startswith(self.name + "/"))

    def set_limits(self, limits: dict[str, str]) -> list[str]:
        """Write limit files (memory.max, cpu.max, pids.max); returns the problems, one line each."""
        problems = []
        for key, value in limits.items():
            try:
                (self.path / key).write_text(value)
            except OSError as exc:
                problems.append(f"{key}={value}: {exc.strerror or exc}")
        return problems

    def usage(self) -> CgroupUsage:
        """CPU time, memory and process count from the cgroup's own files, where the kernel has them."""
        stat = flat_keyed(_read(self.path / "cpu.stat") or "")
        def number(name: str) -> int | None:
            text = _read(self.path / name)
            try:
                return int(text) if text is not None else None
            except ValueError:
                return None
        return CgroupUsage(cpu_usec=stat.get("usage_usec"), memory=number("memory.current"), pids=number("pids.current"))


@dataclass(frozen=True)
class CgroupUsage:
    """Figures read from a cgroup; None where the controller is not enabled."""

    cpu_usec: int | None
    memory: int | None
    pids: int | None


# ----------------------------------------------------------------------------- the hierarchy agentd uses


@dataclass
class Tracking:
    """How agentd tracks agent processes, and why: `cgroup` (with `base`) or `process-group`."""

    mode: str
    reason: str
    base: Path | None = None
    mount: Mount | None = None
    controllers: frozenset[str] = field(default_factory=frozenset)

    def agent(self, agent_id: str) -> AgentCgroup | None:
        """The cgroup an agent runs in; None in process-group mode."""
        if self.base is None or self.mount is None:
            return None
        path = self.base / f"{AGENT_PREFIX}{agent_id}"
        return AgentCgroup(path, cgroup_name(self.mount, path))

    def describe(self) -> str:
        if self.mode == "cgroup":
            ctl = " ".join(sorted(self.controllers)) or "none"
            return f"cgroup v2 under {self.base} (controllers: {ctl}): {self.reason}"
        return f"process groups: {self.reason}"

    def unmet(self, configured_mode: str) -> str | None:
        """Why `cgroups.mode: required` is not met here (start-up refuses, check-config fails), or None."""
        if configured_mode == "required" and self.mode != "cgroup":
            return f"cgroups.mode is required, but {self.reason}"
        return None


def cgroup_name(mount: Mount, path: Path) -> str:
    """The cgroup path (as in /proc/<pid>/cgroup) of a directory in the mount."""
    rel = path.relative_to(mount.path).as_posix()
    root = mount.root.rstrip("/")
    return f"{root}/{rel}" if rel != "." else (root or "/")


def _mount_of(mounts: list[Mount], path: Path) -> Mount | None:
    best = None
    for m in mounts:
        if path == m.path or m.path in path.parents:
            if best is None or len(m.path.parts) > len(best.path.parts):
                best = m
    return best


def _delegated(path: Path) -> bool:
    """systemd marks a cgroup it delegated with the trusted.delegate (or user.delegate) xattr."""
    for name in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(path, name).strip(b"\0") == b"1":
                return True
        except OSError:
            continue
    return False


def _offered(path: Path) -> frozenset[str]:
    offered = set((_read(path / "cgroup.controllers") or "").split())
    return frozenset(c for c in WANTED_CONTROLLERS if c in offered)


def _enable_controllers(path: Path) -> frozenset[str]:
    """Turn on, for path's children, the wanted controllers path itself has; returns those now on."""
    offered = set((_read(path / "cgroup.controllers") or "").split())
    wanted = [c for c in WANTED_CONTROLLERS if c in offered]
    on = set((_read(path / "cgroup.subtree_control") or "").split())
    for ctl in wanted:
        if ctl in on:
            continue
        try:
            (path / "cgroup.subtree_control").write_text(f"+{ctl}")
            on.add(ctl)
        except OSError as exc:  # EBUSY: processes in path itself (the "no internal processes" rule)
            log.info("cgroup %s: cannot enable the %s controller for agents: %s", path, ctl, exc.strerror or exc)
    return frozenset(on)


def _writable(path: Path) -> str | None:
    """Why agentd cannot create agent cgroups in path; None when it can."""
    if not path.is_dir():
        return f"{path} does not exist"
    if not (path / "cgroup.procs").exists():
        return f"{path} is not a cgroup directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable by uid {os.geteuid()}"
    return None


def detect(mode: str, root: Path | None, *, mountinfo: str | None = None, self_cgroup: str | None = None, dry_run: bool = False) -> Tracking:
    """Decide the tracking mode from the `cgroups:` settings and what this machine offers.

    A configured `root` is created if missing. A delegated cgroup of agentd's own is split into
    `supervisor/` (agentd moves itself there, so controllers can be enabled) and `agents/`.
    `dry_run` (check-config) creates, moves and enables nothing.
    """
    if mode == "off":
        return Tracking("process-group", "cgroups.mode is off")
    if mountinfo is None:
        mountinfo = _read(Path(MOUNTINFO)) or ""
    mounts = cgroup2_mounts(mountinfo)
    if not mounts:
        return Tracking("process-group", "no cgroup v2 hierarchy is mounted (see /proc/self/mountinfo)")
    if root is not None:
        return _configured_root(mounts, root, dry_run)
    own = unified_path(self_cgroup if self_cgroup is not None else (_read(Path(SELF_CGROUP)) or ""))
    if own is None:
        return Tracking("process-group", "agentd is in no cgroup v2 (no 0:: line in /proc/self/cgroup)")
    for mount in mounts:
        rel = own if mount.root == "/" else (own[len(mount.root):] if own.startswith(mount.root) else None)
        if rel is None:
            continue
        path = mount.path / rel.lstrip("/")
        if path.is_dir():
            return _delegated_own(mount, path, own, dry_run)
    return Tracking("process-group", f"agentd's cgroup {own} is not visible under any cgroup v2 mount")


def _configured_root(mounts: list[Mount], root: Path, dry_run: bool) -> Tracking:
    """`cgroups.root` is set: agents go under it, created if missing."""
    mount = _mount_of(mounts, root)
    if mount is None:
        return Tracking("process-group", f"cgroups.root {root} is not inside a cgroup v2 mount ({', '.join(str(m.path) for m in mounts)})")
    if dry_run and not root.exists():
        why = _writable(root.parent)
        if why:
            return Tracking("process-group", f"cannot create cgroups.root {root}: {why}")
        return Tracking("cgroup", "cgroups.root is configured (will be created)", root, mount)
    try:
        root.mkdir(exist_ok=True)
    except OSError as exc:
        return Tracking("process-group", f"cannot create cgroups.root {root}: {exc.strerror or exc}")
    why = _writable(root)
    if why:
        return Tracking("process-group", why)
    controllers = _offered(root) if dry_run else _enable_controllers(root)
    return Tracking("cgroup", "cgroups.root is configured", root, mount, controllers)


def _delegated_own(mount: Mount, path: Path, own: str, dry_run: bool) -> Tracking:
    """agentd's own cgroup at `path`: usable when delegated, split into `supervisor/` and `agents/`."""
    if path.name == SUPERVISOR_LEAF and _delegated(path.parent):
        path = path.parent  # an earlier agentd of this unit already moved itself into the leaf
    if not _delegated(path):
        return Tracking("process-group", f"agentd's cgroup {own} is not delegated to it (run under systemd with Delegate=yes, or set cgroups.root)")
    why = _writable(path)
    if why:
        return Tracking("process-group", why)
    base = path / AGENTS_DIR
    if dry_run:
        return Tracking("cgroup", f"delegated cgroup {own}", base, mount, _offered(path))
    try:
        leaf = path / SUPERVISOR_LEAF
        leaf.mkdir(exist_ok=True)
        (leaf / "cgroup.procs").write_text(str(os.getpid()))
        base.mkdir(exist_ok=True)
    except OSError as exc:
        return Tracking("process-group", f"cannot set up the delegated cgroup {path}: {exc.strerror or exc}")
    _enable_controllers(path)
    return Tracking("cgroup", f"delegated cgroup {own}", base, mount, _enable_controllers(base))


def limit_values(memory_max: int | None, cpu_max: float | None, pids_max: int | None) -> dict[str, str]:
    """The cgroup files and values for an agent's `limits:` (cpu_max in CPUs, e.g. 0.5)."""
    out = {}
    if memory_max is not None:
        out["memory.max"] = str(memory_max)
    if cpu_max is not None:
        period = 100_000
        out["cpu.max"] = f"{max(1000, round(cpu_max * period))} {period}"
    if pids_max is not None:
        out["pids.max"] = str(pids_max)
    return out


CONTROLLER_OF = {"memory.max": "memory", "cpu.max": "cpu", "pids.max": "pids"}
