"""Which agents' logs were written to since the last look, by inotify (IN_MODIFY on each agent.log).

The size check of log rotation (log.max_size, every second) then stats only the logs that got output
instead of every agent's (issue 11: an idle node with 200 agents statted 200 files a second). Nothing
here wakes the loop: the rotation round reads the queued events once a second, and the kernel merges
repeated events of one file, so a chatty agent costs one event per round. Rotation copies and truncates,
so a log keeps its inode and its watch; a log replaced by another file is watched again from the full
round that finds its new inode (docs/operations.md, log rotation).
"""

from __future__ import annotations

import logging
import threading

from inotify_simple import INotify
from inotify_simple import flags as F

log = logging.getLogger(__name__)


class LogWrites:
    """The agents whose log was modified since the last `take()`; None from `take()` means "look at all"."""

    def __init__(self) -> None:
        try:
            self.inotify: INotify | None = INotify(nonblocking=True)
        except OSError as exc:  # no inotify (or no instances left): every round looks at every log, as before
            log.warning("inotify unavailable for agent logs (%s); log sizes are checked by stat every round", exc)
            self.inotify = None
        self._lock = threading.Lock()  # watch() runs in the rotation round's executor thread
        self._agent_of: dict[int, str] = {}  # watch descriptor -> agent id
        self._watched: dict[str, tuple[int, int]] = {}  # agent id -> (watch descriptor, inode)

    def watch(self, agent_id: str, path: str, inode: int) -> None:
        """Watch this agent's log, as the inode a stat just found (a no-op when that is the one watched)."""
        if self.inotify is None:
            return
        with self._lock:
            known = self._watched.get(agent_id)
            if known is not None and known[1] == inode:
                return
        try:
            wd = self.inotify.add_watch(path, F.MODIFY)
        except OSError:  # gone again, or out of watches: not watched, so take() reports it every time
            wd = None
        with self._lock:
            old = self._watched.pop(agent_id, None)
            if old is not None and old[0] != wd:
                self._agent_of.pop(old[0], None)
                self._remove(old[0])
            if wd is not None:
                self._watched[agent_id] = (wd, inode)
                self._agent_of[wd] = agent_id

    def keep_only(self, agent_ids: set[str]) -> None:
        """Stop watching the logs of agents no longer configured."""
        with self._lock:
            for agent_id in self._watched.keys() - agent_ids:
                wd, _inode = self._watched.pop(agent_id)
                self._agent_of.pop(wd, None)
                self._remove(wd)

    def unwatched(self, agent_ids) -> list[str]:
        """Of these agents, those whose log is not watched (not created yet, or its watch failed)."""
        with self._lock:
            return [a for a in agent_ids if a not in self._watched]

    def take(self) -> set[str] | None:
        """The agents whose log was written since the last call; None when that cannot be known (no inotify,
        or the kernel's event queue overflowed): the caller then looks at every log."""
        if self.inotify is None:
            return None
        try:
            events = self.inotify.read(timeout=0)
        except OSError as exc:
            log.warning("reading inotify events for agent logs failed: %s", exc)
            return None
        written: set[str] = set()
        everything = False
        with self._lock:
            for event in events:
                if event.mask & F.Q_OVERFLOW:
                    everything = True
                    continue
                agent_id = self._agent_of.get(event.wd)
                if agent_id is None:
                    continue
                if event.mask & F.IGNORED:  # the file is gone: the next full round finds what replaced it
                    del self._agent_of[event.wd]
                    self._watched.pop(agent_id, None)
                written.add(agent_id)
        return None if everything else written

    def _remove(self, wd: int) -> None:
        assert self.inotify is not None
        try:
            self.inotify.rm_watch(wd)
        except OSError:
            pass  # already removed by the kernel (the file is gone)

    def close(self) -> None:
        if self.inotify is not None:
            self.inotify.close()
            self.inotify = None
