"""The original daemon's config files load unchanged: every key mapped or warned about, env overrides, migrate-config.

tests/fixtures/original/ holds the original's shipped files verbatim (github.com/bingooyong/ops-scaffold-framework
at a428bb6: daemon/configs/daemon.yaml, daemon.container.yaml, daemon.dev.yaml,
daemon.multi-agent.example.yaml and test/integration/config/daemon.test.yaml).

The tests here start no process; the ones with real processes are in tests/system/test_original_config.py."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.config.errors import ConfigError
from supervisor.config.loading import load_config, parse_config
from supervisor.config.original_agents import backoff_steps
from supervisor.config.original_config import apply_env, is_original, translate
from supervisor.config.original_notes import FORMAT_WARNING


FIXTURES = Path(__file__).parents[1] / "fixtures" / "original"


SHIPPED = sorted(p.name for p in FIXTURES.glob("*.yaml"))


MIB = 1024 * 1024


def load(name: str, env: dict | None = None):
    return load_config(FIXTURES / name, env=env or {})


def has_warning(config, *parts: str) -> bool:
    return any(all(p in w for p in parts) for w in config.warnings)


def test_every_shipped_file_is_recognised_and_loads():
    assert SHIPPED == ["daemon.container.yaml", "daemon.dev.yaml", "daemon.multi-agent.example.yaml", "daemon.test.yaml", "daemon.yaml"]
    for name in SHIPPED:
        data = yaml.safe_load((FIXTURES / name).read_text())
        assert is_original(data), name
        config = load(name)
        assert config.warnings[0] == FORMAT_WARNING


def test_legacy_single_agent_file():
    config = load("daemon.yaml")
    (spec,) = config.agents
    assert (spec.id, spec.type, spec.name, spec.enabled) == ("legacy-agent", "custom", "Legacy Agent", True)
    assert spec.binary_path == Path("/usr/local/bin/agent")
    assert spec.work_dir == Path("/var/lib/agent")
    assert spec.config_file == Path("/etc/agent/agent.yaml")
    assert spec.effective_args() == ["-config", "/etc/agent/agent.yaml"]  # the original's sample agent flag
    hc = spec.health_check
    assert (hc.interval, hc.heartbeat_timeout, hc.cpu_threshold, hc.memory_threshold, hc.threshold_duration) == (30, 90, 50, 524288000, 60)
    assert spec.restart.max_retries == 10
    assert spec.restart.backoff_steps == [0, 10, 10, 30, 30, 60]  # exactly the original's fixed schedule
    assert spec.restart.policy == "always"
    # The socket the original's agents send to is agentd's heartbeat socket.
    assert config.heartbeat.unix.path == Path("/var/run/agent.sock")
    assert config.heartbeat.http.enabled is False  # http_port unset = off, as the original
    d = config.daemon
    assert d.id is None and d.log_level == "info"
    assert (d.data_dir, d.log_dir) == (Path("/var/lib/daemon"), Path("/var/lib/daemon/logs"))
    assert (d.log_file, d.pid_file) == (Path("/var/log/daemon/daemon.log"), Path("/var/run/daemon.pid"))
    m = config.manager
    assert (m.address, m.heartbeat_interval, m.timeout) == ("manager.example.com:9090", 60, 30)
    assert m.tls.cert_file == Path("/etc/daemon/certs/client.crt") and m.tls.ca_file == Path("/etc/daemon/certs/ca.crt")
    assert has_warning(config, "manager.reconnect_interval", "ignored")
    assert has_warning(config, "update", "ignored")


def test_container_file_with_empty_binary_path_manages_no_agent():
    config = load("daemon.container.yaml")
    assert config.agents == []
    assert config.heartbeat.unix.path == Path("/app/tmp/agent.sock")
    assert config.manager.address == "manager:9090"
    tls = config.manager.tls
    assert (tls.cert_file, tls.key_file, tls.ca_file) == (None, None, None)  # empty paths = no TLS
    assert config.daemon.log_level == "debug"
    assert config.daemon.data_dir == Path("/app/tmp")
    assert config.manager.heartbeat_interval == 30


def test_multi_agent_example():
    config = load("daemon.multi-agent.example.yaml")
    specs = {s.id: s for s in config.agents}
    assert list(specs) == ["filebeat-logs", "telegraf-metrics", "node-exporter"]
    fb, tg, ne = specs.values()
    assert (fb.type, fb.name, fb.enabled) == ("filebeat", "Filebeat Log Collector", True)
    assert fb.effective_args() == ["-c", "/etc/filebeat/filebeat.yml", "-path.home", "/var/lib/daemon/agents/filebeat-logs"]
    assert tg.effective_args() == ["-config", "/etc/telegraf/telegraf.conf"]
    # node_exporter keeps the original's hard-coded arguments; its extra listed flag was ignored there too.
    assert ne.effective_args() == ["--web.listen-address=:9100", "--path.procfs=/proc", "--path.sysfs=/sys"]
    assert has_warning(config, "agents[2] (node-exporter).args", "ignored")
    # These types send no heartbeats; the original only checked heartbeat_timeout after a first one.
    assert not fb.expects_heartbeat and not tg.expects_heartbeat and not ne.expects_heartbeat
    assert (tg.health_check.cpu_threshold, tg.health_check.memory_threshold) == (40, 262144000)
    assert ne.health_check.http_endpoint == "http://localhost:9100/metrics"
    assert ne.config_file is None  # config_file: "" is unset
    assert config.agent_defaults.restart.backoff_steps == [0, 10, 10, 30, 30, 60]


def test_integration_test_file_with_agent_and_agents(tmp_path):
    config = load("daemon.test.yaml")
    assert [s.id for s in config.agents] == ["agent-001", "agent-002", "agent-003"]
    spec = config.agents[0]
    assert spec.name == "Test Agent 001"
    assert spec.health_check.heartbeat_timeout == 30 and spec.expects_heartbeat
    assert spec.restart.backoff_steps == [0, 5, 5, 15, 15, 30] and spec.restart.max_retries == 5
    assert spec.effective_args() == ["-config", str(spec.config_file)]
    assert spec.work_dir == FIXTURES / "test/integration/tmp/daemon/agents/agent-001"  # relative to the file
    assert has_warning(config, "relative paths are taken from the config file's directory")
    assert config.heartbeat.unix.path == Path("/tmp/daemon.sock")
    # grpc_port: not served unauthenticated as the original did; the warning says how to allow the Manager.
    assert config.manager_api.listen is None
    assert has_warning(config, "daemon.grpc_port", "not served", "insecure: true, allow_from")
    # The legacy section's other keys are not used when agents: is set, as in the original.
    assert has_warning(config, "agent: binary_path, health_check ignored because agents: is set")


EVERY_KEY = """
daemon:
  id: ""
  log_level: warn
  log_file: /tmp/od/daemon.log
  pid_file: /tmp/od/daemon.pid
  work_dir: /srv/daemon
  grpc_port: 19091
  http_port: 18084
  pprof_port: "6060"
  pprof_address: 127.0.0.1
  max_procs: 2
