"""Writes metadata records off the event loop, newest-wins per agent, in one background thread.

fsync can take tens of milliseconds on a busy disk; the control loop must not wait for it. Writes for
one agent are coalesced: if three changes arrive while a write is in flight, only the newest is
written next, and an older record can never land after a newer one.
"""

from __future__ import annotations

import logging
import threading
import time

from supervisor.common.metadata_store import AgentRecord, MetadataStore

log = logging.getLogger(__name__)

RETRY_DELAY = 1.0
REPEAT_LOG_EVERY = 60.0  # a write that keeps failing (full or read-only disk) is logged again this often


class MetadataWriter:
    """Queue of the newest AgentRecord per agent, drained by a daemon thread."""

    def __init__(self, store: MetadataStore) -> None:
        self.store = store
        self._pending: dict[str, AgentRecord | None] = {}  # None = delete
        self._cond = threading.Condition()
        self._busy = False
        self._writing: str | None = None  # the agent whose record the thread has in hand
        self._closed = False
        self.failures = 0
        self._failing: dict[str, tuple[float, int]] = {}  # agent id -> (last logged, failures since), per episode
        self._thread = threading.Thread(target=self._run, name="metadata-writer", daemon=True)
        self._thread.start()

    def save(self, record: AgentRecord) -> None:
        with self._cond:
            self._pending[record.id] = record
            self._cond.notify()

    def delete(self, agent_id: str) -> None:
        with self._cond:
            self._pending[agent_id] = None
            self._cond.notify()

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until everything queued so far is on disk (used at shutdown and by tests)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def wait_written(self, agent_ids: list[str], timeout: float) -> bool:
        """Block until the records queued so far for these agents are on disk (or `timeout` passes).

        An operator's start/stop is acknowledged only after this, so agentd dying right after the reply
        cannot forget it (docs/architecture.md, "Metadata writing")."""
        wanted = set(agent_ids)
        with self._cond:
            return self._cond.wait_for(lambda: self._writing not in wanted and not wanted & self._pending.keys(), timeout)

    def close(self) -> None:
        if not self.flush():
            log.error("metadata writes still pending at exit: %s", ", ".join(self._pending) or "(in flight)")
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closed)
                if not self._pending and self._closed:
                    return
                agent_id, record = next(iter(self._pending.items()))
                del self._pending[agent_id]
                self._busy = True
                self._writing = agent_id
            failed = False
            try:
                if record is None:
                    self.store.delete(agent_id)
                else:
                    self.store.save(record)
            except Exception as exc:  # a full disk must not kill the writer
                failed = True
                self.failures += 1
                self._log_failure(agent_id, exc)
            with self._cond:
                if failed:
                    # Retry it unless a newer record arrived meanwhile: an operator stop must not be
                    # lost because the disk was full for a moment.
                    self._pending.setdefault(agent_id, record)
                    self._busy = False
                    self._writing = None
                    self._cond.notify_all()
                    self._cond.wait(RETRY_DELAY)
                else:
                    self._busy = False
                    self._writing = None
                    self._cond.notify_all()
            if not failed and self._failing.pop(agent_id, None) is not None:
                log.warning("metadata for %s written again", agent_id)

    def _log_failure(self, agent_id: str, exc: Exception) -> None:
        """Once when an agent's writes start failing, then once a minute with a count, not every second."""
        now = time.monotonic()
        last, count = self._failing.get(agent_id, (None, 0))
        if last is None or now - last >= REPEAT_LOG_EVERY:
            more = f" ({count} more failures since the last report)" if count else ""
            log.error("could not write metadata for %s: %s; retrying every %.0fs%s", agent_id, exc, RETRY_DELAY, more)
            self._failing[agent_id] = (now, 0)
        else:
            self._failing[agent_id] = (last, count + 1)
