"""`logs ID [-n N] [-f]`: the tail of an agent's log file; with an offset, what was appended since."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, ConfigDict, Field

from ..log_files import read_from, tail_lines

NAME = "logs"
HELP = "Show an agent's log (stdout and stderr)."


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    lines: int = Field(default=50, ge=0, le=100_000)
    offset: int | None = Field(default=None, ge=0)  # follow mode: bytes already seen
    max_bytes: int = Field(default=256 * 1024, ge=1, le=4 * 1024 * 1024)


class Result(BaseModel):
    path: str
    text: str
    offset: int  # pass back as `offset` to get what comes next
    rotated: bool = False


def read_log(path, args: Args) -> Result:
    """The tail (or, with args.offset, what came since) of the log file at path; agentctl uses it offline."""
    if args.offset is None:
        lines = tail_lines(path, args.lines) if args.lines else []
        size = path.stat().st_size if path.exists() else 0
        text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
        return Result(path=str(path), text=text, offset=size)
    data, offset, rotated = read_from(path, args.offset, args.max_bytes)
    return Result(path=str(path), text=data.decode("utf-8", errors="replace"), offset=offset, rotated=rotated)


async def handle(daemon, args: Args) -> Result:
    daemon.registry.get(args.id)
    path = daemon.log_path(args.id)
    # File reads can be slow on a loaded disk; keep them off the event loop.
    return await asyncio.get_running_loop().run_in_executor(None, read_log, path, args)
