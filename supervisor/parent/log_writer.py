"""The per-agent log writer behind `log.format: stamped`: each line the agent writes to stdout or stderr is
appended to its log file as `<local time with offset> <out|err> <line>`.

It runs in a session of its own, outside the agent's process tree and not tied to agentd (the
daemontools/s6 pattern): it lives exactly as long as some process of the agent holds its stdout or
stderr, so a kill -9 or restart of agentd loses no line, and a stop of the agent ends it with the last
line written. Stdlib only, started as a script, so it costs a few MiB and milliseconds.

Usage: log_writer.py LOGFILE OUT_FD ERR_FD (the read ends of the agent's two pipes, inherited).
"""

from __future__ import annotations

import datetime
import errno
import os
import selectors
import signal
import sys
import time

PARTIAL_FLUSH = 1.0  # an unfinished line (a prompt, a progress bar) is written after this long
MAX_LINE = 64 * 1024  # a longer line is written in pieces of this size
READ_SIZE = 64 * 1024
FILE_MODE = 0o640


def stamp() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="milliseconds")


class Writer:
    """Splits two byte streams into lines and appends them stamped; never blocks the agent on a full disk."""

    def __init__(self, path: str, streams: dict[int, str]) -> None:
        self.path = path
        self.streams = streams
        self.partial: dict[int, bytes] = {fd: b"" for fd in streams}
        self.partial_since: dict[int, float] = {}
        self.dropped = 0
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)

    def feed(self, fd: int, data: bytes) -> None:
        buf = self.partial[fd] + data
        *lines, rest = buf.split(b"\n")
        while len(rest) > MAX_LINE:
            lines.append(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        self.partial[fd] = rest
        if rest:
            self.partial_since.setdefault(fd, time.monotonic())
        else:
            self.partial_since.pop(fd, None)
        if lines:
            self._write(fd, lines)

    def flush_partial(self, fd: int, force: bool = False) -> None:
        since = self.partial_since.get(fd)
        if self.partial[fd] and (force or (since is not None and time.monotonic() - since >= PARTIAL_FLUSH)):
            self._write(fd, [self.partial[fd]])
            self.partial[fd] = b""
            self.partial_since.pop(fd, None)

    def next_flush_in(self) -> float | None:
        if not self.partial_since:
            return None
        oldest = min(self.partial_since.values())
        return max(0.0, oldest + PARTIAL_FLUSH - time.monotonic())

    def _write(self, fd: int, lines: list[bytes]) -> None:
        head = f"{stamp()} {self.streams[fd]} ".encode()
        data = b"".join(head + line + b"\n" for line in lines)
        try:
            while data:  # one write per batch: O_APPEND keeps it whole beside agentd's own appends
                written = os.write(self.fd, data)
                data = data[written:]
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG):
                raise
            self.dropped += len(lines)  # the disk is full: drop rather than block the agent on a full pipe

    def close(self) -> None:
        if self.dropped:
            try:
                os.write(self.fd, f"{stamp()} agentd-log-writer: {self.dropped} lines lost to a full disk\n".encode())
            except OSError:
                pass
        os.close(self.fd)


def run(path: str, out_fd: int, err_fd: int) -> int:
    writer = Writer(path, {out_fd: "out", err_fd: "err"})
    sel = selectors.DefaultSelector()
    for fd in (out_fd, err_fd):
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    open_fds = {out_fd, err_fd}
    while open_fds:
        for key, _ in sel.select(writer.next_flush_in()):
            fd = key.fd
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                continue
            if data:
                writer.feed(fd, data)
                continue
            writer.flush_partial(fd, force=True)  # EOF: the agent's last process closed this stream
            sel.unregister(fd)
            os.close(fd)
            open_fds.discard(fd)
        for fd in open_fds:
            writer.flush_partial(fd)
    writer.close()
    return 0


def main(argv: list[str]) -> int:
    # A hangup or Ctrl-C meant for agentd's terminal must not end the agent's logging.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if len(argv) != 3:
        sys.stderr.write("usage: log_writer.py LOGFILE OUT_FD ERR_FD\n")
        return 2
    return run(argv[0], int(argv[1]), int(argv[2]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
