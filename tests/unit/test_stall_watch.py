"""StallWatch on a hand-moved clock: a stall is a gap in the loop's ticks, seen by whoever looks first."""

from __future__ import annotations

from supervisor.common.shared_ticks import EARLY, until_tick
from supervisor.common.stall_watch import STALL_THRESHOLD, TICK, StallWatch


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_ticks_within_the_threshold_are_no_stall():
    clock = Clock()
    watch = StallWatch(clock=clock)
    for _ in range(50):
        clock.t += STALL_THRESHOLD * 0.9
        assert watch.observe() is None
    assert (watch.count, watch.last_end) == (0, None)


def test_a_gap_is_one_stall_reported_once_to_listeners():
    clock = Clock()
    watch = StallWatch(clock=clock)
    seen = []
    watch.listeners.append(seen.append)
    clock.t += 20.0  # SIGSTOP for 20 s
    stall = watch.observe()
    assert (stall.start, stall.end, stall.duration) == (1000.0, 1020.0, 20.0)
    assert watch.observe() is None and seen == [stall]
    assert watch.counters() == {"stalls": 1, "stalled_ms": 20000, "longest_stall_ms": 20000}


def test_ended_after_looks_first_so_the_stall_is_known_before_anything_is_judged():
    clock = Clock()
    watch = StallWatch(clock=clock)
    clock.t += 20.0
    # No tick has run since the stall: the first consumer to ask still learns of it.
    assert watch.ended_after(1005.0) and watch.last_end == 1020.0
    assert not watch.ended_after(1020.0)


def test_observe_with_an_older_time_does_not_move_back():
    clock = Clock()
    watch = StallWatch(clock=clock)
    watch.observe(1001.0)
    assert watch.observe(1000.5) is None and watch.last_seen == 1001.0


def test_periodic_tasks_wake_on_one_grid_and_never_twice_for_one_instant():
    # Tasks of periods 1 and 3 started at unrelated times meet on the same instants.
    assert until_tick(1000.25, 1.0) == 0.75 and until_tick(1000.25, 3.0) == 1.75  # both at 1002
    # A timer that fired a hair early waits a whole period more, not a sliver.
    assert abs(until_tick(1001.0 - 1e-7, 1.0) - 1.0) < 1e-6
    # Never longer than the period by more than EARLY of it (a beat's `every` is kept), never zero.
    for now in (0.0, 0.4999, 2.9999, 3.0, 7.123456):
        wait = until_tick(now, 3.0)
        assert 0 < wait <= 3.0 * (1 + EARLY)


def test_the_tick_leaves_a_second_of_lateness_under_the_stall_threshold():
    # The tick leaves a second of lateness before a running loop could look stalled.
    assert STALL_THRESHOLD - TICK >= 1.0
