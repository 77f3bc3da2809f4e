"""Applying a reload: the per-agent diff (reload_plan.py computes it) acted on in the registry, and
`ConfigReload`, which owns the config in force (docs/architecture.md, "The event loop").

No file or process calls of its own beyond reading the config file: the registry, how an added agent
is built, the state feed and the clock are passed in.
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


class ConfigReload:
    """The config in force, the one agentd started with, and the sections a reload changed that wait for a restart."""

    def __init__(self, config: Config, config_path: Path | None, registry: Registry, new_agent: Callable[[AgentSpec], AgentProcess],
                 publish: Callable[[AgentProcess], None], applied: Callable[[Config], None], now: Callable[[], float]) -> None:
        self.config = config
        self.started = config  # restart-only sections (docs/configuration.md: heartbeat, control, ...) stay as started
        self.restart_required: list[str] = []
        self.config_path = config_path
        self._registry = registry
        self._new_agent = new_agent
        self._publish = publish
        self._applied = applied
        self._now = now

    def reload(self, dry_run: bool = False) -> ReloadPlan:
        """Re-read the config file and apply the per-agent diff (or only compute it); `applied(new)` follows."""
        new = read_new_config(self.config_path)
        plan = plan_with_launch_changes(self._registry, self.config, new, self.started)
        if dry_run:
            return plan
        apply_plan(plan, new, self._registry, self._new_agent, self._publish, self._now())
        self.restart_required = list(plan.restart_required)
        self.config = new
        self._applied(new)
        return plan

    def from_signal(self) -> None:
        """SIGHUP: reload, and log why not instead of raising (nobody waits for an answer)."""
        log.info("SIGHUP: reloading %s", self.config_path)
        try:
            self.reload()
        except ControlError as exc:
            log.error("SIGHUP reload failed: %s", exc.message)
