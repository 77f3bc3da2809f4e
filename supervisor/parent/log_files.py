"""Agent log files: ``<log_dir>/<agent_id>/agent.log`` plus rotated copies ``agent.log.N[.gz]``.

The parent opens the log with O_APPEND and hands the descriptor to the agent as stdout and stderr, so
the agent writes the file directly: no pipe to fill up, nothing lost or blocked when the parent dies.

Rotation is copy-and-truncate, because renaming would leave the agent writing to the renamed file.
The copy is made in rounds (copy up to the current size, re-stat, copy what was appended meanwhile)
until it has caught up at a line end, and the live file is truncated right after a final size check.

The remaining loss window: whatever the agent writes between that last size check and the truncate
(two back-to-back syscalls, normally microseconds) is lost. Against an agent that writes without ever
pausing, the truncate can also wait a few milliseconds for the file's inode lock while the agent keeps
appending, and the catch-up itself gives up after ``MAX_COPY_ROUNDS`` / ``CATCH_UP_SECONDS`` (that
case is logged with the byte count). We accept this: closing the window needs the agent's cooperation
(reopen on a signal) or a pipe through the parent, and pipes are what make other supervisors block
agents or lose their output when the supervisor stalls or dies. Rotation happens once per
``max_size`` bytes, so the loss is a few lines per 100 MiB at worst, and none when the agent pauses
for a moment. Because the agent's descriptor is O_APPEND, its next write after the truncate lands at
offset 0: no sparse file, no torn line. Compression runs after the truncate, outside the window.

Everything here is blocking file I/O; the parent calls it from a thread executor.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import logging
import os
import re
import shutil
import time
from pathlib import Path

from supervisor.common.log_reading import READ_LIMIT, rotated_copies, rotated_path
from supervisor.common.durable import fsync_dir

log = logging.getLogger(__name__)

DIR_MODE = 0o750
FILE_MODE = 0o640
# Bounds on the catch-up copy; a writer that never pauses this long loses what it writes in the
# last round (logged as a warning).
MAX_COPY_ROUNDS = 10_000
CATCH_UP_SECONDS = 0.1
PARTIAL_LINE_WAIT = 0.01
_COPY_CHUNK = 8 * 1024 * 1024
_SYNC_THRESHOLD = 256 * 1024
_COPY_FALLBACK_ERRNOS = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM}


def open_agent_log(path: Path) -> int:
    """Open (create) the live log for appending; returns a close-on-exec fd to dup onto 1 and 2."""
    path = Path(path)
    if not path.parent.is_dir():
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)


TRUNCATED_FOR_SPACE = "truncated_for_space"  # what rotate_if_needed returns when the disk had no room for a copy
SPACE_MARGIN = 1 << 20  # free space kept beyond the copy's size before copying at all


def _room_for_copy(path: Path, size: int) -> bool:
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return True  # cannot tell: try, and fall back on ENOSPC
    return st.f_bavail * st.f_frsize >= size + SPACE_MARGIN


def _truncate_in_place(fd: int, path: Path, size: int, why: str) -> str:
    """No room to copy: the agent's logging must not break (nor everyone's on that disk), so its oldest
    bytes go instead. The caller turns this into an event for the operator."""
    os.ftruncate(fd, 0)
    log.warning("%s: %s; truncated it in place, dropping %d bytes of its oldest output", path, why, size)
    return TRUNCATED_FOR_SPACE


def rotate_if_needed(path: Path, max_size: int, keep: int, compress: bool) -> bool | str:
    """Copy-and-truncate ``path`` when it has reached ``max_size`` bytes, keeping ``keep`` copies.

    Returns True if it rotated, TRUNCATED_FOR_SPACE (also true) if the disk had no room for the copy and
    the file was truncated in place instead. ``keep=0`` truncates without a copy. A rotation already
    running on the same file (in any process) makes this return False.
    """
    if max_size < 1:
        raise ValueError(f"max_size must be at least 1 byte, got {max_size}")
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        try:
            # Agents never flock their stdout; the lock only keeps two rotations apart.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        size = os.fstat(fd).st_size
        if size < max_size:
            return False
        _remove_tmp_leftovers(path)
        if keep and not _room_for_copy(path, size):
            return _truncate_in_place(fd, path, size, "no room on the disk for a rotated copy")
        # Shift before copying so a crash at any point leaves every byte in a properly named file.
        _shift(path, keep)
        if keep == 0:
            os.ftruncate(fd, 0)
            fsync_dir(path.parent)
            log.info("truncated %s (%d bytes, keep=0)", path, size)
            return True
        dest = rotated_path(path, 1, compressed=False)
        try:
            copied, lost = _copy_and_truncate(fd, dest)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or os.fstat(fd).st_size == 0:
                raise
            return _truncate_in_place(fd, path, size, f"copying it failed ({exc.strerror})")
        if lost:
            log.warning(
                "rotating %s: writer outpaced the copy; at least %d bytes were dropped", path, lost
            )
        if compress:
            dest = _compress(dest)
        fsync_dir(path.parent)
        log.info("rotated %s (%d bytes) to %s", path, copied, dest.name)
        return True
    finally:
        os.close(fd)


def _remove_tmp_leftovers(path: Path) -> None:
    pattern = re.compile(rf"{re.escape(path.name)}\.[0-9]+(\.gz)?\.tmp")
    with os.scandir(path.parent) as entries:
        for entry in entries:
            if pattern.fullmatch(entry.name):
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    pass


def _shift(path: Path, keep: int) -> None:
    copies = rotated_copies(path)
    for index, _, p in copies:
        if index >= keep:
            p.unlink(missing_ok=True)
    for index, compressed, p in reversed(copies):
        if index < keep:
            os.rename(p, rotated_path(path, index + 1, compressed))


def _copy_and_truncate(src: int, dest: Path) -> tuple[int, int]:
    """Copy ``src`` into ``dest`` until caught up, then truncate ``src``; returns (copied, lost)."""
    dst = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    truncated = False
    try:
        deadline = time.monotonic() + CATCH_UP_SECONDS
        copied = 0
        rounds = 0
        partial_at, partial_until = -1, 0.0
        while True:
            size = os.fstat(src).st_size
            if size <= copied:
                if copied > 0 and os.pread(src, 1, copied - 1) not in (b"\n", b""):
                    # Mid-line: either a write spanning a page boundary is half visible (the
                    # truncate would wait for it, then drop its second half) or the agent left
                    # an unfinished line; wait briefly in case it is the former.
                    now = time.monotonic()
                    if partial_at != copied:
                        partial_at, partial_until = copied, now + PARTIAL_LINE_WAIT
                    if now < partial_until:
                        time.sleep(0.0001)
                        continue
                # The loss window: keep these two syscalls back to back.
                if os.fstat(src).st_size <= copied:
                    os.ftruncate(src, 0)
                    truncated = True
                    break
                continue
            if rounds and (rounds >= MAX_COPY_ROUNDS or time.monotonic() >= deadline):
                os.ftruncate(src, 0)
                truncated = True
                break
            delta = size - copied
            copied += _copy_range(src, dst, copied, delta)
            rounds += 1
            # Make the bulk durable before the truncate, but copy small tails back to back: a sync
            # there would let the writer append more each round and we would never catch up.
            if delta >= _SYNC_THRESHOLD:
                os.fdatasync(dst)
        os.fdatasync(dst)
    except BaseException:
        os.close(dst)
        if not truncated:  # afterwards the copy is the only place that data lives
            dest.unlink(missing_ok=True)
        raise
    os.close(dst)
    return copied, max(0, size - copied)


def _copy_range(src: int, dst: int, offset: int, count: int) -> int:
    done = 0
    use_kernel_copy = True
    while done < count:
        want = min(_COPY_CHUNK, count - done)
        if use_kernel_copy:
            try:
                n = os.copy_file_range(src, dst, want, offset + done)
            except OSError as exc:
                if exc.errno not in _COPY_FALLBACK_ERRNOS:
                    raise
                use_kernel_copy = False
                continue
        else:
            data = os.pread(src, want, offset + done)
            n = len(data)
            view = memoryview(data)
            while view:
                view = view[os.write(dst, view) :]
        if n == 0:
            break  # source shrank under us
        done += n
    return done


def _compress(raw: Path) -> Path:
    """Gzip ``raw`` into ``raw.gz`` and remove it; on failure keep ``raw`` and return it."""
    target = raw.with_name(raw.name + ".gz")
    tmp = target.with_name(target.name + ".tmp")
    try:
        with open(raw, "rb") as src, open(tmp, "wb", opener=_log_file_opener) as out:
            with gzip.GzipFile(filename=raw.name, mode="wb", fileobj=out) as gz:
                shutil.copyfileobj(src, gz, READ_LIMIT)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        log.warning("cannot compress %s, keeping it uncompressed: %s", raw, exc)
        tmp.unlink(missing_ok=True)
        return raw
    raw.unlink()
    return target


def _log_file_opener(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_CLOEXEC, FILE_MODE)


def rotation_due_by_age(path: Path, interval: float, started: float, now: float) -> bool:
    """True when the live log holds output and its current content began `interval` seconds ago or more.

    The content began at the last rotation (the mtime of copy 1) or, with no copy, at `started` (when the
    daemon first saw the file)."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return False
    except FileNotFoundError:
        return False
    begin = started
    for index, _, copy in rotated_copies(path):
        if index == 1:
            try:
                begin = max(begin, copy.stat().st_mtime)
            except FileNotFoundError:
                pass
    return now - begin >= interval


