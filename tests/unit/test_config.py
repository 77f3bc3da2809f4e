"""Config loading: validation messages, inheritance, type defaults, legacy form, paths, dump."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path

import pytest
import yaml

from supervisor.config.agent import AgentSpec
from supervisor.config.agent_list import LEGACY_WARNING
from supervisor.config.checks import check_binaries
from supervisor.config.errors import ConfigError
from supervisor.config.loading import NO_AGENTS_WARNING, load_config, parse_config
from supervisor.config.schema import dump_effective

MIB = 1024 * 1024


def write(tmp_path: Path, text: str, name: str = "agentd.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str):
    return load_config(write(tmp_path, text))


def problems(tmp_path: Path, text: str) -> list[str]:
    """The problems of a bad config, without the "<file>: " prefix."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    prefix = f"{path}: "
    assert all(p.startswith(prefix) for p in info.value.problems), info.value.problems
    return [p[len(prefix):] for p in info.value.problems]


def one_agent(tmp_path: Path, agent_yaml: str, extra: str = ""):
    text = "agents:\n  - " + textwrap.indent(textwrap.dedent(agent_yaml).strip(), "    ")[4:] + "\n"
    return load(tmp_path, extra + text).agents[0]


# --- defaults and basic shape -----------------------------------------------------------------------------


def test_minimal_config_gets_every_default(tmp_path):
    config = load(tmp_path, """
        agents:
          - id: web
            binary_path: /usr/bin/web
    """)
    assert config.daemon.run_dir == Path("/run/agentd")
    assert config.daemon.data_dir == Path("/var/lib/agentd")
    assert config.daemon.log_dir == Path("/var/log/agentd")
    assert (config.daemon.log_level, config.daemon.log_format, config.daemon.id) == ("info", "text", None)
    assert config.control.request_timeout == 10
    assert config.heartbeat.http.listen == "127.0.0.1:8084"
    assert config.heartbeat.http.max_body == 64 * 1024
    assert config.heartbeat.unix.path == Path("/run/agentd/heartbeat.sock")
    assert config.heartbeat.unix.idle_timeout == 300
    assert config.resources.interval == 10 and config.history.retention == 86400
    assert config.metadata.flush_interval == 1
    assert config.manager.address is None and config.manager.tls.enabled is False
    assert config.manager_api.listen is None
    assert config.shutdown.stop_agents is False
    assert config.source == (tmp_path / "agentd.yaml")
    assert config.warnings == []

    spec = config.agents[0]
    assert (spec.type, spec.enabled, spec.stop_signal) == ("custom", True, "TERM")
    assert (spec.stop_timeout, spec.start_seconds) == (30, 1)
    assert spec.work_dir == Path("/var/lib/agentd/work/web")
    hc = spec.health_check
    assert (hc.interval, hc.heartbeat_timeout, hc.cpu_threshold) == (30, 90, 50.0)
    assert (hc.memory_threshold, hc.threshold_duration, hc.http_endpoint) == (500 * MIB, 60, None)
    assert (hc.http_timeout, hc.endpoint_failures, hc.startup_grace) == (5, 3, 90)
    assert spec.restart.policy == "always"
    assert spec.restart.backoff_steps == [0, 10, 10, 30, 30, 60]
    assert (spec.restart.reset_after, spec.restart.max_retries) == (300, 10)
    assert (spec.log.max_size, spec.log.keep, spec.log.compress) == (100 * MIB, 7, True)
    assert spec.heartbeat.token is None
    assert spec.expects_heartbeat


def test_empty_sections_mean_defaults(tmp_path):
    config = load(tmp_path, """
        daemon:
        control:
        heartbeat:
          http:
        agents:
          - id: a
            binary_path: /bin/a
            health_check:
    """)
    assert config.daemon.run_dir == Path("/run/agentd")
    assert config.agents[0].health_check.cpu_threshold == 50.0


def test_durations_and_sizes_in_config(tmp_path):
    spec = one_agent(tmp_path, """
        id: a
        binary_path: /bin/a
        stop_timeout: 1m30s
        health_check: {interval: 500ms, memory_threshold: 256MiB, heartbeat_timeout: 2m}
        restart: {backoff_steps: [0, 5s, 1m], reset_after: 1h}
        log: {max_size: 10M}
    """)
    assert spec.stop_timeout == 90
    assert spec.health_check.interval == 0.5
    assert spec.health_check.memory_threshold == 256 * MIB
    assert spec.health_check.startup_grace == 120
    assert spec.restart.backoff_steps == [0, 5, 60]
    assert spec.restart.reset_after == 3600
    assert spec.log.max_size == 10 * MIB


