"""TreeSampler against real process trees: sums, cpu rates, vanished pids, zombies, the Process cache."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import psutil
import pytest

from supervisor.wire.messages import AgentView
from tests.support.processes import kill_tree
from tests.support.wait import wait_until
from workers.tree_sampler import TreeSampler

MIB = 1024 * 1024

# An agent that starts a child holding `MB` MiB (or spinning), prints the child's pid, then waits.
PARENT = r"""
import subprocess, sys, time
mode, mb = sys.argv[1], int(sys.argv[2])
code = {"alloc": f"import time; x = b'x' * ({mb} << 20); print('ok', flush=True); time.sleep(60)",
        "spin": "print('ok', flush=True)\nwhile True: pass",
        "exit": "pass"}[mode]
child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
if mode == "exit":
    child.stdout.close()
    while child.pid and open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)  # a zombie child: exited, never waited for
    print(child.pid, flush=True)
else:
    child.stdout.readline()
    print(child.pid, flush=True)
time.sleep(60)
"""


class Tree:
    """A real agent process (own session) with one child; killed with its whole group afterwards."""

    def __init__(self, mode: str, mb: int = 0) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", PARENT, mode, str(mb)], stdout=subprocess.PIPE, start_new_session=True)
        self.pid = self.proc.pid
        self.child = int(self.proc.stdout.readline())

    def view(self, generation: int = 1, **kw) -> AgentView:
        fields = {"pid": self.pid, "pgid": self.pid, "create_time": psutil.Process(self.pid).create_time(), **kw}
        return AgentView(id="t", type="custom", state="running", generation=generation, **fields)

    def kill(self) -> None:
        kill_tree(self.pid)
        self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture
def trees():
    made: list[Tree] = []

    def make(mode: str, mb: int = 0) -> Tree:
        made.append(Tree(mode, mb))
        return made[-1]

    try:
        yield make
    finally:
        for tree in made:
            tree.kill()


def test_parent_and_child_memory_are_summed(trees):
    tree = trees("alloc", 60)
    s = TreeSampler()
    first = s.sample(tree.view(generation=7), time.time())
    assert first.procs == 2 and first.generation == 7 and first.agent_id == "t"
    assert first.rss > 60 * MIB and first.vms >= first.rss and first.threads >= 2
    assert first.fds is not None and first.fds >= 3 and first.read_bytes is not None
    assert first.cpu is None  # no rate from a single look
    own = psutil.Process(tree.child).memory_info().rss + psutil.Process(tree.pid).memory_info().rss
    assert abs(first.rss - own) < 5 * MIB


def _tree_cpu_seconds(tree) -> float:
    return sum(sum(psutil.Process(p).cpu_times()[:2]) for p in (tree.pid, tree.child))


def test_busy_child_cpu_is_a_real_rate(trees):
    # Compared with the CPU the tree really used in the same window, measured apart: on a busy machine the
    # spinner may get far less than a core, and the rate must say so, not a fixed figure.
    tree = trees("spin")
    s = TreeSampler()
    before, t0 = _tree_cpu_seconds(tree), time.monotonic()
    assert s.sample(tree.view(), time.time()).cpu is None
    time.sleep(1.0)  # the measuring window, not a wait for a condition
    rate = s.sample(tree.view(), time.time()).cpu
    used, t1 = _tree_cpu_seconds(tree), time.monotonic()
    real = (used - before) / (t1 - t0) * 100
    assert real > 1, "the spinner got no CPU at all"
    assert abs(rate - real) <= max(5.0, 0.25 * real), (rate, real)


def test_group_member_outside_the_ancestry_is_counted(trees):
    # The agent's child is found by ancestry; with the agent gone, its group still holds the child.
    tree = trees("alloc", 1)
    s = TreeSampler()
    view = tree.view()
    os.kill(tree.pid, 9)
    tree.proc.wait()  # reaped: the child is now an orphan in the agent's process group
    s.scan()
    got = s.sample(view, time.time())
    assert got.procs == 1 and got.rss > 0


def test_vanished_pid(trees):
    tree = trees("alloc", 1)
    s = TreeSampler()
    view = tree.view()
    assert s.sample(view, time.time()).procs == 2
    s.scan()
    tree.kill()  # gone between the listing and the sampling
    got = s.sample(view, time.time())
    assert (got.procs, got.rss, got.cpu) == (0, 0, None)
    gone = subprocess.Popen(["true"])
    gone.wait()
    got = s.sample(AgentView(id="g", type="custom", state="running", pid=gone.pid, pgid=gone.pid), time.time())
    assert got.procs == 0


def test_zombies_count_as_gone(trees):
    tree = trees("exit")  # the agent's child exited and was never waited for
    s = TreeSampler()
    assert psutil.Process(tree.child).status() == psutil.STATUS_ZOMBIE
    assert s.sample(tree.view(), time.time()).procs == 1
    # A zombie agent (exited, its parent has not reaped it yet) is gone too.
    zombie = subprocess.Popen(["true"], start_new_session=True)
    wait_until(lambda: psutil.Process(zombie.pid).status() == psutil.STATUS_ZOMBIE, timeout=30)
    try:
        assert s.sample(AgentView(id="z", type="custom", state="running", pid=zombie.pid, pgid=zombie.pid), time.time()).procs == 0
    finally:
        zombie.wait()


def test_reused_pid_is_not_the_agent(trees):
    tree = trees("alloc", 1)
    got = TreeSampler().sample(tree.view(create_time=psutil.Process(tree.pid).create_time() - 5), time.time())
    assert got.procs == 0


def test_cache_forgets_processes_that_are_gone(trees):
    tree = trees("alloc", 1)
    s = TreeSampler()
    s.sample(tree.view(), time.time())
    s.sample_pid("agentd/self", os.getpid(), time.time())
    assert s.cached == 3
    tree.kill()
    s.scan()
    assert s.cached == 1  # only ourselves is left


def test_cache_forgets_processes_not_sampled_lately(trees):
    tree = trees("alloc", 1)
    s = TreeSampler(forget_after=0.0)
    s.sample(tree.view(), time.time())
    assert s.cached == 2
    time.sleep(0.01)
    s.scan()  # alive, but left the sampled set (or stopped being asked about): bounded all the same
    assert s.cached == 0


def test_own_process_sample(trees):
    got = TreeSampler().sample_pid("agentd/parent", os.getpid(), time.time())
    assert got.agent_id == "agentd/parent" and got.procs == 1 and got.rss > 0 and got.generation is None


def test_access_denied_counts_what_can_be_read_and_logs_once(trees, monkeypatch, caplog):
    tree = trees("alloc", 1)

    def denied(self, *a, **k):
        raise psutil.AccessDenied(self.pid)

    monkeypatch.setattr(psutil.Process, "io_counters", denied)
    monkeypatch.setattr(psutil.Process, "num_fds", denied)
    s = TreeSampler()
    with caplog.at_level(logging.INFO, logger="workers.tree_sampler"):
        for _ in range(3):
            got = s.sample(tree.view(), time.time())
    assert got.procs == 2 and got.rss > 0 and got.read_bytes is None and got.fds is None
    assert len([r for r in caplog.records if "another user" in r.getMessage()]) == 1
