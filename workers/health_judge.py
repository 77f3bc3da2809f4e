"""The health rules of docs/health.md as a pure state machine: the caller supplies the clock and every input.

The clock is the monotonic one (heartbeat times, starts and the intake restart time too), so a wall-clock
step moves no deadline. Each non-healthy verdict is emitted once per (agent, generation), unless the
parent could not have taken in what would have refuted it: an intake outage or a stall of the parent that
ended after the verdict's evidence began, or (for no_heartbeat) a heartbeat received since. The verdict is
then reopened and judged again on fresh evidence. cpu_threshold is percent of ONE core.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from supervisor.config.health_check import default_startup_grace, health_check_defaults
from supervisor.config.units import format_bytes
from supervisor.wire.messages import AgentHealth, AgentView, ResourceSample, Verdict
from supervisor.wire.states import UP_STATES

_DEFAULTS = health_check_defaults()  # the config's, so a rule has one default (docs/health.md)
# A `dead` verdict the parent acts on ends the generation at once (it leaves the up states); one still up
# this long after was refused because the parent's watch on the process says it lives: judge it again.
DEAD_RECHECK = 5.0


@dataclass(frozen=True)
class HealthRules:
    """One agent's `health_check` settings, read from its AgentView (times in seconds, sizes in bytes)."""

    interval: float
    heartbeat_timeout: float | None
    startup_grace: float
    # Percent of ONE core (psutil's scale), compared with the tree's summed cpu percent: a tree busy on
    # two cores reads 200, so a threshold above 100 allows a multi-threaded agent several cores.
    cpu_threshold: float | None
    memory_threshold: int | None
    threshold_duration: float
    http_endpoint: str | None
    http_timeout: float
    http_ca_file: str | None  # verify the endpoint's certificate against this CA file, not the system's
    http_tls_verify: bool  # False only when the agent's config says so explicitly
    endpoint_failures: int
    open_files_threshold: int | None = None  # open descriptors of the whole tree (an fd leak)


