"""Who is at the other end of a loopback TCP connection: the kernel's own answer, by sock_diag netlink.

On loopback both ends of a connection are sockets of this machine. One exact NETLINK_SOCK_DIAG lookup by
the 4-tuple returns the client socket's owner uid and inode (what `ss -tpe` shows), in tens of
microseconds; the inode is then found among the open files of the process tree a heartbeat claims
(`socket_in_tree`). See docs/decisions.md, "HTTP sender identity".
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import time
from dataclasses import dataclass

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
_NLMSGHDR = struct.Struct("=IHHII")
# inet_diag_req_v2: family, protocol, ext, pad, states; then inet_diag_sockid: sport, dport (big-endian),
# src[4], dst[4] (network order), interface, cookie[2].
_REQ = struct.Struct("=BBBxI")
_SOCKID = struct.Struct("!HH16s16s")
_SOCKID_TAIL = struct.Struct("=III")
_NOCOOKIE = 0xFFFFFFFF
# inet_diag_msg: family, state, timer, retrans, sockid (48 bytes), expires, rqueue, wqueue, uid, inode.
_MSG_HEAD = struct.Struct("=BBBB")
_MSG_TAIL = struct.Struct("=IIIII")
_SOCKID_SIZE = _SOCKID.size + _SOCKID_TAIL.size


@dataclass(frozen=True)
class PeerSocket:
    """The client end of a loopback connection: its owner's uid and its socket inode."""

    uid: int
    inode: int


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, or ::ffff:127.x: an address whose client end is a socket of this machine."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _packed(family: int, host: str) -> bytes:
    raw = socket.inet_pton(family, host.split("%", 1)[0])
    return raw.ljust(16, b"\0")


class SockDiag:
    """One netlink socket for exact lookups; not thread-safe (one per worker process)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
        self._sock.settimeout(1.0)  # the kernel answers at once; this only bounds a surprise
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def peer_of(self, conn: socket.socket) -> PeerSocket | None:
        """The client end of an accepted loopback TCP connection, or None if the kernel does not know it."""
        family = conn.family
        ours = conn.getsockname()
        theirs = conn.getpeername()
        # The client's socket: its source is their address, its destination is ours.
        sockid = _SOCKID.pack(theirs[1], ours[1], _packed(family, theirs[0]), _packed(family, ours[0]))
        sockid += _SOCKID_TAIL.pack(0, _NOCOOKIE, _NOCOOKIE)
        body = _REQ.pack(family, socket.IPPROTO_TCP, 0, 0xFFFFFFFF) + sockid
        self._seq += 1
        self._sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, self._seq, 0) + body)
        while True:
            data = self._sock.recv(8192)
            length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data)
            if seq != self._seq:
                continue  # the late answer to an earlier lookup that timed out
            if kind == NLMSG_ERROR or kind != SOCK_DIAG_BY_FAMILY:
                return None  # ENOENT: the client closed already
            offset = _NLMSGHDR.size + _MSG_HEAD.size + _SOCKID_SIZE
            _expires, _rq, _wq, uid, inode = _MSG_TAIL.unpack_from(data, offset)
            return PeerSocket(uid, inode)


HINTS_PER_PID = 128  # a client with this many connections closing at once still finds its new ones here
MAX_HINTED_PIDS = 1024


class FdHints:
    """Per process, the descriptor numbers to try first: where its connections were found, and those whose
    connections closed since. The kernel gives a new socket the lowest free number, so a client that opens
    a connection per request gets a just-freed one again, and one readlink usually finds it instead of
    reading every descriptor the process has."""

    def __init__(self) -> None:
        self._by_pid: dict[int, list[str]] = {}

    def get(self, pid: int) -> list[str]:
        return self._by_pid.get(pid, [])

    def freed(self, pid: int, fd: str) -> None:
        """A connection held under fd closed: its number is free, and likely the next socket's."""
        hints = self._by_pid.get(pid)
        if hints is None:
            if len(self._by_pid) >= MAX_HINTED_PIDS:
                self._by_pid.clear()
            hints = self._by_pid[pid] = []
        if fd in hints:
            hints.remove(fd)
        hints.insert(0, fd)
        del hints[HINTS_PER_PID:]

    def take_all(self, pid: int) -> list[str]:
        """Every hinted number of pid, which are then no hints any more (they are being read)."""
        return self._by_pid.pop(pid, [])

    def taken(self, pid: int, fd: str) -> None:
        """A connection was found under fd: the number is in use until that connection closes."""
        hints = self._by_pid.get(pid)
        if hints is not None and fd in hints:
            hints.remove(fd)


