"""Agent config files are checked by type before a start and before a hot reload (supervisor/parent/agent_config_check.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.parent.agent_config_check import check_agent_config, check_agent_configs
from supervisor.config.loading import parse_config

FILEBEAT_OK = """
filebeat.inputs:
  - type: filestream
    id: app
    paths: [/var/log/app/*.log]
output.logstash:
  hosts: ["127.0.0.1:5044"]
"""
TELEGRAF_OK = """
[agent]
  interval = "10s"
[[inputs.cpu]]
  percpu = true
[[outputs.file]]
  files = ["stdout"]
"""


def spec(tmp_path: Path, kind: str, text: str | None, name: str = "agent.conf", **extra):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    agent = {"id": "a", "type": kind, "binary_path": "/bin/true", "config_file": str(path), **extra}
    return parse_config({"agents": [agent]}, "t", tmp_path).agents[0]


def test_valid_files_pass(tmp_path):
    assert check_agent_config(spec(tmp_path, "filebeat", FILEBEAT_OK)) is None
    assert check_agent_config(spec(tmp_path, "filebeat", "filebeat:\n  inputs: [{type: log}]\noutput:\n  console: {}\n")) is None
    assert check_agent_config(spec(tmp_path, "filebeat", "filebeat.config.inputs: {path: inputs.d/*.yml}\noutput.console: {}\n")) is None
    assert check_agent_config(spec(tmp_path, "telegraf", TELEGRAF_OK)) is None
    assert check_agent_config(spec(tmp_path, "custom", "anything at all")) is None
    no_file = parse_config({"agents": [{"id": "a", "binary_path": "/bin/true"}]}, "t", tmp_path).agents[0]
    assert check_agent_config(no_file) is None


@pytest.mark.parametrize(
    "kind, text, problem",
    [
        ("filebeat", "output.console: {}\n", "has no inputs"),
        ("filebeat", "filebeat.inputs: []\noutput.console: {}\n", "has no inputs"),
        ("filebeat", "filebeat.inputs: [{type: log}]\n", "has no output"),
        ("filebeat", "filebeat.inputs: [\n", "is not valid YAML at line"),
        ("filebeat", "- just a list\n", "is not a YAML mapping"),
        ("telegraf", "[[inputs.cpu]]\n[[outputs.file]]\n", "has no [agent]"),
        ("telegraf", "[agent]\n[[outputs.file]]\n", "has no [[inputs.*]]"),
        ("telegraf", "[agent]\n", "has no [[inputs.*]] and no [[outputs.*]]"),
        ("telegraf", "[agent\n", "is not valid TOML"),
        ("custom", None, "does not exist"),
        ("node_exporter", None, "does not exist"),
        ("custom", b"\xff\xfe", "is not UTF-8 text"),
    ],
)
def test_invalid_files_say_why(tmp_path, kind, text, problem):
    path = tmp_path / "agent.conf"
    if isinstance(text, bytes):
        path.write_bytes(text)
        text = None
    s = spec(tmp_path, kind, text)
    found = check_agent_config(s)
    assert found is not None and found.startswith(f"config_file {path} ") and problem in found, found


def test_unreadable_file(tmp_path):
    s = spec(tmp_path, "custom", "x")
    os.chmod(s.config_file, 0)
    try:
        if os.access(s.config_file, os.R_OK):
            pytest.skip("running as root: permissions do not apply")
        assert "not readable" in check_agent_config(s)
    finally:
        os.chmod(s.config_file, 0o644)


def test_check_config_warnings_name_the_agent(tmp_path):
    s = spec(tmp_path, "telegraf", None, enabled=False)
    assert check_agent_configs([s]) == [f"agent 'a': config_file {s.config_file} does not exist (agent is disabled)"]


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(["filebeat", "telegraf", "custom"]), text=st.text(max_size=200))
def test_any_content_gives_a_verdict_never_an_exception(tmp_path_factory, kind, text):
    tmp = tmp_path_factory.mktemp("c")
    found = check_agent_config(spec(tmp, kind, text))
    assert found is None or found.startswith("config_file ")
