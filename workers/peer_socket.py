"""Who is at the other end of a loopback TCP connection: the kernel's own answer, by sock_diag netlink.

On loopback both ends of a connection are sockets of this machine. One exact NETLINK_SOCK_DIAG lookup by
the 4-tuple returns the client socket's owner uid and inode (what `ss -tpe` shows) in a few microseconds;
the HTTP intake counts a connection against that uid, and the sender proof looks for the inode among the
open files of the process tree a heartbeat claims (workers/tree_proof.py). See docs/decisions.md,
"HTTP sender identity".
"""

from __future__ import annotations

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
