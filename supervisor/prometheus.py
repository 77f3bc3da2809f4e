"""agentd's one Prometheus writer: families built per scrape, rendered by prometheus_client (docs/metrics.md).

Both renderers use it: the parent's families (the `metrics` verb) and each HTTP intake worker's own.
Values are snapshots of state agentd already keeps, so each scrape builds fresh families and hands them
to prometheus_client's text writer, which owns naming, escaping and number formatting.
"""

from __future__ import annotations

import platform

from prometheus_client import exposition
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from . import __version__
from .states import DOWN_STATES, AgentState

CONTENT_TYPE = exposition.CONTENT_TYPE_PLAIN_0_0_4  # both renderers concatenate into one 0.0.4 text

# Worker "counters" that are levels, not counts: they go out as gauges, never inside a *_total family.
WORKER_GAUGES = {"connections_open": "Client connections open now.", "connections_unverified": "Connections that have not yet sent a valid heartbeat."}


class Exposition:
    """The families of one scrape, in the order added; `text()` renders them as Prometheus text 0.0.4."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def _family(self, cls, name: str, help_text: str, labels: tuple[str, ...]) -> Metric:
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = cls(name, help_text, labels=list(labels))
        return family

    def gauge(self, name: str, help_text: str, value: float | None, **labels: str) -> None:
        """One gauge sample; a None value (not known) is left out, never written as 0."""
        if value is not None:
            self._family(GaugeMetricFamily, name, help_text, tuple(labels)).add_metric(list(labels.values()), value)

    def counter(self, name: str, help_text: str, value: float | None, **labels: str) -> None:
        """One counter sample; `name` ends in `_total`."""
        if value is not None:
            self._family(CounterMetricFamily, name, help_text, tuple(labels)).add_metric(list(labels.values()), value)

    def declare(self, kind: str, name: str, help_text: str, *labels: str) -> None:
        """A family present (HELP/TYPE) even while it has no samples, e.g. no agent configured yet."""
        self._family(GaugeMetricFamily if kind == "gauge" else CounterMetricFamily, name, help_text, labels)

    def collect(self):
        return iter(self._families.values())

    def text(self) -> bytes:
        return exposition.generate_latest(self)  # type: ignore[arg-type]  # anything with collect() will do


def add_build_info(m: Exposition) -> None:
    """`agentd_build_info{version,python} 1`, so dashboards can tell versions apart across a fleet."""
    m.gauge("agentd_build_info", "Always 1; the labels say which agentd and Python run.", 1,
            version=__version__, python=platform.python_version())


def render_parent_metrics(daemon) -> str:
    """Agent states, health, restarts by reason, resources, heartbeat ages; workers; intake counters."""
    m = Exposition()
    add_build_info(m)
    now = daemon.now()
    latest = daemon.history.latest()
    m.declare("gauge", "agentd_agent_state", "1 for the agent's current state, 0 for every other known state.", "agent", "state")
    for agent in daemon.registry:
        aid = agent.spec.id
        for state in AgentState:  # every known state, always: a state change flips values, never adds a series
            m.gauge("agentd_agent_state", "1 for the agent's current state, 0 for every other known state.", int(agent.state == state), agent=aid, state=state.value)
        # A stopped or failed agent's health field names the state; only a verdict on a live run counts as judged.
        judged = agent.health is not None and agent.state not in DOWN_STATES
        m.gauge("agentd_agent_health_judged", "1 once the health worker has judged the agent's current run; 0 while not yet judged.", int(judged), agent=aid)
        m.gauge("agentd_agent_healthy", "1 when the last judgement was healthy; 0 when unhealthy or not yet judged (see agentd_agent_health_judged).",
                int(agent.health == "healthy"), agent=aid)
        for kind, count in sorted(agent.restarts_by_kind.items()):
            m.counter("agentd_agent_restarts_total", "Restarts by reason (exit, operator, config, no_heartbeat, ...).", count, agent=aid, reason=kind)
        m.gauge("agentd_agent_heartbeat_age_seconds", "Seconds since the agent's last heartbeat.", agent.heartbeat_age(now), agent=aid)
        sample = latest.get(aid)
        if sample is not None and (sample.generation is None or sample.generation == agent.generation):
            m.gauge("agentd_agent_cpu_percent", "CPU of the agent's process tree, percent of one core.", sample.cpu, agent=aid)
            m.gauge("agentd_agent_rss_bytes", "Resident memory of the agent's process tree.", sample.rss, agent=aid)
            m.gauge("agentd_agent_open_fds", "Open file descriptors of the agent's process tree.", sample.fds, agent=aid)
    counters = daemon.intake_counters()
    # The loop's stall watch (supervisor/stall_watch.py) in base units, the longest stall as the gauge it is.
    m.counter("agentd_parent_loop_stalls_total", "Times the parent's event loop was late by more than the stall threshold.", counters.pop("stalls", None))
    stalled, longest = counters.pop("stalled_ms", None), counters.pop("longest_stall_ms", None)
    m.counter("agentd_parent_loop_stalled_seconds_total", "Time the parent's event loop spent stalled.", None if stalled is None else stalled / 1000)
    m.gauge("agentd_parent_loop_longest_stall_seconds", "The longest stall of the parent's event loop since agentd started.", None if longest is None else longest / 1000)
    for key, value in sorted(counters.items()):
        m.counter("agentd_parent_events_total", "Worker messages and heartbeats handled by the parent, by outcome.", value, event=key)
    for w in daemon.pool.describe():
        m.gauge("agentd_worker_up", "1 while the worker process runs.", int(w.state == "running"), worker=w.name)
        m.counter("agentd_worker_restarts_total", "Worker respawns.", w.restarts, worker=w.name)
        m.gauge("agentd_worker_queue_depth", "Items waiting in the worker for the parent.", w.queue_depth, worker=w.name)
        for key, value in sorted(w.counters.items()):
            if key in WORKER_GAUGES:
                m.gauge(f"agentd_worker_{key}", WORKER_GAUGES[key], value, worker=w.name)
            else:
                m.counter("agentd_worker_events_total", "Worker counters (received, accepted, rejected_<reason>, dropped, ...).", value, worker=w.name, event=key)
    for key, sample in sorted(latest.items()):
        if key.startswith("agentd/"):
            m.gauge("agentd_process_rss_bytes", "Resident memory of agentd's own processes.", sample.rss, process=key[7:])
            m.gauge("agentd_process_cpu_percent", "CPU of agentd's own processes, percent of one core.", sample.cpu, process=key[7:])
            m.gauge("agentd_process_open_fds", "Open fds of agentd's own processes.", sample.fds, process=key[7:])
    for key, value in sorted(daemon.history.stats().items()):
        if key == "pending":
            m.gauge("agentd_history_pending", "Resource samples waiting to be written.", value)
        else:
            m.counter("agentd_history_total", "Resource history store counters.", value, event=key)
    return m.text().decode()
