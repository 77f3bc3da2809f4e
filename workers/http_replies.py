"""The HTTP intake's limits, routes and replies: status lines and bodies built once where they can be
(docs/heartbeat-api.md)."""

from __future__ import annotations

import json
import time
from http import HTTPStatus
from typing import Callable


from supervisor.common.prometheus import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE


MAX_HEADER_BYTES = 16 * 1024  # request line + headers; httptools itself sets no limit
MAX_CONNECTIONS = 1024
LINGER = 2.0  # after refusing a request we read and discard for this long, so the client sees our reply
SWEEP_INTERVAL = 0.25
MAX_REPORTED = 100  # rejected items listed in a batch reply; the count is always complete
# A scrape fetches the parent's metrics text (agents' health, cpu, rss, restarts) and answers once it has it;
# nothing is fetched between scrapes (issue 11: idle cost). Scrapes this close together share one fetch.
PARENT_METRICS_FRESH = 1.0
PARENT_METRICS_WAIT = 3.0  # a parent that does not answer by then: the scrape gets the last copy
ACCEPT_BATCH = 4  # connections accepted per wake-up; small, so that workers sharing the socket share a burst
UNVERIFIED_SHARE = 4  # at most 1/4 of max_connections may be connections that delivered no valid heartbeat yet
REJECT_REASONS = ("invalid", "unknown_agent", "unauthorized", "pid_not_in_tree", "agent_not_running", "too_large",
                  "sender_not_agent", "sender_unproven")
JSON_TYPE = b"application/json"
METRICS_TYPE = PROMETHEUS_CONTENT_TYPE.encode()
ROUTES: dict[bytes, tuple[bytes, ...]] = {
    b"/heartbeat": (b"POST",),
    b"/heartbeats": (b"POST",),
    b"/heartbeat/stats": (b"GET", b"HEAD"),
    b"/metrics": (b"GET", b"HEAD"),
}
_PHRASES = {s.value: s.phrase.encode() for s in HTTPStatus}
_STATUS_KEYS = {s.value: f"http_{s.value}" for s in HTTPStatus}


_second_cache: list = [-1, ""]  # [whole second, its "YYYY-MM-DDTHH:MM:SS"]: strftime once a second, not per reply


def rfc3339(t: float | None = None) -> str:
    """UTC wall-clock time as RFC 3339 with milliseconds, e.g. 2024-05-01T12:00:00.123Z."""
    t = time.time() if t is None else t
    ms = int(t * 1000)
    second = ms // 1000
    if second != _second_cache[0]:
        _second_cache[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_second_cache[1]}.{ms % 1000:03d}Z"


def json_reply(success: bool, message: str, **extra: object) -> bytes:
    """The reply body every JSON endpoint uses: success, message, timestamp, then endpoint fields."""
    return json.dumps({"success": success, "message": message, "timestamp": rfc3339(), **extra}).encode()


def fixed_reply(success: bool, message: str) -> Callable[[], bytes]:
    """json_reply for a constant message, pre-encoded: the hot path skips json.dumps."""
    head = json.dumps({"success": success, "message": message, "timestamp": ""})[:-3].encode()  # cut the empty "" and the closing brace
    return lambda: b'%s"%s"}' % (head, rfc3339().encode())


def render(status: int, body: bytes, *, content_type: bytes = JSON_TYPE, close: bool = False,
           headers: tuple[tuple[bytes, bytes], ...] = (), head_only: bool = False) -> bytes:
    """One complete HTTP/1.1 response."""
    extra = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    if close:
        extra += b"Connection: close\r\n"
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status, _PHRASES.get(status, b"Unknown"), content_type, len(body), extra, b"" if head_only else body)


class _Accepted:
    """The 200 reply to one heartbeat. Its body, and the whole keep-alive response around it, are built once per
    millisecond (the resolution of the timestamp in it) instead of once per request."""

    def __init__(self) -> None:
        self._body = fixed_reply(True, "heartbeat accepted")
        self.ms = -1
        self.body = b""
        self.response = b""  # render(200, self.body): what a keep-alive POST gets

    def __call__(self, now: float | None = None) -> bytes:
        """The body for a heartbeat accepted at `now` (epoch seconds; the caller's receipt time saves a clock read)."""
        ms = int((time.time() if now is None else now) * 1000)
        if ms != self.ms:
            body = self._body()
            self.ms, self.body, self.response = ms, body, render(200, body)
        return self.body


ACCEPTED = _Accepted()
BUSY = fixed_reply(False, "the daemon is not keeping up; retry shortly")


def _go_time(epoch: float | None) -> str:
    """RFC 3339 UTC with nanoseconds, as Go writes a time.Time (its zero time when there is none)."""
    if epoch is None:
        return "0001-01-01T00:00:00Z"
    seconds = int(epoch)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((epoch - seconds) * 1e9):09d}Z"
