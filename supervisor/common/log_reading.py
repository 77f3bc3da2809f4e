"""Reading an agent's log files: the tail, what came since an offset, a search, and the rotated copies.

The parent's `logs` verb and agentctl (reading the files itself while agentd is down) share `read_log`;
writing and rotation are the parent's (supervisor/parent/log_files.py). Blocking file I/O: the daemon runs
it in the executor.

Searching, by pattern (`--grep`) and by time (`--since`, `--until`), reads the rotated copies too.
Agents write their own lines, so a line's time is the first timestamp near its start: RFC 3339 / ISO 8601
(`2026-11-28T22:56:13Z`, `2026-11-28 22:56:13,379`, `"@timestamp":"..."` in JSON lines); without a zone it
is the node's local time. A line without one (a traceback, a continuation) takes the time of the line
before it; lines before the first timed one have no time and are left out of a time-bounded search.
"""

from __future__ import annotations

import gzip
import os
import re
from collections import deque
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from supervisor.wire.verbs.logs import Args as LogArgs, Result as LogResult

READ_LIMIT = 1024 * 1024
TAIL_BLOCK = 64 * 1024
TAIL_MAX_BYTES = 16 * 1024 * 1024


def rotated_path(path: Path, index: int, compressed: bool) -> Path:
    """Name of rotated copy number ``index`` (1 = newest) of ``path``."""
    path = Path(path)
    return path.with_name(f"{path.name}.{index}{'.gz' if compressed else ''}")


def list_log_files(path: Path) -> list[Path]:
    """The live file (if present) and its rotated copies, newest first."""
    path = Path(path)
    files = [path] if path.exists() else []
    files.extend(p for _, _, p in rotated_copies(path))
    return files


def tail_lines(path: Path, n: int, max_bytes: int = TAIL_MAX_BYTES) -> list[str]:
    """The last ``n`` lines of ``path`` without newlines, read backwards; a missing file gives []."""
    if n <= 0:
        return []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    try:
        pos = os.fstat(fd).st_size
        chunks: list[bytes] = []
        newlines = 0
        total = 0
        # n + 1 newlines guarantee n whole lines whether or not the file ends with one.
        while pos > 0 and newlines <= n and total < max_bytes:
            step = min(TAIL_BLOCK, pos, max_bytes - total)
            pos -= step
            block = os.pread(fd, step, pos)
            if len(block) < step:
                break  # truncated under us (rotation); what we have so far is still the tail
            chunks.append(block)
            newlines += block.count(b"\n")
            total += step
    finally:
        os.close(fd)
    data = b"".join(reversed(chunks))
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line.decode("utf-8", errors="replace") for line in lines[-n:]]