manager:
  address: ""
  tls: {cert_file: "", key_file: "", ca_file: ""}
  heartbeat_interval: 45s
  reconnect_interval: 10s
  timeout: 20s
agent:
  binary_path: /opt/agent
  work_dir: /srv/agent
  config_file: /etc/agent.yaml
  socket_path: /tmp/od/agent.sock
  health_check: {interval: 15s, heartbeat_timeout: 45s, cpu_threshold: 250, memory_threshold: 104857600, threshold_duration: 30s}
  restart: {max_retries: 3, backoff_base: 2s, backoff_max: 20s, policy: on-failure}
agents:
  - id: fb
    type: filebeat
    name: Shipper
    binary_path: /usr/bin/filebeat
    config_file: /etc/filebeat.yml
    work_dir: ""
    socket_path: /tmp/od/agent.sock
    enabled: true
    args: ["-c", "/etc/filebeat.yml", "-path.home", "/srv/daemon/agents/fb"]
    health_check: {interval: 0s, heartbeat_timeout: 90s, cpu_threshold: 0, memory_threshold: 0, threshold_duration: 0s, http_endpoint: "http://127.0.0.1:5066/"}
    restart: {max_retries: 0, backoff_base: 0s, backoff_max: 0s, policy: ""}
  - id: custom-1
    type: custom
    binary_path: /opt/custom
    socket_path: /tmp/elsewhere.sock
    health_check: {heartbeat_timeout: 0s}
    restart: {backoff_base: 4s}
agent_defaults:
  health_check: {interval: 20s, heartbeat_timeout: 60s, cpu_threshold: 150.0, memory_threshold: 209715200, threshold_duration: 40s}
  restart: {max_retries: 7, backoff_base: 5s, backoff_max: 40s, policy: always}
collectors:
  cpu: {enabled: true, interval: 30s}
  memory: {enabled: true, interval: 30s}
  disk: {enabled: true, interval: 60s, mount_points: ["/"]}
  network: {interval: 60s, interfaces: [eth0]}
