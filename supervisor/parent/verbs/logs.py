"""`logs ID [-n N] [-f] [--grep RE] [--since T] [--until T]`: an agent's log: tail, follow, or search.

A search (grep or a time bound) reads the rotated copies too (supervisor/parent/log_search.py). An agent no longer
configured can still be read while its log directory exists (retention removes it after log.max_age).
"""

from __future__ import annotations

import asyncio
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from supervisor.parent.log_files import read_from, tail_lines
from supervisor.parent.log_search import search_logs
from supervisor.wire.protocol import ControlError, ErrorCode

NAME = "logs"
HELP = "Show an agent's log (stdout and stderr)."


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    lines: int = Field(default=50, ge=0, le=100_000)
    offset: int | None = Field(default=None, ge=0)  # follow mode: bytes already seen
    max_bytes: int = Field(default=256 * 1024, ge=1, le=4 * 1024 * 1024)
    grep: str | None = Field(default=None, max_length=1000)  # a Python regular expression
    since: float | None = None  # wall clock (epoch seconds)
    until: float | None = None

    @field_validator("grep")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value


def _safe_id(agent_id: str) -> bool:
    # A removed agent's id names a directory: never let it climb out of log_dir.
    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", agent_id) is not None and ".." not in agent_id


class Result(BaseModel):
    path: str
    text: str
    offset: int  # pass back as `offset` to get what comes next
    rotated: bool = False
    searched: list[str] | None = None  # with grep/since/until: the files read, oldest first
    skipped_files: int = 0  # files left out: over the search's byte budget


def read_log(path, args: Args) -> Result:
    """The tail (or, with args.offset, what came since, or a search) of the log file at path; agentctl uses it offline."""
    if args.offset is None and (args.grep is not None or args.since is not None or args.until is not None):
        found = search_logs(path, re.compile(args.grep) if args.grep is not None else None, args.since, args.until, args.lines)
        size = path.stat().st_size if path.exists() else 0
        text = "".join(line + "\n" for line in found.lines)
        return Result(path=str(path), text=text, offset=size, searched=found.files, skipped_files=found.skipped)
    if args.offset is None:
        lines = tail_lines(path, args.lines) if args.lines else []
        size = path.stat().st_size if path.exists() else 0
        text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
        return Result(path=str(path), text=text, offset=size)
    data, offset, rotated = read_from(path, args.offset, args.max_bytes)
    return Result(path=str(path), text=data.decode("utf-8", errors="replace"), offset=offset, rotated=rotated)


async def handle(daemon, args: Args) -> Result:
    path = daemon.log_path(args.id)
    if daemon.registry.find(args.id) is None and not (_safe_id(args.id) and path.parent.is_dir()):
        daemon.registry.get(args.id)  # not configured and no logs left: the usual not_found
    if args.since is not None and args.until is not None and args.since > args.until:
        raise ControlError(ErrorCode.BAD_REQUEST, "--since is after --until")
    # File reads can be slow on a loaded disk; keep them off the event loop.
    return await asyncio.get_running_loop().run_in_executor(None, read_log, path, args)
