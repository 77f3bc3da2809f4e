"""A process's place in its tree, read from /proc without scanning it: its start time and parent from an
open /proc/<pid>/stat, its children from /proc/<pid>/task/*/children, and whether it descends from a
given root (the HTTP sender proof, docs/decisions.md "HTTP sender identity")."""

from __future__ import annotations

import os

from supervisor.common.proc_stat import ZOMBIE_STATES, stat_fields

MAX_TREE_DEPTH = 64


def stat_of(fd: int) -> tuple[int, int] | None:
    """(start time in clock ticks since boot, parent pid) from an open /proc/<pid>/stat, or None once that
    process has exited or is a zombie (its descriptors are closed). An open /proc file stays bound to its
    process: after the pid is reused, reading it fails instead of describing the newcomer."""
    try:
        data = os.pread(fd, 4096, 0)
    except OSError:
        return None
    fields = stat_fields(data)
    try:
        if fields[0] in ZOMBIE_STATES:
            return None
        return int(fields[19]), int(fields[1])
    except (IndexError, ValueError):
        return None


def parent_of(pid: int) -> int | None:
    """The parent pid of a live process, or None once it is gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        stat = stat_of(fd)
    finally:
        os.close(fd)
    return stat[1] if stat is not None else None


def below(ppid: int, root: int) -> bool:
    """Whether a process whose parent is `ppid` descends from root, walking parents up from it."""
    current: int | None = ppid
    for _ in range(MAX_TREE_DEPTH):
        if current is None or root <= 1 or current <= 1:
            return False
        if current == root:
            return True
        current = parent_of(current)
    return False


def children(pid: int) -> list[int]:
    """Direct children of pid, from /proc/<pid>/task/<tid>/children (no scan of all of /proc)."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return found
