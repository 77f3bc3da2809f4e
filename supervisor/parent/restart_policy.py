"""The restart decision after an agent stops unexpectedly: restart after a backoff step, stay down, or give up.

Also the two limits on automatic starts: the min_interval floor between starts and
restart.start_limit_burst (docs/architecture.md, "State machine and restart policy").
"""

from collections import deque
from dataclasses import dataclass
from typing import Literal

from supervisor.common.backoff import step_delay
from supervisor.config.agent import RestartPolicy

# Below any configured restart.min_interval: an agent that dies at once costs at most 10 starts a second.
MIN_RESTART_FLOOR = 0.1


@dataclass(frozen=True)
class RestartDecision:
    """What to do after an unexpected stop, and why."""

    action: Literal["restart", "stay_stopped", "give_up"]
    delay: float = 0.0
    why: str = ""


def decide(policy: RestartPolicy, restart_count: int, clean_exit: bool, forced: bool) -> RestartDecision:
    """Apply `policy` given the consecutive restarts so far.

    `clean_exit` is an exit with code 0; `forced` means a health verdict asked for the restart,
    which `on-failure` honours (the agent is unhealthy) but `never` does not.
    """
    if policy.policy == "never":
        return RestartDecision("stay_stopped", why="restart policy is 'never'")
    if policy.policy == "on-failure" and clean_exit and not forced:
        return RestartDecision("stay_stopped", why="exited cleanly and restart policy is 'on-failure'")
    if policy.max_retries and restart_count >= policy.max_retries:
        return RestartDecision("give_up", why=f"gave up after {restart_count} restarts (max_retries {policy.max_retries})")
    return RestartDecision("restart", delay=step_delay(policy.backoff_steps, restart_count))


def floored_delay(policy: RestartPolicy, delay: float, started_mono: float | None, now: float) -> float:
    """`delay`, raised so that two starts are min_interval apart however short the backoff step."""
    if started_mono is None:
        return delay
    floor = max(MIN_RESTART_FLOOR, policy.min_interval)
    return max(delay, started_mono + floor - now)


def start_limit_hit(policy: RestartPolicy, starts: deque[float], now: float) -> str | None:
    """Why the next automatic start would break restart.start_limit_burst, or None.

    `starts` holds the times of recent automatic starts; those older than the window are dropped."""
    while starts and starts[0] <= now - policy.start_limit_interval:
        starts.popleft()
    if policy.start_limit_burst and len(starts) >= policy.start_limit_burst:
        return (f"gave up: {len(starts)} automatic starts within {policy.start_limit_interval:g}s "
                f"(restart.start_limit_burst {policy.start_limit_burst}); agentctl start revives it")
    return None
