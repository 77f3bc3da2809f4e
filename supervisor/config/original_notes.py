"""What translating an original-format config records: a note per key whose meaning changed, the problems,
and the helpers every part of the translation reads values with (docs/migration.md)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from supervisor.config.units import describe_value, parse_duration

__all__ = ["FORMAT_WARNING", "Note", "Recorder", "Translation", "empty", "zero"]

FORMAT_WARNING = (
    "read as the original daemon's config format: it behaves as it did there "
    "(`agentd migrate-config FILE` prints agentd's native form; docs/migration.md)"
)


@dataclass(frozen=True)
class Note:
    """What became of one key: `warn` when agentd ignores it or does something other than the file says."""

    path: str
    text: str
    warn: bool = False


@dataclass
class Translation:
    """agentd's native raw config for an original-format file, with a note per changed key and the problems."""

    data: dict
    notes: list[Note] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return [FORMAT_WARNING, *(f"{n.path}: {n.text}" for n in self.notes if n.warn)]


def empty(value: Any) -> bool:
    """The original's "unset" for a string: null or blank."""
    return value is None or (isinstance(value, str) and not value.strip())


def zero(value: Any, duration: bool) -> bool:
    """The original's "unset": Go's zero value (0, 0s, "", null)."""
    if empty(value):
        return True
    try:
        return (parse_duration(value) if duration else float(value)) == 0
    except (TypeError, ValueError):
        return False


class Recorder:
    """Collects notes, problems and relative paths while values are read the way the original read them."""

    def __init__(self) -> None:
        self.notes: list[Note] = []
        self.problems: list[tuple[str, str]] = []
        self.relative: list[str] = []

    def note(self, path: str, text: str, warn: bool = False) -> None:
        self.notes.append(Note(path, text, warn))

    def problem(self, path: str, text: str) -> None:
        self.problems.append((path, text))

    def path(self, where: str, value: Any) -> Any:
        if isinstance(value, str) and value.strip() and not value.startswith("/"):
            self.relative.append(where)
        return value

    def duration(self, where: str, value: Any) -> float | None:
        try:
            return parse_duration(value)
        except (TypeError, ValueError) as exc:
            self.problem(where, str(exc))
            return None

    def port(self, where: str, value: Any) -> int | None:
        try:
            port = int(str(value).strip() or "0")
        except ValueError:
            self.problem(where, f"expected a port number, got {describe_value(value)}")
            return None
        if not 0 <= port <= 65535:
            self.problem(where, f"must be 0..65535, got {port}")
            return None
        return port

    def mapping(self, where: str, value: Any) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(where, f"expected a mapping, got {describe_value(value)}")
            return {}
        return value

    @staticmethod
    def entries(label: str, raw: dict) -> Iterator[tuple[Any, Any, str]]:
        """(key, value, "<label>.<key>") for each key of a raw section, the path its notes are filed under."""
        return ((key, value, f"{label}.{key}") for key, value in raw.items())

    def keep(self, out: dict, key: str, value: Any, where: str, if_empty: str) -> None:
        """out[key] = value, unless the value is the original's "unset": then note `if_empty` instead."""
        if empty(value):
            self.note(where, if_empty)
        else:
            out[key] = value
