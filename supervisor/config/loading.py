"""A config file read into a fully resolved Config: the original daemon's format and environment overrides
first, then every section and agent validated, paths made absolute and cross-section rules checked; every
problem found is reported at once (docs/configuration.md)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from supervisor.config.agent_list import agent_entries, validate_agents, validate_defaults
from supervisor.config.daemon_sections import DaemonSettings
from supervisor.config.errors import ConfigError, Problems, unknown_key
from supervisor.config.fields import is_loopback, split_listen
from supervisor.config.manager_sections import tls_wanted
from supervisor.config.original_config import ORIGINAL_DAEMON_KEYS, apply_env, is_original, translate
from supervisor.config.schema import AGENT_KEYS, SECTIONS, TOP_LEVEL_KEYS, Config
from supervisor.config.units import describe_value
from supervisor.config.yaml_file import read_config_file

__all__ = ["NO_AGENTS_WARNING", "load_config", "parse_config"]

IPC_PATH_LIMIT = 100  # ZeroMQ refuses longer ipc:// paths
UNIX_PATH_LIMIT = 107  # sun_path is 108 bytes including the trailing NUL
NO_AGENTS_WARNING = "no agents configured; agentd will run and idle until agents are added"


def load_config(path: str | os.PathLike, env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and resolve a config file; raises ConfigError listing every problem found.

    `env` (default: os.environ) supplies the original daemon's overrides, see original_config.apply_env.
    """
    path = Path(path)
    label = str(path)
    data, duplicates = read_config_file(path)
    absolute = Path(os.path.abspath(path))
    try:
        config = parse_config(data, label, absolute.parent, os.environ if env is None else env)
    except ConfigError as exc:
        raise ConfigError(duplicates + exc.problems) from None
    if duplicates:
        raise ConfigError(duplicates)
    config.source = absolute
    return config


def parse_config(data: dict, source: str, base_dir: Path, env: Mapping[str, str] | None = None) -> Config:
    """Validate already-parsed YAML; relative paths are taken from base_dir. `source` labels problems.

    A file in the original daemon's format is translated first (original_config.py, docs/migration.md);
    `env` holds the environment overrides to apply (none by default).
    """
    source = str(source)
    base_dir = Path(os.path.abspath(base_dir))
    if data is None or data == {}:
        raise ConfigError([f"{source}: config is empty"])
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: expected a mapping of sections at the top level, got {describe_value(data)}"])
    problems = Problems(source)
    warnings: list[str] = []
    data = _as_native(data, env, problems, warnings)
    section_raw = _sections_raw(data, problems)
    entries = agent_entries(data, section_raw, problems, warnings)
    sections = _validate_sections(section_raw, problems)
    defaults_raw, defaults, defaults_bad = validate_defaults(data, problems)
    specs = validate_agents(entries, defaults_raw, defaults_bad, problems)
    config = Config(**sections, agent_defaults=defaults, agents=specs)
    _resolve_paths(config, base_dir)
    _check_socket_paths(config, section_raw, problems)
    _check_manager_api_auth(config, problems)
    if problems:
        raise ConfigError(problems.ordered([str(k) for k in data]))
    config.warnings = warnings + _warnings(config)
    return config


def _as_native(data: dict, env: Mapping[str, str] | None, problems: Problems, warnings: list[str]) -> dict:
    """`data` with the environment overrides applied and, in the original daemon's format, translated."""
    original = is_original(data)
    if env:
        daemon_keys = frozenset(DaemonSettings.model_fields) | (ORIGINAL_DAEMON_KEYS if original else frozenset())
        data, applied = apply_env(data, env, daemon_keys)
        warnings += applied
    if original:
        translation = translate(data, frozenset(SECTIONS))
        for path, problem in translation.problems:
            problems.add(path.split(".")[0].split("[")[0], path, problem)
        data = translation.data
        warnings += translation.warnings
    return data


def _sections_raw(data: dict, problems: Problems) -> dict[str, Any]:
    """The raw sections by name; a top-level key that is neither a section nor an agents' key is a problem."""
    section_raw: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS:
            section_raw[key] = value
        elif key not in AGENT_KEYS:
            problems.add(str(key), "", unknown_key(key, TOP_LEVEL_KEYS).replace("unknown key", "unknown top-level key", 1))
    return section_raw


def _validate_sections(section_raw: dict[str, Any], problems: Problems) -> dict[str, Any]:
    sections: dict[str, Any] = {}
    for name, model in SECTIONS.items():
        if name in section_raw:
            try:
                sections[name] = model.model_validate(section_raw[name])
            except ValidationError as exc:
                problems.add_validation(name, name, model, exc)
    return sections