def _stat_of(fd: int) -> tuple[int, int] | None:
    """(start time in clock ticks since boot, parent pid) from an open /proc/<pid>/stat, or None once that
    process has exited or is a zombie (its descriptors are closed). An open /proc file stays bound to its
    process: after the pid is reused, reading it fails instead of describing the newcomer."""
    try:
        data = os.pread(fd, 4096, 0)
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()  # comm may hold spaces and parentheses
    try:
        if fields[0] in (b"Z", b"X"):
            return None
        return int(fields[19]), int(fields[1])
    except (IndexError, ValueError):
        return None


def _parent_of(pid: int) -> int | None:
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        stat = _stat_of(fd)
    finally:
        os.close(fd)
    return stat[1] if stat is not None else None


def _below(ppid: int, root: int) -> bool:
    """Whether a process whose parent is `ppid` descends from root, walking parents up from it."""
    current: int | None = ppid
    for _ in range(MAX_TREE_DEPTH):
        if current is None or root <= 1 or current <= 1:
            return False
        if current == root:
            return True
        current = _parent_of(current)
    return False


MAX_TREE_DEPTH = 64
OWNERS_TTL = 5.0
MAX_OWNED_SOCKETS = 8192
MAX_RECORDED_PIDS = 64  # each holds its /proc/<pid>/stat open


@dataclass
class _Record:
    stat_fd: int  # /proc/<pid>/stat of the process that was read, kept open: it fails once that process is gone
    start: int
    uid: int
    at: float  # when a read last added to it
    sockets: dict[int, tuple[str, float]]  # socket inode -> (descriptor number, when it was seen there)


