import gzip
import os
import signal
import subprocess
import sys
import time

from supervisor.common.log_reading import list_log_files
from supervisor.parent.log_files import open_agent_log, rotate_if_needed


PAD = "x" * 40


# One os.write per line, so output never mixes partial lines; bursts with pauses, like real agents.
WRITER = """
import os, sys, time
limit, burst = int(sys.argv[1]), int(sys.argv[2])
i = 0
while limit == 0 or i < limit:
    os.write(1, b"%08d {pad}\\n" % i)
    i += 1
    if i % burst == 0:
        time.sleep(0.0002)
""".replace("{pad}", PAD)


def _start_writer(log_path, limit=0, burst=500):
    """A child writing numbered lines to the log as its stdout, in bursts of ``burst`` lines."""
    fd = open_agent_log(log_path)
    try:
        return subprocess.Popen(
            [sys.executable, "-c", WRITER, str(limit), str(burst)], stdout=fd
        )
    finally:
        os.close(fd)  # the child has its own copy on fd 1


def _stop_and_wait(proc):
    os.kill(proc.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with open(f"/proc/{proc.pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state in ("T", "t"):
            return
        time.sleep(0.001)
    raise AssertionError("writer did not stop")


def _kill(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _wait_for_size(path, size, timeout=5):
    deadline = time.monotonic() + timeout
    while path.stat().st_size < size:
        assert time.monotonic() < deadline, "writer too slow"
        time.sleep(0.002)


def _all_lines(live):
    """Rotated copies (oldest first, decompressed) followed by the live file, as line numbers."""
    data = b""
    for p in reversed(list_log_files(live)):
        raw = p.read_bytes()
        data += gzip.decompress(raw) if p.name.endswith(".gz") else raw
    assert data.endswith(b"\n"), "torn last line"
    numbers = []
    for line in data[:-1].split(b"\n"):
        num, pad = line.split(b" ")
        assert pad == PAD.encode() and len(num) == 8, f"torn line {line!r}"
        numbers.append(int(num))
    return numbers


def test_rotation_with_paused_writer_loses_nothing(tmp_path):
    live = tmp_path / "a" / "agent.log"
    proc = _start_writer(live)
    try:
        for _ in range(4):
            _wait_for_size(live, 64 * 1024)
            _stop_and_wait(proc)
            assert rotate_if_needed(live, 64 * 1024, keep=10, compress=True)
            assert live.stat().st_size == 0
            os.kill(proc.pid, signal.SIGCONT)
        _wait_for_size(live, 1000)
        _stop_and_wait(proc)
        numbers = _all_lines(live)
    finally:
        _kill(proc)
    assert numbers == list(range(len(numbers)))
    assert [p.name for p in list_log_files(live)] == [
        "agent.log", "agent.log.1.gz", "agent.log.2.gz", "agent.log.3.gz", "agent.log.4.gz",
    ]


def test_rotation_with_concurrent_writer_loses_at_most_a_handful(tmp_path):
    """The agent keeps writing (bursts of 20 lines, ~50k lines/s) while we rotate about 20 times.

    Only lines written between the final size check and the truncate can be lost (see the
    log_files docstring). Usually none are; on a loaded machine the truncate can wait for the inode
    lock through at most one burst, so we allow 3 lines per rotation.
    """
    live = tmp_path / "a" / "agent.log"
    total = 30_000
    proc = _start_writer(live, limit=total, burst=20)
    rotations = 0
    try:
        while proc.poll() is None:
            if rotate_if_needed(live, 64 * 1024, keep=200, compress=rotations % 2 == 0):
                rotations += 1
            time.sleep(0.002)
        assert proc.returncode == 0
    finally:
        _kill(proc)
    numbers = _all_lines(live)
    assert rotations >= 5
    assert numbers == sorted(set(numbers)), "lines duplicated or out of order"
    assert numbers[-1] == total - 1
    missing = total - len(numbers)
    assert missing <= 3 * rotations, f"{missing} lines lost in {rotations} rotations"
