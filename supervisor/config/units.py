"""Durations and sizes as people write them in config files ("30s", "500MiB"), and back."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator

from supervisor.common.human_format import format_bytes, format_duration  # agentctl's quick path needs them without pydantic

__all__ = [
    "Duration",
    "OptionalDuration",
    "OptionalSize",
    "Size",
    "describe_value",
    "format_bytes",
    "format_duration",
    "parse_duration",
    "parse_size",
]

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_BARE_NUMBER = re.compile(rf"[+-]?{_NUMBER}")
# "ms" is listed before "m" so that "500ms" is not read as 500 minutes plus a stray "s".
_DURATION_PART = re.compile(rf"({_NUMBER})\s*(ms|s|m|h|d)", re.IGNORECASE)
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern}\s*)+", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_HINT = "use 30s, 5m, 1h or seconds"

_SIZE = re.compile(rf"({_NUMBER})\s*([a-z]*)", re.IGNORECASE)
_KI, _MI, _GI, _TI = 1024, 1024**2, 1024**3, 1024**4
# Single letters are binary on purpose: "10M" in a log-size setting means MiB to nearly everyone.
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": _KI, "ki": _KI, "kib": _KI, "kb": 1000,
    "m": _MI, "mi": _MI, "mib": _MI, "mb": 1000**2,
    "g": _GI, "gi": _GI, "gib": _GI, "gb": 1000**3,
    "t": _TI, "ti": _TI, "tib": _TI, "tb": 1000**4,
}
_SIZE_HINT = "use 500MiB, 64KiB, 1GiB or bytes"


def describe_value(value: Any) -> str:
    """Render a config value the way a person wrote it, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and not -10**20 < value < 10**20:
        return f"an integer of {len(str(abs(value)))} digits"  # bounded: never echo a 4000-digit number
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57] + "...")
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _reject_negative(seconds: float, original: Any) -> float:
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"not a duration: {describe_value(original)} ({_DURATION_HINT})")
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {describe_value(original)}")
    return seconds


def parse_duration(value: Any) -> float:
    """Seconds from a number of seconds or a string like "30s", "5m", "1h30m", "500ms", "2d"."""
    # bool is an int subclass; "true" as a timeout is always a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a duration ({_DURATION_HINT}), got {describe_value(value)}")
    if isinstance(value, (int, float)):
        return _reject_negative(float(value), value)
    text = value.strip()
    if _BARE_NUMBER.fullmatch(text):
        return _reject_negative(float(text), value)
    if text.startswith("-") and _DURATION.fullmatch(text[1:].strip()):
        raise ValueError(f"duration must not be negative, got {describe_value(value)}")
    if not _DURATION.fullmatch(text):
        raise ValueError(f"not a duration: {describe_value(value)} ({_DURATION_HINT})")
    total = sum(float(num) * _DURATION_UNITS[unit.lower()] for num, unit in _DURATION_PART.findall(text))
    return _reject_negative(total, value)


def parse_size(value: Any) -> int:
    """Bytes from a number or a string like "500MiB", "64KiB", "100MB" (decimal), "10M" (binary)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a size ({_SIZE_HINT}), got {describe_value(value)}")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
            raise ValueError(f"not a size: {describe_value(value)} ({_SIZE_HINT})")
        if value < 0:
            raise ValueError(f"size must not be negative, got {describe_value(value)}")
        return int(round(value))
    text = value.strip()
    if text.startswith("-") and _SIZE.fullmatch(text[1:].strip()):
        raise ValueError(f"size must not be negative, got {describe_value(value)}")
    match = _SIZE.fullmatch(text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"not a size: {describe_value(value)} ({_SIZE_HINT})")
    return int(round(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]))


def _optional_duration(value: Any) -> float | None:
    return None if value is None else parse_duration(value)


def _optional_size(value: Any) -> int | None:
    return None if value is None else parse_size(value)


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds as float; accepts "30s", "5m", "1h" or numbers."""
OptionalDuration = Annotated[float | None, BeforeValidator(_optional_duration)]
"""Like Duration, but null is allowed."""
Size = Annotated[int, BeforeValidator(parse_size)]
"""Bytes as int; accepts "500MiB", "100MB" or numbers."""
OptionalSize = Annotated[int | None, BeforeValidator(_optional_size)]
"""Like Size, but null is allowed."""
