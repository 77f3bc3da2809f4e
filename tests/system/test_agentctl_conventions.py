"""agentctl's operator conventions against a real agentd: signal, status exit codes and filters, honest displays."""

from __future__ import annotations

import json

from tests.support.wait import read_markers, wait_for_marker, wait_until


def test_signal_reaches_the_main_process_and_is_recorded(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved"), agentd.helper_agent("b", "well-behaved")])
    agentd.start()
    pid = agentd.wait_state("a", "running")["pid"]
    wait_for_marker(agentd.marker("a"), "START")
    result = agentd.agentctl("signal", "a", "hup")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SIGHUP sent to pid {pid}" in result.stdout
    wait_until(lambda: ("SIGNAL", str(pid), "HUP") in read_markers(agentd.marker("a")), message="HUP at the agent")
    assert agentd.status("a")["pid"] == pid and agentd.status("a")["restarts"] == 0
    assert not [m for m in read_markers(agentd.marker("b")) if m[0] == "SIGNAL"]  # only the agent named
    events = agentd.call("events", {"ids": ["a"]})["events"]
    assert any("SIGHUP sent to pid" in e["reason"] for e in events)

    by_number = agentd.agentctl("signal", "a", "10")  # SIGUSR1
    assert by_number.returncode == 0, by_number.stderr
    wait_until(lambda: ("SIGNAL", str(pid), "USR1") in read_markers(agentd.marker("a")))


def test_signal_usage_errors_and_agents_not_running(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    agentd.start()
    agentd.wait_state("a", "running")
    bad = agentd.agentctl("signal", "a", "NOPE")
    assert bad.returncode == 2 and "unknown signal 'NOPE'" in bad.stderr and "Traceback" not in bad.stderr
    no_id = agentd.agentctl("signal", "HUP")
    assert no_id.returncode == 2 and "name at least one agent id" in no_id.stderr
    unknown = agentd.agentctl("signal", "ghost", "HUP")
    assert unknown.returncode != 0 and "ghost" in unknown.stderr
    assert agentd.agentctl("stop", "a").returncode == 0
    stopped = agentd.agentctl("signal", "a", "HUP")
    assert stopped.returncode == 1 and "not running (stopped)" in stopped.stdout


def test_status_exits_5_with_a_failed_agent_and_filters_failed(agentd):
    crashy = agentd.helper_agent("c", "crash-on-start", start_seconds=60, restart={"backoff_steps": [0.1], "max_retries": 1})
    agentd.write_config([crashy, agentd.helper_agent("ok", "well-behaved")])
    agentd.start()
    agentd.wait_state("ok", "running")
    assert agentd.agentctl("status", "ok").returncode == 0
    agentd.wait_state("c", "failed")
    everything = agentd.agentctl("status")
    assert everything.returncode == 5, everything.stdout + everything.stderr
    failed = agentd.agentctl("status", "--failed")
    assert failed.returncode == 5
    assert "c " in failed.stdout and "ok " not in failed.stdout
    as_json = agentd.agentctl("--json", "status", "--failed")
    assert as_json.returncode == 5 and [a["id"] for a in json.loads(as_json.stdout)["agents"]] == ["c"]
    assert agentd.agentctl("status", "ok").returncode == 0  # only what is shown counts


def test_operator_start_after_failed_is_not_shown_as_a_restart(agentd):
    """Regression: status said 'restarted 1m57s ago: exited unexpectedly' for an agent an operator had just
    started; and top showed the RSS of a failed agent that had no process."""
    flaky = agentd.helper_agent("f", "crash-later", "--after", "0.5", restart={"backoff_steps": [0.1], "max_retries": 1})
    agentd.write_config([flaky])
    agentd.start()
    failed = agentd.wait_state("f", "failed")
    assert failed["restarts"] == 1
    top = agentd.call("top")["agents"][0]
    assert top["status"]["state"] == "failed" and top["sample"] is None
    # Started by hand, it runs (and crashes again later); while it runs, no restart is claimed for it.
    agentd.write_config([agentd.helper_agent("f", "well-behaved", restart={"backoff_steps": [0.1], "max_retries": 1})])
    agentd.call("reload")
    agentd.agentctl("start", "f")
    st = agentd.wait_state("f", "running")
    assert st["started_by_restart"] is False
    line = [ln for ln in agentd.agentctl("status").stdout.splitlines() if ln.startswith("f ")][0]
    assert "restarted" not in line, line


def test_stop_shows_progress_and_says_sigkill_was_needed(agentd):
    stubborn = agentd.helper_agent("stubborn", "ignore-term", stop_timeout=2)
    agentd.write_config([stubborn, agentd.helper_agent("meek", "well-behaved")])
    agentd.start()
    agentd.wait_state("stubborn", "running")
    agentd.wait_state("meek", "running")
    result = agentd.agentctl("stop", "--all")  # not a terminal: plain progress lines
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "stubborn: stopping" in out, out  # progress while it waits out stop_timeout
    assert "SIGKILL after 2s (still running after SIGTERM)" in out
    final = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith(("stubborn ", "meek "))}
    assert "stopped (SIGKILL after 2s" in final["stubborn"] and final["meek"].rstrip().endswith("ok: stopped"), out
    st = agentd.status("stubborn")
    assert st["stop_note"].startswith("SIGKILL after 2s")


def test_progress_on_a_terminal_redraws_in_place():
    import io

    from supervisor.ctl.progress import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    p = Progress("stop", out=out, delay=0)
    p.update([{"id": "a", "state": "stopping", "stop_elapsed_s": 1.0, "stop_note": ""}])
    p.update([{"id": "a", "state": "stopping", "stop_elapsed_s": 11.0, "stop_note": "SIGKILL after 10s (still running after SIGTERM)"}])
    p.finish()
    text = out.getvalue()
    assert "\x1b[2F" in text and "stopping 11s: SIGKILL after 10s" in text and text.endswith("\x1b[2F\x1b[J")


def test_status_of_one_agent_ends_with_its_last_log_lines(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    agentd.start()
    agentd.wait_state("a", "running")
    log = agentd.log_dir / "a" / "agent.log"
    wait_until(lambda: log.exists() and "stderr is captured too" in log.read_text(), message="a's first lines")
    out = agentd.agentctl("status", "a").stdout
    assert "last 10 lines:" in out and "START mode=well-behaved" in out, out
    assert "last 10 lines" not in agentd.agentctl("status").stdout  # only for one agent


def test_shell_completion_offers_agent_ids(agentd):
    import os
    import subprocess
    import sys

    from tests.support.daemon import ROOT

    agentd.write_config([agentd.helper_agent("web-1", "well-behaved"), agentd.helper_agent("web-2", "well-behaved"),
                         agentd.helper_agent("db", "well-behaved")])
    agentd.start()
    agentd.wait_state("db", "running")

    def complete(*words):
        env = dict(os.environ, _AGENTCTL_COMPLETE="bash_complete", COMP_WORDS=" ".join(["agentctl", *words]), COMP_CWORD=str(len(words)))
        out = subprocess.run([sys.executable, "-m", "supervisor.ctl.agentctl"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60).stdout
        return sorted(line.split(",", 1)[1] for line in out.splitlines() if "," in line)

    assert complete("--run-dir", str(agentd.run_dir), "stop", "web") == ["web-1", "web-2"]
    assert complete("-c", str(agentd.config_path), "logs", "d") == ["db"]
    agentd.terminate()
    assert complete("-c", str(agentd.config_path), "restart", "web") == ["web-1", "web-2"]  # from the config when agentd is down
