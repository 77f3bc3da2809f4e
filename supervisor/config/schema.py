"""The whole configuration file: its top-level sections and agents, fully resolved (docs/configuration.md).

Each section's model lives with its concern (daemon_sections.py, manager_sections.py, agent.py,
health_check.py); loading.py reads a file into a Config, and dump_effective writes one back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from supervisor.config.agent import AgentDefaults, AgentSpec
from supervisor.config.daemon_sections import (
    CgroupSettings,
    ControlSettings,
    DaemonSettings,
    HeartbeatSettings,
    HistorySettings,
    MetadataSettings,
    ResourcesSettings,
    ShutdownSettings,
)
from supervisor.config.fields import Section
from supervisor.config.manager_sections import CollectorsSettings, ManagerAPISettings, ManagerSettings

__all__ = ["AGENT_KEYS", "SECTIONS", "TOP_LEVEL_KEYS", "Config", "dump_effective"]


class Config(Section):
    """The whole agentd configuration; every path in a loaded Config is absolute."""

    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    control: ControlSettings = Field(default_factory=ControlSettings)
    heartbeat: HeartbeatSettings = Field(default_factory=HeartbeatSettings)
    resources: ResourcesSettings = Field(default_factory=ResourcesSettings)
    history: HistorySettings = Field(default_factory=HistorySettings)
    metadata: MetadataSettings = Field(default_factory=MetadataSettings)
    manager: ManagerSettings = Field(default_factory=ManagerSettings)
    manager_api: ManagerAPISettings = Field(default_factory=ManagerAPISettings)
    collectors: CollectorsSettings = Field(default_factory=CollectorsSettings.all_on)
    shutdown: ShutdownSettings = Field(default_factory=ShutdownSettings)
    cgroups: CgroupSettings = Field(default_factory=CgroupSettings)
    agent_defaults: AgentDefaults = Field(default_factory=AgentDefaults)
    agents: list[AgentSpec] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    source: Path | None = None


AGENT_KEYS = ("agent", "agents", "agent_defaults")
# The top-level sections other than the agents', each validated on its own, by name.
SECTIONS: dict[str, type[Section]] = {
    name: field.annotation
    for name, field in Config.model_fields.items()
    if name not in AGENT_KEYS and name not in ("warnings", "source")
}
TOP_LEVEL_KEYS = [*SECTIONS, *AGENT_KEYS]


def _tidy(value: Any) -> Any:
    # 30.0 reads better as 30 in a file people look at; parse_config treats both the same.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _tidy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tidy(v) for v in value]
    return value


def dump_effective(config: Config) -> str:
    """The effective config as YAML (durations in seconds, paths as strings); parse_config reads it back."""
    data: dict[str, Any] = {name: getattr(config, name).model_dump(mode="json") for name in SECTIONS}
    data["agent_defaults"] = config.agent_defaults.model_dump(mode="json", exclude_unset=True)
    data["agents"] = []
    inherited_env = config.agent_defaults.env
    for spec in config.agents:
        fields = spec.model_dump(mode="json")
        # env is the one mapping merged key by key; spell out removed defaults so a re-parse keeps them removed.
        fields["env"] = {**{k: None for k in inherited_env if k not in spec.env}, **fields["env"]}
        data["agents"].append({"id": fields.pop("id"), **fields})
    return yaml.safe_dump(_tidy(data), sort_keys=False, allow_unicode=True, default_flow_style=False)
