"""Watching agents' own config files (`config_file`) with inotify, so a change is applied without an operator.

The directory is watched, not the file: editors and config-management tools save by writing a new file and
renaming it over the old one, which a watch on the old inode would never see. Events are coalesced for
DEBOUNCE seconds (a save is several events), the content is hashed so a touch or a save without changes
does nothing, and the file is checked by its agent type before the daemon applies it
(docs/agent-config-files.md). Reading and checking run in the executor: a slow disk never stalls the loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from typing import Callable

from inotify_simple import INotify
from inotify_simple import flags as F

from supervisor.parent.agent_config_check import MAX_CONFIG_BYTES, check_agent_config
from supervisor.config.agent import AgentSpec

log = logging.getLogger(__name__)

DEBOUNCE = 0.3
_MASK = F.CLOSE_WRITE | F.MOVED_TO | F.MOVED_FROM | F.CREATE | F.DELETE | F.ATTRIB


def _digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read(MAX_CONFIG_BYTES + 1)).hexdigest()
    except OSError:
        return None  # gone or unreadable: a change too, which the type check words


class ConfigWatch:
    """Calls `on_change(agent_id, problem)` once per settled change of an agent's config_file (problem None = valid)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_change: Callable[[str, str | None], None]) -> None:
        self.loop = loop
        self.on_change = on_change
        self.inotify = INotify(nonblocking=True)
        loop.add_reader(self.inotify.fileno(), self._readable)
        self.wd_dir: dict[int, str] = {}
        self.dir_wd: dict[str, int] = {}
        self.files: dict[str, set[str]] = {}  # absolute config file path -> ids of agents using it
        self.specs: dict[str, AgentSpec] = {}
        self.digests: dict[str, str | None] = {}  # agent id -> content hash last applied (or seen at start)
        self.pending: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()

    def update(self, specs: list[AgentSpec]) -> None:
        """Watch the config files of the agents whose on_config_change does something; call at start and reload."""
        watched = {s.id: s for s in specs if s.config_change_action != "none" and s.config_file is not None}
        files: dict[str, set[str]] = {}
        for spec in watched.values():
            files.setdefault(os.path.normpath(str(spec.config_file)), set()).add(spec.id)
        dirs = {os.path.dirname(p) for p in files}
        for directory in [d for d in self.dir_wd if d not in dirs]:
            try:
                self.inotify.rm_watch(self.dir_wd[directory])
            except OSError:
                pass  # the directory is gone, and its watch with it
            del self.wd_dir[self.dir_wd.pop(directory)]
        for directory in sorted(dirs - set(self.dir_wd)):
            try:
                wd = self.inotify.add_watch(directory, _MASK)
            except OSError as exc:
                log.warning("cannot watch %s for agents' config files (%s); changes there are applied at the next start", directory, exc.strerror or exc)
                continue
            self.dir_wd[directory] = wd
            self.wd_dir[wd] = directory
        for agent_id, spec in watched.items():
            before = self.specs.get(agent_id)
            if before is None or before.config_file != spec.config_file:
                self.digests[agent_id] = _digest(str(spec.config_file))
        self.specs = watched
        self.files = files
        self.digests = {k: v for k, v in self.digests.items() if k in watched}

    def _readable(self) -> None:
        try:
            events = self.inotify.read(timeout=0)
        except OSError as exc:
            log.warning("reading inotify events failed: %s", exc)
            return
        for event in events:
            if event.mask & F.Q_OVERFLOW:
                self.pending.update(self.specs)  # events were lost: look at every file
                continue
            directory = self.wd_dir.get(event.wd)
            if directory is not None and event.name:
                self.pending.update(self.files.get(os.path.join(directory, event.name), ()))
        if self.pending:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_later(DEBOUNCE, self._settled)

    def _settled(self) -> None:
        self._timer = None
        ids, self.pending = self.pending, set()
        task = self.loop.create_task(self._apply(sorted(ids)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _inspect(spec: AgentSpec) -> tuple[str | None, str | None]:
        return _digest(str(spec.config_file)), check_agent_config(spec)

    async def _apply(self, ids: list[str]) -> None:
        for agent_id in ids:
            spec = self.specs.get(agent_id)
            if spec is None:
                continue  # removed by a reload meanwhile
            digest, problem = await self.loop.run_in_executor(None, self._inspect, spec)
            if self.specs.get(agent_id) is not spec or digest == self.digests.get(agent_id):
                continue  # replaced meanwhile, or the same content (a touch, a save without changes)
            if problem is None:
                self.digests[agent_id] = digest
            try:
                self.on_change(agent_id, problem)
            except Exception:
                log.exception("applying the config_file change of %s failed", agent_id)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in self._tasks:
            task.cancel()
        self.loop.remove_reader(self.inotify.fileno())
        self.inotify.close()
