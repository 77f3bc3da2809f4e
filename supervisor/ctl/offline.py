"""What agentctl can show while agentd is down: the metadata, log files and history it left on disk.

Everything here only reads: no file is created, moved aside or locked, so looking can never disturb an
agentd that is starting at the same moment. Each recorded pid is checked live, by its start time as
well as its number, so a pid since reused by another program is not reported as the agent.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from pydantic import BaseModel, ValidationError

from supervisor.common.metadata_store import AgentRecord
from supervisor.common.proc_table import read_stat
from supervisor.common.agent_files import agent_log_path

_METADATA_SUFFIX = ".json"


class OfflineAgent(BaseModel):
    """One agent as its last metadata record describes it, with its process checked now."""

    id: str
    type: str
    recorded_state: str  # what agentd last wrote: the state when it went away
    pid: int | None
    process: str  # "running", "gone", "pid reused by another program" or "-" (no process recorded)
    last_heartbeat: str | None
    restarts: int
    last_exit: str | None
    updated_at: str | None
    problem: str | None = None  # the record could not be read


class OfflineStatus(BaseModel):
    offline: bool = True
    metadata_dir: str
    agents: list[OfflineAgent]


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_state(record: AgentRecord, boot_id: str) -> str:
    if not record.pid:
        return "-"
    if record.boot_id and boot_id and record.boot_id != boot_id:
        return "gone (machine rebooted)"
    info = read_stat(record.pid)
    if info is None or info.zombie:
        return "gone"
    if record.start_ticks is not None and info.start_ticks != record.start_ticks:
        return "pid reused by another program"
    return "running"


def _describe_exit(record: AgentRecord) -> str | None:
    exit_ = record.last_exit
    if exit_ is None:
        return None
    if exit_.signal:
        return f"killed by {exit_.signal}"
    if exit_.code is not None:
        return f"exit code {exit_.code}"
    return exit_.reason or "unknown"


def read_status(data_dir: Path, ids: list[str] | None = None) -> OfflineStatus:
    """Every agent with a metadata file under data_dir (or those named), oldest name first."""
    directory = Path(data_dir) / "metadata"
    boot_id = _boot_id()
    agents: list[OfflineAgent] = []
    try:
        paths = sorted(p for p in directory.iterdir() if p.name.endswith(_METADATA_SUFFIX) and not p.name.startswith("."))
    except OSError:
        paths = []
    wanted = set(ids or [])
    for path in paths:
        agent_id = path.name[: -len(_METADATA_SUFFIX)]
        if wanted and agent_id not in wanted:
            continue
        try:
            record = AgentRecord.model_validate_json(path.read_bytes())
        except (OSError, ValidationError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "unreadable record"
            agents.append(OfflineAgent(id=agent_id, type="?", recorded_state="?", pid=None, process="?", last_heartbeat=None,
                                       restarts=0, last_exit=None, updated_at=None, problem=str(reason)))
            continue
        agents.append(OfflineAgent(
            id=record.id, type=record.type, recorded_state=record.status, pid=record.pid,
            process=_process_state(record, boot_id), last_heartbeat=record.last_heartbeat,
            restarts=record.total_restarts, last_exit=_describe_exit(record), updated_at=record.updated_at,
        ))
    return OfflineStatus(metadata_dir=str(directory), agents=agents)


def log_path(log_dir: Path, agent_id: str) -> Path:
    """The agent's log file, where agentd writes it."""
    return agent_log_path(Path(log_dir), agent_id)


def read_history(data_dir: Path, agent_id: str, since_seconds: float, limit: int) -> list[dict]:
    """Samples of agent_id from <data_dir>/history.db, oldest first, opened read-only; [] when absent."""
    path = Path(data_dir) / "history.db"
    if not path.exists():
        return []
    try:
        # mode=ro: never creates, never writes, never takes the write lock agentd may need.
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
    except sqlite3.Error:
        return []
    try:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT * FROM samples WHERE agent_id = ? AND ts >= ? ORDER BY ts DESC LIMIT ?",
            (agent_id, time.time() - since_seconds, int(limit)),
        ).fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()
    return [dict(r) for r in reversed(rows)]
