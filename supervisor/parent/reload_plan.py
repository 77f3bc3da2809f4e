"""What a reload would change: a per-agent diff between the running and the new configuration."""

from __future__ import annotations

from supervisor.config.agent import AgentSpec
from supervisor.config.schema import Config
from supervisor.wire.verbs.reload import AgentChange, ReloadPlan

# Sections the running daemon cannot switch live; a change there needs `agentd` restarted.
# These are read once at start: sockets, worker settings, agents' AGENTD_HEARTBEAT_*, the history
# store, the Manager link. Changing them needs an agentd restart (agents keep running across it).
RESTART_ONLY_SECTIONS = ("daemon", "control", "heartbeat", "resources", "history", "metadata", "manager", "manager_api",
                         "collectors", "cgroups")


def _changed_fields(old: AgentSpec, new: AgentSpec) -> list[str]:
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def plan_reload(old: Config, new: Config, in_force: Config | None = None) -> ReloadPlan:
    """Compare two configurations agent by agent; unchanged agents are never touched.

    Restart-only sections are compared with `in_force`, the config agentd started with (default `old`),
    so a change still waiting for an agentd restart is reported again by every later reload.
    """
    in_force = in_force or old
    old_specs = {s.id: s for s in old.agents}
    new_specs = {s.id: s for s in new.agents}
    plan = ReloadPlan(warnings=list(new.warnings))
    for agent_id, spec in new_specs.items():
        before = old_specs.get(agent_id)
        if before is None:
            plan.added.append(agent_id)
        elif before.fingerprint() != spec.fingerprint():
            plan.changed.append(AgentChange(id=agent_id, fields=_changed_fields(before, spec)))
        else:
            plan.unchanged.append(agent_id)
    plan.removed = [i for i in old_specs if i not in new_specs]
    for section in RESTART_ONLY_SECTIONS:
        if getattr(in_force, section).model_dump(mode="json") != getattr(new, section).model_dump(mode="json"):
            plan.restart_required.append(section)
    return plan
