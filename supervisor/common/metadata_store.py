"""Per-agent metadata documents in ``<data_dir>/metadata/<agent_id>.json``, written by the parent.

Every save is atomic and durable (temp file in the same directory, fsync, rename, fsync of the
directory), so a crash leaves either the old or the new document. A file that cannot be read back is
moved aside as ``<name>.corrupt-<UTC timestamp>`` and treated as absent: it never stops the daemon.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from supervisor.wire.verbs.status import ExitRecord  # stored here, shown by status
from supervisor.common.durable import fsync_dir
from supervisor.common.json_limits import JsonTooDeep, check_depth

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
AGENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DIR_MODE = 0o750
FILE_MODE = 0o640
_SUFFIX = ".json"
_TMP_SUFFIX = ".tmp"


def iso_utc(ts: float | None = None) -> str:
    """ISO 8601 UTC with milliseconds, e.g. ``2026-11-28T22:43:45.123Z``; ``ts=None`` means now."""
    dt = datetime.now(timezone.utc) if ts is None else datetime.fromtimestamp(ts, timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_iso(text: str | None) -> float | None:
    """The epoch seconds of an ISO 8601 time written by iso_utc; None for None or garbage."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def validate_agent_id(agent_id: str) -> str:
    """Return ``agent_id`` if it is safe to use as a file name, else raise ValueError."""
    if not isinstance(agent_id, str) or not AGENT_ID_RE.fullmatch(agent_id):
        raise ValueError(
            f"invalid agent id {agent_id!r}: must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}"
        )
    return agent_id


class AgentRecord(BaseModel):
    """Persistent state of one agent, as stored in its metadata file."""

    # Files written by a newer agentd may carry keys we do not know yet.
    model_config = ConfigDict(extra="ignore")

    id: str
    type: str = "custom"
    version: str | None = None
    status: str = "stopped"
    health: str | None = None
    pid: int | None = None
    create_time: float | None = None
    start_ticks: int | None = None  # /proc start time in clock ticks since boot (identity across clock steps)
    cgroup: str | None = None  # the agent's cgroup directory when agentd tracked it by cgroup
    notify_status: str | None = None  # the agent's last sd_notify STATUS=
    boot_id: str | None = None
    # How to stop it, kept so a stop interrupted by an agentd restart can be finished even after the
    # agent left the configuration.
    stop_signal: str | None = None
    stop_timeout: float | None = None
    pgid: int | None = None
    start_time: str | None = None
    restart_count: int = 0
    total_restarts: int = 0
    last_restart: str | None = None
    last_restart_reason: str | None = None
    started_by_restart: bool = False  # the recorded process came from a restart, not an operator start
    last_exit: ExitRecord | None = None
    last_heartbeat: str | None = None
    cpu: float | None = None
    memory: int | None = None
    operator_stopped: bool = False
    # What the process was started with (supervisor/parent/launch_spec.py): digests by field.
    launch: dict[str, str] | None = None
    updated_at: str | None = None
    schema_version: int = SCHEMA_VERSION


def _read_nofollow(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


class MetadataStore:
    """The metadata directory: load, save and delete agent records."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        # Temp files of saves in progress in this process; load_all must not sweep them.
        self._inflight: set[str] = set()
        self._lock = threading.Lock()

    def path_for(self, agent_id: str) -> Path:
        """Path of the metadata file of ``agent_id`` (validated)."""
        return self.directory / f"{validate_agent_id(agent_id)}{_SUFFIX}"

    def load(self, agent_id: str) -> AgentRecord | None:
        """The stored record, or None when absent or unusable (then moved aside)."""
        return self._read(self.path_for(agent_id), agent_id)

    def load_all(self) -> dict[str, AgentRecord]:
        """Every usable record keyed by agent id; also sweeps temp files left by a crash."""
        records: dict[str, AgentRecord] = {}
        try:
            entries = sorted(os.scandir(self.directory), key=lambda e: e.name)
        except OSError as exc:
            log.warning("cannot list metadata directory %s: %s", self.directory, exc)
            return records
        for entry in entries:
            name = entry.name
            if name.endswith(_TMP_SUFFIX):
                self._remove_stale_tmp(Path(entry.path))
                continue
            if not name.endswith(_SUFFIX):
                continue
            agent_id = name[: -len(_SUFFIX)]
            if not AGENT_ID_RE.fullmatch(agent_id):
                log.warning("ignoring metadata file %s: name is not a valid agent id", entry.path)
                continue
            record = self._read(Path(entry.path), agent_id)
            if record is not None:
                records[agent_id] = record
        return records

    def save(self, record: AgentRecord) -> None:
        """Write ``record`` atomically and durably; sets ``record.updated_at``."""
        path = self.path_for(record.id)
        record.updated_at = iso_utc()
        data = (record.model_dump_json(indent=2) + "\n").encode()
        fd, tmp_name = tempfile.mkstemp(
            dir=self.directory, prefix=f".{record.id}.", suffix=_TMP_SUFFIX
        )
        tmp_base = os.path.basename(tmp_name)
        with self._lock:
            self._inflight.add(tmp_base)
        try:
            try:
                os.fchmod(fd, FILE_MODE)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp_name, path)
        except BaseException:
            try:
                os.unlink(tmp_name)
            except FileNotFoundError:
                pass
            raise
        finally:
            with self._lock:
                self._inflight.discard(tmp_base)
        fsync_dir(self.directory)

    def delete(self, agent_id: str) -> None:
        """Remove the record of ``agent_id``; a missing file is fine."""
        try:
            os.unlink(self.path_for(agent_id))
        except FileNotFoundError:
            return
        fsync_dir(self.directory)

    def _read(self, path: Path, agent_id: str) -> AgentRecord | None:
        try:
            raw = _read_nofollow(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            why = "a symbolic link, not followed" if exc.errno == errno.ELOOP else exc.strerror or exc
            self._quarantine(path, f"unreadable ({why})")
            return None
        try:
            check_depth(raw)
            doc = json.loads(raw)
        except JsonTooDeep:
            self._quarantine(path, "not valid JSON (nested too deeply)")
            return None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            reason = "empty file" if not raw.strip() else f"not valid JSON ({exc})"
            self._quarantine(path, reason)
            return None
        if not isinstance(doc, dict):
            self._quarantine(path, f"wrong shape: expected a JSON object, got {type(doc).__name__}")
            return None
        try:
            record = AgentRecord.model_validate(doc)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "<root>"
            self._quarantine(
                path, f"wrong shape: {where}: {first['msg']} ({exc.error_count()} error(s))"
            )
            return None
        if record.id != agent_id:
            self._quarantine(path, f"id {record.id!r} does not match the file name")
            return None
        return record

    def _quarantine(self, path: Path, reason: str) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        target = path.with_name(f"{path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            # Two corruptions of one file within a second must not overwrite the first copy.
            target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
            n += 1
        try:
            os.replace(path, target)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning(
                "corrupt metadata file %s (%s); could not move it aside: %s; ignoring it",
                path, reason, exc,
            )
            return
        try:
            fsync_dir(self.directory)
        except OSError:
            pass
        log.warning("corrupt metadata file %s (%s); moved aside to %s", path, reason, target.name)

    def _remove_stale_tmp(self, path: Path) -> None:
        with self._lock:
            if path.name in self._inflight:
                return
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot remove stale metadata temp file %s: %s", path, exc)
            return
        log.info("removed stale metadata temp file %s", path)
