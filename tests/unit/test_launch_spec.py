"""launch_spec (what a process was started with) and agent_identity.main_process, without processes."""

from __future__ import annotations

from pathlib import Path

from supervisor.parent.agent_identity import Marked, main_process
from supervisor.config.loading import parse_config
from supervisor.parent.launch_spec import LAUNCH_FIELDS, launch_diff, launch_of


def spec(**over):
    agent = {"id": "a", "binary_path": "/bin/sleep", "args": ["100"], "env": {"TOKEN": "s3cret"}, **over}
    return parse_config({"agents": [agent]}, source="t.yaml", base_dir=Path("/")).agents[0]


def test_launch_digests_every_field_and_keeps_no_secret():
    launch = launch_of(spec())
    assert set(launch) == set(LAUNCH_FIELDS)
    assert "s3cret" not in repr(launch)


def test_launch_diff_names_what_differs_and_ignores_the_rest():
    recorded = launch_of(spec())
    assert launch_diff(recorded, spec()) == []
    assert launch_diff(recorded, spec(args=["200"])) == ["args"]
    assert launch_diff(recorded, spec(env={"TOKEN": "other"})) == ["env"]
    assert launch_diff(recorded, spec(health_check={"interval": 3})) == []  # applied live, no restart
    assert launch_diff(None, spec(args=["200"])) == []  # unknown (a record of an older agentd): nothing to apply
    assert launch_diff({"args": recorded["args"]}, spec(env={"X": "1"})) == []  # only fields the record knows


def test_main_process_is_the_earliest_unmarked_parent_session_leader():
    main = Marked(pid=100, ppid=1, pgid=100, sid=100, start_ticks=5)
    child = Marked(pid=101, ppid=100, pgid=100, sid=100, start_ticks=6)
    escaped = Marked(pid=300, ppid=1, pgid=300, sid=300, start_ticks=9)  # double fork + setsid
    assert main_process([child, escaped, main]) == main
    orphan_child = Marked(pid=102, ppid=1, pgid=100, sid=100, start_ticks=7)  # the main died
    assert main_process([orphan_child]) is None
