"""Health rules of DESIGN section 5 as a pure state machine: the caller supplies the clock and every input.

Each non-healthy verdict is emitted once per (agent, generation); cpu_threshold is percent of ONE core.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from supervisor.config import HealthCheck
from supervisor.messages import AgentHealth, AgentView, ResourceSample, Verdict
from supervisor.units import format_bytes

UP_STATES = frozenset({"starting", "running"})
MIN_STARTUP_GRACE = 30.0  # DESIGN section 5: startup_grace defaults to max(heartbeat_timeout, 30 s)
_DEFAULTS = {name: field.default for name, field in HealthCheck.model_fields.items()}


@dataclass(frozen=True)
class HealthRules:
    """One agent's `health_check` settings, read from its AgentView (times in seconds, sizes in bytes)."""

    interval: float
    heartbeat_timeout: float | None
    startup_grace: float
    # Percent of ONE core (psutil's scale), compared with the tree's summed cpu percent: a tree busy on
    # two cores reads 200. The config caps it at 100, so "more than one full core" is the most it can say.
    cpu_threshold: float | None
    memory_threshold: int | None
    threshold_duration: float
    http_endpoint: str | None
    http_timeout: float
    endpoint_failures: int


def rules_of(agent: AgentView) -> HealthRules:
    """The agent's rules; a missing key takes the config default, an explicit null disables the check."""
    hc = agent.health_check

    def get(name: str):
        return hc.get(name, _DEFAULTS[name])

    timeout = get("heartbeat_timeout") or None  # 0 disables, as in the config
    grace = get("startup_grace")
    if grace is None:
        grace = max(timeout or 0.0, MIN_STARTUP_GRACE)
    return HealthRules(
        interval=float(get("interval") or _DEFAULTS["interval"]),
        heartbeat_timeout=None if timeout is None else float(timeout),
        startup_grace=float(grace),
        cpu_threshold=None if get("cpu_threshold") is None else float(get("cpu_threshold")),
        memory_threshold=None if get("memory_threshold") is None else int(get("memory_threshold")),
        threshold_duration=float(get("threshold_duration") or 0.0),
        http_endpoint=get("http_endpoint") or None,
        http_timeout=float(get("http_timeout") or _DEFAULTS["http_timeout"]),
        endpoint_failures=max(1, int(get("endpoint_failures") or 1)),
    )


@dataclass
class _AgentState:
    """What the judge remembers about one generation of one agent."""

    generation: int
    first_seen: float
    over_since: float | None = None  # ts of the first sample of the current over-threshold streak
    over_last: float | None = None  # ts of the latest over-threshold sample in that streak
    over_what: str = ""
    last_sample_ts: float | None = None  # each sample is counted once, however often it is passed in
    endpoint_streak: int = 0
    health: AgentHealth | None = None
    verdict_sent: bool = False


def _fmt_bytes(n: int) -> str:
    return re.sub(r"(?<=\d)(?=[A-Za-z])", " ", format_bytes(n), count=1)  # "612 MiB", as people write it


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s".replace(".0 s", " s")


