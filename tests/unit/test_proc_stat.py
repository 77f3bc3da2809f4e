"""The one parse of /proc/<pid>/stat (supervisor/common/proc_stat.py)."""

from __future__ import annotations

import os

from supervisor.common.proc_stat import pid_alive, read_stat_fields, stat_fields
from supervisor.common.proc_table import read_stat


def test_a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields():
    raw = b"4242 (a) b (c)) S 17 4242 4242 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 987654 1000 10\n"
    fields = stat_fields(raw)
    assert (fields[0], fields[1], fields[2], fields[19]) == (b"S", b"17", b"4242", b"987654")


def test_this_process_and_a_gone_one():
    fields = read_stat_fields(os.getpid())
    assert fields is not None and int(fields[1]) == os.getppid() and int(fields[2]) == os.getpgrp()
    info = read_stat(os.getpid())
    assert info is not None and info.ppid == os.getppid() and not info.zombie and info.start_ticks == int(fields[19])
    assert read_stat_fields(2**22 + 1) is None  # above pid_max's ceiling: never a process


def test_pid_alive():
    assert pid_alive(os.getpid())
    assert not pid_alive(2**22 + 1)
