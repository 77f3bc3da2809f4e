"""Unit part of the test_log_files.py tests; the real-process ones are in tests/system/test_log_files.py."""

import errno
import fcntl
import gzip
import os
import stat
import time

import pytest

from supervisor.common import log_reading
from supervisor.common.log_reading import list_log_files, read_from, rotated_path, tail_lines
from supervisor.parent import log_files
from supervisor.parent.log_files import open_agent_log, rotate_if_needed


def test_open_agent_log_flags_and_modes(tmp_path):
    path = tmp_path / "logs" / "db-shipper" / "agent.log"
    fd = open_agent_log(path)
    try:
        assert os.fstat(fd).st_size == 0
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        os.write(fd, b"one\n")
    finally:
        os.close(fd)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
    fd = open_agent_log(path)
    try:
        os.write(fd, b"two\n")
    finally:
        os.close(fd)
    assert path.read_bytes() == b"one\ntwo\n"


def test_catch_up_gives_up_after_bounded_rounds_and_warns(tmp_path, monkeypatch, caplog):
    live = tmp_path / "agent.log"
    live.write_bytes(b"a" * 99 + b"\n")
    real_copy = log_files._copy_range

    def copy_while_agent_writes(src, dst, offset, count):
        with open(live, "ab") as agent:
            agent.write(b"b" * 49 + b"\n")
        return real_copy(src, dst, offset, count)

    monkeypatch.setattr(log_files, "_copy_range", copy_while_agent_writes)
    monkeypatch.setattr(log_files, "MAX_COPY_ROUNDS", 3)
    assert rotate_if_needed(live, 100, keep=1, compress=False)
    # Three rounds copied the original 100 bytes and two 50-byte appends; the third append is lost.
    assert rotated_path(live, 1, False).read_bytes() == b"a" * 99 + b"\n" + (b"b" * 49 + b"\n") * 2
    assert live.read_bytes() == b""
    assert "at least 50 bytes were dropped" in caplog.text


def test_rotated_copy_waits_for_a_half_visible_line(tmp_path, monkeypatch):
    live = tmp_path / "agent.log"
    live.write_bytes(b"x" * 99 + b"\n" + b"half")
    real_sleep = time.sleep
    naps = []

    def agent_finishes_line(seconds):
        # Caught up but mid-line: the rotation naps, and meanwhile the write completes.
        if not naps:
            with open(live, "ab") as agent:
                agent.write(b" done\n")
        naps.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(log_files.time, "sleep", agent_finishes_line)
    assert rotate_if_needed(live, 100, keep=1, compress=False)
    monkeypatch.undo()
    assert len(naps) == 1
    assert rotated_path(live, 1, False).read_bytes() == b"x" * 99 + b"\nhalf done\n"
    assert live.read_bytes() == b""


def test_unfinished_line_is_rotated_after_a_short_wait(tmp_path):
    live = tmp_path / "agent.log"
    live.write_bytes(b"y" * 100 + b"prompt> ")
    start = time.monotonic()
    assert rotate_if_needed(live, 100, keep=1, compress=False)
    # The wait is PARTIAL_LINE_WAIT (10 ms); the bound only tells "gave up waiting" from "waited on", with
    # room for a busy machine.
    assert time.monotonic() - start < 10
    assert rotated_path(live, 1, False).read_bytes() == b"y" * 100 + b"prompt> "


