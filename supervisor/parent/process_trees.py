"""An agent's process tree: who belongs to it, signalling all of it, and whether any of it is left.

In cgroup mode the cgroup is the tree; otherwise it is the recorded processes, their descendants and
the members of the agent's process group, listed from one shared /proc snapshot (docs/architecture.md,
"How stop works").
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

from supervisor.common.cgroups import AgentCgroup, cgroup_name
from supervisor.common.proc_table import ProcessTable, read_stat
from supervisor.parent.process_handle import ProcessHandle

log = logging.getLogger("supervisor.parent.process_ops")  # the lines keep the logger they always had


class ProcessTrees:
    """Lists, signals and checks agents' trees; one /proc scan serves every agent stopping in the same tick."""

    def __init__(self, mounts: list) -> None:
        self.table = ProcessTable()
        self._mounts = mounts  # cgroup2 mounts (supervisor/common/cgroups.py)

    def is_member(self, handle: ProcessHandle, pid: int) -> bool | None:
        """Whether `pid` belongs to the agent: in its cgroup, else in its tree or process group.
        None when the process is already gone, so membership cannot be checked."""
        info = read_stat(pid)
        if info is None or info.zombie:
            return None
        if handle.cgroup is not None:
            cgroup = self.cgroup(handle)
            return cgroup.contains(pid)
        if pid == handle.pid or info.pgid == handle.pgid:
            return True
        self.table.invalidate()
        return pid in self.refresh(handle)

    def refresh(self, handle: ProcessHandle) -> dict[int, int]:
        """Every live process of the agent: recorded ones, their descendants, group members, from a
        snapshot taken after the last signal sent to this tree and after its main process's exit."""
        self.table.fresh_for(handle.table_stamp)
        live = self.table.tree(handle.tree, handle.pgid)
        handle.tree.update(live)
        for pid in [p for p in handle.tree if p not in live and p != handle.pid]:
            del handle.tree[pid]  # gone: keeps the map bounded however much the tree churns
        return live

    def cgroup_at(self, path: Path) -> AgentCgroup | None:
        """The cgroup at a directory of any cgroup2 mount; None when it is in none (or gone)."""
        mounts = [m for m in self._mounts if m.path in path.parents]
        if not mounts or not path.is_dir():
            return None
        mount = max(mounts, key=lambda m: len(m.path.parts))
        return AgentCgroup(path, cgroup_name(mount, path))

    def recorded_cgroup(self, record) -> AgentCgroup | None:
        """The cgroup a metadata record says the process was started in, if it still exists."""
        return self.cgroup_at(Path(record.cgroup)) if getattr(record, "cgroup", None) else None

    def cgroup(self, handle: ProcessHandle) -> AgentCgroup:
        """The cgroup of a handle in cgroup mode."""
        path = Path(handle.cgroup)
        return self.cgroup_at(path) or AgentCgroup(path, "")

    def signal_tree(self, handle: ProcessHandle, signum: int) -> None:
        """Send `signum` to every process of the agent, including those that left its group."""
        if handle.cgroup is not None:
            cgroup = self.cgroup(handle)
            # Every member, wherever it forked or setsid'd to; SIGKILL through cgroup.kill, which no fork outruns.
            if signum == signal.SIGKILL:
                cgroup.kill()
            else:
                sent = cgroup.signal(signum)
                log.debug("sent %s to %d processes in %s", signal.Signals(signum).name, sent, cgroup.path)
            return
        # List first, so a dying parent cannot hide its children. Agents signalled in the same loop
        # pass (stop --all, shutdown) share one snapshot: signals to other trees do not change this one.
        live = self.refresh(handle)
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
        """Whether any process of the agent is left (our unreaped child counts)."""
        if not handle.exited and not handle.adopted:
            return True  # our child has not been reaped yet
        if handle.cgroup is not None:
            return self.cgroup(handle).populated()  # cgroup.events: empty means every process is gone
        if handle.exited and self._surely_gone(handle):
            return False
        return bool(self.refresh(handle))

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
