"""Heartbeat housekeeping: the intake-restart grace, the heartbeat times on the state feed, and the
periodic write of heartbeat-only changes (docs/architecture.md, "The event loop").

`IntakeGrace` and `HeartbeatFeed.step` are pure (clock and outputs passed in); `HeartbeatFeed.run`
is the one-second task the daemon keeps running.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Iterable

from supervisor.common.shared_ticks import sleep_to_tick
from supervisor.wire.verbs.workers import WorkerInfo

log = logging.getLogger("supervisor.parent.daemon")  # the parent's log lines keep their logger name

HEARTBEAT_TIMES_RESEND = 30.0  # unchanged heartbeat times go out again this often
# An intake worker silent this long counts as an outage for heartbeat deadlines. That is for one beating every
# second, as intakes do while some agent expects heartbeats; one that announced a longer pause between beats
# (nobody's deadline depends on it then, workers/link.py) gets that much longer.
INTAKE_SILENCE = 3.0
MAX_INTAKE_GRACE = 300.0  # an intake outage longer than this no longer shields agents


def intake_outage(workers: Iterable[WorkerInfo], forwarding_stalled: Callable[[str], bool]) -> bool:
    """An intake worker is not running, or has not beaten for a few seconds (hung or starved)."""
    for w in workers:
        if not w.name.startswith("heartbeat-"):
            continue
        # A respawned worker is not serving until its first beat (it beats once it has its snapshot).
        if w.state != "running" or w.last_beat_age_s is None or w.last_beat_age_s > INTAKE_SILENCE + max(0.0, (w.beat_every_s or 1.0) - 1.0):
            return True
        if forwarding_stalled(w.name):  # beating, but its heartbeats are not reaching us
            return True
    return False


class IntakeGrace:
    """Since when nobody could take heartbeats in: deadlines never end before that point plus the timeout.

    While agentd was down (or starting), stalled, or an intake worker was out, heartbeats were lost
    through no fault of the agents."""

    def __init__(self, now: float, wall: float) -> None:
        self.restarted_wall: float | None = wall  # for display
        self.restarted_mono: float = now  # what deadlines use
        self._outage_since: float | None = None
        self._expired_logged = False

    def restart(self, now: float, wall: float) -> None:
        """Heartbeats could not arrive until now (an intake worker respawned, or is out)."""
        self.restarted_wall, self.restarted_mono = wall, now

    def after_stall(self, stall_end: float, wall: float) -> None:
        """After our own stall, heartbeat deadlines count from its end: we could not take any in."""
        self.restarted_mono = max(self.restarted_mono, stall_end)
        self.restarted_wall = wall

    def on_worker_respawn(self, name: str, now: float, wall: float) -> None:
        if name.startswith("heartbeat-"):
            self.restart(now, wall)

    def observe(self, outage: bool, now: float, wall: float) -> None:
        """Keep the grace rolling while an intake worker is down or hung: the health worker then counts
        heartbeat deadlines from the end of the outage, not from its start. An intake that stays broken
        stops getting grace after a while, so hung agents are still caught; the operator sees the
        worker's state in `agentctl workers`."""
        if not outage:
            self._outage_since = None
            self._expired_logged = False
            return
        self._outage_since = self._outage_since or now
        if now - self._outage_since <= MAX_INTAKE_GRACE:
            self.restart(now, wall)
        elif not self._expired_logged:
            self._expired_logged = True
            log.error("a heartbeat intake worker has been down for %.0fs; heartbeat deadlines apply again", MAX_INTAKE_GRACE)


class HeartbeatFeed:
    """Once a second: the grace, the heartbeat times to the workers; every flush_interval, the metadata."""

    def __init__(self, grace: IntakeGrace, times: Callable[[], tuple[dict[str, float], dict[str, float]]],
                 stalled_until: Callable[[], float | None], outage: Callable[[], bool], send, flush: Callable[[], None],
                 flush_every: float, now: Callable[[], float], wall: Callable[[], float]) -> None:
        self.grace = grace
        self.times = times
        self.stalled_until = stalled_until
        self.outage = outage
        self.send = send  # state_feed.StateFeed.heartbeat_times
        self.flush = flush
        self.flush_every = max(0.1, flush_every)
        self.now, self.wall = now, wall
        self._last_flush = self._last_publish_at = now()
        self._last_published: tuple | None = None

    def step(self) -> None:
        """One round: update the grace, publish what changed (or resend), flush if due."""
        self.grace.observe(self.outage(), self.now(), self.wall())
        grace = self.grace
        wall_times, mono_times = self.times()
        # Published only when it changed: with no heartbeats, an idle node sends the workers nothing.
        # Every message carries all times, and a worker that joins gets them in its snapshot.
        # (Heartbeats arrive by the intakes and by sd_notify WATCHDOG=1, hence a comparison, not a flag.)
        published = (wall_times, mono_times, grace.restarted_wall, grace.restarted_mono, self.stalled_until())
        # Still re-sent now and then: a subscriber that lost the last one (PUB drops past its high-water mark) catches up.
        if published != self._last_published or self.now() - self._last_publish_at >= HEARTBEAT_TIMES_RESEND:
            self._last_published, self._last_publish_at = published, self.now()
            self.send(wall_times, grace.restarted_wall, mono_times, grace.restarted_mono, published[4])
        if self.now() - self._last_flush >= self.flush_every:
            self._last_flush = self.now()
            self.flush()

    async def run(self) -> None:
        while True:
            await sleep_to_tick(min(1.0, self.flush_every))  # with the stall watch and log rotation
            self.step()