def test_no_agents_is_allowed_with_a_warning(tmp_path):
    config = load(tmp_path, "daemon: {log_level: DEBUG}\n")
    assert config.agents == []
    assert config.warnings == [NO_AGENTS_WARNING]
    assert config.daemon.log_level == "debug"


# --- file-level problems ----------------------------------------------------------------------------------


def test_empty_file(tmp_path):
    assert problems(tmp_path, "# only a comment\n") == ["config is empty"]


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert info.value.problems == [f"{tmp_path / 'nope.yaml'}: cannot read config: no such file"]


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    found = problems(tmp_path, """
        daemon:
          run_dir: /x
        agents:
          - id: a
            binary_path: [oops
    """)
    assert len(found) == 1
    assert found[0].startswith("line 7, column 1: ")


def test_yaml_mapping_error_line(tmp_path):
    found = problems(tmp_path, "daemon:\n  run_dir: a: b\n")
    assert found == ["line 2, column 13: mapping values are not allowed here"]


def test_duplicate_yaml_keys_are_an_error(tmp_path):
    found = problems(tmp_path, """\
        daemon:
          run_dir: /a
          run_dir: /b
    """)
    assert found == ["line 3, column 3: duplicate key 'run_dir' (first on line 2)"]


def test_top_level_must_be_a_mapping(tmp_path):
    assert problems(tmp_path, "- a\n- b\n") == ["expected a mapping of sections at the top level, got a list"]