def _warnings(config: Config) -> list[str]:
    """What a valid config may still get wrong: no agents, no intake for heartbeating agents, an open API."""
    warnings = []
    if not config.agents:
        warnings.append(NO_AGENTS_WARNING)
    intake = config.heartbeat
    if not intake.http.enabled and not intake.unix.enabled:
        silent = [a.id for a in config.agents if a.enabled and a.expects_heartbeat]
        if silent:
            warnings.append(
                "heartbeat.http and heartbeat.unix are both disabled, but these agents expect heartbeats "
                f"and will be restarted for no_heartbeat: {', '.join(silent)}"
            )
    api = config.manager_api
    if api.listen and api.insecure and not api.token and not tls_wanted(api.tls):
        warnings.append(
            f"manager_api is insecure: plaintext without a token on {api.listen}; whoever can connect from "
            f"{', '.join(api.allow_from)} can list, start and stop every agent (docs/manager.md)"
        )
        wide = [c for c in api.allow_from if ipaddress.ip_network(c).num_addresses > 256]
        if wide:
            warnings.append(f"manager_api.allow_from admits whole networks ({', '.join(wide)}), not just the Manager's addresses")
    return warnings


def _resolve_paths(config: Config, base_dir: Path) -> None:
    def absolute(path: Path | None) -> Path | None:
        return None if path is None else Path(os.path.normpath(base_dir / path))

    daemon = config.daemon
    daemon.run_dir = absolute(daemon.run_dir)
    daemon.data_dir = absolute(daemon.data_dir)
    daemon.log_dir = absolute(daemon.log_dir)
    unix = config.heartbeat.unix
    unix.path = absolute(unix.path) if unix.path is not None else daemon.run_dir / "heartbeat.sock"
    for tls in (config.manager.tls, config.manager_api.tls):
        tls.ca_file, tls.cert_file, tls.key_file = map(absolute, (tls.ca_file, tls.cert_file, tls.key_file))
    for fields in (config.agent_defaults, *config.agents):
        for name in ("binary_path", "config_file", "work_dir"):
            if getattr(fields, name) is not None:
                setattr(fields, name, absolute(getattr(fields, name)))
    for spec in config.agents:
        if spec.work_dir is None:
            spec.work_dir = daemon.data_dir / "work" / spec.id


def _check_manager_api_auth(config: Config, problems: Problems) -> None:
    """A token or TLS on every address, loopback too: the control socket is owner-only, and the API must
    not let any local user do what the socket does not (stop every agent). insecure: true says otherwise."""
    api = config.manager_api
    if api.listen is None or api.token or tls_wanted(api.tls) or api.insecure:
        return
    if is_loopback(split_listen(api.listen)[0]):  # elsewhere, ManagerAPISettings already refused it
        problems.add(
            "manager_api", "manager_api.listen",
            f"{api.listen!r} has neither a token nor TLS: any local user could stop every agent through it; set "
            "manager_api.token or manager_api.tls (or insecure: true with allow_from, in so many words)",
        )


def _check_socket_paths(config: Config, section_raw: dict, problems: Problems) -> None:
    ipc = str(config.daemon.run_dir / "control.ipc")
    size = len(os.fsencode(ipc))
    run_dir_ok = size <= IPC_PATH_LIMIT
    if not run_dir_ok:
        problems.add(
            "daemon", "daemon.run_dir",
            f"too long: {ipc!r} is {size} bytes, but ZeroMQ ipc paths are limited to {IPC_PATH_LIMIT}; "
            "choose a shorter run_dir",
        )
    unix = config.heartbeat.unix
    heartbeat_raw = section_raw.get("heartbeat")
    unix_raw = heartbeat_raw.get("unix") if isinstance(heartbeat_raw, dict) else None
    explicit = isinstance(unix_raw, dict) and unix_raw.get("path") is not None
    # A socket path derived from an over-long run_dir would only repeat the run_dir problem.
    if unix.enabled and (run_dir_ok or explicit):
        size = len(os.fsencode(str(unix.path)))
        if size > UNIX_PATH_LIMIT:
            problems.add(
                "heartbeat", "heartbeat.unix.path",
                f"too long: {str(unix.path)!r} is {size} bytes, but Unix socket paths are limited to "
                f"{UNIX_PATH_LIMIT}; choose a shorter path",
            )
