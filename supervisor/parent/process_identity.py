"""Is a running process the agent's? The identity checks behind re-adoption and the leftovers of a lost main process.

A pid alone proves nothing after a reboot or pid reuse: a recorded process is the agent's only with the
same start ticks and boot id, and a marked one only when it runs the configured command (docs/architecture.md,
"Re-adoption").
"""

from __future__ import annotations

import logging
import os
import time

from supervisor.common.cgroups import AgentCgroup
from supervisor.common.metadata_store import parse_iso
from supervisor.common.proc_table import ProcessTable, boot_time, is_same_process, read_stat, start_ticks
from supervisor.config.agent import AgentSpec
from supervisor.parent.process_handle import ProcessHandle

log = logging.getLogger("supervisor.parent.process_ops")  # the lines keep the logger they always had


def process_matches(pid: int, ticks: int | None, recorded_boot: str | None = None) -> bool:
    """True when `pid` is alive, not a zombie, and started at `ticks` (clock ticks since boot)."""
    return is_same_process(pid, ticks, recorded_boot)


def adopted_handle(record, generation: int, now: float, boot: str, table: ProcessTable) -> ProcessHandle | None:
    """A handle on the process a previous agentd recorded, if it is still that one (pid + start ticks + boot)."""
    if not process_matches(record.pid, record.start_ticks, record.boot_id):
        return None
    try:
        pgid = os.getpgid(record.pid)
    except ProcessLookupError:
        return None
    # From the start ticks just checked, never the record's create time: that was computed from the wall
    # clock (a clock step since moves it), and the health worker takes a pid whose create time differs
    # for a reused one, i.e. judges the live agent dead. A record made from identity alone has none.
    create_time = boot_time() + record.start_ticks / os.sysconf("SC_CLK_TCK")
    return ProcessHandle(
        pid=record.pid,
        pgid=pgid,
        create_time=create_time,
        start_ticks=record.start_ticks,
        generation=generation,
        started_mono=now - max(0.0, time.time() - create_time),
        started_wall=parse_iso(record.start_time) or create_time,
        adopted=True,
        tree={record.pid: record.start_ticks},
        boot_id=boot,
        table_stamp=table.mark(),
    )


def runs_command(pid: int, spec: AgentSpec, uid: int) -> bool:
    """Whether `pid` runs the configured command line, as `uid`, with the configured env."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(item.decode(errors="replace").partition("=")[::2] for item in f.read().split(b"\0") if item)
        owner = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return False
    want_argv = [str(spec.binary_path), *spec.effective_args()]
    # A script's kernel argv starts with its interpreter: compare the tail.
    argv_ok = argv == want_argv or (len(argv) > len(want_argv) and argv[-len(want_argv):] == want_argv)
    return argv_ok and all(env.get(k) == v for k, v in spec.env.items()) and owner == uid


def cgroup_leftovers(agent_id: str, cgroup: AgentCgroup | None, record, generation: int, now: float, boot: str) -> ProcessHandle | None:
    """In cgroup mode, whatever still runs in the agent's cgroup is the agent's, recorded or not:
    a handle to stop it before a new generation starts (so none runs twice)."""
    if cgroup is None or not cgroup.exists() or not cgroup.populated():
        return None
    members = {p: t for p in cgroup.pids() if (t := start_ticks(p)) is not None}
    pid = (record.pid if record is not None and record.pid else None) or min(members, default=0)
    handle = ProcessHandle(
        pid=pid, pgid=(record.pgid if record is not None and record.pgid else pid), create_time=time.time(), start_ticks=members.get(pid),
        generation=generation, started_mono=now, started_wall=time.time(), adopted=True, exited=True, tree=members,
        boot_id=boot, cgroup=str(cgroup.path),
    )
    log.warning("%s: %d processes live on in its cgroup %s without a main process agentd knows: stopping them first", agent_id, len(members), cgroup.path)
    return handle


def group_leftovers(agent_id: str, table: ProcessTable, record, generation: int, now: float, boot: str) -> ProcessHandle | None:
    """The recorded main process is gone but members of its process group may live on: a handle to stop them."""
    if record is None or not record.pgid or record.start_ticks is None or (record.boot_id and record.boot_id != boot):
        return None
    leader = read_stat(record.pgid)
    if leader is not None and not leader.zombie and leader.start_ticks != record.start_ticks:
        # The group's id is a live process's pid again, so it is a new group: the kernel does not
        # hand out a pid still in use as a process group id, so the old group had emptied first.
        return None
    table.invalidate()
    members = {p: t for p, t in table.tree({}, record.pgid).items() if t >= record.start_ticks}
    if not members:
        return None
    handle = ProcessHandle(
        pid=record.pid, pgid=record.pgid, create_time=record.create_time or time.time(), start_ticks=record.start_ticks,
        generation=generation, started_mono=now, started_wall=time.time(), adopted=True, exited=True, tree=members,
        boot_id=boot,
    )
    log.warning("%s: main process %d is gone but %d processes of its group live on: stopping them first", agent_id, record.pid, len(members))
    return handle
