"""Resource use of whole agent process trees (pid, descendants, process-group members).

One /proc scan per round builds the ppid/pgid table that every agent's tree is walked from. Each
sampled process then costs three reads: its /proc stat line (cpu time, threads, vsize, rss, in one
read instead of psutil's four files) and psutil's io counters and fd count. Entries are kept between
rounds (keyed by pid + start time), so the cpu figure is a real rate over the interval.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from supervisor.common.cgroups import AgentCgroup
from supervisor.common.proc_stat import ZOMBIE_STATES, read_stat_fields
from supervisor.common.proc_table import ProcInfo, read_stat, scan_processes
from supervisor.wire.messages import AgentView, ResourceSample

log = logging.getLogger(__name__)

CREATE_TIME_TOLERANCE = 0.01  # as in supervisor.parent.process_ops: a pid reused by another program differs by more
MAX_NOTED = 10_000  # bound on the names whose AccessDenied was already logged


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class _Entry:
    ticks: int  # start time in clock ticks since boot: with the pid, the process's identity
    proc: psutil.Process
    cpu_ticks: int | None = None  # utime + stime at the last sample, the baseline of the next rate
    cpu_at: float = 0.0  # monotonic time of that reading
    used: float = 0.0  # monotonic time of the last sample that included it


@dataclass
class _Usage:
    ticks: int
    cpu_ticks: int
    threads: int
    vms: int
    rss: int


def _read_usage(pid: int) -> _Usage | None:
    """What /proc/<pid>/stat says a live process uses; None when it is gone or a zombie."""
    fields = read_stat_fields(pid)
    if fields is None:
        return None
    try:
        if fields[0] in ZOMBIE_STATES:
            return None
        return _Usage(int(fields[19]), int(fields[11]) + int(fields[12]), int(fields[17]), int(fields[20]), int(fields[21]) * PAGE_SIZE)
    except (IndexError, ValueError):
        return None


class TreeSampler:
    """Samples agent trees and single processes; cheap enough to run for hundreds of agents."""

    def __init__(self, *, max_table_age: float = 1.0, forget_after: float = 300.0) -> None:
        self.max_table_age = max_table_age
        self.forget_after = forget_after
        self._table: dict[int, ProcInfo] = {}
        self._children: dict[int, list[int]] = {}
        self._groups: dict[int, list[int]] = {}
        self._scanned = float("-inf")
        self._cache: dict[int, _Entry] = {}
        self._noted_denied: set[str] = set()
        self._own_pgid = os.getpgrp()
        self._cg_cpu: dict[str, tuple[float, int]] = {}  # cgroup -> (monotonic time, usage_usec) of the last sample
        self.scans = 0
        self.access_denied = 0

    @property
    def cached(self) -> int:
        """How many psutil.Process objects are kept (bounded by the live processes sampled lately)."""
        return len(self._cache)

    # ----------------------------------------------------------------- the /proc table

    def scan(self) -> None:
        """Read every process's ppid, pgid and start time once; forget cached processes that are gone."""
        # Zombies count as gone: they use nothing and will never run again.
        table, children, groups = scan_processes(with_zombies=False)
        self._table, self._children, self._groups = table, children, groups
        self._scanned = time.monotonic()
        self.scans += 1
        stale_before = self._scanned - self.forget_after
        for pid in [p for p, e in self._cache.items() if (r := table.get(p)) is None or r.start_ticks != e.ticks or e.used < stale_before]:
            del self._cache[pid]

    def _fresh_table(self) -> None:
        if time.monotonic() - self._scanned > self.max_table_age:
            self.scan()

    def tree_pids(self, pid: int | None, pgid: int | None, create_time: float | None = None) -> list[int]:
        """pid (unless gone or not the process created at create_time), its group's members, and all descendants."""
        roots: list[int] = []
        reused = False
        if pid and pid in self._table:
            reused = create_time is not None and not self._same_process(pid, create_time)
            if not reused:
                roots.append(pid)
        group = pgid or pid
        # Never our own group (or init's): that would be agentd itself, not the agent. Nor the group a
        # reused pid leads: that is another program's.
        if group and group > 1 and group != self._own_pgid and not (reused and group == pid):
            roots.extend(self._groups.get(group, ()))
        found: set[int] = set()
        todo = roots
        while todo:
            p = todo.pop()
            if p in found:
                continue
            found.add(p)
            todo.extend(self._children.get(p, ()))
        return sorted(found)

    def _same_process(self, pid: int, create_time: float) -> bool:
        entry = self._entry(pid)
        if entry is None:
            return False
        try:
            return abs(entry.proc.create_time() - create_time) < CREATE_TIME_TOLERANCE
        except psutil.Error:
            return False

    # ----------------------------------------------------------------- sampling

    def sample(self, agent: AgentView, now_wall: float) -> ResourceSample:
        """The agent's whole tree; procs == 0 means nothing of this generation's process is left."""
        if agent.cgroup:
            return self._sample_cgroup(agent, now_wall)
        self._fresh_table()
        pids = self.tree_pids(agent.pid, agent.pgid, agent.create_time)
        return self._measure(agent.id, pids, now_wall, agent.generation)

    def _sample_cgroup(self, agent: AgentView, now_wall: float) -> ResourceSample:
        """Members from cgroup.procs (no /proc walk); CPU from cpu.stat, which also counts exited
        members; memory.current and pids.current where those controllers are enabled."""
        cgroup = AgentCgroup(Path(agent.cgroup), "")
        sample = self._measure(agent.id, cgroup.pids(), now_wall, agent.generation)
        usage = cgroup.usage()
        updates: dict[str, object] = {}
        if usage.cpu_usec is not None:
            now = time.monotonic()
            last = self._cg_cpu.get(agent.cgroup)
            self._cg_cpu[agent.cgroup] = (now, usage.cpu_usec)
            if last is not None and now > last[0] and usage.cpu_usec >= last[1]:
                updates["cpu"] = round((usage.cpu_usec - last[1]) / 1e6 / (now - last[0]) * 100.0, 2)
            else:
                updates["cpu"] = None  # the first reading is only a baseline, as with psutil
        if usage.memory is not None:
            updates["rss"] = usage.memory
        if usage.pids is not None and sample.procs:
            updates["procs"] = usage.pids
        if len(self._cg_cpu) > 4 * MAX_NOTED:
            self._cg_cpu.clear()
        return sample.model_copy(update=updates) if updates else sample

    def sample_pid(self, name: str, pid: int, now_wall: float) -> ResourceSample:
        """One process alone (agentd's own: the parent, a worker, this worker)."""
        self._fresh_table()
        return self._measure(name, [pid], now_wall, None)

    def _entry(self, pid: int) -> _Entry | None:
        row = self._table.get(pid)
        if row is None:  # not in the last scan (started since): read its identity directly
            row = read_stat(pid)
            if row is None or row.zombie:
                return None
        entry = self._cache.get(pid)
        if entry is not None and entry.ticks == row.start_ticks:
            return entry
        try:
            proc = psutil.Process(pid)
        except psutil.Error:  # NoSuchProcess, or AccessDenied on a process we cannot even open
            return None
        entry = self._cache[pid] = _Entry(row.start_ticks, proc)
        return entry

    def _measure(self, name: str, pids: list[int], now_wall: float, generation: int | None) -> ResourceSample:
        now = time.monotonic()
        cpu: float | None = None
        rss = vms = threads = procs = 0
        read_bytes: int | None = None
        write_bytes: int | None = None
        fds: int | None = None
        denied = False
        for pid in pids:
            entry = self._entry(pid)
            if entry is None:
                continue
            usage = _read_usage(pid)
            if usage is None or usage.ticks != entry.ticks:  # vanished (or became a zombie) since the scan
                self._cache.pop(pid, None)
                continue
            got: dict[str, object] = {}
            try:
                # Each read on its own: AccessDenied on one (io, fds of another user's process)
                # must not hide the other, nor the fact that the process exists.
                for key, read in (("io", entry.proc.io_counters), ("fds", entry.proc.num_fds)):
                    try:
                        got[key] = read()
                    except (psutil.AccessDenied, NotImplementedError):
                        denied = True
            except psutil.NoSuchProcess:  # also ZombieProcess: it vanished between the stat and now
                self._cache.pop(pid, None)
                continue
            entry.used = now
            procs += 1
            rss += usage.rss
            vms += usage.vms
            threads += usage.threads
            if entry.cpu_ticks is not None and now > entry.cpu_at:
                # As psutil's cpu_percent(): % of one core over the interval, summed over the tree.
                rate = (usage.cpu_ticks - entry.cpu_ticks) / CLOCK_TICKS / (now - entry.cpu_at) * 100.0
                cpu = (cpu or 0.0) + rate
            # The first reading only sets the baseline: a rate needs two.
            entry.cpu_ticks, entry.cpu_at = usage.cpu_ticks, now
            if (io := got.get("io")) is not None:
                read_bytes = (read_bytes or 0) + io.read_bytes
                write_bytes = (write_bytes or 0) + io.write_bytes
            if (n_fds := got.get("fds")) is not None:
                fds = (fds or 0) + n_fds
        if denied:
            self.access_denied += 1
            if name not in self._noted_denied:
                if len(self._noted_denied) >= MAX_NOTED:
                    self._noted_denied.clear()
                self._noted_denied.add(name)
                log.info("%s: some of its processes belong to another user; io and fds count only what can be read", name)
        return ResourceSample(
            agent_id=name, ts=now_wall, cpu=cpu, rss=rss, vms=vms, read_bytes=read_bytes, write_bytes=write_bytes,
            fds=fds, threads=threads, procs=procs, generation=generation,
        )
