"""supervisor/common/backoff.py: the one retry-delay mechanism (pure, no processes)."""

import pytest

from supervisor.common.backoff import Backoff, step_delay


def test_steps_are_taken_in_order_and_the_last_repeats():
    steps = [0, 10, 10, 30]
    assert [step_delay(steps, n) for n in range(6)] == [0, 10, 10, 30, 30, 30]
    assert isinstance(step_delay([1], 0), float)


def test_doubling_stops_at_the_cap_and_reset_starts_over():
    b = Backoff(0.25, 5.0)
    assert [b.next_delay() for _ in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    b.reset()
    assert b.next_delay() == 0.25


def test_jitter_is_bounded_and_centred():
    b = Backoff(1.0, 60.0, jitter=0.2, rng=lambda: 0.5)  # no jitter at the midpoint
    assert [b.next_delay() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    b.reset()
    assert b.next_delay() == 1
    low, high = Backoff(1.0, 60.0, jitter=0.2, rng=lambda: 0.0), Backoff(1.0, 60.0, jitter=0.2, rng=lambda: 1.0)
    assert low.next_delay() == pytest.approx(0.8) and high.next_delay() == pytest.approx(1.2)


def test_many_failures_do_not_overflow():
    b = Backoff(1.0, 60.0)
    b.failures = 10_000
    assert b.next_delay() == 60
