"""agentd's one Prometheus writer: families built per scrape, rendered by prometheus_client (docs/metrics.md).

Both renderers use it: the parent's families (the `metrics` verb) and each HTTP intake worker's own.
Values are snapshots of state agentd already keeps, so each scrape builds fresh families and hands them
to prometheus_client's text writer, which owns naming, escaping and number formatting.
"""

from __future__ import annotations

import platform

from prometheus_client import exposition
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from supervisor.wire.version import __version__
from supervisor.wire.states import DOWN_STATES, AgentState

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

    def add(self, name: str, value: float | None, **labels: str) -> None:
        """One sample of a family declared before; None (not known) is left out."""
        if value is not None:
            self._families[name].add_metric(list(labels.values()), value)

    def collect(self):
        return iter(self._families.values())

    def text(self) -> bytes:
        return exposition.generate_latest(self)  # type: ignore[arg-type]  # anything with collect() will do


def add_build_info(m: Exposition) -> None:
    """`agentd_build_info{version,python} 1`, so dashboards can tell versions apart across a fleet."""
    m.gauge("agentd_build_info", "Always 1; the labels say which agentd and Python run.", 1,
            version=__version__, python=platform.python_version())


# The parent's families: all declared on every scrape, so a family with no samples yet (no Manager, no resource
# sample taken) still shows what it is, and dashboards and alert rules never read a name that is not there.
PARENT_FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "agentd_agent_state": ("gauge", "1 for the agent's current state, 0 for every other known state.", ("agent", "state")),
    "agentd_agent_health_judged": ("gauge", "1 once the health worker has judged the agent's current run; 0 while not yet judged.", ("agent",)),
    "agentd_agent_healthy": ("gauge", "1 when the last judgement was healthy; 0 when unhealthy or not yet judged (see agentd_agent_health_judged).", ("agent",)),
    "agentd_agent_restarts_total": ("counter", "Restarts by reason (exit, operator, config, no_heartbeat, ...).", ("agent", "reason")),
    "agentd_agent_heartbeat_age_seconds": ("gauge", "Seconds since the agent's last heartbeat.", ("agent",)),
    "agentd_agent_cpu_percent": ("gauge", "CPU of the agent's process tree, percent of one core.", ("agent",)),
    "agentd_agent_rss_bytes": ("gauge", "Resident memory of the agent's process tree.", ("agent",)),
    "agentd_agent_open_fds": ("gauge", "Open file descriptors of the agent's process tree.", ("agent",)),
    "agentd_parent_loop_stalls_total": ("counter", "Times the parent's event loop was late by more than the stall threshold.", ()),
    "agentd_parent_loop_stalled_seconds_total": ("counter", "Time the parent's event loop spent stalled.", ()),
    "agentd_parent_loop_longest_stall_seconds": ("gauge", "The longest stall of the parent's event loop since agentd started.", ()),
    "agentd_parent_events_total": ("counter", "Worker messages and heartbeats handled by the parent, by outcome.", ("event",)),
    "agentd_worker_up": ("gauge", "1 while the worker process runs.", ("worker",)),
    "agentd_worker_restarts_total": ("counter", "Worker respawns.", ("worker",)),
    "agentd_worker_queue_depth": ("gauge", "Items waiting in the worker for the parent.", ("worker",)),
    **{f"agentd_worker_{key}": ("gauge", help_text, ("worker",)) for key, help_text in WORKER_GAUGES.items()},
    "agentd_worker_events_total": ("counter", "Worker counters (received, accepted, rejected_<reason>, dropped, ...).", ("worker", "event")),
    "agentd_manager_connected": ("gauge", "1 while the Manager answered the last call (an error reply counts as connected).", ("manager",)),
    "agentd_manager_registered": ("gauge", "1 once the node is registered with the Manager.", ("manager",)),
    "agentd_process_rss_bytes": ("gauge", "Resident memory of agentd's own processes.", ("process",)),
    "agentd_process_cpu_percent": ("gauge", "CPU of agentd's own processes, percent of one core.", ("process",)),
    "agentd_process_open_fds": ("gauge", "Open fds of agentd's own processes.", ("process",)),
    "agentd_history_pending": ("gauge", "Resource samples waiting to be written.", ()),
    "agentd_history_total": ("counter", "Resource history store counters.", ("event",)),
}


