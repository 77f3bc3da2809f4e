"""What agentd holds on the host for its whole run, taken in order and given back in reverse
(docs/architecture.md, "Module map"; docs/operations.md for the locks and directories).

The instance lock comes before any directory is touched, so a second agentd never even chmods the
first one's run_dir; then the directories, the pid-file lock, the node id and the metadata store.
Everything opened later (sockets, stores, the plain pid file) registers how it is closed in `closers`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable

import zmq
import zmq.asyncio

from supervisor.common.metadata_store import MetadataStore
from supervisor.common.node_identity import node_id
from supervisor.common.pidfile import PidFile
from supervisor.config.daemon_sections import DaemonSettings
from supervisor.parent.instance_lock import InstanceLock
from supervisor.parent.metadata_writer import MetadataWriter
from supervisor.parent.safe_paths import prepare_dir


class DaemonResources:
    """Locks, directories, node id, metadata store and writer, ZeroMQ contexts, and the closers of the rest."""

    def __init__(self, settings: DaemonSettings) -> None:
        self.settings = settings
        self.run_dir = Path(settings.run_dir)
        self.data_dir = Path(settings.data_dir)
        self.log_dir = Path(settings.log_dir)
        self.instance_lock = InstanceLock({"run_dir": self.run_dir, "data_dir": self.data_dir, "log_dir": self.log_dir})
        self.pidfile = PidFile(self.run_dir / "agentd.pid")
        self.zctx = zmq.asyncio.Context()
        self.sync_zctx = zmq.Context()
        self.closers: list[Callable[[], None]] = []  # run in reverse by release()
        self.node_id = ""
        self.store: MetadataStore | None = None
        self.writer: MetadataWriter | None = None

    def acquire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take the locks and prepare the directories; InstanceLocked and AlreadyRunning name the other agentd."""
        self.instance_lock.acquire()
        self.instance_lock.serve(loop)
        # A new run_dir is 0755 so agents running as other users can reach the heartbeat socket; the
        # control socket inside it is born 0600. Existing directories keep their mode, and are refused
        # if another user controls them (supervisor/parent/safe_paths.py).
        prepare_dir(self.run_dir, "daemon.run_dir", 0o755)
        prepare_dir(self.data_dir, "daemon.data_dir", 0o750)
        prepare_dir(self.log_dir, "daemon.log_dir", 0o750)
        self.pidfile.acquire()
        self.node_id = node_id(self.settings.id, self.data_dir)
        self.store = MetadataStore(self.data_dir / "metadata")
        self.writer = MetadataWriter(self.store)

    def release(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close what registered in `closers` (newest first), then the writer, the contexts and the locks."""
        for close in reversed(self.closers):
            close()
        self.closers = []
        if self.writer is not None:
            self.writer.close()
        # destroy, not term: a socket left open by a failed start-up must not hang the exit.
        self.zctx.destroy(linger=0)
        self.sync_zctx.destroy(linger=0)
        self.pidfile.release()
        self.instance_lock.release(loop)
