"""The restart decision and the two limits on automatic starts, as pure functions (no processes, no clock)."""

from __future__ import annotations

from collections import deque

import pytest

from supervisor.config.agent import RestartPolicy
from supervisor.parent.restart_policy import MIN_RESTART_FLOOR, decide, floored_delay, start_limit_hit


def test_decide_walks_the_backoff_steps_and_repeats_the_last():
    policy = RestartPolicy(backoff_steps=[0, 10, 30], max_retries=0)
    assert [decide(policy, n, clean_exit=False, forced=False).delay for n in range(5)] == [0, 10, 30, 30, 30]
    assert decide(policy, 0, clean_exit=False, forced=False).action == "restart"


def test_decide_never_on_failure_and_max_retries():
    assert decide(RestartPolicy(policy="never"), 0, clean_exit=False, forced=True).action == "stay_stopped"
    on_failure = RestartPolicy(policy="on-failure")
    assert decide(on_failure, 0, clean_exit=True, forced=False).action == "stay_stopped"
    assert decide(on_failure, 0, clean_exit=True, forced=True).action == "restart"  # a verdict: unhealthy
    give_up = decide(RestartPolicy(max_retries=3), 3, clean_exit=False, forced=False)
    assert give_up.action == "give_up" and give_up.why == "gave up after 3 restarts (max_retries 3)"


def test_floored_delay_keeps_two_starts_min_interval_apart():
    policy = RestartPolicy(min_interval=2.0)
    assert floored_delay(policy, 0.0, started_mono=10.0, now=10.5) == pytest.approx(1.5)
    assert floored_delay(policy, 5.0, started_mono=10.0, now=10.5) == 5.0  # the step is longer already
    assert floored_delay(policy, 0.0, started_mono=10.0, now=20.0) == 0.0  # ran long enough
    assert floored_delay(policy, 0.0, started_mono=None, now=20.0) == 0.0  # nothing ran (spawn failed)
    assert floored_delay(RestartPolicy(min_interval=0), 0.0, started_mono=10.0, now=10.0) == pytest.approx(MIN_RESTART_FLOOR)


def test_start_limit_counts_starts_inside_the_window_only():
    policy = RestartPolicy(start_limit_burst=3, start_limit_interval=60.0)
    starts = deque([0.0, 30.0, 50.0])
    why = start_limit_hit(policy, starts, now=55.0)
    assert why == ("gave up: 3 automatic starts within 60s (restart.start_limit_burst 3); agentctl start revives it")
    assert start_limit_hit(policy, starts, now=61.0) is None and list(starts) == [30.0, 50.0]  # the oldest aged out
    assert start_limit_hit(RestartPolicy(start_limit_burst=0), deque([1.0] * 100), now=2.0) is None
