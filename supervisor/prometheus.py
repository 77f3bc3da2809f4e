"""Prometheus text exposition (format 0.0.4) for what the parent knows: agents, workers, intake."""

from __future__ import annotations

from collections import defaultdict

from .states import AgentState


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class MetricsText:
    """Collects samples by metric name and renders HELP/TYPE once per metric."""

    def __init__(self) -> None:
        self._meta: dict[str, tuple[str, str]] = {}
        self._samples: dict[str, list[str]] = defaultdict(list)

    def add(self, name: str, kind: str, help_text: str, value: float | int | None, **labels: str) -> None:
        if value is None:
            return
        self._meta.setdefault(name, (kind, help_text))
        label_text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
        number = str(int(value)) if isinstance(value, bool) or isinstance(value, int) else repr(float(value))  # exact: no %g rounding
        self._samples[name].append(f"{name}{{{label_text}}} {number}" if labels else f"{name} {number}")

    def render(self) -> str:
        out = []
        for name, (kind, help_text) in self._meta.items():
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(self._samples[name])
        return "\n".join(out) + "\n"


def render_parent_metrics(daemon) -> str:
    """Agent states, health, restarts by reason, resources, heartbeat ages; workers; intake counters."""
    m = MetricsText()
    now = daemon.now()
    latest = daemon.history.latest()
    for agent in daemon.registry:
        aid = agent.spec.id
        for state in AgentState:
            m.add("agentd_agent_state", "gauge", "1 for the agent's current state.", 1 if agent.state == state else 0, agent=aid, state=state.value)
        m.add("agentd_agent_healthy", "gauge", "1 when the last health judgement was healthy.", 1 if agent.health == "healthy" else 0, agent=aid)
        for kind, count in sorted(agent.restarts_by_kind.items()):
            m.add("agentd_agent_restarts_total", "counter", "Restarts by reason (exit, operator, config, no_heartbeat, ...).", count, agent=aid, reason=kind)
        m.add("agentd_agent_heartbeat_age_seconds", "gauge", "Seconds since the agent's last heartbeat.", agent.heartbeat_age(now), agent=aid)
        sample = latest.get(aid)
        if sample is not None and (sample.generation is None or sample.generation == agent.generation):
            m.add("agentd_agent_cpu_percent", "gauge", "CPU of the agent's process tree, percent of one core.", sample.cpu, agent=aid)
            m.add("agentd_agent_rss_bytes", "gauge", "Resident memory of the agent's process tree.", sample.rss, agent=aid)
            m.add("agentd_agent_open_fds", "gauge", "Open file descriptors of the agent's process tree.", sample.fds, agent=aid)
    for key, value in sorted(daemon.intake_counters().items()):
        m.add("agentd_parent_events_total", "counter", "Worker messages and heartbeats handled by the parent, by outcome.", value, event=key)
    for w in daemon.pool.describe():
        m.add("agentd_worker_up", "gauge", "1 while the worker process runs.", 1 if w.state == "running" else 0, worker=w.name)
        m.add("agentd_worker_restarts_total", "counter", "Worker respawns.", w.restarts, worker=w.name)
        m.add("agentd_worker_queue_depth", "gauge", "Items waiting in the worker for the parent.", w.queue_depth, worker=w.name)
        for key, value in sorted(w.counters.items()):
            m.add("agentd_worker_events_total", "counter", "Worker counters (received, accepted, rejected_<reason>, dropped, ...).", value, worker=w.name, event=key)
    for key, sample in sorted(latest.items()):
        if key.startswith("agentd/"):
            m.add("agentd_process_rss_bytes", "gauge", "Resident memory of agentd's own processes.", sample.rss, process=key[7:])
            m.add("agentd_process_cpu_percent", "gauge", "CPU of agentd's own processes, percent of one core.", sample.cpu, process=key[7:])
            m.add("agentd_process_open_fds", "gauge", "Open fds of agentd's own processes.", sample.fds, process=key[7:])
    for key, value in sorted(daemon.history.stats().items()):
        if key == "pending":
            m.add("agentd_history_pending", "gauge", "Resource samples waiting to be written.", value)
        else:
            m.add("agentd_history_total", "counter", "Resource history store counters.", value, event=key)
    return m.render()