def test_error_text_is_all_problems_one_per_line(tmp_path):
    path = write(tmp_path, "daemon: {log_level: loud}\nresources: {interval: never}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == "\n".join(info.value.problems)
    assert len(info.value.problems) == 2
    assert "pydantic" not in str(info.value) and "http" not in str(info.value)


# --- messages for bad values ------------------------------------------------------------------------------


def test_cpu_threshold_may_exceed_100_percent_of_one_core(tmp_path):
    # Percent of one core summed over the tree: a multi-threaded agent legitimately uses several cores.
    config = load(tmp_path, """
        agents:
          - id: telegraf
            type: telegraf
            binary_path: /bin/telegraf
            health_check:
              cpu_threshold: 350
    """)
    assert config.agents[0].health_check.cpu_threshold == 350


def test_cpu_threshold_bounds_message(tmp_path):
    found = problems(tmp_path, """
        agents:
          - id: web
            binary_path: /bin/web
          - id: telegraf
            type: telegraf
            binary_path: /bin/telegraf
            health_check:
              cpu_threshold: -5
    """)
    assert found == ["agents[1] (telegraf).health_check.cpu_threshold: must be > 0, got -5"]


def test_typo_key_gets_a_suggestion(tmp_path):
    found = problems(tmp_path, """
        agents:
          - id: web
            binary_path: /bin/web
            helth_check: {interval: 5s}
    """)
    assert found == ["agents[0] (web): unknown key 'helth_check' (did you mean 'health_check'?)"]


def test_nested_typo_and_top_level_typo(tmp_path):
    found = problems(tmp_path, """
        heartbeat:
          unix: {max_conections: 5}
        managr: {}
    """)
    assert found == [
        "heartbeat.unix: unknown key 'max_conections' (did you mean 'max_connections'?)",
        "unknown top-level key 'managr' (did you mean 'manager'?)",
    ]


def test_wrong_type_messages(tmp_path):
    found = problems(tmp_path, """
        agents:
          - id: a
            binary_path: /bin/a
            enabled: maybe
            health_check: {cpu_threshold: abc, endpoint_failures: 1.5}
            log: {keep: x}
            restart: [1]
    """)
    assert found == [
        "agents[0] (a).enabled: expected true or false, got 'maybe'",
        "agents[0] (a).health_check.cpu_threshold: expected a number, got 'abc'",
        "agents[0] (a).health_check.endpoint_failures: expected an integer, got 1.5",
        "agents[0] (a).restart: expected a mapping, got a list",
        "agents[0] (a).log.keep: expected an integer, got 'x'",
    ]


def test_duplicate_agent_id(tmp_path):
    found = problems(tmp_path, """
        agents:
          - {id: web, binary_path: /bin/a}
          - {id: db, binary_path: /bin/b}
          - {id: web, binary_path: /bin/c}
    """)
    assert found == ["agents[2] (web).id: duplicate agent id 'web' (also agents[0])"]


def test_invalid_agent_id(tmp_path):
    found = problems(tmp_path, """
        agents:
          - {id: a/b, binary_path: /bin/a}
          - {id: -x, binary_path: /bin/a}
    """)
    assert found == [
        "agents[0].id: invalid agent id 'a/b': must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
        "agents[1].id: invalid agent id '-x': must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
    ]


def test_missing_required_fields_and_non_mapping_agent(tmp_path):
    found = problems(tmp_path, """
        agents:
          - type: custom
          - 5
    """)
    assert found == ["agents[0].binary_path: is required", "agents[0].id: is required",
                     "agents[1]: expected a mapping, got 5"]


def test_all_problems_are_collected(tmp_path):
    found = problems(tmp_path, """
        daemon: {log_level: verbose}
        heartbeat:
          http: {listen: "0.0.0.0:70000", processes: 100}
        agents:
          - id: a
            binary_path: /bin/a
            stop_signal: sigfoo
            health_check:
              interval: 5 minutes
              http_endpoint: localhost:9100
              memory_threshold: 0
            restart: {policy: sometimes, backoff_steps: [], max_retries: -1}
            log: {max_size: 100}
    """)
    assert found == [
        "daemon.log_level: must be one of 'debug', 'info', 'warning' or 'error', got 'verbose'",
        "heartbeat.http.listen: port must be 0..65535, got 70000",
        "heartbeat.http.processes: must be ≤ 64, got 100",
        "agents[0] (a).stop_signal: unknown stop signal 'sigfoo': use one of TERM, INT, HUP, QUIT, KILL, USR1, USR2",
        "agents[0] (a).health_check.interval: not a duration: '5 minutes' (use 30s, 5m, 1h or seconds)",
        "agents[0] (a).health_check.memory_threshold: must be > 0, got 0",
        "agents[0] (a).health_check.http_endpoint: must be an http:// or https:// URL, got 'localhost:9100'",
        "agents[0] (a).restart.policy: must be one of 'always', 'on-failure' or 'never', got 'sometimes'",
        "agents[0] (a).restart.backoff_steps: must not be empty",
        "agents[0] (a).restart.max_retries: must be ≥ 0, got -1",
        "agents[0] (a).log.max_size: must be ≥ 1KiB, got 100B",
    ]


def test_null_where_a_value_is_required(tmp_path):
    found = problems(tmp_path, "control: {request_timeout: null}\n")
    assert found == ["control.request_timeout: must not be null"]


def test_agent_defaults_errors_are_reported_once_under_agent_defaults(tmp_path):
    found = problems(tmp_path, """
        agent_defaults:
          id: nope
          restart: {max_retries: -2}
          health_check: {interval: soon}
        agents:
          - {id: a, binary_path: /bin/a}
          - {id: b, binary_path: /bin/b, restart: {max_retries: -3}}
    """)
    assert found == [
        "agent_defaults.health_check.interval: not a duration: 'soon' (use 30s, 5m, 1h or seconds)",
        "agent_defaults.restart.max_retries: must be ≥ 0, got -2",
        "agent_defaults: 'id' cannot be set in agent_defaults (each agent needs its own)",
        "agents[1] (b).restart.max_retries: must be ≥ 0, got -3",
    ]


@pytest.mark.parametrize(
    "listen, message",
    [
        ("8084", "expected host:port (e.g. 127.0.0.1:8084), got '8084'"),
        (":8084", "host is missing in ':8084' (use 0.0.0.0:8084 to listen on all interfaces)"),
        ("::1:8084", "IPv6 addresses need brackets, e.g. [::1]:8084; got '::1:8084'"),
        ("host:99999", "port must be 0..65535, got 99999"),
    ],
)
def test_listen_validation(tmp_path, listen, message):
    assert problems(tmp_path, f"heartbeat: {{http: {{listen: '{listen}'}}}}\n") == [
        f"heartbeat.http.listen: {message}"
    ]


def test_listen_accepts_ipv6_and_names(tmp_path):
    config = load(tmp_path, "heartbeat: {http: {listen: '[::1]:0'}}\nmanager_api: {listen: 'localhost:9000', token: t}\n")
    assert config.heartbeat.http.listen == "[::1]:0"


def test_manager_api_off_loopback_needs_token_or_tls(tmp_path):
    found = problems(tmp_path, "manager_api: {listen: '0.0.0.0:9000'}\n")
    assert found == ["manager_api: listen '0.0.0.0:9000' is not loopback: set manager_api.token or enable manager_api.tls"
                     " (or, for the original Manager, insecure: true with allow_from)"]
    config = load(tmp_path, "manager_api: {listen: '0.0.0.0:9000', token: s3cret}\n")
    assert config.manager_api.token == "s3cret"


def test_tls_cert_and_key_go_together(tmp_path):
    found = problems(tmp_path, "manager: {tls: {enabled: true, cert_file: c.pem}}\n")
    assert found == ["manager.tls: cert_file and key_file must be set together"]


def test_run_dir_too_long_for_zeromq(tmp_path):
    long_dir = "/" + "x" * 95
    found = problems(tmp_path, f"daemon: {{run_dir: {long_dir}}}\n")
    assert len(found) == 1
    assert found[0].startswith(f"daemon.run_dir: too long: '{long_dir}/control.ipc' is 108 bytes")
    assert "limited to 100" in found[0]


@pytest.mark.parametrize("given, stored", [("TERM", "TERM"), ("sigint", "INT"), ("SIGHUP", "HUP"), ("usr1", "USR1")])
def test_stop_signal_is_normalised(tmp_path, given, stored):
    assert one_agent(tmp_path, f"{{id: a, binary_path: /bin/a, stop_signal: {given}}}").stop_signal == stored


def test_yaml_scalars_are_accepted_where_strings_are_meant(tmp_path):
    spec = one_agent(tmp_path, """
        id: 42
        binary_path: /bin/a
        args: [--port, 9100]
        env: {PORT: 8080, DEBUG: yes}
        user: 1000
    """)
    assert spec.id == "42"
    assert spec.args == ["--port", "9100"]
    assert spec.env == {"PORT": "8080", "DEBUG": "true"}
    assert spec.user == "1000"


# --- inheritance ------------------------------------------------------------------------------------------


def test_agents_inherit_defaults_field_by_field(tmp_path):
    config = load(tmp_path, """
        agent_defaults:
          user: agents
          stop_timeout: 10s
          env: {A: "1", B: "2"}
          health_check: {cpu_threshold: 80, interval: 5m, memory_threshold: 1GiB}
          restart: {max_retries: 3, policy: on-failure}
        agents:
          - id: a
            binary_path: /bin/a
            env: {B: "x", C: "3"}
            health_check: {cpu_threshold: 90}
          - id: b
            binary_path: /bin/b
            restart: {max_retries: 0}
    """)
    a, b = config.agents
    assert a.user == b.user == "agents"
    assert a.stop_timeout == b.stop_timeout == 10
    assert a.env == {"A": "1", "B": "x", "C": "3"}
    assert (a.health_check.cpu_threshold, a.health_check.interval, a.health_check.memory_threshold) == (90, 300, 1024**3)
    assert a.health_check.heartbeat_timeout == 90
    assert (a.restart.max_retries, a.restart.policy) == (3, "on-failure")
    assert (b.restart.max_retries, b.restart.policy) == (0, "on-failure")
    assert b.health_check.cpu_threshold == 80
    assert config.agent_defaults.health_check.cpu_threshold == 80


def test_explicit_null_disables_an_inherited_check(tmp_path):
    config = load(tmp_path, """
        agent_defaults:
          user: agents
          env: {A: "1", B: "2"}
          health_check: {cpu_threshold: 80, memory_threshold: 1GiB, http_endpoint: "http://127.0.0.1:1/x"}
        agents:
          - id: a
            binary_path: /bin/a
            user: null
            env: {B: null}
            health_check: {cpu_threshold: null, memory_threshold: null, http_endpoint: null, heartbeat_timeout: null}
          - id: b
            binary_path: /bin/b
            health_check: {heartbeat_timeout: 0}
          - id: c
            binary_path: /bin/c
            env: null
            health_check: null
    """)
    a, b, c = config.agents
    assert a.user is None
    assert a.env == {"A": "1"}
    hc = a.health_check
    assert (hc.cpu_threshold, hc.memory_threshold, hc.http_endpoint, hc.heartbeat_timeout) == (None, None, None, None)
    assert not a.expects_heartbeat and hc.startup_grace == 30
    assert b.health_check.heartbeat_timeout is None
    assert b.health_check.cpu_threshold == 80
    # A whole section set to null drops what agent_defaults gave it and falls back to built-in defaults.
    assert c.env == {}
    assert c.health_check.cpu_threshold == 50.0


def test_parse_config_does_not_modify_its_input():
    data = {
        "agent_defaults": {"env": {"A": "1"}, "health_check": {"cpu_threshold": 5}},
        "agents": [{"id": "a", "type": "telegraf", "binary_path": "a", "env": {"A": None}}],
    }
    before = copy.deepcopy(data)
    parse_config(data, source="t", base_dir=Path("/"))
    assert data == before


# --- type defaults ----------------------------------------------------------------------------------------


def test_type_defaults_for_non_heartbeating_agents(tmp_path):
    config = load(tmp_path, """
        agent_defaults:
          health_check: {heartbeat_timeout: 2m}
        agents:
          - {id: fb, type: filebeat, binary_path: /bin/fb}
          - {id: tg, type: telegraf, binary_path: /bin/tg}
          - {id: ne, type: node_exporter, binary_path: /bin/ne}
          - {id: cu, binary_path: /bin/cu}
          - {id: tg2, type: telegraf, binary_path: /bin/tg, health_check: {heartbeat_timeout: 45s}}
          - {id: ne2, type: node_exporter, binary_path: /bin/ne, health_check: {http_endpoint: "http://h:1/m"}}
    """)
    specs = {s.id: s for s in config.agents}
    for agent_id in ("fb", "tg", "ne"):
        assert specs[agent_id].health_check.heartbeat_timeout is None
        assert not specs[agent_id].expects_heartbeat
        assert specs[agent_id].health_check.startup_grace == 30
    assert specs["ne"].health_check.http_endpoint == "http://127.0.0.1:9100/metrics"
    assert specs["fb"].health_check.http_endpoint is None
    assert specs["cu"].health_check.heartbeat_timeout == 120
    assert specs["cu"].health_check.startup_grace == 120
    assert specs["tg2"].health_check.heartbeat_timeout == 45
    assert specs["ne2"].health_check.http_endpoint == "http://h:1/m"


def test_custom_defaults_to_90s_heartbeat(tmp_path):
    spec = one_agent(tmp_path, "{id: a, binary_path: /bin/a}")
    assert spec.health_check.heartbeat_timeout == 90 and spec.health_check.startup_grace == 90


def test_explicit_startup_grace_is_kept(tmp_path):
    spec = one_agent(tmp_path, "{id: a, binary_path: /bin/a, health_check: {startup_grace: 5s}}")
    assert spec.health_check.startup_grace == 5


def test_agent_spec_built_directly_applies_type_defaults():
    spec = AgentSpec(id="ne", type="node_exporter", binary_path="/bin/ne")
    assert spec.health_check.heartbeat_timeout is None
    assert spec.health_check.http_endpoint == "http://127.0.0.1:9100/metrics"
    assert spec.health_check.startup_grace == 30


# --- legacy form ------------------------------------------------------------------------------------------


def test_legacy_agent_section(tmp_path):
    config = load(tmp_path, """
        agent:
          binary_path: ./bin/agent
          work_dir: work
          config_file: agent.yml
          socket_path: hb.sock
          health_check: {heartbeat_timeout: 10s}
          restart: {max_retries: 2}
    """)
    assert config.warnings == [LEGACY_WARNING]
    (spec,) = config.agents
    assert spec.id == "legacy-agent"
    assert spec.binary_path == tmp_path / "bin" / "agent"
    assert spec.work_dir == tmp_path / "work"
    assert spec.config_file == tmp_path / "agent.yml"
    assert spec.health_check.heartbeat_timeout == 10
    assert spec.restart.max_retries == 2
    assert config.heartbeat.unix.path == tmp_path / "hb.sock"


def test_legacy_agent_id_and_explicit_socket_path_wins(tmp_path):
    config = load(tmp_path, """
        heartbeat:
          unix: {path: /tmp/explicit.sock}
        agent:
          id: shipper
          binary_path: /bin/shipper
          socket_path: /tmp/legacy.sock
    """)
    assert config.agents[0].id == "shipper"
    assert config.heartbeat.unix.path == Path("/tmp/explicit.sock")


def test_legacy_agent_errors_name_the_agent_section(tmp_path):
    found = problems(tmp_path, """
        agent:
          binary_path: /bin/a
          health_check: {cpu_threshold: 0}
    """)
    assert found == ["agent (legacy-agent).health_check.cpu_threshold: must be > 0, got 0"]


def test_agent_and_agents_together_read_as_the_original_did(tmp_path):
    # The original's multi-agent files keep an `agent:` section for its socket_path; agents: wins.
    config = load(tmp_path, """
        agent:
          binary_path: /bin/a
          socket_path: /tmp/orig.sock
        agents:
          - {id: b, binary_path: /bin/b, enabled: true}
    """)
    assert [s.id for s in config.agents] == ["b"]
    assert config.heartbeat.unix.path == Path("/tmp/orig.sock")
    assert any("agent: binary_path ignored because agents: is set" in w for w in config.warnings)


# --- paths ------------------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_directory(tmp_path):
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    config = load_config(write(conf_dir, """
        daemon: {run_dir: run, data_dir: ./data, log_dir: ../logs}
        manager:
          tls: {enabled: true, ca_file: tls/ca.pem, cert_file: tls/c.pem, key_file: tls/k.pem}
        manager_api:
          tls: {ca_file: ca2.pem}
        agents:
          - {id: a, binary_path: bin/a, config_file: a.yml, work_dir: w/a}
          - {id: b, binary_path: /opt/b}
    """))
    assert config.daemon.run_dir == conf_dir / "run"
    assert config.daemon.data_dir == conf_dir / "data"
    assert config.daemon.log_dir == tmp_path / "logs"
    assert config.heartbeat.unix.path == conf_dir / "run" / "heartbeat.sock"
    assert config.manager.tls.ca_file == conf_dir / "tls" / "ca.pem"
    assert config.manager.tls.key_file == conf_dir / "tls" / "k.pem"
    assert config.manager_api.tls.ca_file == conf_dir / "ca2.pem"
    a, b = config.agents
    assert (a.binary_path, a.config_file, a.work_dir) == (conf_dir / "bin/a", conf_dir / "a.yml", conf_dir / "w/a")
    assert b.binary_path == Path("/opt/b")
    assert b.work_dir == conf_dir / "data" / "work" / "b"
    for path in (config.daemon.run_dir, config.heartbeat.unix.path, a.binary_path, b.work_dir):
        assert path.is_absolute()


def test_unix_path_relative_and_parse_config_base_dir():
    config = parse_config(
        {"heartbeat": {"unix": {"path": "hb.sock"}}, "agents": [{"id": "a", "binary_path": "a"}]},
        source="inline", base_dir=Path("/srv/agentd"),
    )
    assert config.heartbeat.unix.path == Path("/srv/agentd/hb.sock")
    assert config.agents[0].binary_path == Path("/srv/agentd/a")


def test_parse_config_labels_problems_with_source():
    with pytest.raises(ConfigError) as info:
        parse_config({"daemon": {"log_format": "xml"}}, source="reload.yaml", base_dir=Path("/"))
    assert info.value.problems == ["reload.yaml: daemon.log_format: must be one of 'text' or 'json', got 'xml'"]


def test_check_binaries(tmp_path):
    good = tmp_path / "good"
    good.write_text("#!/bin/sh\n")
    good.chmod(0o755)
    plain = tmp_path / "plain"
    plain.write_text("")
    plain.chmod(0o644)
    config = load(tmp_path, """
        agents:
          - {id: good, binary_path: good}
          - {id: plain, binary_path: plain}
          - {id: gone, binary_path: gone, enabled: false}
    """)
    # Even root gets X_OK only for files with an x bit, so "plain" is flagged whoever runs this.
    assert check_binaries(config) == [
        f"agent 'plain': binary {plain} is not executable",
        f"agent 'gone': binary {tmp_path / 'gone'} does not exist (agent is disabled)",
    ]


# --- effective args, fingerprint, dump --------------------------------------------------------------------


@pytest.mark.parametrize(
    "agent, expected",
    [
        ({"type": "filebeat", "config_file": "/e/fb.yml"}, ["-c", "/e/fb.yml", "-path.home", "/data/work/x"]),
        ({"type": "filebeat"}, ["-path.home", "/data/work/x"]),
        ({"type": "telegraf", "config_file": "/e/tg.conf"}, ["-config", "/e/tg.conf"]),
        ({"type": "telegraf"}, []),
        ({"type": "node_exporter", "config_file": "/e/ignored"}, ["--web.listen-address=:9100", "--path.procfs=/proc", "--path.sysfs=/sys"]),
        ({"type": "custom", "config_file": "/e/c.yml"}, ["-config", "/e/c.yml"]),
        ({"type": "custom"}, []),
        ({"type": "filebeat", "config_file": "/e/fb.yml", "args": ["--own"]}, ["--own"]),
        ({"type": "telegraf", "config_file": "/e/tg.conf", "args": []}, []),
    ],
)
def test_effective_args_per_type(agent, expected):
    config = parse_config(
        {"daemon": {"data_dir": "/data"}, "agents": [{"id": "x", "binary_path": "/bin/x", **agent}]},
        source="t", base_dir=Path("/"),
    )
    assert config.agents[0].effective_args() == expected


def _spec(**fields) -> AgentSpec:
    agent = {"id": "a", "binary_path": "/bin/a", **fields}
    return parse_config({"agents": [agent]}, source="t", base_dir=Path("/")).agents[0]


def test_fingerprint_is_stable_and_tracks_changes():
    base = _spec(env={"A": "1", "B": "2"}, health_check={"interval": "30s"})
    assert base.fingerprint() == _spec(env={"B": "2", "A": "1"}, health_check={"interval": 30}).fingerprint()
    assert base.fingerprint() == _spec(env={"A": "1", "B": "2"}).fingerprint()
    assert len(base.fingerprint()) == 64
    for change in (
        {"env": {"A": "1", "B": "3"}},
        {"env": {"A": "1", "B": "2"}, "health_check": {"interval": "31s"}},
        {"env": {"A": "1", "B": "2"}, "args": ["-v"]},
        {"env": {"A": "1", "B": "2"}, "enabled": False},
        {"env": {"A": "1", "B": "2"}, "binary_path": "/bin/b"},
        {"env": {"A": "1", "B": "2"}, "restart": {"backoff_steps": [1]}},
    ):
        assert _spec(**change).fingerprint() != base.fingerprint(), change


def test_dump_effective_round_trips(tmp_path):
    config = load(tmp_path, """
        daemon: {id: node-1, run_dir: run, data_dir: data}
        control: {group: agentd}
        manager:
          address: manager:9000
          labels: {zone: a}
        agent_defaults:
          env: {A: "1", B: "2"}
          health_check: {cpu_threshold: 80, interval: 5m, heartbeat_timeout: 2m}
          restart: {max_retries: 3}
        agents:
          - id: web
            binary_path: bin/web
            config_file: web.yml
            env: {B: null, C: "3"}
            health_check: {cpu_threshold: null}
          - {id: tg, type: telegraf, binary_path: /usr/bin/telegraf, args: [-x]}
          - {id: ne, type: node_exporter, binary_path: /usr/bin/node_exporter, health_check: {startup_grace: 1m}}
    """)
    text = dump_effective(config)
    data = yaml.safe_load(text)
    assert data["agents"][0]["id"] == "web"
    assert data["agents"][0]["health_check"]["interval"] == 300
    assert data["agents"][0]["binary_path"] == str(tmp_path / "bin" / "web")
    assert data["heartbeat"]["unix"]["max_line"] == 65536
    again = parse_config(data, source="dump", base_dir=Path("/somewhere/else"))
    assert again.model_dump(exclude={"source", "warnings"}) == config.model_dump(exclude={"source", "warnings"})
    assert [a.fingerprint() for a in again.agents] == [a.fingerprint() for a in config.agents]
    assert dump_effective(again) == text


def test_dump_effective_of_legacy_config_round_trips(tmp_path):
    config = load(tmp_path, "agent: {binary_path: /bin/a, socket_path: hb.sock}\n")
    again = parse_config(yaml.safe_load(dump_effective(config)), source="dump", base_dir=Path("/"))
    assert again.warnings == []
    assert again.model_dump(exclude={"source", "warnings"}) == config.model_dump(exclude={"source", "warnings"})


def test_heartbeat_intake_disabled_warns_about_heartbeating_agents(tmp_path):
    config = load(tmp_path, """
        heartbeat: {http: {enabled: false}, unix: {enabled: false}}
        agents:
          - {id: a, binary_path: /bin/a}
          - {id: t, type: telegraf, binary_path: /bin/t}
    """)
    assert len(config.warnings) == 1
    assert "both disabled" in config.warnings[0] and config.warnings[0].endswith(": a")


def test_manager_api_on_loopback_needs_token_or_tls_too(tmp_path):
    """Issue 10 break 9: the control socket is owner-only; the API must not let any local user stop agents."""
    found = problems(tmp_path, "manager_api: {listen: '127.0.0.1:9000'}\n")
    assert len(found) == 1 and found[0].startswith("manager_api.listen: '127.0.0.1:9000' has neither a token nor TLS")
    assert load(tmp_path, "manager_api: {listen: '127.0.0.1:9000', token: s3cret}\n").manager_api.token == "s3cret"
    config = load(tmp_path, "manager_api: {listen: '127.0.0.1:9000', insecure: true, allow_from: ['127.0.0.1']}\n")
    assert any("manager_api is insecure" in w for w in config.warnings)


@pytest.mark.parametrize("address", ["not a host", "host", "host:0", "host:99999", "-bad-.com:80", "[nope]:80"])
def test_manager_address_that_is_not_host_port_is_refused(address):
    """Regression: check-config accepted `manager.address: "not a host"`; the link then failed at run time."""
    with pytest.raises(ConfigError, match=r"manager\.address: expected host:port"):
        parse_config({"manager": {"address": address}}, source="a.yaml", base_dir=Path("/"))


@pytest.mark.parametrize("address", ["manager.example.com:9090", "127.0.0.1:50051", "[::1]:9090", "dns:///m.example:443", "unix:/run/m.sock"])
def test_manager_addresses_grpc_understands_are_accepted(address):
    assert parse_config({"manager": {"address": address}}, source="a.yaml", base_dir=Path("/")).manager.address == address


def test_the_health_worker_reads_the_configs_health_defaults():
    """One source of truth: an AgentView without health_check keys is judged by the config's defaults."""
    from supervisor.config.health_check import HealthCheck, default_startup_grace
    from supervisor.wire.messages import AgentView
    from workers.health_judge import rules_of

    defaults = HealthCheck()
    rules = rules_of(AgentView(id="a", type="custom", state="running", generation=1, health_check={}))
    assert (rules.interval, rules.heartbeat_timeout, rules.cpu_threshold, rules.memory_threshold) == (
        defaults.interval, defaults.heartbeat_timeout, defaults.cpu_threshold, defaults.memory_threshold)
    assert (rules.http_timeout, rules.endpoint_failures, rules.threshold_duration) == (
        defaults.http_timeout, defaults.endpoint_failures, defaults.threshold_duration)
    assert rules.startup_grace == default_startup_grace(defaults.heartbeat_timeout) == 90.0
    assert default_startup_grace(None) == default_startup_grace(5.0) == 30.0


@pytest.mark.parametrize("kind", [["x"], {"a": 1}])
def test_an_agent_type_that_is_not_a_string_is_a_problem_not_a_crash(kind):
    """Regression: `type: [x]` raised TypeError (unhashable) out of parse_config instead of a ConfigError."""
    with pytest.raises(ConfigError, match=r"agents\[0\] \(a\)\.type: must be one of"):
        parse_config({"agents": [{"id": "a", "binary_path": "/bin/a", "type": kind}]}, source="t", base_dir=Path("/"))
    with pytest.raises(ConfigError, match=r"agent_defaults\.type: must be one of"):
        parse_config({"agent_defaults": {"type": kind}, "agents": [{"id": "a", "binary_path": "/bin/a"}]}, source="t", base_dir=Path("/"))
