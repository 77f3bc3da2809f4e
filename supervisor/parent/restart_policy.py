"""The restart decision after an agent stops unexpectedly: restart after a backoff step, stay down, or give up."""

from dataclasses import dataclass
from typing import Literal

from supervisor.common.backoff import step_delay
from supervisor.config.schema import RestartPolicy


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
