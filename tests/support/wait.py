"""Deadline polling for tests, and reading the marker files written by helper_agent.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")

# Their value may contain spaces, so these markers split into (kind, rest-of-line) only.
_UNSPLIT_KINDS = {"ENV", "CWD"}


def wait_until(
    predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, message: str | None = None
) -> T:
    """Polls predicate() until it is truthy and returns that value; raises AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        now = time.monotonic()
        if now >= deadline:
            what = message or getattr(predicate, "__qualname__", repr(predicate))
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last value: {value!r}")
        time.sleep(min(interval, deadline - now))


def read_markers(path: str | Path) -> list[tuple[str, ...]]:
    """Complete marker lines of path split on whitespace; [] when the file does not exist yet."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    # A line without its newline may still be being written.
    lines = text.split("\n")[:-1]
    markers = []
    for line in lines:
        kind, _, rest = line.partition(" ")
        if not kind:
            continue
        markers.append((kind, rest) if kind in _UNSPLIT_KINDS else tuple(line.split()))
    return markers


def wait_for_marker(
    path: str | Path, kind: str, count: int = 1, timeout: float = 30.0
) -> list[tuple[str, ...]]:
    """Waits until path holds at least count markers of kind and returns all of them."""
    seen: list[tuple[str, ...]] = []

    def enough() -> list[tuple[str, ...]]:
        seen[:] = read_markers(path)
        matching = [m for m in seen if m[0] == kind]
        return matching if len(matching) >= count else []

    try:
        return wait_until(enough, timeout=timeout)
    except AssertionError:
        raise AssertionError(
            f"timed out after {timeout:g} s waiting for {count} {kind} marker(s) in {path}; markers: {seen}"
        ) from None
