"""A throw-away cgroup v2 directory for a test, found from /proc/self/mountinfo (never a fixed path).

Tests skip, with the reason, where no writable cgroup2 hierarchy exists. Teardown kills whatever is
still inside and removes every cgroup the test (or the agentd under test) created.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from supervisor.common.cgroups import AgentCgroup, cgroup2_mounts, flat_keyed
from tests.support.wait import wait_until


def writable_cgroup2() -> tuple[Path | None, str]:
    """(a cgroup2 mount we may create children in, "") or (None, why not)."""
    mounts = cgroup2_mounts(Path("/proc/self/mountinfo").read_text())
    if not mounts:
        return None, "no cgroup2 hierarchy is mounted"
    for mount in mounts:
        probe = mount.path / f"agentd-probe-{uuid.uuid4().hex[:8]}"
        try:
            probe.mkdir()
        except OSError as exc:
            last = f"cannot create a cgroup under {mount.path}: {exc.strerror}"
            continue
        probe.rmdir()
        return mount.path, ""
    return None, last


def controllers_of(path: Path) -> set[str]:
    return set((path / "cgroup.controllers").read_text().split())


def remove_tree(root: Path) -> None:
    """Kill every process under root, then rmdir deepest first."""
    if not root.exists():
        return
    AgentCgroup(root, "").kill()
    wait_until(lambda: flat_keyed((root / "cgroup.events").read_text()).get("populated") == 0, timeout=20, message=f"{root} to empty")
    for top, dirs, _ in sorted(os.walk(root), key=lambda t: -len(Path(t[0]).parts)):
        Path(top).rmdir()
