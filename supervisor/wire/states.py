"""Agent lifecycle states and the named sets of them the rest of the code reasons with."""

from enum import StrEnum


class AgentState(StrEnum):
    """Where an agent is in its lifecycle (docs/agentd.md, Agent states)."""

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    RESTARTING = "restarting"  # waiting out a backoff step
    FAILED = "failed"  # gave up after max_retries, or cannot be spawned


# A process of the agent exists (or may, while we wait for its tree to go).
PROCESS_STATES = frozenset({AgentState.STARTING, AgentState.RUNNING, AgentState.STOPPING})
# The agent is meant to be up and a process is there.
UP_STATES = frozenset({AgentState.STARTING, AgentState.RUNNING})
# Nothing runs and nothing will run without an operator or a reload.
DOWN_STATES = frozenset({AgentState.STOPPED, AgentState.FAILED})
