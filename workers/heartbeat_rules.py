"""Heartbeat field rules shared by the HTTP and Unix-socket intake workers (docs/heartbeat-api.md).

`parse_heartbeat` checks the fields; workers/agent_directory.py ties a heartbeat to an agent and its process tree.
"""

from __future__ import annotations

import json
import json.scanner
import os
import re
from datetime import datetime, timezone
from functools import lru_cache

import pydantic_core

from supervisor.common.json_limits import JsonTooDeep, check_depth
from supervisor.config.agent import AGENT_ID_PATTERN
from supervisor.config.units import describe_value

__all__ = ["HeartbeatRejected", "NCPU", "decode_json", "parse_heartbeat", "parse_json"]

NCPU = os.cpu_count() or 1
CPU_LIMIT = 100 * NCPU
MAX_TEXT = 256
MAX_PID = 2**31 - 1  # the Manager's wire types are int32
MAX_MEMORY = 2**63 - 1  # SQLite and protobuf integers are 64-bit
_AGENT_ID = re.compile(AGENT_ID_PATTERN)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?(?:([Zz])|([+-])(\d{2}):(\d{2}))?"
)


class HeartbeatRejected(Exception):
    """A heartbeat that is not accepted: the HTTP status to answer, a counter key, and a sentence for people."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"HeartbeatRejected({self.status}, {self.reason!r}, {self.message!r})"


def _invalid(message: str) -> HeartbeatRejected:
    return HeartbeatRejected(400, "invalid", message)


_scan_json = json.scanner.make_scanner(json.JSONDecoder())  # the scanner json.loads itself runs


def parse_json(text: str) -> object:
    """`json.loads(text)`, same result and same errors, minus its wrapper overhead for a text that starts with '{'.

    A heartbeat is one small object, so json.loads' own checks (BOM, leading and trailing whitespace via
    regular expressions) cost about a third of the parse. Anything unusual goes through json.loads itself."""
    if text[:1] == "{":
        try:
            obj, end = _scan_json(text, 0)
        except StopIteration:  # not reached for '{', but json.loads words this error
            return json.loads(text)
        if end == len(text) or not text[end:].strip(" \t\n\r"):
            return obj
    return json.loads(text)  # raises "Extra data", "Expecting value", ... exactly as before


def decode_json(data: bytes | bytearray, what: str = "body", *, fast: bool = True) -> object:
    """Bytes to a JSON value, or HeartbeatRejected 400 `invalid` whose message says what is wrong with them.

    Every failure json can raise is mapped here, so an intake never sees a traceback from input: bad UTF-8,
    bad syntax, nesting past MAX_JSON_DEPTH (supervisor/common/json_limits.py), integers over Python's 4300-digit limit.
    `fast=False` uses the standard library's json alone: the reference the fast path is tested against."""
    try:
        check_depth(data)  # json and pydantic recurse per level: refuse before they would hit the stack
        if fast:
            # pydantic's jiter parses a heartbeat in 0.51 µs, json 1.34 µs (docs/performance.md, "One HTTP
            # worker and the 1.5× target"). It is stricter than json (lone surrogates, over-long numbers):
            # whatever it refuses goes through json, so what is accepted and every error's wording stay json's.
            try:
                return pydantic_core.from_json(data)
            except ValueError:
                pass
        return parse_json(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _invalid(f"{what}: not valid UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise _invalid(f"{what}: not valid JSON: {exc}") from None
    except JsonTooDeep:
        raise _invalid(f"{what}: JSON nested too deeply") from None
    except ValueError:  # int(): "Exceeds the limit (4300 digits) for integer string conversion"
        raise _invalid(f"{what}: a number has too many digits") from None


# ----------------------------------------------------------------------------------------------- fields


@lru_cache(maxsize=512)
def _day_start(year: int, month: int, day: int) -> float | None:
    """Epoch seconds of a UTC midnight, or None for a date that does not exist; cached, heartbeats share days."""
    try:
        return datetime(year, month, day, tzinfo=timezone.utc).timestamp()
    except (ValueError, OverflowError):
        return None


# "YYYY-MM-DDTHH:MM" (exactly as sent, separator included) -> epoch of that minute, or None when it is no valid
# time. Every agent's timestamps share the current minute, so this saves the date arithmetic on nearly every
# heartbeat; it holds derived values only (never a verdict on a whole timestamp) and is bounded.
_minute_starts: dict[str, float | None] = {}
_MINUTE_CACHE_SIZE = 256


def _minute_start(text: str) -> float | None:
    """Epoch of the minute an RFC 3339-shaped text names ("YYYY-MM-DD?HH:MM" prefix), or None if there is no such minute."""
    prefix = text[:16]
    start = _minute_starts.get(prefix, False)
    if start is not False:
        return start  # type: ignore[return-value]
    year, month, day, hour, minute = int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), int(text[14:16])
    if hour > 23 or minute > 59:
        start = None
    else:
        midnight = _day_start(year, month, day)
        start = None if midnight is None else midnight + hour * 3600 + minute * 60
    if len(_minute_starts) >= _MINUTE_CACHE_SIZE:
        _minute_starts.clear()
    _minute_starts[prefix] = start
    return start


_fromisoformat = datetime.fromisoformat
_SIGNS = ("+", "-")


def parse_time(text: str) -> float | None:
    """Epoch seconds of an RFC 3339 time (naive means UTC), or None if it is not one."""
    # What agents send, "YYYY-MM-DDTHH:MM:SS[.ffffff]" and "Z" or "+HH:MM", goes to datetime's C parser:
    # 0.4 µs against 0.7-1.1 µs for the general path (docs/performance.md, "One HTTP worker and the 1.5×
    # target"). fromisoformat accepts more than RFC 3339 (basic formats, a comma fraction, any separator,
    # zones without a colon); the shape checked first keeps its answer the general path's, and a property
    # test holds the two to one answer.
    if text[-1:] == "Z":
        size = len(text) - 1  # the date, the time and its fraction
    elif text[-3:-2] == ":" and text[-6:-5] in _SIGNS:
        size = len(text) - 6
    else:
        size = 0
    # 1 to 6 fraction digits: fromisoformat truncates beyond microseconds, the general path does not.
    if (
        (size == 19 or (20 < size <= 26 and text[19] == "."))  # fromisoformat takes "SS.Z" too
        and text[4] == "-" and text[7] == "-" and text[10] == "T" and text[13] == ":" and text[16] == ":"
    ):
        try:
            return _fromisoformat(text).timestamp()
        except ValueError:
            pass  # a leap second, a day that does not exist, a stray character: the general path decides
    return parse_time_general(text)


def parse_time_general(text: str) -> float | None:
    """`parse_time` for any RFC 3339 shape: the reference its fast path is tested against."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        return None
    # The regex has fixed widths up to the seconds: "YYYY-MM-DD?HH:MM:SS" are text[0:19], whatever follows.
    start = _minute_start(text)
    if start is None:
        return None
    second = int(text[17:19])
    # :60 is a leap second, which RFC 3339 allows; it simply counts as the next second.
    if second > 60:
        return None
    epoch = start + second
    if len(text) > 19:  # a fraction, a zone, or both
        frac, sign = m.group(7, 9)
        if frac:
            epoch += float("0" + frac)
        if sign:
            off_h, off_m = int(m.group(10)), int(m.group(11))
            if off_h > 23 or off_m > 59:
                return None
            offset = off_h * 3600 + off_m * 60
            epoch -= offset if sign == "+" else -offset
    return epoch


def _text(key: str, value: object, problems: list[str], out: dict) -> None:
    # Printable only: a lone surrogate cannot be encoded to UTF-8 on the way to the parent, and control or
    # format characters (escape sequences, bidi overrides) would reach operators' terminals via agentctl.
    if not isinstance(value, str):
        problems.append(f"{key}: expected a string, got {describe_value(value)}")
    elif len(value) > MAX_TEXT:
        problems.append(f"{key}: longer than {MAX_TEXT} characters ({len(value)})")
    elif not value.isprintable():
        bad = next(c for c in value if not c.isprintable())
        problems.append(f"{key}: must be printable text; character {value.index(bad)} is {ascii(bad)}")
    else:
        out[key] = value


# Hot-path parser, kept as one function over 60 lines on purpose: it runs once per heartbeat, and splitting
# it into per-field helpers adds a Python call each (measured with timeit: a beat parses in ~5.7 us, an
# extra call costs ~0.1-0.24 us, so three helpers would cost 5-12 % of the parse).
def parse_heartbeat(obj: object, *, agent_id_required: bool, received_at: float, bad_timestamps: list[str] | None = None) -> dict:
    """Check the known fields of one heartbeat and return them cleaned (keys of `Heartbeat`; null = absent).

    `agent_id_required` (HTTP) makes `pid` required too; `timestamp` defaults to `received_at`. An unparsable
    `timestamp` is not a rejection, as in the original daemon: receipt time is used and the value, described,
    is appended to `bad_timestamps` for the caller to count and log."""
    if not isinstance(obj, dict):
        raise _invalid("expected a JSON object")
    # One pass in field order; problems are collected so that the reply names every bad field.
    get = obj.get
    problems: list[str] = []
    out: dict = {}

    agent_id = get("agent_id")
    if agent_id is None:
        if agent_id_required:
            problems.append("agent_id: required")
    elif not isinstance(agent_id, str):
        problems.append(f"agent_id: expected a string, got {describe_value(agent_id)}")
    elif _AGENT_ID.fullmatch(agent_id) is None:
        problems.append(f"agent_id: not a valid agent id (letters, digits, '_', '.', '-'; at most 64), got {describe_value(agent_id)}")
    else:
        out["agent_id"] = agent_id

    pid = get("pid")
    if type(pid) is int and 0 < pid <= MAX_PID:  # the common case first; the chain below words every other
        out["pid"] = pid
    elif pid is None:
        if agent_id_required:
            problems.append("pid: required")
    elif isinstance(pid, bool) or not isinstance(pid, int):
        problems.append(f"pid: expected an integer, got {describe_value(pid)}")
    elif not 0 < pid <= MAX_PID:
        problems.append(f"pid: must be a positive process id, got {describe_value(pid)}")
    else:
        out["pid"] = pid

    stamp = get("timestamp")
    if stamp is None:
        out["timestamp"] = float(received_at)
    else:
        epoch = parse_time(stamp) if isinstance(stamp, str) else None
        if epoch is None:
            out["timestamp"] = float(received_at)
            if bad_timestamps is not None:
                bad_timestamps.append(describe_value(stamp))
        else:
            out["timestamp"] = epoch

    value = get("status")
    if value is not None:
        if type(value) is str and len(value) <= MAX_TEXT and value.isprintable():
            out["status"] = value
        else:
            _text("status", value, problems, out)
    value = get("version")
    if value is not None:
        if type(value) is str and len(value) <= MAX_TEXT and value.isprintable():
            out["version"] = value
        else:
            _text("version", value, problems, out)

    cpu = get("cpu")
    if type(cpu) is float and 0 <= cpu <= CPU_LIMIT:
        out["cpu"] = cpu
    elif cpu is not None:
        if isinstance(cpu, bool) or not isinstance(cpu, (int, float)):
            problems.append(f"cpu: expected a number, got {describe_value(cpu)}")
        elif not 0 <= cpu <= CPU_LIMIT:  # also refuses NaN, which Python's json accepts
            problems.append(f"cpu: must be between 0 and {CPU_LIMIT} (100 × {NCPU} CPUs), got {describe_value(cpu)}")
        else:
            out["cpu"] = float(cpu)

    memory = get("memory")
    if type(memory) is int and 0 <= memory <= MAX_MEMORY:
        out["memory"] = memory
    elif memory is not None:
        if isinstance(memory, bool) or not isinstance(memory, int):
            problems.append(f"memory: expected an integer number of bytes, got {describe_value(memory)}")
        elif not 0 <= memory <= MAX_MEMORY:
            problems.append(f"memory: must be between 0 and {MAX_MEMORY} bytes, got {describe_value(memory)}")
        else:
            out["memory"] = memory

    if problems:
        raise _invalid("; ".join(problems))
    return out