def _fill(path, text, size=100):
    path.write_text((text + "\n") * (size // (len(text) + 1) + 1))


def test_no_rotation_below_max_size(tmp_path):
    live = tmp_path / "agent.log"
    live.write_bytes(b"x" * 99)
    assert not rotate_if_needed(live, 100, keep=3, compress=True)
    assert list_log_files(live) == [live]
    assert live.read_bytes() == b"x" * 99
    live.write_bytes(b"x" * 100)
    assert rotate_if_needed(live, 100, keep=3, compress=False)
    assert live.read_bytes() == b""
    assert rotated_path(live, 1, False).read_bytes() == b"x" * 100


def test_missing_file_does_not_rotate(tmp_path):
    assert not rotate_if_needed(tmp_path / "agent.log", 1, keep=3, compress=True)
    assert list_log_files(tmp_path / "agent.log") == []


@pytest.mark.parametrize("compress", [True, False])
def test_keep_is_honoured(tmp_path, compress):
    live = tmp_path / "agent.log"
    for gen in range(6):
        _fill(live, f"gen {gen}")
        assert rotate_if_needed(live, 50, keep=3, compress=compress)
    ext = ".gz" if compress else ""
    files = list_log_files(live)
    assert [p.name for p in files] == [
        "agent.log", f"agent.log.1{ext}", f"agent.log.2{ext}", f"agent.log.3{ext}",
    ]
    for index, gen in [(1, 5), (2, 4), (3, 3)]:
        raw = files[index].read_bytes()
        text = (gzip.decompress(raw) if compress else raw).decode()
        assert set(text.splitlines()) == {f"gen {gen}"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files)


def test_keep_zero_truncates_and_drops_old_copies(tmp_path):
    live = tmp_path / "agent.log"
    _fill(live, "old")
    assert rotate_if_needed(live, 50, keep=2, compress=True)
    _fill(live, "new")
    assert rotate_if_needed(live, 50, keep=0, compress=True)
    assert live.read_bytes() == b""
    assert list_log_files(live) == [live]


def test_smaller_keep_prunes_and_mixed_compression_shifts(tmp_path):
    live = tmp_path / "agent.log"
    for gen, compress in enumerate([False, True, False, True]):
        _fill(live, f"gen {gen}")
        assert rotate_if_needed(live, 50, keep=5, compress=compress)
    assert [p.name for p in list_log_files(live)] == [
        "agent.log", "agent.log.1.gz", "agent.log.2", "agent.log.3.gz", "agent.log.4",
    ]
    _fill(live, "gen 4")
    assert rotate_if_needed(live, 50, keep=2, compress=True)
    assert [p.name for p in list_log_files(live)] == [
        "agent.log", "agent.log.1.gz", "agent.log.2.gz",
    ]


def test_rotation_removes_stale_temp_files(tmp_path):
    live = tmp_path / "agent.log"
    (tmp_path / "agent.log.1.gz.tmp").write_bytes(b"half a gzip")
    _fill(live, "line")
    assert rotate_if_needed(live, 50, keep=2, compress=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.log", "agent.log.1.gz"]


def test_compression_failure_keeps_plain_copy(tmp_path, monkeypatch, caplog):
    live = tmp_path / "agent.log"
    _fill(live, "line")

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(log_files.gzip, "GzipFile", broken)
    assert rotate_if_needed(live, 50, keep=2, compress=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.log", "agent.log.1"]
    assert "keeping it uncompressed" in caplog.text


def test_rotation_in_progress_elsewhere_is_skipped(tmp_path):
    live = tmp_path / "agent.log"
    _fill(live, "line")
    with open(live, "rb") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        assert not rotate_if_needed(live, 50, keep=2, compress=True)
    assert rotate_if_needed(live, 50, keep=2, compress=True)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        rotate_if_needed(tmp_path / "agent.log", 0, keep=1, compress=False)
    with pytest.raises(ValueError):
        rotate_if_needed(tmp_path / "agent.log", 10, keep=-1, compress=False)


@pytest.mark.parametrize("block", [4096, 7, 1])
def test_tail_lines(tmp_path, monkeypatch, block):
    monkeypatch.setattr(log_reading, "TAIL_BLOCK", block)
    path = tmp_path / "agent.log"
    path.write_bytes(b"one\ntwo\nthr\xc3\xa9e\nfour\n")
    assert tail_lines(path, 2) == ["thr\u00e9e", "four"]
    assert tail_lines(path, 1) == ["four"]
    assert tail_lines(path, 10) == ["one", "two", "thr\u00e9e", "four"]
    assert tail_lines(path, 0) == []
    path.write_bytes(b"one\ntwo\nthree")  # no trailing newline
    assert tail_lines(path, 2) == ["two", "three"]
    assert tail_lines(path, 3) == ["one", "two", "three"]
    assert tail_lines(path, 10) == ["one", "two", "three"]


def test_tail_lines_edge_cases(tmp_path):
    path = tmp_path / "agent.log"
    assert tail_lines(path, 5) == []
    path.write_bytes(b"")
    assert tail_lines(path, 5) == []
    path.write_bytes(b"\n\nlast\n")
    assert tail_lines(path, 5) == ["", "", "last"]
    path.write_bytes(b"bad \xff\xfe bytes\n")
    assert tail_lines(path, 1) == ["bad \ufffd\ufffd bytes"]


def test_tail_lines_reads_only_the_end_of_a_huge_file(tmp_path, monkeypatch):
    path = tmp_path / "agent.log"
    with open(path, "wb") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB without using the disk
        f.seek(0, os.SEEK_END)
        f.write(b"".join(b"line %d\n" % i for i in range(1000)))
    read = []
    real_pread = os.pread
    def counting_pread(fd, n, off):
        read.append(n)
        return real_pread(fd, n, off)

    monkeypatch.setattr(log_reading.os, "pread", counting_pread)
    assert tail_lines(path, 3) == ["line 997", "line 998", "line 999"]
    assert sum(read) <= log_reading.TAIL_BLOCK
    read.clear()
    # A line without any newline in sight is bounded by max_bytes, not by the file size.
    lines = tail_lines(path, 2000, max_bytes=1 << 20)
    assert len(lines) == 1000 and lines[-1] == "line 999"
    assert lines[0].endswith("line 0") and len(lines[0]) < 1 << 20
    assert sum(read) == 1 << 20


def test_read_from_follows_and_detects_rotation(tmp_path):
    path = tmp_path / "agent.log"
    assert read_from(path, 0) == (b"", 0, False)
    path.write_bytes(b"hello world\n")
    assert read_from(path, 0, limit=5) == (b"hello", 5, False)
    assert read_from(path, 5) == (b" world\n", 12, False)
    assert read_from(path, 12) == (b"", 12, False)
    with open(path, "ab") as f:
        f.write(b"more\n")
    assert read_from(path, 12) == (b"more\n", 17, False)

    assert rotate_if_needed(path, 10, keep=1, compress=True)
    with open(path, "ab") as f:
        f.write(b"new\n")
    assert read_from(path, 17) == (b"", 0, True)
    assert read_from(path, 0) == (b"new\n", 4, False)

    path.unlink()
    assert read_from(path, 4) == (b"", 0, True)
    with pytest.raises(ValueError):
        read_from(path, -1)


def test_rotation_without_copy_file_range(tmp_path, monkeypatch):
    def unsupported(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(log_files.os, "copy_file_range", unsupported)
    live = tmp_path / "agent.log"
    content = b"".join(b"line %d\n" % i for i in range(1000))
    live.write_bytes(content)
    assert rotate_if_needed(live, 100, keep=1, compress=True)
    assert gzip.decompress(rotated_path(live, 1, True).read_bytes()) == content