class SocketOwners:
    """The sockets seen in processes' descriptor tables, so a process's other connections are proven by a
    lookup instead of another read (docs/decisions.md, "HTTP sender identity").

    A socket inode names one socket until 2**32 more pseudo-file inodes have been made, so a socket seen in
    a process's table was that process's socket. An entry proves a client socket only for the same process
    (its /proc/<pid>/stat held open and the start time unchanged, so a reused pid does not inherit it), when
    the socket's kernel owner uid is the uid that process ran as, for `ttl` seconds after it was seen, and
    while the process is the claimed pid or below the agent at the time of the proof."""

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

    def read(self, pid: int, fds: list[str] | None = None) -> dict[int, str] | None:
        """Read pid's descriptors `fds` (None: all of them) and record every socket among them; the sockets
        seen (inode -> descriptor), or None if the process is gone."""
        record = self._by_pid.get(pid)  # its open stat is read after the descriptors: that shows it was this process
        if record is None:
            try:
                stat_fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
            stat = _stat_of(stat_fd)
            if stat is None:
                os.close(stat_fd)
                return None
            record = _Record(stat_fd, stat[0], os.fstat(stat_fd).st_uid, 0.0, {})
        seen = self._links(pid, fds)
        after = _stat_of(record.stat_fd)
        if seen is None or after is None or after[0] != record.start:  # the process ended during the read
            if self._by_pid.get(pid) is record:
                self.drop(pid)
            else:
                os.close(record.stat_fd)
            return None
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
        return seen

    def _links(self, pid: int, fds: list[str] | None) -> dict[int, str] | None:
        """Socket inode -> descriptor number for pid's descriptors `fds` (None: all), or None if unreadable."""
        if fds is not None and len(fds) <= 2:  # a hint or two: opening the directory would cost more than it saves
            self.links_read += len(fds)
            return _sockets(fds, lambda name: os.readlink(f"/proc/{pid}/fd/{name}"))
        try:
            # Relative to the directory's descriptor: cheaper than resolving /proc/<pid>/fd per entry.
            dir_fd = os.open(f"/proc/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            names = os.listdir(dir_fd) if fds is None else fds
            self.links_read += len(names)
            return _sockets(names, lambda name: os.readlink(name, dir_fd=dir_fd))
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
            inode, _ = record.sockets.popitem()
            self._by_inode.pop(inode, None)

    def drop(self, pid: int) -> None:
        """Forget what reads of pid saw (the process is gone, or it is evicted)."""
        record = self._by_pid.pop(pid, None)
        if record is not None:
            os.close(record.stat_fd)
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
        now = _stat_of(record.stat_fd)
        if now is None or now[0] != record.start:
            self.drop(pid)  # gone (its pid may be another process's by now)
            return None
        if pid not in first and not _below(now[1], root):
            return None  # no longer in the claimed tree (its parent exited, say)
        self.hits += 1
        return pid, fd


def _sockets(names: list[str], readlink) -> dict[int, str]:
    """Socket inode -> descriptor number, for those of `names` that are sockets."""
    seen: dict[int, str] = {}
    for name in names:
        try:
            link = readlink(name)
        except OSError:
            continue
        if link.startswith("socket:["):
            seen[int(link[8:-1])] = name
    return seen


def _holds(pid: int, inode: int, hints: FdHints | None, owners: SocketOwners | None = None) -> str | None:
    """The descriptor number under which pid holds socket `inode`, or None. With `owners`, every descriptor
    read is recorded: the hinted ones (all of them: they are where the process's new connections are), then,
    if those miss, all of them."""
    if owners is not None:
        if hints is not None and hints.get(pid):
            hinted = hints.take_all(pid)
            seen = owners.read(pid, hinted)
            if seen is not None and inode in seen:
                return seen[inode]
        seen = owners.read(pid)
        return seen.get(inode) if seen is not None else None
    needle = f"socket:[{inode}]"
    base = f"/proc/{pid}/fd"
    tried: list[str] = []
    if hints is not None:
        tried = list(hints.get(pid))
        for fd in tried:
            try:
                if os.readlink(f"{base}/{fd}") == needle:
                    return fd
            except OSError:
                continue
    try:
        names = os.listdir(base)
    except OSError:
        return None
    for name in names:
        if name in tried:
            continue
        try:
            if os.readlink(f"{base}/{name}") == needle:
                return name
        except OSError:
            continue
    return None


def _children(pid: int) -> list[int]:
    """Direct children of pid, from /proc/<pid>/task/<tid>/children (no scan of all of /proc)."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return found


def socket_in_tree(inode: int, first: list[int], root: int, limit: int = 256,
                   hints: FdHints | None = None, owners: SocketOwners | None = None) -> tuple[int, str] | None:
    """(pid, descriptor) of the process holding socket `inode`: tried in `first` (the claimed sender, the
    agent), then in the descendants of `root`, at most `limit` processes; None if none of them holds it.
    Every descriptor read is recorded in `owners`."""
    seen: set[int] = set()
    for pid in first:
        if pid not in seen:
            seen.add(pid)
            fd = _holds(pid, inode, hints, owners)
            if fd is not None:
                return pid, fd
    queue = [root]
    while queue and len(seen) < limit:
        for child in _children(queue.pop()):
            if child not in seen:
                seen.add(child)
                fd = _holds(child, inode, hints, owners)
                if fd is not None:
                    return child, fd
                queue.append(child)
    return None
