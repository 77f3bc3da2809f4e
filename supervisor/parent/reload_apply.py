"""Applying a reload: the per-agent diff (reload_plan.py computes it) acted on in the registry
(docs/architecture.md, "The event loop").

No file or process calls of its own beyond reading the config file: the registry, the metadata
lookup for re-added agents, the state feed and the clock are passed in.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from supervisor.config.agent import AgentSpec
from supervisor.config.errors import ConfigError
from supervisor.config.loading import load_config
from supervisor.config.schema import Config
from supervisor.parent.launch_spec import launch_diff
from supervisor.parent.lifecycle import AgentProcess
from supervisor.parent.registry import Registry
from supervisor.parent.reload_plan import plan_reload
from supervisor.wire.protocol import ControlError, ErrorCode
from supervisor.wire.verbs.reload import AgentChange, ReloadPlan
from supervisor.wire.states import UP_STATES

log = logging.getLogger("supervisor.parent.daemon")  # the parent's log lines keep their logger name


def read_new_config(config_path: Path | None) -> Config:
    """The config file as it is now, or the control error that says why nothing changed."""
    if config_path is None:
        raise ControlError(ErrorCode.FAILED, "agentd was started without a config file; nothing to reload")
    try:
        return load_config(config_path)
    except ConfigError as exc:
        raise ControlError(ErrorCode.INVALID_CONFIG, f"config not reloaded, nothing changed:\n{exc}") from None


def plan_with_launch_changes(registry: Registry, old: Config, new: Config, in_force: Config) -> ReloadPlan:
    """The reload plan; an agent whose process runs another command than its (unchanged) spec says is changed too."""
    plan = plan_reload(old, new, in_force=in_force)
    specs = {s.id: s for s in new.agents}
    for agent_id in list(plan.unchanged):
        agent = registry.find(agent_id)
        if agent is None or agent.handle is None or agent.state not in UP_STATES:
            continue
        fields = launch_diff(agent.handle.launch, specs[agent_id])
        if fields:
            plan.unchanged.remove(agent_id)
            plan.changed.append(AgentChange(id=agent_id, fields=[f"{f} (of the running process)" for f in fields]))
    return plan


def apply_plan(plan: ReloadPlan, new: Config, registry: Registry, new_agent: Callable[[AgentSpec], AgentProcess],
               publish: Callable[[AgentProcess], None], now: float) -> None:
    """Remove, change, add and re-spec agents as `plan` says; `new_agent(spec)` builds an added one."""
    specs = {s.id: s for s in new.agents}
    for agent_id in plan.removed:
        registry.get(agent_id).remove(now)
    for change in plan.changed:
        registry.get(change.id).update_spec(specs[change.id], now)
    for agent_id in plan.added:
        existing = registry.find(agent_id)
        if existing is not None:  # re-added while a previous removal is still stopping it
            existing.cancel_remove(specs[agent_id])
            continue
        agent = new_agent(specs[agent_id])
        registry.add(agent)
        agent.start_if_wanted(now, "added by reload")
    for agent_id in plan.unchanged:
        registry.get(agent_id).spec = specs[agent_id]
    for agent_id in [*plan.added, *(c.id for c in plan.changed)]:
        agent = registry.find(agent_id)
        if agent is not None:
            publish(agent)  # new token or health settings, even without a transition
    if plan.restart_required:
        log.warning("reload: changes to %s take effect only after agentd restarts", ", ".join(plan.restart_required))
    log.info(
        "reload: added %s, removed %s, changed %s, unchanged %d",
        plan.added or "none", plan.removed or "none", [c.id for c in plan.changed] or "none", len(plan.unchanged),
    )
