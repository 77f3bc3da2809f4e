"""The tree proof: is the client socket of a loopback connection among the open files of the process tree
a heartbeat claims? Tried in the claimed pid and the agent first, then in the agent's descendants, with
per-process descriptor hints so a client that reconnects per request is usually found by one readlink
(docs/decisions.md, "HTTP sender identity")."""

from __future__ import annotations

from workers.proc_lineage import children
from workers.socket_owners import SocketOwners

HINTS_PER_PID = 128  # a client with this many connections closing at once still finds its new ones here
MAX_HINTED_PIDS = 1024


class FdHints:
    """Per process, the descriptor numbers to try first: those whose connections closed since, and those a
    read found free. The kernel gives a new socket the lowest free number, so a client that opens a
    connection per request gets a just-freed one again, and one readlink usually finds it instead of
    reading every descriptor the process has."""

    def __init__(self) -> None:
        # Per pid, least recently freed first: descriptor number -> inode of the connection that closed there.
        self._by_pid: dict[int, dict[str, int]] = {}

    def __contains__(self, pid: int) -> bool:
        return pid in self._by_pid

    def get(self, pid: int) -> list[str]:
        return list(self._by_pid.get(pid, ()))

    def freed(self, pid: int, fd: str, inode: int = 0) -> None:
        """The connection of client socket `inode`, held under fd, closed: the number is about to be free (once
        the client has seen the close), and likely the next socket's."""
        hints = self._by_pid.get(pid)
        if hints is None:
            if len(self._by_pid) >= MAX_HINTED_PIDS:
                self._by_pid.clear()
            hints = self._by_pid[pid] = {}
        hints.pop(fd, None)
        hints[fd] = inode
        if len(hints) > HINTS_PER_PID:
            del hints[next(iter(hints))]

    def take_all(self, pid: int) -> dict[str, int]:
        """Every hinted number of pid, which are then no hints any more (they are being read)."""
        return self._by_pid.pop(pid, {})

    def not_reused(self, pid: int, taken: dict[str, int], seen: dict[int, str], free: list[str]) -> list[int]:
        """After a read of the `taken` numbers: those still free, or still holding the socket whose connection
        closed there (the client has not seen the close yet), stay hints: the client's next sockets get them.
        Without this, a socket opened just after the read was missed by every later hinted read. Returns the
        sockets of closed connections that the read saw: no proof will ask for them."""
        for fd in free:
            self.freed(pid, fd, taken[fd])
        closed = [inode for inode, fd in seen.items() if inode and taken[fd] == inode]
        for inode in closed:
            self.freed(pid, seen[inode], inode)
        return closed

    def taken(self, pid: int, fd: str) -> None:
        """A connection was found under fd: the number is in use until that connection closes."""
        hints = self._by_pid.get(pid)
        if hints is not None:
            hints.pop(fd, None)


def _holds(pid: int, inode: int, hints: FdHints | None, owners: SocketOwners) -> str | None:
    """The descriptor number under which pid holds socket `inode`, or None. Every descriptor read is
    recorded: the hinted ones (all of them: they are where the process's new connections are), then, if
    those miss, all of them."""
    if hints is not None and pid in hints:
        hinted = hints.take_all(pid)
        found = owners.read(pid, list(hinted))
        if found is not None:
            seen, free = found
            for closed in hints.not_reused(pid, hinted, seen, free):
                owners.forget(closed)  # else the record fills with them: full reads, which cleared it, are rare now
            if inode in seen:
                return seen[inode]
    found = owners.read(pid)
    return found[0].get(inode) if found is not None else None


def socket_in_tree(inode: int, first: list[int], root: int, *, owners: SocketOwners, hints: FdHints | None = None,
                   limit: int = 256) -> tuple[int, str] | None:
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
        for child in children(queue.pop()):
            if child not in seen:
                seen.add(child)
                fd = _holds(child, inode, hints, owners)
                if fd is not None:
                    return child, fd
                queue.append(child)
    return None
