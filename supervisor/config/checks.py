"""What `agentd check-config` and start-up check of a valid config against this machine: accounts, agent
binaries and TLS files (docs/agentd.md, "check-config"; docs/manager-link.md)."""

from __future__ import annotations

import os

from supervisor.config.schema import Config

__all__ = ["check_accounts", "check_binaries", "check_tls_files"]


def check_accounts(config: Config) -> list[str]:
    """Agents whose user or group does not exist on this machine (they would end in `failed`); for check-config."""
    import grp
    import pwd

    found = []
    for spec in config.agents:
        for kind, name, lookup in (("user", spec.user, pwd.getpwnam), ("group", spec.group, grp.getgrnam)):
            if name and not name.isdigit():
                try:
                    lookup(name)
                except KeyError:
                    found.append(f"agent {spec.id}: {kind} {name!r} does not exist on this machine; the agent will fail to start")
    return found



def check_binaries(config: Config) -> list[str]:
    """Warnings for agent binaries that are missing or not executable (used by `agentd check-config`)."""
    warnings = []
    for spec in config.agents:
        path = spec.binary_path
        note = " (agent is disabled)" if not spec.enabled else ""
        if not path.exists():
            warnings.append(f"agent {spec.id!r}: binary {path} does not exist{note}")
        elif path.is_dir():
            warnings.append(f"agent {spec.id!r}: binary {path} is a directory{note}")
        elif not os.access(path, os.X_OK):
            warnings.append(f"agent {spec.id!r}: binary {path} is not executable{note}")
    return warnings


def check_tls_files(config: Config) -> list[str]:
    """Problems with configured TLS files of an active Manager link or API: missing or unreadable.

    docs/manager-link.md: a configured certificate file that is missing is a start-up error, never a
    silent downgrade to plaintext, so agentd refuses to start on any of these.
    """
    problems = []
    sections = []
    if config.manager.address:
        sections.append(("manager.tls", config.manager.tls))
    if config.manager_api.listen:
        sections.append(("manager_api.tls", config.manager_api.tls))
    for name, tls in sections:
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(tls, key)
            if path is None:
                continue
            if not path.is_file():
                problems.append(f"{name}.{key}: {path} does not exist" if not path.exists() else f"{name}.{key}: {path} is not a file")
            elif not os.access(path, os.R_OK):
                problems.append(f"{name}.{key}: {path} is not readable")
    return problems
