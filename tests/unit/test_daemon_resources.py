"""What agentd holds for its run (supervisor/parent/daemon_resources.py): locks, directories, node id,
metadata store, closers. Real directories and locks in tmp_path, no processes.
"""

from __future__ import annotations

import asyncio
import stat

import pytest

from supervisor.config.daemon_sections import DaemonSettings
from supervisor.parent.daemon_resources import DaemonResources
from supervisor.parent.instance_lock import InstanceLocked


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def settings(tmp_path, **extra) -> DaemonSettings:
    return DaemonSettings(run_dir=tmp_path / "run", data_dir=tmp_path / "data", log_dir=tmp_path / "log", **extra)


def test_acquire_prepares_the_directories_locks_and_the_metadata_store(tmp_path, loop):
    res = DaemonResources(settings(tmp_path))
    res.acquire(loop)
    try:
        modes = {d.name: stat.S_IMODE(d.stat().st_mode) for d in (res.run_dir, res.data_dir, res.log_dir)}
        assert modes == {"run": 0o755, "data": 0o750, "log": 0o750}
        assert res.pidfile.locked and (res.run_dir / "agentd.pid").read_text().strip().isdigit()
        assert res.node_id and (res.data_dir / "node_id").read_text().strip() == res.node_id
        assert res.store is not None and res.writer is not None
    finally:
        res.release(loop)
    assert not (res.run_dir / "agentd.pid").exists()


def test_a_configured_node_id_wins(tmp_path, loop):
    res = DaemonResources(settings(tmp_path, id="node-7"))
    res.acquire(loop)
    res.release(loop)
    assert res.node_id == "node-7" and not (res.data_dir / "node_id").exists()


def test_a_second_holder_of_the_same_directories_is_refused_until_the_first_releases(tmp_path, loop):
    first, second = DaemonResources(settings(tmp_path)), DaemonResources(settings(tmp_path))
    first.acquire(loop)
    try:
        with pytest.raises(InstanceLocked):
            second.acquire(loop)
    finally:
        first.release(loop)
    second.acquire(loop)
    second.release(loop)


def test_release_closes_what_registered_newest_first(tmp_path, loop):
    res = DaemonResources(settings(tmp_path))
    res.acquire(loop)
    closed: list[str] = []
    res.closers.extend([lambda: closed.append("pid file"), lambda: closed.append("sockets"), lambda: closed.append("stores")])
    res.release(loop)
    assert closed == ["stores", "sockets", "pid file"]
    res.release(loop)  # twice is harmless: nothing is closed again
    assert len(closed) == 3