class HealthJudge:
    """Applies dead → no_heartbeat → over_threshold → endpoint_failed → healthy to each up agent.

    After a verdict it stays quiet about that generation: the parent restarts the agent (a new generation)."""

    def __init__(self, worker: str = "health") -> None:
        self.worker = worker
        self._state: dict[str, _AgentState] = {}

    def __len__(self) -> int:
        return len(self._state)

    def judge(
        self,
        now_wall: float,
        agents: dict[str, AgentView],
        last_heartbeat: dict[str, float],
        samples: dict[str, ResourceSample],
        endpoint_results: dict[str, bool | None],
        intake_restarted_at: float | None,
        *,
        due: Collection[str] | None = None,
    ) -> tuple[list[Verdict], dict[str, AgentHealth]]:
        """One judging round of the `due` agents (None = all; the others keep their last health).

        Returns the new verdicts and every agent's health."""
        # endpoint_results: the result of a check finished since the last round, or None; each counts once.
        # samples may repeat one already seen (by ts): it counts once too.
        self._forget_missing(agents)
        verdicts: list[Verdict] = []
        report: dict[str, AgentHealth] = {}
        for agent_id, agent in agents.items():
            st = self._state_for(now_wall, agent)
            if st is None:
                report[agent_id] = AgentHealth(health=self._down_health(agent), generation=agent.generation, detail=agent.state)
                continue
            if st.verdict_sent or (due is not None and agent_id not in due):
                report[agent_id] = st.health or AgentHealth(health="starting" if agent.state == "starting" else "unknown", generation=agent.generation)
                continue
            rules = rules_of(agent)
            sample = self._sample_of(agent, samples)
            self._take_sample(st, rules, sample)
            self._take_endpoint(st, rules, endpoint_results.get(agent_id))
            kind, detail = self._evaluate(now_wall, agent, st, rules, sample, last_heartbeat.get(agent_id), intake_restarted_at)
            if kind == "healthy" and agent.state == "starting":
                kind = "starting"  # nothing wrong yet, but not ready either
            st.health = AgentHealth(health=kind, generation=agent.generation, detail=detail)
            report[agent_id] = st.health
            if kind not in ("healthy", "starting"):
                st.verdict_sent = True  # once per generation: the parent's restart brings a new one
                verdicts.append(Verdict(worker=self.worker, agent_id=agent_id, generation=agent.generation, verdict=kind, detail=detail, time=now_wall))
        return verdicts, report

    def observe(self, now_wall: float, agents: dict[str, AgentView], samples: dict[str, ResourceSample]) -> None:
        """Feed samples taken between judgements into the threshold timers, so every sample counts."""
        self._forget_missing(agents)
        for agent_id, sample in samples.items():
            agent = agents.get(agent_id)
            if agent is None:
                continue
            st = self._state_for(now_wall, agent)
            if st is not None and not st.verdict_sent:
                self._take_sample(st, rules_of(agent), self._sample_of(agent, samples))

    def _forget_missing(self, agents: dict[str, AgentView]) -> None:
        for gone in self._state.keys() - agents.keys():
            del self._state[gone]  # removed agents: keep the map bounded

    def _state_for(self, now_wall: float, agent: AgentView) -> _AgentState | None:
        """This generation's state; None (and nothing kept) for agents that are not judged."""
        if agent.operator_stopped or agent.state not in UP_STATES:
            self._state.pop(agent.id, None)  # a new process will have a new generation
            return None
        st = self._state.get(agent.id)
        if st is None or st.generation != agent.generation:
            st = self._state[agent.id] = _AgentState(agent.generation, first_seen=now_wall)
        return st

    @staticmethod
    def _sample_of(agent: AgentView, samples: dict[str, ResourceSample]) -> ResourceSample | None:
        sample = samples.get(agent.id)
        if sample is not None and sample.generation is not None and sample.generation != agent.generation:
            return None  # measured a process since replaced
        return sample

    @staticmethod
    def _down_health(agent: AgentView) -> str:
        if agent.operator_stopped:
            return "operator_stopped"
        if agent.state in ("stopped", "stopping", "restarting", "failed"):
            return "stopped"
        return "unknown"

    @staticmethod
    def _take_sample(st: _AgentState, rules: HealthRules, sample: ResourceSample | None) -> None:
        if sample is None or (st.last_sample_ts is not None and sample.ts <= st.last_sample_ts):
            return
        st.last_sample_ts = sample.ts
        if sample.procs == 0:
            return  # nothing measured; the dead rule handles it
        over = []
        if rules.cpu_threshold is not None and sample.cpu is not None and sample.cpu > rules.cpu_threshold:
            over.append(f"cpu {sample.cpu:.0f}% > {rules.cpu_threshold:g}%")
        if rules.memory_threshold is not None and sample.rss > rules.memory_threshold:
            over.append(f"rss {_fmt_bytes(sample.rss)} > {_fmt_bytes(rules.memory_threshold)}")
        if over:
            if st.over_since is None:
                st.over_since = sample.ts
            st.over_last = sample.ts
            st.over_what = ", ".join(over)
            return
        # Unknown cpu (first sample of a process) says nothing about cpu: it cannot prove "below".
        cpu_unknown = rules.cpu_threshold is not None and sample.cpu is None
        if not cpu_unknown:
            st.over_since = st.over_last = None
            st.over_what = ""

    @staticmethod
    def _take_endpoint(st: _AgentState, rules: HealthRules, result: bool | None) -> None:
        if rules.http_endpoint is None or result is None:
            return
        st.endpoint_streak = 0 if result else st.endpoint_streak + 1

    @staticmethod
    def _evaluate(
        now: float,
        agent: AgentView,
        st: _AgentState,
        rules: HealthRules,
        sample: ResourceSample | None,
        last_hb: float | None,
        intake_restarted_at: float | None,
    ) -> tuple[str, str]:
        if sample is not None and sample.procs == 0:
            return "dead", f"process {agent.pid} is gone"
        timeout = rules.heartbeat_timeout
        if timeout is not None:
            started = agent.started_at if agent.started_at is not None else st.first_seen
            if last_hb is not None and last_hb >= started:
                deadline = last_hb + timeout
                detail = f"no heartbeat for {_fmt_s(now - last_hb)} (timeout {_fmt_s(timeout)})"
            else:  # heartbeat times from an older generation predate this process's start
                deadline = started + rules.startup_grace
                detail = f"no heartbeat since start {_fmt_s(now - started)} ago (startup_grace {_fmt_s(rules.startup_grace)})"
            if intake_restarted_at is not None:
                # Heartbeats lost while an intake worker was down are the daemon's fault, not the agent's.
                deadline = max(deadline, intake_restarted_at + timeout)
            if now > deadline:
                return "no_heartbeat", detail
        if st.over_since is not None and st.over_last is not None and st.over_last - st.over_since >= rules.threshold_duration:
            return "over_threshold", f"{st.over_what} for {_fmt_s(st.over_last - st.over_since)}"
        if rules.http_endpoint is not None and st.endpoint_streak >= rules.endpoint_failures:
            return "endpoint_failed", f"GET {rules.http_endpoint} failed {st.endpoint_streak} times in a row"
        return "healthy", ""