def render_parent_metrics(daemon) -> str:
    """Agent states, health, restarts by reason, resources, heartbeat ages; workers; intake counters."""
    m = Exposition()
    add_build_info(m)
    for name, (kind, help_text, labels) in PARENT_FAMILIES.items():
        m.declare(kind, name, help_text, *labels)
    add = m.add
    now = daemon.now()
    latest = daemon.history.latest()
    for agent in daemon.registry:
        aid = agent.spec.id
        for state in AgentState:  # every known state, always: a state change flips values, never adds a series
            add("agentd_agent_state", int(agent.state == state), agent=aid, state=state.value)
        # A stopped or failed agent's health field names the state; only a verdict on a live run counts as judged.
        add("agentd_agent_health_judged", int(agent.health is not None and agent.state not in DOWN_STATES), agent=aid)
        add("agentd_agent_healthy", int(agent.health == "healthy"), agent=aid)
        for kind, count in sorted(agent.restarts_by_kind.items()):
            add("agentd_agent_restarts_total", count, agent=aid, reason=kind)
        add("agentd_agent_heartbeat_age_seconds", agent.heartbeat_age(now), agent=aid)
        sample = latest.get(aid)
        if sample is not None and (sample.generation is None or sample.generation == agent.generation):
            add("agentd_agent_cpu_percent", sample.cpu, agent=aid)
            add("agentd_agent_rss_bytes", sample.rss, agent=aid)
            add("agentd_agent_open_fds", sample.fds, agent=aid)
    counters = daemon.intake_counters()
    # The loop's stall watch (supervisor/common/stall_watch.py) in base units, the longest stall as the gauge it is.
    stalls, stalled, longest = (counters.pop(k, None) for k in ("stalls", "stalled_ms", "longest_stall_ms"))
    add("agentd_parent_loop_stalls_total", stalls)
    add("agentd_parent_loop_stalled_seconds_total", None if stalled is None else stalled / 1000)
    add("agentd_parent_loop_longest_stall_seconds", None if longest is None else longest / 1000)
    for key, value in sorted(counters.items()):
        add("agentd_parent_events_total", value, event=key)
    for w in daemon.pool.describe():
        running = w.state == "running"
        add("agentd_worker_up", int(running), worker=w.name)
        add("agentd_worker_restarts_total", w.restarts, worker=w.name)
        add("agentd_worker_queue_depth", w.queue_depth, worker=w.name)
        if w.kind == "sync":  # the Manager link, as the sync worker last saw it (workers/sync.py)
            manager = w.info.get("manager", "")
            add("agentd_manager_connected", int(running and w.info.get("connected") == "yes"), manager=manager)
            add("agentd_manager_registered", int(running and w.info.get("registered") == "yes"), manager=manager)
        for key, value in sorted(w.counters.items()):
            if key in WORKER_GAUGES:
                add(f"agentd_worker_{key}", value, worker=w.name)
            else:
                add("agentd_worker_events_total", value, worker=w.name, event=key)
    for key, sample in sorted(latest.items()):
        if key.startswith("agentd/"):
            add("agentd_process_rss_bytes", sample.rss, process=key[7:])
            add("agentd_process_cpu_percent", sample.cpu, process=key[7:])
            add("agentd_process_open_fds", sample.fds, process=key[7:])
    for key, value in sorted(daemon.history.stats().items()):
        if key == "pending":
            add("agentd_history_pending", value)
        else:
            add("agentd_history_total", value, event=key)
    return m.text().decode()
