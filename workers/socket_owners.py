"""The record of seen sockets: every socket a sender proof's descriptor read saw, by process, so that the
same process's other connections are proven by a lookup instead of another read (docs/decisions.md, "HTTP
sender identity"; what an outsider could try against it: docs/threat-model.md)."""

from __future__ import annotations

import os
import select
import time
from dataclasses import dataclass

from workers.proc_lineage import below, parent_of, stat_of

OWNERS_TTL = 5.0
MAX_OWNED_SOCKETS = 8192
MAX_RECORDED_PIDS = 64  # each holds one or two descriptors open (a pidfd, or its /proc/<pid>/stat; its parent's pidfd)


@dataclass
class _Record:
    # Bound to the process that was read, kept open: a pidfd (readable once that process has exited), or,
    # where the kernel has no pidfd, its /proc/<pid>/stat (reading it fails once that process is gone).
    handle: int
    exited: select.poll | None  # polls the pidfd; None: the handle is the stat file
    start: int  # start time, compared when the handle is the stat file
    uid: int
    at: float  # when a read last added to it
    sockets: dict[int, tuple[str, float]]  # socket inode -> (descriptor number, when it was seen there)
    # The parent it had when a proof through it last looked, and a pidfd of that parent: a process is
    # reparented only when its parent exits, so while that pidfd is not readable the parent is the same.
    parent: int = 0
    parent_fd: int | None = None


def _open(pid: int) -> _Record | None:
    """A record bound to the process that holds pid now, or None if there is none. Whether it is still that
    process when its descriptors have been read is for the caller to check (`_alive`)."""
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    except OSError:  # no pidfd (kernel < 5.3, or a seccomp filter): the stat file instead
        return _open_stat(pid)
    exited = select.poll()
    exited.register(handle, select.POLLIN)
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        os.close(handle)
        return None
    return _Record(handle, exited, 0, uid, 0.0, {})


def _open_stat(pid: int) -> _Record | None:
    try:
        handle = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    stat = stat_of(handle)
    if stat is None:
        os.close(handle)
        return None
    return _Record(handle, None, stat[0], os.fstat(handle).st_uid, 0.0, {})


def _alive(record: _Record) -> bool:
    """Whether the process the record is bound to has not exited (a zombie has: its descriptors are closed).
    One poll of the pidfd, which cannot come to name another process when the pid is reused."""
    if record.exited is not None:
        return all(fd != record.handle for fd, _ in record.exited.poll(0))
    now = stat_of(record.handle)
    return now is not None and now[0] == record.start


def _parent(pid: int, record: _Record) -> int | None:
    """The recorded process's parent pid now, or None if it has exited."""
    if record.exited is None:
        now = stat_of(record.handle)
        return now[1] if now is not None and now[0] == record.start else None
    if record.parent_fd is not None:
        # One poll for both: the process alive and its parent the same, i.e. no read of its stat file
        # (~4 us, most of a recalled proof through a descendant, as wrk below its agent does).
        exited = {fd for fd, _ in record.exited.poll(0)}
        if not exited:
            return record.parent
        if record.handle in exited:
            return None
        _forget_parent(record)
    ppid = parent_of(pid)  # by path: it was this process's only if the process is still alive afterwards
    if ppid is None or not _alive(record):
        return None
    _remember_parent(pid, record, ppid)
    return ppid


def _remember_parent(pid: int, record: _Record, ppid: int) -> None:
    try:
        fd = os.pidfd_open(ppid)
    except OSError:
        return  # gone already (the next proof reads again), or no pidfd
    # Still its parent after the pidfd was opened, so the pidfd is of that parent, not of a newcomer that
    # took its pid: the parent's exit would have reparented the process first.
    if parent_of(pid) != ppid or not _alive(record):
        os.close(fd)
        return
    record.parent, record.parent_fd = ppid, fd
    record.exited.register(fd, select.POLLIN)


def _forget_parent(record: _Record) -> None:
    if record.parent_fd is not None:
        if record.exited is not None:
            record.exited.unregister(record.parent_fd)
        os.close(record.parent_fd)
        record.parent, record.parent_fd = 0, None


def _close(record: _Record) -> None:
    _forget_parent(record)
    os.close(record.handle)


