"""The loopback sender proof (workers/peer_socket.py, tree_proof.py, socket_owners.py) with real processes
and real sockets: the kernel's socket owner, the descriptor read, and the record of a read that proves a
process's other connections."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.support.wait import wait_until
from workers.peer_socket import SockDiag
from workers.socket_owners import SocketOwners
from workers.tree_proof import FdHints, socket_in_tree

# Opens N loopback connections (or its forked child does; the parent exits on "leave", so the child is
# reparented), prints the pid that holds them, and waits for stdin to close (the child for SIGKILL).
HOLDER = r"""
import os, signal, socket, sys
port, n, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if mode == "child":
    r, w = os.pipe()
    if os.fork() == 0:
        conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
        os.write(w, b"%d\n" % os.getpid())
        os.close(w)
        os.close(0)  # stdin is the parent's to read; the test kills this child
        while True:
            signal.pause()
    os.close(w)
    print(os.read(r, 64).decode().strip(), flush=True)
    if sys.stdin.readline() == "leave\n":  # exit: the child is reparented, out of this process's tree
        os._exit(0)
    sys.stdin.read()
else:
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    print(os.getpid(), flush=True)
    sys.stdin.read()
"""


class Holder:
    """A real process (or its forked child) holding `n` loopback connections to `server`, and their inodes."""

    def __init__(self, server: socket.socket, diag: SockDiag, n: int = 8, mode: str = "self") -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(server.getsockname()[1]), str(n), mode],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = int(self.proc.stdout.readline())
        self.accepted = [server.accept()[0] for _ in range(n)]
        self.peers = [diag.peer_of(c) for c in self.accepted]
        assert all(p is not None and p.inode for p in self.peers), self.peers
        self.inodes = [p.inode for p in self.peers]
        self.uid = self.peers[0].uid

    def close(self) -> None:
        for c in self.accepted:
            c.close()
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        self.proc.wait(10)
        self.proc.stdout.close()
        if self.pid != self.proc.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(params=["pidfd", "stat file"])
def liveness(request, monkeypatch):
    """The record tells a process that is gone by its pidfd; on a kernel without pidfd, by its open stat file."""
    if request.param == "stat file":
        def no_pidfd(pid: int, flags: int = 0) -> int:
            raise OSError(errno.ENOSYS, "pidfd_open: not implemented")
        monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    return request.param


@pytest.fixture
def net(liveness):
    server = socket.create_server(("127.0.0.1", 0), backlog=64)
    diag = SockDiag()
    holders: list[Holder] = []

    def holder(n: int = 8, mode: str = "self") -> Holder:
        holders.append(Holder(server, diag, n, mode))
        return holders[-1]

    try:
        yield holder
    finally:
        for h in holders:
            h.close()
        diag.close()
        server.close()


def fd_of(pid: int, fd: str) -> str:
    return os.readlink(f"/proc/{pid}/fd/{fd}")


def test_a_full_read_proves_the_processes_other_connections_by_lookup(net):
    h = net(8)
    owners = SocketOwners()
    found = socket_in_tree(h.inodes[0], [h.pid], h.pid, owners=owners)
    assert found is not None and found[0] == h.pid
    assert len(owners) >= 8  # one read saw them all
    links = owners.links_read
    for inode in h.inodes[1:]:
        pid, fd = owners.holder(inode, h.uid, [h.pid], h.pid)
        assert pid == h.pid and fd_of(pid, fd) == f"socket:[{inode}]"
    assert owners.hits == 7 and owners.links_read == links  # no descriptor read again


def test_a_socket_of_another_process_is_not_accepted(net):
    agent, other = net(4), net(4)
    owners = SocketOwners()
    # The other process's table was read too (a proof for it, say): its sockets are on record under its pid.
    assert socket_in_tree(other.inodes[0], [other.pid], other.pid, owners=owners) is not None
    assert socket_in_tree(agent.inodes[0], [agent.pid], agent.pid, owners=owners) is not None
    for inode in other.inodes:
        assert owners.holder(inode, other.uid, [agent.pid], agent.pid) is None
        assert socket_in_tree(inode, [agent.pid], agent.pid, owners=owners) is None
    assert owners.holder(agent.inodes[1], agent.uid, [agent.pid], agent.pid) is not None


def test_a_client_socket_owned_by_another_uid_is_not_proven_by_the_record(net):
    h = net(4)
    owners = SocketOwners()
    socket_in_tree(h.inodes[0], [h.pid], h.pid, owners=owners)
    assert owners.holder(h.inodes[1], h.uid + 1, [h.pid], h.pid) is None
    assert owners.holder(h.inodes[1], None, [h.pid], h.pid) is None
    assert owners.holder(h.inodes[1], h.uid, [h.pid], h.pid) is not None


def test_a_descendant_is_proven_while_in_the_tree_and_not_after_it_left(net):
    h = net(4, mode="child")  # h.pid is the child holding the sockets; its parent is the claimed tree's root
    root = h.proc.pid
    owners = SocketOwners()
    assert socket_in_tree(h.inodes[0], [root], root, owners=owners)[0] == h.pid  # found among the root's children
    assert owners.holder(h.inodes[1], h.uid, [root], root)[0] == h.pid
    assert owners.holder(h.inodes[3], h.uid, [root], root)[0] == h.pid  # the parent as kept by its pidfd
    h.proc.stdin.write("leave\n")
    h.proc.stdin.flush()
    h.proc.wait(10)
    wait_until(lambda: open(f"/proc/{h.pid}/stat").read().rpartition(")")[2].split()[1] != str(root), timeout=10,
               message="the child reparented")
    assert owners.holder(h.inodes[2], h.uid, [root], root) is None
    assert socket_in_tree(h.inodes[2], [root], root, owners=owners) is None


def test_the_descriptors_a_record_holds_are_closed_with_it(net):
    h = net(4, mode="child")
    root = h.proc.pid
    before = len(os.listdir("/proc/self/fd"))
    owners = SocketOwners()
    socket_in_tree(h.inodes[0], [root], root, owners=owners)
    assert owners.holder(h.inodes[1], h.uid, [root], root)[0] == h.pid
    assert len(os.listdir("/proc/self/fd")) > before
    owners.close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_process_that_exited_takes_its_record_with_it(net):
    h = net(4)
    owners = SocketOwners()
    socket_in_tree(h.inodes[0], [h.pid], h.pid, owners=owners)
    h.proc.stdin.close()
    h.proc.wait(10)
    assert owners.holder(h.inodes[1], h.uid, [h.pid], h.pid) is None
    assert len(owners) == 0


def test_a_process_that_exited_but_is_not_reaped_is_gone_too(net):
    h = net(4)
    owners = SocketOwners()
    socket_in_tree(h.inodes[0], [h.pid], h.pid, owners=owners)
    h.proc.stdin.close()  # it exits; nobody waits for it yet, so it stays a zombie with its descriptors closed
    wait_until(lambda: open(f"/proc/{h.pid}/stat").read().rpartition(")")[2].split()[0] == "Z", timeout=10,
               message="the holder a zombie")
    assert owners.holder(h.inodes[1], h.uid, [h.pid], h.pid) is None
    assert len(owners) == 0
    assert socket_in_tree(h.inodes[1], [h.pid], h.pid, owners=owners) is None


def _spawn_at(pid: int, deadline: float) -> subprocess.Popen | None:
    """A new process under `pid` (free again), by setting the kernel's last pid just below it; other
    processes on the machine fork too, so it is tried until the deadline."""
    while time.monotonic() < deadline:
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        proc = subprocess.Popen(["sleep", "60"])
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    return None


def test_pid_reuse_does_not_carry_the_proof(net):
    if os.geteuid() != 0 or not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK):
        pytest.skip("reusing a pid on purpose needs root (writes /proc/sys/kernel/ns_last_pid)")
    h = net(4)
    owners = SocketOwners()
    socket_in_tree(h.inodes[0], [h.pid], h.pid, owners=owners)
    old = h.pid
    h.proc.stdin.close()
    h.proc.wait(10)
    reuser = _spawn_at(old, time.monotonic() + 20)
    if reuser is None:
        pytest.skip(f"pid {old} was taken by another process on this busy machine before we could reuse it")
    try:
        assert owners.holder(h.inodes[1], h.uid, [old], old) is None
        assert len(owners) == 0
    finally:
        reuser.kill()
        reuser.wait()


def test_records_expire_and_stay_bounded(net):
    h, other = net(8), net(8)
    now = [0.0]
    owners = SocketOwners(ttl=5.0, capacity=12, clock=lambda: now[0])
    socket_in_tree(h.inodes[0], [h.pid], h.pid, owners=owners)
    assert owners.holder(h.inodes[1], h.uid, [h.pid], h.pid) is not None
    socket_in_tree(other.inodes[0], [other.pid], other.pid, owners=owners)
    assert len(owners) <= 12  # the older scan made room for the newer one
    assert owners.holder(other.inodes[1], other.uid, [other.pid], other.pid) is not None
    now[0] = 5.1
    for inode in other.inodes[1:]:
        assert owners.holder(inode, other.uid, [other.pid], other.pid) is None
    socket_in_tree(h.inodes[0], [h.pid], h.pid, owners=owners)  # the next read drops the expired record
    assert len(owners) == len(h.inodes)
    owners.close()
    assert len(owners) == 0


def test_a_closed_connection_is_forgotten(net):
    h = net(4)
    owners = SocketOwners()
    socket_in_tree(h.inodes[0], [h.pid], h.pid, owners=owners)
    owners.forget(h.inodes[1])
    assert owners.holder(h.inodes[1], h.uid, [h.pid], h.pid) is None
    assert owners.holder(h.inodes[2], h.uid, [h.pid], h.pid) is not None


def test_a_hinted_read_keeps_a_closed_connections_number_as_a_hint_and_its_socket_off_the_record(net):
    h = net(4)
    owners, hints = SocketOwners(), FdHints()
    fds = [socket_in_tree(inode, [h.pid], h.pid, hints=hints, owners=owners)[1] for inode in h.inodes]
    # The server closed the connection of socket 1; the client has not closed its end yet. Socket 2 is one
    # the record has not seen (as if the client had just opened it under a freed number).
    hints.freed(h.pid, fds[1], h.inodes[1])
    owners.forget(h.inodes[1])
    hints.freed(h.pid, fds[2], 0)
    owners.forget(h.inodes[2])
    links = owners.links_read
    assert socket_in_tree(h.inodes[2], [h.pid], h.pid, hints=hints, owners=owners) == (h.pid, fds[2])
    assert owners.links_read - links == 2  # the two hinted numbers, no full read
    assert hints.get(h.pid) == [fds[1]]  # where the client's next socket will be
    assert owners.holder(h.inodes[1], h.uid, [h.pid], h.pid) is None  # its connection is closed: not recorded again


# An agent that opens many connections at once and sends one heartbeat on each (Connection: close), as wrk
# does: round after round, every connection needs a proof. Prints each round's status codes.
BURST = r"""
import json, os, socket, sys
port, n, rounds = int(sys.stdin.readline()), int(sys.argv[1]), int(sys.argv[2])
body = json.dumps({"agent_id": "burst", "pid": os.getpid(), "status": "running"}).encode()
req = (b"POST /heartbeat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
       b"Content-Length: %d\r\n\r\n" % len(body)) + body
