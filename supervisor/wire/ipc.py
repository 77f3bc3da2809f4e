"""The ZeroMQ endpoints in run_dir and how the parent binds them (born private, no chmod window)."""

from __future__ import annotations

import grp
import os
from pathlib import Path

import zmq

CONTROL = "control.ipc"
EVENTS = "events.ipc"
STATE = "state.ipc"


def endpoint(run_dir: Path, name: str) -> str:
    """The ipc:// address of one of the parent's endpoints."""
    return f"ipc://{Path(run_dir) / name}"


def bind_private(sock: zmq.Socket, path: Path, group: str | None = None) -> None:
    """Bind an ipc:// endpoint born 0600 (0660 for `group`): no window in which others could connect."""
    gid = None
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(f"control.group '{group}' does not exist") from None
    if path.exists() or path.is_symlink():
        path.unlink()  # a stale file from a killed daemon; we hold the pid lock, so it is not live
    old = os.umask(0o077 if group is None else 0o007)
    try:
        sock.bind(f"ipc://{path}")
    finally:
        os.umask(old)
    if gid is not None:
        os.chown(path, -1, gid)


def close_private(sock: zmq.Socket, path: Path) -> None:
    """Undo `bind_private`: close at once (whatever is still queued is dropped) and remove the file."""
    sock.close(linger=0)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