class SocketOwners:
    """The sockets seen in processes' descriptor tables, so a process's other connections are proven by a
    lookup instead of another read (docs/decisions.md, "HTTP sender identity").

    A socket inode names one socket until 2**32 more pseudo-file inodes have been made, so a socket seen in
    a process's table was that process's socket. An entry proves a client socket only for the same process
    (a pidfd of it held open and not exited, so a reused pid does not inherit it), when the socket's kernel
    owner uid is the uid that process ran as, for `ttl` seconds after it was seen, and while the process is
    the claimed pid or below the agent at the time of the proof."""

    def __init__(self, ttl: float = OWNERS_TTL, capacity: int = MAX_OWNED_SOCKETS,
                 max_pids: int = MAX_RECORDED_PIDS, clock=time.monotonic) -> None:
        self.ttl = ttl
        self.capacity = capacity
        self.max_pids = max_pids
        self._clock = clock
        self._by_pid: dict[int, _Record] = {}  # least recently read first
        self._by_inode: dict[int, int] = {}  # socket inode -> pid whose table held it
        self.hits = 0
        self.links_read = 0  # readlinks done: what the proofs cost

    def __len__(self) -> int:
        return len(self._by_inode)

    def close(self) -> None:
        for pid in list(self._by_pid):
            self.drop(pid)

    def read(self, pid: int, fds: list[str] | None = None) -> tuple[dict[int, str], list[str]] | None:
        """Read pid's descriptors `fds` (None: all of them) and record every socket among them: the sockets
        seen (inode -> descriptor) and those of `fds` that are free, or None if the process is gone."""
        record = self._by_pid.get(pid) or _open(pid)  # alive after the read: the descriptors were this process's
        if record is None:
            return None
        found = self._links(pid, fds)
        if found is None or not _alive(record):  # the process ended during the read
            if self._by_pid.get(pid) is record:
                self.drop(pid)
            else:
                _close(record)
            return None
        seen = found[0]
        now = self._clock()
        if fds is None:  # a full read is the whole truth: what it did not see is gone
            for inode in record.sockets:
                if self._by_inode.get(inode) == pid:
                    del self._by_inode[inode]
            record.sockets = {}
        for inode, fd in seen.items():
            record.sockets[inode] = (fd, now)
            self._by_inode[inode] = pid
        record.at = now
        self._by_pid.pop(pid, None)
        self._by_pid[pid] = record  # most recently read last
        self._evict(now, keep=pid)
        return found

    def _links(self, pid: int, fds: list[str] | None) -> tuple[dict[int, str], list[str]] | None:
        """Socket inode -> descriptor number for pid's descriptors `fds` (None: all), and the free ones among
        `fds`; None if unreadable."""
        if fds is not None and len(fds) <= 2:  # a hint or two: opening the directory would cost more than it saves
            self.links_read += len(fds)
            return sockets_among(fds, lambda name: os.readlink(f"/proc/{pid}/fd/{name}"))
        try:
            # Relative to the directory's descriptor: cheaper than resolving /proc/<pid>/fd per entry.
            dir_fd = os.open(f"/proc/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            names = os.listdir(dir_fd) if fds is None else fds
            self.links_read += len(names)
            return sockets_among(names, lambda name: os.readlink(name, dir_fd=dir_fd))
        except OSError:
            return None
        finally:
            os.close(dir_fd)

    def _evict(self, now: float, keep: int) -> None:
        for pid, record in list(self._by_pid.items()):  # least recently read first
            crowded = len(self._by_pid) > self.max_pids or len(self._by_inode) > self.capacity
            if pid == keep or (not crowded and now - record.at <= self.ttl):
                break
            self.drop(pid)
        record = self._by_pid.get(keep)
        while record is not None and len(self._by_inode) > self.capacity:  # one process alone has too many
            inode = next(iter(record.sockets))  # the longest seen: a fresh one is likelier to be asked for
            del record.sockets[inode]
            self._by_inode.pop(inode, None)

    def drop(self, pid: int) -> None:
        """Forget what reads of pid saw (the process is gone, or it is evicted)."""
        record = self._by_pid.pop(pid, None)
        if record is not None:
            _close(record)
            for inode in record.sockets:
                if self._by_inode.get(inode) == pid:
                    del self._by_inode[inode]

    def forget(self, inode: int) -> None:
        """The connection of this client socket closed: it needs no proof any more."""
        pid = self._by_inode.pop(inode, None)
        if pid is not None:
            self._by_pid[pid].sockets.pop(inode, None)

    def holder(self, inode: int, uid: int | None, first: list[int], root: int) -> tuple[int, str] | None:
        """(pid, descriptor) under which a read saw socket `inode`, if that was under `ttl` seconds ago, the
        process is still the same, ran as `uid` (the socket's owner, from sock_diag) and is in `first` or
        below `root` now; else None."""
        pid = self._by_inode.get(inode) if inode and uid is not None else None
        if pid is None:
            return None
        record = self._by_pid[pid]
        fd, seen_at = record.sockets[inode]
        if self._clock() - seen_at > self.ttl:
            self.forget(inode)
            return None
        if record.uid != uid:
            return None  # not the user whose process held it: the full proof decides
        if pid in first:
            gone = not _alive(record)
        else:
            ppid = _parent(pid, record)
            gone = ppid is None
        if gone:
            self.drop(pid)  # gone (its pid may be another process's by now)
            return None
        if pid not in first and not below(ppid, root):
            return None  # no longer in the claimed tree (its parent exited, say)
        self.hits += 1
        return pid, fd


def sockets_among(names: list[str], readlink) -> tuple[dict[int, str], list[str]]:
    """Socket inode -> descriptor number, for those of `names` that are sockets; and the names that are free
    (no such descriptor)."""
    seen: dict[int, str] = {}
    free: list[str] = []
    for name in names:
        try:
            link = readlink(name)
        except FileNotFoundError:
            free.append(name)
            continue
        except OSError:
            continue
        if link.startswith("socket:["):
            seen[int(link[8:-1])] = name
    return seen, free
