"""Where an agent's own files live under agentd's directories: shared by the parent, which writes them, and
agentctl, which reads them when the daemon is down (docs/operations.md, "Where to look")."""

from __future__ import annotations

from pathlib import Path


def agent_log_path(log_dir: Path, agent_id: str) -> Path:
    """Where an agent's stdout and stderr go."""
    return log_dir / agent_id / "agent.log"
