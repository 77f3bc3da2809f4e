"""log.format: stamped — the per-agent log writer stamps lines, keeps stdout and stderr apart, and loses no
line when agentd is killed with -9 and restarted in the middle of a stream."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from supervisor.parent.log_writer import PARTIAL_FLUSH
from tests.support.wait import read_markers, wait_until

STAMPED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d (out|err) (.*)$")


def _log(agentd, agent_id):
    path = agentd.log_dir / agent_id / "agent.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_stamped_log_survives_kill_9_of_agentd_without_losing_a_line(agentd):
    spew = agentd.helper_agent("spew", "spew-output", "--rate", "200", log={"format": "stamped"})
    agentd.write_config([spew])
    agentd.start()
    pid = agentd.wait_state("spew", "running")["pid"]
    wait_until(lambda: "spew 50 " in _log(agentd, "spew"), message="the first 50 lines")
    agentd.kill9()
    time.sleep(0.5)  # the stimulus: agentd is gone while the agent writes 100 more lines
    agentd.start()
    assert agentd.wait_state("spew", "running")["pid"] == pid  # re-adopted, not restarted
    seen = len(_log(agentd, "spew").splitlines())
    wait_until(lambda: len(_log(agentd, "spew").splitlines()) > seen + 50, message="lines after the restart")
    assert agentd.agentctl("stop", "spew").returncode == 0
    (_, _, written), = [m for m in read_markers(agentd.marker("spew")) if m[0] == "SPEWED"]
    wait_until(lambda: f"spew {written} " in _log(agentd, "spew"), message="the last line")

    numbers, streams = [], {"out": 0, "err": 0}
    for line in _log(agentd, "spew").splitlines():
        match = STAMPED.match(line)
        assert match, f"not stamped: {line!r}"
        streams[match.group(1)] += 1
        if match.group(2).startswith("spew "):
            numbers.append(int(match.group(2).split()[1]))
    assert numbers == list(range(1, int(written) + 1)), "a line was lost, doubled or reordered"
    assert streams["err"] >= 1 and "err helper_agent[" in _log(agentd, "spew")  # stderr kept apart by its tag


def test_log_writer_flushes_an_unfinished_line_and_ends_with_the_agent(tmp_path):
    log = tmp_path / "agent.log"
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    writer = subprocess.Popen([sys.executable, "-I", "supervisor/parent/log_writer.py", str(log), str(out_r), str(err_r)],
                              pass_fds=(out_r, err_r), cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    os.close(out_r)
    os.close(err_r)
    try:
        os.write(out_w, b"one\ntw")
        os.write(err_w, b"oops\n")
        wait_until(lambda: log.exists() and "err oops" in log.read_text(), message="the stderr line")
        wait_until(lambda: "out tw" in log.read_text(), timeout=30 + PARTIAL_FLUSH, message="the partial line, after PARTIAL_FLUSH")
        os.write(out_w, b"o\n")
        os.close(out_w)
        os.close(err_w)  # the agent's last process is gone
        assert writer.wait(timeout=30) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    lines = [STAMPED.match(l).groups() for l in log.read_text().splitlines()]
    assert lines == [("out", "one"), ("err", "oops"), ("out", "tw"), ("out", "o")]
