"""Processes as the kernel lists them in /proc: identity that survives clock steps, and one-pass trees.

A process is identified by (boot id, pid, start time in clock ticks since boot). psutil's
create_time() is boot time + ticks, and boot time is derived from the wall clock, so an NTP step
would make a live agent look like a different process and agentd would start a duplicate.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

_CACHE_SECONDS = 0.05


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
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(b")") + 2 :].split()
    try:
        return ProcInfo(pid=pid, ppid=int(rest[1]), pgid=int(rest[2]), start_ticks=int(rest[19]), zombie=rest[0] in (b"Z", b"X"))
    except (IndexError, ValueError):
        return None


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


def is_same_process(pid: int, ticks: int | None, recorded_boot: str | None = None) -> bool:
    """True when `pid` is alive (not a zombie) and is the process that started at `ticks`."""
    if not pid or ticks is None:
        return False
    if recorded_boot and recorded_boot != boot_id():
        return False
    info = read_stat(pid)
    return info is not None and not info.zombie and info.start_ticks == ticks


class ProcessTable:
    """A snapshot of every process, re-read at most every 50 ms however many agents ask."""

    def __init__(self) -> None:
        self._taken = -1.0
        self._procs: dict[int, ProcInfo] = {}
        self._children: dict[int, list[int]] = {}

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._taken < _CACHE_SECONDS:
            return
        procs: dict[int, ProcInfo] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                info = read_stat(int(name))
                if info is not None:
                    procs[info.pid] = info
        children: dict[int, list[int]] = {}
        for info in procs.values():
            children.setdefault(info.ppid, []).append(info.pid)
        self._procs, self._children, self._taken = procs, children, now

    def invalidate(self) -> None:
        """Forget the snapshot (after sending signals, the next look must be fresh)."""
        self._taken = -1.0

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
            stack.extend(p.pid for p in self._procs.values() if p.pgid == pgid)
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
