"""The one parse of /proc/<pid>/stat (proc(5)), with nothing but `os` imported: agentctl's quick path reads
it too (docs/architecture.md, "Module map")."""

from __future__ import annotations

import os

ZOMBIE_STATES = (b"Z", b"X")  # a zombie or a dead process: exited, only not reaped yet


def stat_fields(raw: bytes) -> list[bytes]:
    """The fields of a stat line after the command name: [0] state, [1] ppid, [2] pgid, ... [19] start
    time in clock ticks (proc(5) field N is index N - 3). The name may hold spaces and ')': it ends at the last ')'."""
    return raw[raw.rfind(b")") + 2 :].split()


def read_stat_fields(pid: int) -> list[bytes] | None:
    """`stat_fields` of a process, or None when it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb", buffering=0) as f:
            raw = f.read()
    except OSError:
        return None
    return stat_fields(raw)


def pid_alive(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped) is not alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's: it exists
    fields = read_stat_fields(pid)
    return not fields or fields[0] not in ZOMBIE_STATES  # no /proc to ask: trust the signal check