def rules_of(agent: AgentView) -> HealthRules:
    """The agent's rules; a missing key takes the config default, an explicit null disables the check."""
    hc = agent.health_check

    def get(name: str):
        return hc.get(name, _DEFAULTS[name])

    timeout = get("heartbeat_timeout") or None  # 0 disables, as in the config
    grace = get("startup_grace")
    if grace is None:
        grace = default_startup_grace(timeout)
    return HealthRules(
        interval=float(get("interval") or _DEFAULTS["interval"]),
        heartbeat_timeout=None if timeout is None else float(timeout),
        startup_grace=float(grace),
        cpu_threshold=None if get("cpu_threshold") is None else float(get("cpu_threshold")),
        memory_threshold=None if get("memory_threshold") is None else int(get("memory_threshold")),
        threshold_duration=float(get("threshold_duration") or 0.0),
        open_files_threshold=None if hc.get("open_files_threshold") is None else int(hc["open_files_threshold"]),
        http_endpoint=get("http_endpoint") or None,
        http_timeout=float(get("http_timeout") or _DEFAULTS["http_timeout"]),
        http_ca_file=get("http_ca_file") or None,
        http_tls_verify=get("http_tls_verify") is not False,
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
    endpoint_since: float | None = None  # when the current failure streak began
    health: AgentHealth | None = None
    verdict_sent: bool = False
    verdict_kind: str = ""
    verdict_since: float = 0.0  # start of the evidence behind the sent verdict
    verdict_formed: float = 0.0  # when it was sent

    def reopen(self) -> None:
        """Forget the sent verdict and the evidence behind it: judge again from fresh evidence."""
        self.verdict_sent = False
        self.over_since = self.over_last = None
        self.over_what = ""
        self.endpoint_streak = 0
        self.endpoint_since = None


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
        self.reopened: list[str] = []  # agents whose verdict was reopened in the last round

    def __len__(self) -> int:
        return len(self._state)

    def judge(
        self,
        now: float,
        agents: dict[str, AgentView],
        last_heartbeat: dict[str, float],
        samples: dict[str, ResourceSample],
        endpoint_results: dict[str, bool | None],
        intake_restarted_at: float | None,
        *,
        due: Collection[str] | None = None,
        wall: float | None = None,
        stalled_until: float | None = None,
    ) -> tuple[list[Verdict], dict[str, AgentHealth]]:
        """One judging round of the `due` agents (None = all; the others keep their last health).

        `now`, `last_heartbeat` and `intake_restarted_at` are monotonic; `wall` only stamps verdicts for
        people; `stalled_until` is the end of the parent's latest stall (or ours). Returns the new verdicts and every agent's health."""
        # endpoint_results: the result of a check finished since the last round, or None; each counts once.
        # samples may repeat one already seen (by ts): it counts once too.
        self._forget_missing(agents)
        verdicts: list[Verdict] = []
        report: dict[str, AgentHealth] = {}
        self.reopened = []
        for agent_id, agent in agents.items():
            st = self._state_for(now, agent)
            if st is not None and st.verdict_sent and self._refuted(st, now, last_heartbeat.get(agent_id), intake_restarted_at, stalled_until):
                st.reopen()
                self.reopened.append(agent_id)
            if st is None:
                report[agent_id] = AgentHealth(health=self._down_health(agent), generation=agent.generation, detail=agent.state)
                continue
            if st.verdict_sent or (due is not None and agent_id not in due):
                report[agent_id] = st.health or AgentHealth(health="starting" if agent.state == "starting" else "unknown", generation=agent.generation)
                continue
            rules = rules_of(agent)
            sample = self._sample_of(agent, samples)
            self._take_sample(st, rules, sample)
            self._take_endpoint(st, rules, endpoint_results.get(agent_id), now)
            kind, detail, since = self._evaluate(now, agent, st, rules, sample, last_heartbeat.get(agent_id), intake_restarted_at)
            if kind == "healthy" and agent.state == "starting":
                kind = "starting"  # nothing wrong yet, but not ready either
            st.health = AgentHealth(health=kind, generation=agent.generation, detail=detail)
            report[agent_id] = st.health
            if kind not in ("healthy", "starting"):
                st.verdict_sent = True  # once per generation: the parent's restart brings a new one
                st.verdict_kind, st.verdict_since, st.verdict_formed = kind, since, now
                verdicts.append(Verdict(worker=self.worker, agent_id=agent_id, generation=agent.generation, verdict=kind, detail=detail,
                                        time=now if wall is None else wall, since=since, formed=now))
        return verdicts, report

    def observe(self, now: float, agents: dict[str, AgentView], samples: dict[str, ResourceSample]) -> None:
        """Feed samples taken between judgements into the threshold timers, so every sample counts."""
        self._forget_missing(agents)
        for agent_id, sample in samples.items():
            agent = agents.get(agent_id)
            if agent is None:
                continue
            st = self._state_for(now, agent)
            if st is not None and not st.verdict_sent:
                self._take_sample(st, rules_of(agent), self._sample_of(agent, samples))

    @staticmethod
    def _refuted(st: _AgentState, now: float, last_hb: float | None, intake_restarted_at: float | None, stalled_until: float | None) -> bool:
        """The parent may have refused the sent verdict: it stalled after the evidence began, or (for
        no_heartbeat) it could not take heartbeats in for part of it or one arrived since, or (for dead)
        its own watch on the process says it lives, which shows here as the same generation still up a
        while later. The parent refuses only in these cases (supervisor/parent/heartbeat_apply.py,
        VerdictApplier; lifecycle.AgentProcess.verdict), so a refused verdict is always judged again."""
        if stalled_until is not None and stalled_until > st.verdict_since:
            return True
        if st.verdict_kind == "dead":
            return now - st.verdict_formed >= DEAD_RECHECK
        if st.verdict_kind != "no_heartbeat":
            return False
        return any(t is not None and t > st.verdict_since for t in (intake_restarted_at, last_hb))

    def _forget_missing(self, agents: dict[str, AgentView]) -> None:
        for gone in self._state.keys() - agents.keys():
            del self._state[gone]  # removed agents: keep the map bounded

    def _state_for(self, now: float, agent: AgentView) -> _AgentState | None:
        """This generation's state; None (and nothing kept) for agents that are not judged."""
        if agent.operator_stopped or agent.state not in UP_STATES:
            self._state.pop(agent.id, None)  # a new process will have a new generation
            return None
        st = self._state.get(agent.id)
        if st is None or st.generation != agent.generation:
            st = self._state[agent.id] = _AgentState(agent.generation, first_seen=now)
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
        t = _sample_time(sample) if sample is not None else None
        if sample is None or (st.last_sample_ts is not None and t <= st.last_sample_ts):
            return
        st.last_sample_ts = t
        if sample.procs == 0:
            return  # nothing measured; the dead rule handles it
        over = []
        if rules.cpu_threshold is not None and sample.cpu is not None and sample.cpu > rules.cpu_threshold:
            over.append(f"cpu {sample.cpu:.0f}% > {rules.cpu_threshold:g}%")
        if rules.memory_threshold is not None and sample.rss > rules.memory_threshold:
            over.append(f"rss {_fmt_bytes(sample.rss)} > {_fmt_bytes(rules.memory_threshold)}")
        if rules.open_files_threshold is not None and sample.fds is not None and sample.fds > rules.open_files_threshold:
            over.append(f"open files {sample.fds} > {rules.open_files_threshold}")
        if over:
            if st.over_since is None:
                st.over_since = t
            st.over_last = t
            st.over_what = ", ".join(over)
            return
        # Unknown cpu (first sample of a process) says nothing about cpu: it cannot prove "below".
        cpu_unknown = rules.cpu_threshold is not None and sample.cpu is None
        if not cpu_unknown:
            st.over_since = st.over_last = None
            st.over_what = ""

    @staticmethod
    def _take_endpoint(st: _AgentState, rules: HealthRules, result: bool | None, now: float) -> None:
        if rules.http_endpoint is None or result is None:
            return
        if result:
            st.endpoint_streak, st.endpoint_since = 0, None
        else:
            st.endpoint_streak += 1
            st.endpoint_since = now if st.endpoint_since is None else st.endpoint_since

    @staticmethod
    def _evaluate(
        now: float,
        agent: AgentView,
        st: _AgentState,
        rules: HealthRules,
        sample: ResourceSample | None,
        last_hb: float | None,
        intake_restarted_at: float | None,
    ) -> tuple[str, str, float]:
        """(kind, detail, since): since is when the evidence for a verdict began (monotonic)."""
        if sample is not None and sample.procs == 0:
            return "dead", f"process {agent.pid} is gone", now
        timeout = rules.heartbeat_timeout
        if timeout is not None:
            started = agent.started_mono if agent.started_mono is not None else st.first_seen
            if last_hb is not None and last_hb >= started:
                since, deadline = last_hb, last_hb + timeout
                detail = f"no heartbeat for {_fmt_s(now - last_hb)} (timeout {_fmt_s(timeout)})"
            else:  # heartbeat times from an older generation predate this process's start
                since, deadline = started, started + rules.startup_grace
                detail = f"no heartbeat since start {_fmt_s(now - started)} ago (startup_grace {_fmt_s(rules.startup_grace)})"
            if intake_restarted_at is not None and intake_restarted_at + timeout > deadline:
                # Heartbeats lost while an intake worker was down (or the parent stalled) are the
                # daemon's fault, not the agent's.
                since, deadline = intake_restarted_at, intake_restarted_at + timeout
            if now > deadline:
                return "no_heartbeat", detail, since
        if st.over_since is not None and st.over_last is not None and st.over_last - st.over_since >= rules.threshold_duration:
            return "over_threshold", f"{st.over_what} for {_fmt_s(st.over_last - st.over_since)}", st.over_since
        if rules.http_endpoint is not None and st.endpoint_streak >= rules.endpoint_failures:
            since = st.endpoint_since if st.endpoint_since is not None else now
            return "endpoint_failed", f"GET {rules.http_endpoint} failed {st.endpoint_streak} times in a row", since
        return "healthy", "", now


def _sample_time(sample: ResourceSample) -> float:
    """Monotonic when the sampler stamped it (always, in agentd); wall time for older senders."""
    return sample.mono if sample.mono is not None else sample.ts