def prune_old_logs(log_dir: Path, max_age: dict[str, float | None], default_max_age: float | None, now: float) -> list[Path]:
    """Delete log files older than their agent's `log.max_age`; returns what was removed.

    Configured agents (`max_age` keys) lose rotated copies only. A directory of an agent no longer
    configured is judged by `default_max_age`: its rotated copies, then its live file once that too is
    older, then the directory when empty. Only `agent.log*` names are touched."""
    removed: list[Path] = []
    try:
        entries = [e for e in os.scandir(log_dir) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return removed
    for entry in entries:
        configured = entry.name in max_age
        limit = max_age[entry.name] if configured else default_max_age
        if limit is None:
            continue
        live = Path(entry.path) / "agent.log"
        candidates = [p for _, _, p in rotated_copies(live)] + ([] if configured else [live])
        for p in candidates:
            try:
                if now - p.stat().st_mtime > limit:
                    p.unlink()
                    removed.append(p)
            except FileNotFoundError:
                continue
        if not configured:
            try:
                os.rmdir(entry.path)  # only when empty: anything else in there is not ours to delete
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


def rotate_by_settings(path: Path, max_size: int, keep: int, compress: bool, interval: float | None, started: float, now: float) -> bool | str:
    """Rotate by size (`log.max_size`), else by age (`log.interval`); True if it rotated."""
    rotated = rotate_if_needed(path, max_size, keep, compress)
    if rotated:
        return rotated  # True, or TRUNCATED_FOR_SPACE
    if interval is not None and rotation_due_by_age(path, interval, started, now):
        return rotate_if_needed(path, 1, keep, compress)
    return False
