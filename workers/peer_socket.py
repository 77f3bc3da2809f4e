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


def _holds(pid: int, needle: str, hints: FdHints | None) -> str | None:
    """The descriptor number under which pid holds `needle`, or None."""
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
                   hints: FdHints | None = None) -> tuple[int, str] | None:
    """(pid, descriptor) of the process holding socket `inode`: tried in `first` (the claimed sender, the
    agent), then in the descendants of `root`, at most `limit` processes; None if none of them holds it."""
    needle = f"socket:[{inode}]"
    seen: set[int] = set()
    for pid in first:
        if pid not in seen:
            seen.add(pid)
            fd = _holds(pid, needle, hints)
            if fd is not None:
                return pid, fd
    queue = [root]
    while queue and len(seen) < limit:
        for child in _children(queue.pop()):
            if child not in seen:
                seen.add(child)
                fd = _holds(child, needle, hints)
                if fd is not None:
                    return child, fd
                queue.append(child)
    return None
