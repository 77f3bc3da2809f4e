"""Durations and sizes for people to read ("2m05s", "612MiB"): formatting only, no dependencies, so
agentctl's quick path (supervisor/ctl/agentctl_main.py) can print them without importing pydantic."""

from __future__ import annotations

_BYTE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_duration(seconds: float | None) -> str:
    """Short human form: "45s", "2m05s", "3h04m", "2d03h"; "-" for None."""
    if seconds is None:
        return "-"
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if 0 < seconds and round(seconds * 1000) < 1000:
        return f"{round(seconds * 1000)}ms"
    if seconds < 10 and not float(seconds).is_integer():
        text = f"{seconds:.1f}"
        if float(text) < 10:
            return text.removesuffix(".0") + "s"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def format_bytes(n: int | None) -> str:
    """Short human form with binary units: "512B", "1.5KiB", "612MiB"; "-" for None."""
    if n is None:
        return "-"
    if n < 0:
        return "-" + format_bytes(-n)
    if n < 1024:
        return f"{int(n)}B"
    for power, unit in enumerate(_BYTE_UNITS, start=1):
        scaled = n / 1024**power
        text = f"{scaled:.1f}" if scaled < 10 else f"{scaled:.0f}"
        text = text.removesuffix(".0")
        # Rounding can reach 1024 (e.g. 1023.6KiB); show it in the next unit instead.
        if float(text) < 1024 or unit == _BYTE_UNITS[-1]:
            return text + unit
    raise AssertionError("unreachable")
