"""The ``agentd.pid`` lock in run_dir: one agentd per run_dir.

The lock is an ``flock`` held on an open descriptor for the life of the process, so it goes away
with the process however it dies; the pid written in the file only feeds the error message.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

FILE_MODE = 0o644
# The holder writes its pid just after taking the lock; give it a moment before saying "unknown".
_PID_READ_ATTEMPTS = 10
_PID_READ_DELAY = 0.02
_ACQUIRE_ATTEMPTS = 5


def write_plain_pid(path: Path, pid: int):
    """Write `pid` to a plain pid file (daemon.pid_file, for scripts); returns the function that removes it.

    The removal leaves a file that no longer holds our pid alone: something else owns it by then.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{pid}.tmp")
    tmp.write_text(f"{pid}\n")
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, path)

    def remove() -> None:
        try:
            if path.read_text().strip() == str(pid):
                path.unlink()
        except OSError:
            pass

    return remove


class AlreadyRunning(Exception):
    """Another process holds the lock on the pid file."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.path = Path(path)
        self.pid = pid
        who = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(
            f"agentd is already running with run_dir {self.path.parent} "
            f"({who}; lock held on {self.path})"
        )


class PidFile:
    """An exclusively locked pid file; ``acquire`` it once at start-up and keep it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    @staticmethod
    def read_pid(path: Path) -> int | None:
        """The pid written in ``path``, or None when missing, empty or not a number."""
        try:
            text = Path(path).read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            return None
        try:
            pid = int(text)
        except ValueError:
            return None
        return pid if pid > 0 else None

    def acquire(self) -> None:
        """Take the lock and write our pid, or raise AlreadyRunning."""
        if self._fd is not None:
            return
        for _ in range(_ACQUIRE_ATTEMPTS):
            try:
                # Never through a planted symlink: root would overwrite whatever it points at.
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise ValueError(f"{self.path} is a symbolic link; agentd does not follow it (remove it)") from None
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise AlreadyRunning(self.path, self._holder_pid()) from None
                raise
            # The previous holder unlinks the file in release() while still holding the lock; if we
            # opened that inode just before, our lock is on a file nobody else will ever open again.
            if not self._same_file(fd):
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                os.fsync(fd)
                try:
                    os.fchmod(fd, FILE_MODE)
                except OSError:
                    pass  # not ours (e.g. created by root); the lock is what counts
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            log.debug("acquired pid file %s", self.path)
            return
        raise AlreadyRunning(self.path, self._holder_pid())

    def release(self) -> None:
        """Unlink the file and drop the lock; safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._same_file(fd):
                os.unlink(self.path)
        except OSError as exc:
            log.warning("cannot remove pid file %s: %s", self.path, exc)
        finally:
            os.close(fd)

    def __enter__(self) -> PidFile:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _same_file(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)

    def _holder_pid(self) -> int | None:
        for attempt in range(_PID_READ_ATTEMPTS):
            pid = self.read_pid(self.path)
            if pid is not None:
                return pid
            if attempt + 1 < _PID_READ_ATTEMPTS:
                time.sleep(_PID_READ_DELAY)
        return None
