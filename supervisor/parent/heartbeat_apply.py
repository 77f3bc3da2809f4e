"""Applying what the intake workers report: heartbeat batches and health verdicts (docs/architecture.md).

Pure: the registry, the clock and the outputs (state feed, persistence) are passed in, so the tests
drive it with plain agents and a hand-moved clock. Liveness uses our receipt time, never the agent's
own clock (which may be off); the agent's timestamp is kept as a reported field.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Callable, Protocol

from supervisor.common.stall_watch import StallWatch
from supervisor.parent.lifecycle import AgentProcess
from supervisor.parent.registry import Registry
from supervisor.wire.messages import HealthReport, HeartbeatBatch, Verdict
from supervisor.wire.states import UP_STATES

log = logging.getLogger("supervisor.parent.daemon")  # the parent's log lines keep their logger name


class AgentPublisher(Protocol):
    """Where a changed agent is announced to the workers (state_feed.StateFeed.agent_changed)."""

    def __call__(self, agent: AgentProcess) -> None: ...


class HeartbeatApplier:
    """Applies heartbeat batches to the registry: last heartbeat, reported fields, starting -> running."""

    def __init__(self, registry: Registry, now: Callable[[], float], wall: Callable[[], float], publish: AgentPublisher,
                 persist: Callable[[], None], account: Callable[[str, int], None], counters: Counter[str] | None = None) -> None:
        self.registry = registry
        self.account = account  # worker_pool.WorkerPool.on_heartbeats: the forwarding watch
        self.now, self.wall = now, wall
        self.publish = publish
        self.persist = persist
        self.counters: Counter[str] = counters if counters is not None else Counter()

    def apply(self, batch: HeartbeatBatch) -> None:
        """Apply one worker's batch; writes metadata at once only when a heartbeat made a transition."""
        now, wall = self.now(), self.wall()
        counters = self.counters
        self.account(batch.worker, len(batch.items))
        transitioned = False
        for hb in batch.items:
            agent = self.registry.find(hb.agent_id)
            if agent is None:
                counters["dropped_unknown_agent"] += 1
                continue
            if agent.state not in UP_STATES:
                counters["dropped_not_running"] += 1
                continue
            if hb.generation is not None and hb.generation != agent.generation:
                counters["dropped_stale_generation"] += 1  # validated against a process since replaced
                continue
            version, state = agent.reported.get("version"), agent.state
            agent.on_heartbeat(now, wall, {"version": hb.version, "cpu": hb.cpu, "memory": hb.memory, "status": hb.status, "timestamp": hb.timestamp})
            counters["applied"] += 1
            transitioned = transitioned or agent.dirty
            # The Manager sync reports versions; a transition (first heartbeat) has already announced the
            # agent with its new version, so it is announced once.
            if hb.version is not None and hb.version != version and agent.state == state:
                self.publish(agent)
        if transitioned:  # only transitions (first heartbeat) are written at once; no scan per batch otherwise
            self.persist()

    def times(self) -> dict[str, float]:
        """Each agent's last heartbeat, wall clock (for display and the Manager)."""
        return {a.spec.id: a.last_heartbeat_wall for a in self.registry if a.last_heartbeat_wall is not None}

    def times_mono(self) -> dict[str, float]:
        """Each agent's last heartbeat, monotonic (what deadlines use)."""
        return {a.spec.id: a.last_heartbeat_mono for a in self.registry if a.last_heartbeat_mono is not None}


class VerdictApplier:
    """Acts on a health verdict under the agent's restart policy; operator intent and staleness win.

    The intake-restart grace is applied by the health worker alone (it gets intake_restarted_at on
    the state feed): a second check here could drop a verdict the worker will never repeat.
    """

    def __init__(self, registry: Registry, stalls: StallWatch, now: Callable[[], float], after_action: Callable[[], None],
                 counters: Counter[str]) -> None:
        self.registry = registry
        self.stalls = stalls
        self.now = now
        self.after_action = after_action
        self.counters = counters

    def apply(self, verdict: Verdict) -> None:
        """Act on `verdict` unless it was formed on stale data."""
        agent = self.registry.find(verdict.agent_id)
        if agent is None:
            return
        reason = f"{verdict.verdict}: {verdict.detail}"
        refusal = self.refusal(agent, verdict)
        if refusal:
            # The health worker sees why on the state feed and judges again from fresh evidence.
            self.counters["verdicts_refused"] += 1
            log.info("%s: health verdict %s not acted on: %s", verdict.agent_id, reason, refusal)
            return
        result = agent.verdict(self.now(), verdict.generation, reason)
        log.log(logging.WARNING if result.ok else logging.INFO, "%s: health verdict %s -> %s", verdict.agent_id, reason, result.message)
        self.after_action()

    def report(self, report: HealthReport) -> None:
        """The health worker's latest judgement of each agent, recorded as its health (no action; verdicts act)."""
        for agent_id, health in report.agents.items():
            agent = self.registry.find(agent_id)
            if agent is not None:
                agent.set_health(health.generation, health.health, health.detail)

    def refusal(self, agent: AgentProcess, verdict: Verdict) -> str | None:
        """Why a verdict must not be acted on although it names the current process, or None.

        The parent is the authority on liveness: a verdict whose evidence spans our own stall, or a
        no_heartbeat verdict about an agent we have heard from since, was formed on stale data."""
        if verdict.since is None:
            return None
        if self.stalls.ended_after(verdict.since):
            return f"agentd itself was stalled ({self.stalls.last_end - verdict.since:.1f}s ago at most); judging again"
        if verdict.verdict == "no_heartbeat" and agent.last_heartbeat_mono is not None and agent.last_heartbeat_mono > verdict.since:
            return f"a heartbeat arrived {self.now() - agent.last_heartbeat_mono:.1f}s ago"
        return None
