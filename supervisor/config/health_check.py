"""`health_check:` an agent's liveness and threshold rules, and their defaults (docs/health.md).

The health worker (workers/health_judge.py) reads the same defaults from here, so a rule has one default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from supervisor.config.fields import MIB, PathT, PositiveDuration, Section
from supervisor.config.units import Duration, OptionalDuration, OptionalSize

__all__ = ["MIN_STARTUP_GRACE", "HealthCheck", "default_startup_grace", "health_check_defaults"]

MIN_STARTUP_GRACE = 30.0


def default_startup_grace(heartbeat_timeout: float | None) -> float:
    """startup_grace when none is set: max(heartbeat_timeout, 30 s) (docs/health.md)."""
    return max(heartbeat_timeout or 0.0, MIN_STARTUP_GRACE)


class HealthCheck(Section):
    """`health_check:` liveness and threshold rules (docs/health.md)."""

    interval: PositiveDuration = 30.0
    heartbeat_timeout: OptionalDuration = 90.0
    # Percent of one core summed over the process tree: a busy multi-threaded agent may use several cores.
    cpu_threshold: float | None = Field(50.0, gt=0, le=100 * 4096)
    memory_threshold: OptionalSize = Field(500 * MIB, gt=0)
    threshold_duration: Duration = 60.0
    # Open descriptors of the whole tree: a leak ends in EMFILE long after it starts (as the original's fd monitor).
    open_files_threshold: int | None = Field(None, ge=1)
    http_endpoint: str | None = None
    http_timeout: PositiveDuration = 5.0
    # https:// endpoints are verified against the system's CAs, or only this file (a self-signed agent's CA);
    # http_tls_verify: false turns verification off for this agent, explicitly (docs/operations.md).
    http_ca_file: PathT | None = None
    http_tls_verify: bool = True
    endpoint_failures: int = Field(3, ge=1)
    startup_grace: OptionalDuration = None

    @field_validator("heartbeat_timeout")
    @classmethod
    def _zero_disables(cls, value: float | None) -> float | None:
        return None if value == 0 else value

    @field_validator("http_ca_file")
    @classmethod
    def _ca_file(cls, value: Path | None) -> Path | None:
        if value is None:
            return value
        if not value.is_absolute():
            raise ValueError(f"must be an absolute path, got {str(value)!r}")
        if not value.is_file():
            raise ValueError(f"{value} is not a file" if value.exists() else f"{value} does not exist")
        return value

    @model_validator(mode="after")
    def _ca_or_no_verify(self) -> "HealthCheck":
        if self.http_ca_file is not None and not self.http_tls_verify:
            raise ValueError("http_ca_file and http_tls_verify: false contradict each other: keep one")
        return self

    @field_validator("http_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            parts = urlsplit(value)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value


def health_check_defaults() -> dict[str, Any]:
    """Each rule's default as the health worker reads it from an AgentView (a missing key takes this)."""
    return {name: field.default for name, field in HealthCheck.model_fields.items()}
