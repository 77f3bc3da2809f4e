"""Processes as the kernel lists them in /proc: identity that survives clock steps, and one-pass trees.

A process is identified by (boot id, pid, start time in clock ticks since boot). psutil's
create_time() is boot time + ticks, and boot time is derived from the wall clock, so an NTP step
would make a live agent look like a different process and agentd would start a duplicate.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from supervisor.common.proc_stat import ZOMBIE_STATES, read_stat_fields

# A snapshot older than this is re-read even without an event: descendants exit and fork unseen.
# It counts from the end of the scan, which alone can take longer than this on a loaded box.
_CACHE_SECONDS = 0.1


@dataclass(frozen=True)
class ProcInfo:
    """The fields of /proc/<pid>/stat that supervision needs."""

    pid: int
    ppid: int
    pgid: int
    start_ticks: int
    zombie: bool


def read_stat(pid: int) -> ProcInfo | None:
    """One process's stat line, or None when it is gone (or unreadable)."""
    rest = read_stat_fields(pid)
    if rest is None:
        return None
    try:
        return ProcInfo(pid=pid, ppid=int(rest[1]), pgid=int(rest[2]), start_ticks=int(rest[19]), zombie=rest[0] in ZOMBIE_STATES)
    except (IndexError, ValueError):
        return None


def scan_processes(*, with_zombies: bool) -> tuple[dict[int, ProcInfo], dict[int, list[int]], dict[int, list[int]]]:
    """Every process in one pass over /proc: by pid, the children of each parent pid, the members of each group."""
    procs: dict[int, ProcInfo] = {}
    children: dict[int, list[int]] = {}
    groups: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = read_stat(int(name))
            if info is not None and (with_zombies or not info.zombie):
                procs[info.pid] = info
                children.setdefault(info.ppid, []).append(info.pid)
                groups.setdefault(info.pgid, []).append(info.pid)
    return procs, children, groups


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None when it is gone."""
    info = read_stat(pid)
    return info.start_ticks if info else None


def boot_id() -> str:
    """This boot's random id: ticks since boot only identify a process within one boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def boot_time() -> float:
    """When the machine booted (Unix time, /proc/stat `btime`): what psutil.boot_time() reads, without
    importing psutil into the parent before its first spawn."""
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise RuntimeError("no btime in /proc/stat")


def is_same_process(pid: int, ticks: int | None, recorded_boot: str | None = None) -> bool:
    """True when `pid` is alive (not a zombie) and is the process that started at `ticks`."""
    if not pid or ticks is None:
        return False
    if recorded_boot and recorded_boot != boot_id():
        return False
    info = read_stat(pid)
    return info is not None and not info.zombie and info.start_ticks == ticks


class ProcessTable:
    """A snapshot of every process, shared by every agent that looks in the same loop pass.

    `seq` counts the events after which a snapshot is stale for one tree (a signal sent to it, its
    main process's exit). Each tree remembers the `seq` of its last event (`mark`), and `fresh_for`
    rescans only when the snapshot predates it, or is older than 100 ms. So stopping 200 agents takes
    one scan to list their trees before signalling them all, and one more to see them all gone.
    """

    def __init__(self) -> None:
        self._taken = -1.0
        self._taken_seq = -1
        self.seq = 0
        self._procs: dict[int, ProcInfo] = {}
        self._children: dict[int, list[int]] = {}
        self._groups: dict[int, list[int]] = {}

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._taken < _CACHE_SECONDS:
            return
        procs, children, groups = scan_processes(with_zombies=True)
        self._procs, self._children, self._groups, self._taken = procs, children, groups, time.monotonic()
        self._taken_seq = self.seq

    def invalidate(self) -> None:
        """Forget the snapshot: the next look scans /proc again."""
        self._taken = -1.0

    def mark(self) -> int:
        """Record an event that makes snapshots taken so far stale for one tree; returns its number."""
        self.seq += 1
        return self.seq

    def fresh_for(self, stamp: int) -> None:
        """Make sure the next look sees a snapshot taken after event `stamp` (from `mark`)."""
        if self._taken_seq < stamp:
            self.invalidate()

    def tree(self, roots: dict[int, int], pgid: int | None) -> dict[int, int]:
        """Live processes of a tree: the roots still matching their start ticks, their descendants,
        and members of process group `pgid`; as pid -> start ticks."""
        self._refresh()
        live: dict[int, int] = {}
        stack = []
        for pid, ticks in roots.items():
            info = self._procs.get(pid)
            if info is not None and info.start_ticks == ticks:
                stack.append(pid)  # even a zombie root: its children are still ours
        if pgid is not None:
            stack.extend(self._groups.get(pgid, ()))
        seen: set[int] = set()
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            info = self._procs.get(pid)
            if info is None:
                continue
            if not info.zombie:
                live[pid] = info.start_ticks
            stack.extend(self._children.get(pid, ()))
        return live
