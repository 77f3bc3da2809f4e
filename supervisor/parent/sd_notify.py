"""systemd's sd_notify over its datagram socket, without a dependency: READY=1, STOPPING=1, STATUS=."""

from __future__ import annotations

import os
import socket


def sd_notify(message: str) -> bool:
    """Send `message` to $NOTIFY_SOCKET if systemd gave us one; returns whether it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError:
        return False


# A WatchdogSec= below ~1 s cannot be met by a loop that also supervises; this floor keeps a tiny value from
# turning the supervision loop into a busy loop (systemd then restarts agentd, which the operator will see).
MIN_PING_INTERVAL = 0.1


class Watchdog:
    """systemd's watchdog for agentd itself: WATCHDOG=1 at half of $WATCHDOG_USEC, sent by the supervision loop.

    `tick()` is called by the parent's supervision loop after each pass over the agents, so pings stop
    when that loop stops (a hung loop, a stopped process), not merely when the process is gone.
    """

    def __init__(self, environ: dict[str, str] | None = None, send=sd_notify) -> None:
        env = os.environ if environ is None else environ
        self.interval = watchdog_interval(env)
        self._send = send
        self._last: float | None = None

    def tick(self, now: float) -> None:
        """Ping if half the watchdog timeout has passed since the last ping (monotonic seconds)."""
        if self.interval is not None and (self._last is None or now - self._last >= self.interval):
            self._last = now
            self._send("WATCHDOG=1")

    def due_in(self, now: float) -> float | None:
        """Seconds until the next ping is due, for the loop's sleep; None without a watchdog."""
        if self.interval is None:
            return None
        return 0.0 if self._last is None else max(0.0, self._last + self.interval - now)


def watchdog_interval(env) -> float | None:
    """Half of $WATCHDOG_USEC in seconds (sd_watchdog_enabled(3)), or None: unset, unparsable, or for another pid."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return max(MIN_PING_INTERVAL, usec / 2_000_000)
