"""Unit part of the test_pidfile.py tests; the real-process ones are in tests/system/test_pidfile.py."""

import os
import stat

import pytest

from supervisor.common.pidfile import AlreadyRunning, PidFile


def test_acquire_writes_pid_and_release_removes(tmp_path):
    path = tmp_path / "agentd.pid"
    pf = PidFile(path)
    pf.acquire()
    try:
        assert path.read_text() == f"{os.getpid()}\n"
        assert PidFile.read_pid(path) == os.getpid()
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert pf.locked
    finally:
        pf.release()
    assert not path.exists()
    assert not pf.locked
    pf.release()  # idempotent


def test_context_manager(tmp_path):
    path = tmp_path / "agentd.pid"
    with PidFile(path) as pf:
        assert pf.locked and path.exists()
    assert not path.exists()


def test_same_process_second_object_is_refused(tmp_path):
    path = tmp_path / "agentd.pid"
    with PidFile(path):
        with pytest.raises(AlreadyRunning):
            PidFile(path).acquire()


def test_garbage_file_is_taken_over(tmp_path):
    path = tmp_path / "agentd.pid"
    path.write_text("not a pid at all, and longer than any pid\n")
    assert PidFile.read_pid(path) is None
    with PidFile(path):
        assert path.read_text() == f"{os.getpid()}\n"


def test_read_pid_missing(tmp_path):
    assert PidFile.read_pid(tmp_path / "nope.pid") is None
