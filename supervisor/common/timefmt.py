"""Times as people read them, one convention everywhere: local time with its UTC offset, or UTC on request.

Machine-readable output (JSON, metadata, the Manager link) keeps ISO 8601 UTC; only what is shown to a
person goes through here, so "12:10:26+01:00" in agentctl and in agentd's own log mean the same instant.
"""

from __future__ import annotations

import datetime

_utc = False


def use_utc(on: bool) -> None:
    """Show times in UTC instead of local time (agentctl --utc)."""
    global _utc
    _utc = on


def _moment(value: float | str) -> datetime.datetime:
    if isinstance(value, str):
        moment = datetime.datetime.fromisoformat(value)
        return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)
    return datetime.datetime.fromtimestamp(value, datetime.timezone.utc)


def show(value: float | str | None, ms: bool = False) -> str:
    """'2026-12-03 13:10:26+01:00' for a Unix time or an ISO string; '-' for None or unreadable text."""
    if value is None:
        return "-"
    try:
        moment = _moment(value)
    except (ValueError, OverflowError, OSError):
        return str(value)
    moment = moment.astimezone(datetime.timezone.utc if _utc else None)
    return moment.isoformat(sep=" ", timespec="milliseconds" if ms else "seconds")


def clock(value: float) -> str:
    """Time of day with offset, for live views: '13:10:26+01:00'."""
    return show(value).split(" ", 1)[1]