update: {download_dir: /d, backup_dir: /b, max_backups: 5, verify_timeout: 300s, public_key_file: ""}
"""


def test_every_key_of_the_original_is_mapped_or_warned_about(tmp_path):
    path = tmp_path / "daemon.yaml"
    path.write_text(EVERY_KEY)
    config = load_config(path, env={})
    d = config.daemon
    assert d.id is None and d.log_level == "warning"
    assert (d.log_file, d.pid_file) == (Path("/tmp/od/daemon.log"), Path("/tmp/od/daemon.pid"))
    assert (d.data_dir, d.log_dir) == (Path("/srv/daemon"), Path("/srv/daemon/logs"))
    assert config.manager_api.listen is None and has_warning(config, "daemon.grpc_port", "'0.0.0.0:19091'")
    assert config.heartbeat.http.enabled and config.heartbeat.http.listen == "127.0.0.1:18084"
    assert has_warning(config, "daemon.pprof_port", "ignored") and has_warning(config, "daemon.max_procs", "ignored")
    m = config.manager
    assert m.address is None and (m.heartbeat_interval, m.timeout) == (45, 20)
    assert has_warning(config, "manager.reconnect_interval")
    assert config.heartbeat.unix.path == Path("/tmp/od/agent.sock")

    fb, custom = config.agents  # agents: wins over the legacy agent:, as in the original
    assert has_warning(config, "agent: binary_path, config_file, health_check, restart, work_dir ignored")
    assert (fb.name, fb.work_dir) == ("Shipper", Path("/srv/daemon/agents/fb"))
    # Zero is "unset" in the original: every zero inherits agent_defaults.
    hc = fb.health_check
    assert (hc.interval, hc.cpu_threshold, hc.memory_threshold, hc.threshold_duration) == (20, 150, 200 * MIB, 40)
    assert hc.heartbeat_timeout is None  # filebeat never heartbeats
    assert hc.http_endpoint == "http://127.0.0.1:5066/"
    assert (fb.restart.max_retries, fb.restart.policy) == (7, "always")
    assert fb.restart.backoff_steps == backoff_steps(5, 40) == [0, 5, 5, 15, 15, 40]
    assert fb.effective_args() == ["-c", "/etc/filebeat.yml", "-path.home", "/srv/daemon/agents/fb"]

    # No `enabled: true`: the original never started it, so agentd keeps it stopped.
    assert custom.enabled is False and custom.name == "custom"
    assert has_warning(config, "agents[1] (custom-1)", "never started it")
    assert custom.health_check.heartbeat_timeout == 60  # 0s does not disable heartbeats in this format
    assert has_warning(config, "agents[1] (custom-1).health_check.heartbeat_timeout")
    assert custom.restart.backoff_steps == backoff_steps(4, 40)  # own base, inherited max
    assert has_warning(config, "agents[1] (custom-1).socket_path", "not listened on")
    assert custom.work_dir == Path("/srv/daemon/agents/custom-1")
    assert config.agent_defaults.health_check.cpu_threshold == 150  # percent of one core: may exceed 100
    assert has_warning(config, "update", "ignored")
    c = config.collectors  # node metrics: taken as is; without `enabled: true` a collector is off, as in the original
    assert (c.cpu.enabled, c.cpu.interval, c.disk.mount_points) == (True, 30, ["/"])
    assert c.network.enabled is False and c.network.interfaces == ["eth0"]


def test_grpc_port_with_an_explicit_manager_api_loads(tmp_path):
    path = tmp_path / "daemon.yaml"
    path.write_text("daemon: {work_dir: /srv, grpc_port: 9091}\n"
                    "manager_api: {listen: '0.0.0.0:9091', insecure: true, allow_from: [10.0.0.5/32]}\n")
    config = load_config(path, env={})
    assert config.manager_api.listen == "0.0.0.0:9091" and config.manager_api.insecure
    assert has_warning(config, "manager_api is insecure")


def test_legacy_conversion_uses_agent_defaults_for_zero_fields(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text(textwrap.dedent("""
        daemon: {work_dir: /srv}
        agent:
          binary_path: /opt/agent
          health_check: {cpu_threshold: 0}
          restart: {max_retries: 0, backoff_base: 1s}
        agent_defaults:
          health_check: {cpu_threshold: 75}
          restart: {max_retries: 4}
    """))
    (spec,) = load_config(path, env={}).agents
    assert spec.health_check.cpu_threshold == 75 and spec.restart.max_retries == 4
    assert spec.restart.backoff_steps == [0, 1, 1, 3, 3, 60]
    assert spec.work_dir == Path("/srv/agents/legacy-agent")  # the original's {work_dir}/agents/{id}


def test_problems_in_original_keys_are_named_by_the_original_key(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("daemon: {work_dir: /srv, http_port: web, grpc_port: 70000}\nagents:\n  - {id: a, type: bogus, binary_path: /a, enabled: true}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    text = str(info.value)
    assert "daemon.http_port: expected a port number, got 'web'" in text
    assert "daemon.grpc_port: must be 0..65535, got 70000" in text
    assert "agents[0] (a).type: must be one of" in text


def test_env_overrides_and_their_precedence(tmp_path):
    env = {
        "NODE_NAME": "node-7", "MANAGER_ADDRESS": "10.0.0.1:9090", "LOG_LEVEL": "error",
        "DAEMON_LOG_LEVEL": "debug",  # wins over LOG_LEVEL: the more specific name
        "DAEMON_WORK_DIR": "/srv/elsewhere", "DAEMON_OPTS": "--foo",  # not a daemon key: left alone
        "DAEMON_PID_FILE": "",  # empty values count as unset, as in the original
    }
    config = load("daemon.yaml", env=env)
    d = config.daemon
    assert (d.id, d.log_level, config.manager.address) == ("node-7", "debug", "10.0.0.1:9090")
    assert d.data_dir == Path("/srv/elsewhere") and d.pid_file == Path("/var/run/daemon.pid")
    assert has_warning(config, "environment: NODE_NAME sets daemon.id")
    assert not has_warning(config, "DAEMON_OPTS")


def test_env_overrides_apply_to_native_files_too(tmp_path):
    path = tmp_path / "agentd.yaml"
    path.write_text("daemon: {run_dir: /run/a}\nagents: []\n")
    config = load_config(path, env={"DAEMON_RUN_DIR": str(tmp_path / "run"), "DAEMON_WORK_DIR": "/x", "NODE_NAME": "n1"})
    assert config.daemon.run_dir == tmp_path / "run" and config.daemon.id == "n1"
    assert config.daemon.data_dir == Path("/var/lib/agentd")  # work_dir is no native key


def test_apply_env_leaves_data_alone_without_overrides():
    data = {"daemon": {"id": "x"}}
    assert apply_env(data, {"HOME": "/root"}, frozenset({"id"})) == (data, [])


@pytest.mark.parametrize(
    "args, url",
    [
        (None, "http://127.0.0.1:9100/metrics"),
        (["--web.listen-address=:9200"], "http://127.0.0.1:9200/metrics"),
        (["--web.listen-address", "0.0.0.0:9300", "--path.procfs=/host/proc"], "http://127.0.0.1:9300/metrics"),
        (["--web.listen-address=10.1.2.3:9400"], "http://10.1.2.3:9400/metrics"),
        (["--web.listen-address=:nope"], "http://127.0.0.1:9100/metrics"),
    ],
)
def test_node_exporter_health_url_follows_listen_address(args, url):
    agent = {"id": "ne", "type": "node_exporter", "binary_path": "/bin/ne", **({"args": args} if args else {})}
    (spec,) = parse_config({"agents": [agent]}, "t", Path("/")).agents
    assert spec.health_check.http_endpoint == url


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.text(max_size=8),
                     st.sampled_from(["", "0", "0s", "10s", "warn", "/x", "./rel", "custom", "filebeat"]))


_fields = st.dictionaries(st.sampled_from(["interval", "heartbeat_timeout", "cpu_threshold", "max_retries",
                                           "backoff_base", "backoff_max", "policy", "memory_threshold"]), _scalars, max_size=4)


_item = st.fixed_dictionaries({}, optional={
    "id": _scalars, "type": st.sampled_from(["custom", "filebeat", "telegraf", "node_exporter", "x"]), "name": _scalars,
    "binary_path": _scalars, "config_file": _scalars, "work_dir": _scalars, "socket_path": _scalars,
    "enabled": _scalars, "args": st.lists(st.text(max_size=5), max_size=3), "health_check": _fields, "restart": _fields,
})


_original = st.fixed_dictionaries({"update": st.just({})}, optional={
    "daemon": st.dictionaries(st.sampled_from(["id", "log_level", "work_dir", "http_port", "grpc_port", "pprof_port", "log_file", "pid_file"]), _scalars, max_size=4),
    "manager": st.dictionaries(st.sampled_from(["address", "tls", "reconnect_interval", "timeout"]), _scalars, max_size=3),
    "agent": _item, "agents": st.lists(_item, max_size=3), "agent_defaults": st.fixed_dictionaries({}, optional={"health_check": _fields, "restart": _fields}),
    "collectors": st.dictionaries(st.sampled_from(["cpu", "disk"]), st.dictionaries(st.sampled_from(["enabled", "interval"]), _scalars, max_size=2), max_size=2),
})


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_original)
def test_any_original_shaped_input_loads_or_is_refused_clearly(data):
    assert is_original(data)
    translate(data)  # never raises: problems are collected
    try:
        parse_config(data, "t.yaml", Path("/"))
    except ConfigError as exc:
        assert all(line.startswith("t.yaml: ") for line in exc.problems)
