"""Searching an agent's log and its rotated copies: by pattern (`--grep`) and by time (`--since`, `--until`).

Agents write their own lines, so a line's time is the first timestamp near its start: RFC 3339 / ISO 8601
(`2026-11-28T22:56:13Z`, `2026-11-28 22:56:13,379`, `"@timestamp":"..."` in JSON lines); without a zone it
is the node's local time. A line without one (a traceback, a continuation) takes the time of the line
before it; lines before the first timed one have no time and are left out of a time-bounded search.
Blocking file I/O: the daemon runs it in the executor.
"""

from __future__ import annotations

import gzip
import re
from collections import deque
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from supervisor.parent.log_files import list_log_files

__all__ = ["SEARCH_BUDGET", "SearchResult", "line_time", "search_logs"]

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