for _ in range(rounds):
    conns = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(n)]
    for c in conns:
        c.sendall(req)
    codes = {}
    for c in conns:
        head = b""
        while b"\r\n" not in head:
            chunk = c.recv(4096)
            if not chunk:
                break
            head += chunk
        code = head.split(b" ", 2)[1].decode() if head.count(b" ") >= 2 else "none"
        codes[code] = codes.get(code, 0) + 1
        c.close()
    print(json.dumps(codes), flush=True)
"""


def test_the_intake_proves_a_burst_of_new_connections_with_few_descriptor_reads():
    from supervisor.wire.messages import AgentView
    from tests.system.test_heartbeat_http import StandInParent, Worker, post

    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    burst = subprocess.Popen([sys.executable, "-c", BURST, "16", "5"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    parent = worker = None
    try:
        parent = StandInParent([AgentView(id="burst", type="custom", state="running", pid=burst.pid, pgid=burst.pid)])
        worker = Worker(parent, listener=listener, settings={"verify_sender": True})
        burst.stdin.write(f"{worker.port}\n")
        burst.stdin.flush()
        rounds = [burst.stdout.readline() for _ in range(5)]
        assert all(r.strip() == '{"200": 16}' for r in rounds), rounds
        # From outside the agent's tree (this test process) the same heartbeat is still refused.
        status, reply = post(worker.port, {"agent_id": "burst", "pid": burst.pid})
        assert status == 403 and reply["success"] is False

        def counters() -> dict | None:
            beats = [b for b in parent.beats() if b.counters.get("rejected_sender_not_agent")]
            return beats[-1].counters if beats else None

        got = wait_until(counters, timeout=30, message="a worker beat counting the refusal")
        assert got["sender_checks"] == 81, got
        # 16 connections open at once: one read of the agent's descriptors proves the 15 others (without the
        # record, each of them was a read of its own); later rounds reuse the freed numbers (the hint).
        assert got["sender_checks_recalled"] >= 15 and got["sender_fd_links_read"] <= 200, got
        assert got["accepted"] == 80, got
    finally:
        burst.kill()
        burst.wait()
        burst.stdin.close()
        burst.stdout.close()
        if worker is not None:
            assert worker.stop() == 0, worker.log.read_text()
            assert "Traceback" not in worker.log.read_text(), worker.log.read_text()
        else:
            listener.close()
        if parent is not None:
            parent.close()
