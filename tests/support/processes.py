"""Process-tree inspection and cleanup for tests, so no test leaves a process behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil

from tests.support.wait import read_markers

# Markers whose second field is the pid of a process the helper agent started.
_PID_MARKERS = {"START", "CHILD", "GRANDCHILD"}


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, session, ...), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may contain spaces and parentheses; it ends at the last ')'.
    return raw.rpartition(")")[2].split()


def pid_alive(pid: int) -> bool:
    """True while pid exists and is not a zombie (orphans are never reaped in this sandbox)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, pgrp) for every live process."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat(int(name))
            if fields is not None and fields[0] not in ("Z", "X"):
                table[int(name)] = (int(fields[1]), int(fields[2]))
    return table


def _pgid(pid: int) -> int:
    """pid's process group, read even from a zombie; pid itself once it is gone, since agents lead their group."""
    fields = _stat(pid)
    return int(fields[2]) if fields is not None else pid


def _descendants_in(table: dict[int, tuple[int, int]], roots: set[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def descendants(pid: int) -> list[int]:
    """Live children, grandchildren, ... of pid (not pid itself)."""
    return sorted(_descendants_in(_table(), {pid}))


def _tree(table: dict[int, tuple[int, int]], pid: int) -> set[int]:
    """pid, the live members of its process group (unless that is ours), and all their descendants."""
    # The group outlives its leader, so its members are found by pgid rather than by ancestry.
    pgid = _pgid(pid)
    roots = {pid}
    if pgid != os.getpgrp():
        roots |= {p for p, (_, group) in table.items() if group == pgid}
    return {p for p in roots | _descendants_in(table, roots) if p in table}


def kill_tree(pid: int, timeout: float = 5.0) -> list[int]:
    """SIGKILLs pid, its process group and all descendants, and waits until they are dead; returns who was hit."""
    # Never the test process or its ancestors (pytest, make), whatever group they are in.
    protected = {os.getpid()} | {p.pid for p in psutil.Process().parents()}
    hit: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        # Listed again each round: a process may fork between the listing and the kill.
        targets = _tree(_table(), pid) - protected
        if not targets:
            return sorted(hit)
        if time.monotonic() >= deadline:
            raise AssertionError(f"processes still alive {timeout:g} s after SIGKILL: {sorted(targets)}")
        for target in targets:
            try:
                os.kill(target, signal.SIGKILL)
            except ProcessLookupError:
                pass
        hit |= targets
        time.sleep(0.01)


class ProcessTracker:
    """Remembers processes a test started or discovered, and kills the survivors at the end."""

    def __init__(self) -> None:
        self._create_times: dict[int, float] = {}

    def track(self, pid: int) -> None:
        """Records pid with its create time; a process that is already gone is not recorded."""
        try:
            self._create_times.setdefault(pid, psutil.Process(pid).create_time())
        except psutil.NoSuchProcess:
            pass

    def track_markers(self, path: str | Path) -> None:
        """Records every pid named by START, CHILD and GRANDCHILD markers in a helper agent's marker file."""
        for marker in read_markers(path):
            if marker[0] in _PID_MARKERS:
                self.track(int(marker[1]))

    @property
    def pids(self) -> list[int]:
        return sorted(self._create_times)

    def _present(self) -> list[int]:
        """Recorded pids that still name the recorded process (same create time, so not a reused pid).

        Zombies count: a dead leader's group and descendants may still be running.
        """
        present = []
        for pid, created in sorted(self._create_times.items()):
            try:
                if psutil.Process(pid).create_time() == created:
                    present.append(pid)
            except psutil.NoSuchProcess:
                pass
        return present

    def alive(self) -> list[int]:
        """Recorded processes still running."""
        return [pid for pid in self._present() if pid_alive(pid)]

    def kill_all(self, timeout: float = 5.0) -> list[int]:
        """Kills every recorded process still there, with its group and descendants; returns the pids killed."""
        killed: set[int] = set()
        for pid in self._present():
            killed |= set(kill_tree(pid, timeout))
        return sorted(killed)
