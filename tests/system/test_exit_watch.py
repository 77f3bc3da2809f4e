"""Exit detection by pidfd, with real processes: the exit can be taken synchronously when a timer needs it."""

from __future__ import annotations

import asyncio
import subprocess

from supervisor.parent.exit_watch import watch_exit
from tests.support.wait import wait_until


def _is_zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0] == "Z"


def test_an_exit_not_yet_seen_by_the_loop_is_delivered_on_demand():
    loop = asyncio.new_event_loop()
    proc = subprocess.Popen(["/bin/sh", "-c", "exit 3"])
    seen = []
    try:
        watch = watch_exit(loop, proc.pid, proc, lambda code, sig: seen.append((code, sig)))
        assert watch is not None
        wait_until(lambda: _is_zombie(proc.pid), timeout=30, message="the child to exit")
        assert seen == []  # the loop never ran, so nothing delivered it yet
        watch.deliver_if_exited()
        assert seen == [(3, None)]
        watch.deliver_if_exited()  # already delivered and closed: nothing more
        assert seen == [(3, None)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        loop.close()


def test_a_live_process_is_not_delivered():
    loop = asyncio.new_event_loop()
    proc = subprocess.Popen(["/bin/sleep", "60"])
    seen = []
    try:
        watch = watch_exit(loop, proc.pid, proc, lambda code, sig: seen.append((code, sig)))
        watch.deliver_if_exited()
        assert seen == []
        watch.cancel()
    finally:
        proc.kill()
        proc.wait()
        loop.close()
