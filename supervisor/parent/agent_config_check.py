"""Checks of an agent's own config file (`config_file`) by agent type, before a start and before a hot reload.

filebeat: YAML with inputs and an output. telegraf: TOML with [agent], inputs and outputs. Any other type:
the file exists and is readable. The checks catch the mistakes that would make the agent exit at once
(a half-saved file, a deleted output); they do not replace the agent's own `test config`.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import yaml

from supervisor.config.agent import AgentSpec

__all__ = ["MAX_CONFIG_BYTES", "check_agent_config", "check_agent_configs"]

MAX_CONFIG_BYTES = 16 * 1024 * 1024  # far above any real agent config; guards the parent's memory


def _read(path: Path) -> tuple[str | None, str | None]:
    """(text, None) or (None, problem)."""
    try:
        if not path.exists():
            return None, "does not exist"
        if path.is_dir():
            return None, "is a directory"
        if path.stat().st_size > MAX_CONFIG_BYTES:
            return None, f"is larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB"
        return path.read_bytes().decode("utf-8"), None
    except PermissionError:
        return None, "is not readable (permission denied)"
    except UnicodeDecodeError as exc:
        return None, f"is not UTF-8 text (bad byte at offset {exc.start})"
    except OSError as exc:
        return None, f"cannot be read: {exc.strerror or exc}"


def _filebeat(text: str) -> str | None:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        return f"is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"
    if not isinstance(doc, dict):
        return "is not a YAML mapping of filebeat settings"
    # filebeat reads both `filebeat.inputs:` (dotted key) and `filebeat: {inputs: ...}`.
    nested = doc.get("filebeat") if isinstance(doc.get("filebeat"), dict) else {}
    inputs = doc.get("filebeat.inputs", nested.get("inputs"))
    external = any(k in doc for k in ("filebeat.config.inputs", "filebeat.autodiscover")) or "autodiscover" in nested or (
        isinstance(nested.get("config"), dict) and "inputs" in nested["config"]
    )
    if not external and not (isinstance(inputs, list) and inputs):
        return "has no inputs (filebeat.inputs must be a non-empty list)"
    outputs = [k for k in doc if isinstance(k, str) and k.startswith("output.")]
    if isinstance(doc.get("output"), dict) and doc["output"]:
        outputs.append("output")
    if not outputs:
        return "has no output (e.g. output.elasticsearch or output.logstash)"
    return None


def _telegraf(text: str) -> str | None:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return f"is not valid TOML: {exc}"
    missing = [name for name in ("agent", "inputs", "outputs") if not isinstance(doc.get(name), dict) or (name != "agent" and not doc[name])]
    if missing:
        return "has no " + " and no ".join(f"[{m}]" if m == "agent" else f"[[{m}.*]]" for m in missing)
    return None


def check_agent_config(spec: AgentSpec) -> str | None:
    """The problem with the agent's config_file, or None when it is fine (or there is none)."""
    path = spec.config_file
    if path is None:
        return None
    text, problem = _read(path)
    if problem is None and spec.type == "filebeat":
        problem = _filebeat(text)
    elif problem is None and spec.type == "telegraf":
        problem = _telegraf(text)
    elif problem is None and not os.access(path, os.R_OK):
        problem = "is not readable"
    return None if problem is None else f"config_file {path} {problem}"


def check_agent_configs(specs: list[AgentSpec]) -> list[str]:
    """Warnings for `agentd check-config`: each agent whose config_file is missing or fails its type's check."""
    warnings = []
    for spec in specs:
        problem = check_agent_config(spec)
        if problem is not None:
            warnings.append(f"agent {spec.id!r}: {problem}{'' if spec.enabled else ' (agent is disabled)'}")
    return warnings
