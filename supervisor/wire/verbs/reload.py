"""`reload [--dry-run]`: re-read the config file and touch only agents that were added, removed or changed."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

NAME = "reload"


class AgentChange(BaseModel):
    """One changed agent and the top-level fields of its spec that differ."""

    id: str
    fields: list[str]


class ReloadPlan(BaseModel):
    """The diff `reload` applies (or only shows, with --dry-run)."""

    added: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    changed: list[AgentChange] = Field(default_factory=list)
    unchanged: list[str] = Field(default_factory=list)
    restart_required: list[str] = Field(default_factory=list)  # settings that need an agentd restart
    warnings: list[str] = Field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dry_run: bool = False


class Result(BaseModel):
    applied: bool
    config: str
    plan: ReloadPlan
