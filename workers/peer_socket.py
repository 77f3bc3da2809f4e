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


HINTS_PER_PID = 16
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

    def taken(self, pid: int, fd: str) -> None:
        """A connection was found under fd: the number is in use until that connection closes."""
        hints = self._by_pid.get(pid)
        if hints is not None and fd in hints:
            hints.remove(fd)


def _proc_stat(pid: int) -> tuple[int, int, int] | None:
    """(start time in clock ticks since boot, parent pid, owner uid) of a live process, or None if it is gone
    or a zombie (its descriptors are closed). The start time tells a process from a later one under its pid."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        uid = os.fstat(fd).st_uid
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    fields = data[data.rfind(b")") + 2:].split()  # comm may hold spaces and parentheses
    try:
        if fields[0] in (b"Z", b"X"):
            return None
        return int(fields[19]), int(fields[1]), uid
    except (IndexError, ValueError):
        return None


MAX_TREE_DEPTH = 64
OWNERS_TTL = 5.0
MAX_OWNED_SOCKETS = 8192


@dataclass
class _Scan:
    start: int
    uid: int
    at: float
    sockets: dict[int, str]  # socket inode -> descriptor number


class SocketOwners:
    """Socket inodes seen in a process's descriptor table the last time a proof had to read all of it, so the
    other connections that process had open then are proven by a lookup instead of another full read
    (docs/decisions.md, "HTTP sender identity"). A socket inode names one socket until 2**32 more pseudo-file
    inodes have been made, so one seen in a process's table was that process's socket. An entry counts only
    for the same process (pid and start time), for a client socket whose kernel owner uid is the uid that
    process had, for `ttl` seconds, and while the process is in the claimed tree at the time of the proof."""

    def __init__(self, ttl: float = OWNERS_TTL, capacity: int = MAX_OWNED_SOCKETS, clock=time.monotonic) -> None:
        self.ttl = ttl
        self.capacity = capacity
        self._clock = clock
        self._by_pid: dict[int, _Scan] = {}  # oldest scan first
        self._by_inode: dict[int, int] = {}  # socket inode -> pid whose scan saw it
        self.hits = 0
        self.scans = 0

    def __len__(self) -> int:
        return len(self._by_inode)

    def record(self, pid: int, start: int, uid: int, sockets: dict[int, str]) -> None:
        """A full read of pid's descriptors (the process with this start time) found these sockets."""
        self.scans += 1
        self.drop(pid)
        now = self._clock()
        while self._by_pid:  # oldest first: expired scans, then whatever makes room
            oldest, scan = next(iter(self._by_pid.items()))
            if now - scan.at <= self.ttl and len(self._by_inode) + len(sockets) <= self.capacity:
                break
            self.drop(oldest)
        if len(sockets) > self.capacity:
            sockets = dict(list(sockets.items())[: self.capacity])
        self._by_pid[pid] = _Scan(start, uid, now, sockets)
        for inode in sockets:
            self._by_inode[inode] = pid

    def drop(self, pid: int) -> None:
        """Forget what a scan of pid saw (the process is gone, or a newer scan replaces it)."""
        scan = self._by_pid.pop(pid, None)
        if scan is not None:
            for inode in scan.sockets:
                if self._by_inode.get(inode) == pid:
                    del self._by_inode[inode]

    def forget(self, inode: int) -> None:
        """The connection of this client socket closed: it needs no proof any more."""
        pid = self._by_inode.pop(inode, None)
        if pid is not None:
            self._by_pid[pid].sockets.pop(inode, None)

    def holder(self, inode: int, uid: int | None, first: list[int], root: int) -> tuple[int, str] | None:
        """(pid, descriptor) under which a recent scan saw socket `inode`, if that process is still the same,
        ran as `uid` (the socket's owner, from sock_diag) and is in `first` or below `root` now; else None."""
        pid = self._by_inode.get(inode) if inode and uid is not None else None
        if pid is None:
            return None
        scan = self._by_pid[pid]
        if self._clock() - scan.at > self.ttl:
            self.drop(pid)
            return None
        if scan.uid != uid:
            return None  # not the user whose process held it: the full proof decides
        now = _proc_stat(pid)
        if now is None or now[0] != scan.start:
            self.drop(pid)  # gone, or another process under the same pid
            return None
        if pid not in first and not _below(now[1], root):
            return None  # no longer in the claimed tree (its parent exited, say)
        self.hits += 1
        return pid, scan.sockets[inode]


def _below(ppid: int, root: int) -> bool:
    """Whether the process whose parent is `ppid` descends from root, walking parents up from it."""
    current = ppid
    for _ in range(MAX_TREE_DEPTH):
        if root <= 1 or current <= 1:
            return False
        if current == root:
            return True
        stat = _proc_stat(current)
        if stat is None:
            return False
        current = stat[1]
    return False


def _holds(pid: int, needle: str, hints: FdHints | None, owners: SocketOwners | None = None) -> str | None:
    """The descriptor number under which pid holds `needle`, or None. With `owners`, a full read goes on past
    the match and records every socket it saw."""
    base = f"/proc/{pid}/fd"
    tried: set[str] = set()
    if hints is not None:
        for fd in hints.get(pid):
            tried.add(fd)
            try:
                if os.readlink(f"{base}/{fd}") == needle:
                    return fd
            except OSError:
                continue
    before = _proc_stat(pid) if owners is not None else None
    try:
        # Relative to the directory's descriptor: cheaper than resolving /proc/<pid>/fd per entry, and bound to
        # this process even if its pid is reused meanwhile.
        dir_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    found: str | None = None
    sockets: dict[int, str] = {}
    try:
        for name in os.listdir(dir_fd):
            if name in tried and owners is None:
                continue
            try:
                link = os.readlink(name, dir_fd=dir_fd)
            except OSError:
                continue
            if link == needle:
                found = name
                if owners is None:
                    break
            if owners is not None and link.startswith("socket:["):
                sockets[int(link[8:-1])] = name
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    if before is not None and owners is not None:
        after = _proc_stat(pid)
        if after is not None and after[0] == before[0]:  # one process throughout the read
            owners.record(pid, before[0], before[2], sockets)
    return found


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
    Every full read of a descriptor table is recorded in `owners`."""
    needle = f"socket:[{inode}]"
    seen: set[int] = set()
    for pid in first:
        if pid not in seen:
            seen.add(pid)
            fd = _holds(pid, needle, hints, owners)
            if fd is not None:
                return pid, fd
    queue = [root]
    while queue and len(seen) < limit:
        for child in _children(queue.pop()):
            if child not in seen:
                seen.add(child)
                fd = _holds(child, needle, hints, owners)
                if fd is not None:
                    return child, fd
                queue.append(child)
    return None
