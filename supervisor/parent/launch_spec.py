"""What a process was started with: the part of an agent's spec that a running process cannot change.

Metadata records it for every process (`AgentRecord.launch`), so an agentd that re-adopts a process
can tell whether it runs the configured command: a reload whose restart was interrupted by a crash of
agentd, or a config edited while agentd was down, is then applied instead of silently forgotten
(docs/operations.md). Everything else (health checks, restart policy, logs) the new agentd applies
live from the config. Values are kept as short digests, so secrets in `env` never reach the file.
"""

from __future__ import annotations

import hashlib
import json

from supervisor.config.agent import AgentSpec

LAUNCH_FIELDS = ("binary_path", "args", "env", "work_dir", "user", "group")


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def launch_of(spec: AgentSpec) -> dict[str, str]:
    """Field -> digest of what a process of `spec` is started with."""
    values = {
        "binary_path": str(spec.binary_path),
        "args": list(spec.effective_args()),
        "env": dict(spec.env),
        "work_dir": str(spec.work_dir),
        "user": spec.user,
        "group": spec.group,
    }
    return {name: _digest(values[name]) for name in LAUNCH_FIELDS}


def launch_diff(recorded: dict[str, str] | None, spec: AgentSpec) -> list[str]:
    """The launch fields in which the running process differs from `spec`; [] when unknown or equal."""
    if not recorded:
        return []
    now = launch_of(spec)
    return [name for name in LAUNCH_FIELDS if name in recorded and recorded[name] != now[name]]