def read_from(path: Path, offset: int, limit: int = READ_LIMIT) -> tuple[bytes, int, bool]:
    """Up to ``limit`` bytes from ``offset``: ``(data, new_offset, rotated)``.

    ``rotated`` is True (with no data and offset 0) when the file is now shorter than ``offset``;
    the caller then reads again from 0. A truncate followed by growth past ``offset`` between two
    calls cannot be told apart from plain growth.
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return b"", 0, offset > 0
    try:
        size = os.fstat(fd).st_size
        if size < offset:
            return b"", 0, True
        data = os.pread(fd, min(limit, size - offset), offset) if size > offset else b""
    finally:
        os.close(fd)
    return data, offset + len(data), False


def rotated_copies(path: Path) -> list[tuple[int, bool, Path]]:
    """(index, compressed, path) of each rotated copy of ``path``, oldest index first."""
    pattern = re.compile(rf"{re.escape(path.name)}\.([0-9]+)(\.gz)?")
    found = []
    try:
        entries = os.scandir(path.parent)
    except FileNotFoundError:
        return []
    with entries:
        for entry in entries:
            m = pattern.fullmatch(entry.name)
            if m:
                found.append((int(m.group(1)), m.group(2) is not None, Path(entry.path)))
    found.sort(key=lambda t: (t[0], t[1]))
    return found


SEARCH_BUDGET = 512 * 1024 * 1024  # bytes read per search, newest files kept; the rest is reported as skipped
_HEAD = 120  # a timestamp further into the line is part of the message, not the line's time
_STAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?\s?(Z|z|[+-]\d{2}:?\d{2})?"
)


def line_time(line: str) -> float | None:
    """Epoch seconds of the first timestamp in the head of `line`, or None."""
    m = _STAMP.search(line, 0, _HEAD)
    if m is None:
        return None
    year, month, day, hour, minute, second, frac, zone = m.groups()
    try:
        stamp = datetime(int(year), int(month), int(day), int(hour), int(minute), min(int(second), 59))
    except ValueError:
        return None
    if zone:
        zone = "+00:00" if zone in ("Z", "z") else zone
        if ":" not in zone:
            zone = f"{zone[:3]}:{zone[3:]}"
        try:
            stamp = datetime.fromisoformat(stamp.isoformat() + zone)
        except ValueError:
            return None
    epoch = stamp.timestamp()  # naive: local time, the node's clock the agent wrote with
    return epoch + (float(f"0.{frac}") if frac else 0.0)


class SearchResult:
    """The newest matching lines (oldest first), the files read, and how many files were skipped."""

    def __init__(self, lines: list[str], files: list[str], skipped: int) -> None:
        self.lines, self.files, self.skipped = lines, files, skipped


def _lines(path: Path) -> Iterator[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:  # type: ignore[operator]
            for line in f:
                yield line.rstrip("\n")
    except (OSError, EOFError):
        return  # rotated away or a truncated .gz while we read: what was read stands


def search_logs(path: Path, pattern: re.Pattern | None, since: float | None, until: float | None, limit: int) -> SearchResult:
    """The last `limit` lines of the agent's log files, oldest first, that match `pattern` and fall in [since, until]."""
    files = list(reversed(list_log_files(path)))  # oldest first
    chosen: list[Path] = []
    budget, skipped = SEARCH_BUDGET, 0
    for f in reversed(files):  # the newest files get the budget
        try:
            st = f.stat()
        except OSError:
            continue
        if since is not None and f != path and st.st_mtime < since:
            continue  # last written before `since`: nothing in it can match
        if st.st_size > budget:
            skipped += 1
            continue
        budget -= st.st_size
        chosen.append(f)
    chosen.reverse()
    matches: deque[str] = deque(maxlen=max(1, limit))
    bounded = since is not None or until is not None
    for f in chosen:
        current: float | None = None  # a file's untimed head does not inherit the previous file's time
        for line in _lines(f):
            if bounded:
                t = line_time(line)
                current = t if t is not None else current
                if current is None or (since is not None and current < since) or (until is not None and current > until):
                    continue
            if pattern is not None and pattern.search(line) is None:
                continue
            matches.append(line)
    return SearchResult(list(matches) if limit else [], [str(f) for f in chosen], skipped)


def read_log(path: Path, args: LogArgs) -> LogResult:
    """The logs verb's answer for the log file at path: its tail, what came since args.offset, or a search."""
    if args.offset is None and (args.grep is not None or args.since is not None or args.until is not None):
        found = search_logs(path, re.compile(args.grep) if args.grep is not None else None, args.since, args.until, args.lines)
        size = path.stat().st_size if path.exists() else 0
        text = "".join(line + "\n" for line in found.lines)
        return LogResult(path=str(path), text=text, offset=size, searched=found.files, skipped_files=found.skipped)
    if args.offset is None:
        lines = tail_lines(path, args.lines) if args.lines else []
        size = path.stat().st_size if path.exists() else 0
        text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
        return LogResult(path=str(path), text=text, offset=size)
    data, offset, rotated = read_from(path, args.offset, args.max_bytes)
    return LogResult(path=str(path), text=data.decode("utf-8", errors="replace"), offset=offset, rotated=rotated)
