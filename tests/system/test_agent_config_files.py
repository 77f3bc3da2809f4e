"""An agent's config_file: checked by type before a start, watched, and applied by reload signal or restart.

The agents are real processes (tests/support/helper_agent.py), and the file is changed the way editors and
config-management tools do it: a new file renamed over the old one.
"""

from __future__ import annotations

import os

from tests.support.wait import read_markers, wait_for_marker, wait_until

FILEBEAT = """filebeat.inputs:
  - type: filestream
    id: app
    paths: [/var/log/app-{n}.log]
output.console: {{}}
"""


def save(path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def hups(agentd, agent_id: str) -> int:
    return len([m for m in read_markers(agentd.marker(agent_id)) if m[0] == "SIGNAL" and m[-1] == "HUP"])


def test_a_valid_change_is_applied_by_sighup_and_an_invalid_one_refused(agentd):
    conf = agentd.base / "filebeat.yml"
    conf.write_text(FILEBEAT.format(n=1))
    agentd.write_config([agentd.helper_agent("fb", "well-behaved", type="filebeat", config_file=str(conf), reload_signal="HUP")])
    agentd.start()
    pid = agentd.wait_state("fb", "running")["pid"]
    wait_for_marker(agentd.marker("fb"), "START")

    save(conf, FILEBEAT.format(n=2))
    wait_until(lambda: hups(agentd, "fb") == 1, timeout=30, message="the agent got SIGHUP")
    status = agentd.status("fb")
    assert status["pid"] == pid and status["restarts"] == 0 and status["config_file_problem"] is None
    assert "config_file changed: sent SIGHUP to pid" in agentd.log_text()

    # No output: refused with the reason, and the agent keeps running untouched.
    save(conf, "filebeat.inputs:\n  - type: filestream\n    paths: [/x]\n")
    problem = wait_until(lambda: agentd.status("fb")["config_file_problem"], timeout=30)
    assert "has no output" in problem and "not applied, the agent keeps running" in agentd.log_text()
    assert hups(agentd, "fb") == 1 and agentd.status("fb")["pid"] == pid

    # The fixed file is applied.
    save(conf, FILEBEAT.format(n=3))
    wait_until(lambda: hups(agentd, "fb") == 2, timeout=30)
    assert agentd.status("fb")["config_file_problem"] is None


def test_watch_reports_content_changes_only(tmp_path):
    """ConfigWatch on real files and real inotify: a touch or a same-content save is no change."""
    import asyncio

    from supervisor.config.loading import parse_config
    from supervisor.parent.config_watch import ConfigWatch

    conf = tmp_path / "a.conf"
    conf.write_text("v1\n")
    spec = parse_config({"agents": [{"id": "a", "binary_path": "/bin/true", "config_file": str(conf), "reload_signal": "HUP"}]},
                        "t", tmp_path).agents[0]

    async def main() -> list:
        seen: list = []
        changed = asyncio.Event()
        watch = ConfigWatch(asyncio.get_running_loop(), lambda agent_id, problem: (seen.append((agent_id, problem)), changed.set()))
        watch.update([spec])
        try:
            os.utime(conf)
            save(conf, "v1\n")
            save(conf, "v2\n")  # only this one is a change
            await asyncio.wait_for(changed.wait(), 30)
            changed.clear()
            os.utime(conf)
            save(conf, "v2\n")
            conf.unlink()
            await asyncio.wait_for(changed.wait(), 30)  # a deleted file is a change, refused by the type check
        finally:
            watch.close()
        return seen

    seen = asyncio.run(main())
    assert seen[0] == ("a", None)
    assert len(seen) == 2 and seen[1][0] == "a" and "does not exist" in seen[1][1]


def test_on_config_change_restart_restarts_the_agent(agentd):
    conf = agentd.base / "custom.conf"
    conf.write_text("v1\n")
    agentd.write_config([agentd.helper_agent("c", "well-behaved", config_file=str(conf), on_config_change="restart")])
    agentd.start()
    pid = agentd.wait_state("c", "running")["pid"]
    save(conf, "v2\n")
    wait_until(lambda: (s := agentd.status("c"))["state"] == "running" and s["pid"] not in (None, pid), timeout=60)
    assert agentd.status("c")["restarts_by_reason"] == {"config": 1}


def test_an_invalid_config_file_is_refused_before_a_start(agentd):
    conf = agentd.base / "telegraf.conf"
    conf.write_text("[agent]\n[[inputs.cpu]]\n")  # no outputs
    agentd.write_config([agentd.helper_agent("tg", "well-behaved", type="telegraf", config_file=str(conf),
                                             restart={"backoff_steps": [0.3], "max_retries": 1000})])
    agentd.start()
    status = agentd.wait_state("tg", "restarting")
    assert "has no [[outputs.*]]" in status["reason"]
    assert read_markers(agentd.marker("tg")) == []  # never started
    save(conf, "[agent]\n[[inputs.cpu]]\n[[outputs.file]]\n")  # fixed: the next retry starts it
    agentd.wait_state("tg", "running", timeout=60)
