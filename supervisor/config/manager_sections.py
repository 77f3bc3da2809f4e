"""The sections about the central Manager: the link to it, the gRPC API it calls, TLS for both, and the
node-metrics collectors it receives (docs/manager.md, docs/manager-link.md)."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from supervisor.config.fields import Cidr, IPAddress, Listen, PathT, PositiveDuration, Section, Str, is_loopback, split_listen

__all__ = [
    "CollectorSettings",
    "CollectorsSettings",
    "DiskCollectorSettings",
    "ManagerAPISettings",
    "ManagerSettings",
    "NetworkCollectorSettings",
    "TLSSettings",
    "tls_wanted",
]


class TLSSettings(Section):
    """TLS files for the Manager link or the Manager API; existence is checked by their user at start."""

    enabled: bool = False
    ca_file: PathT | None = None
    cert_file: PathT | None = None
    key_file: PathT | None = None
    server_name: Str | None = None

    @model_validator(mode="after")
    def _pairs(self) -> TLSSettings:
        if self.enabled and (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be set together")
        return self


def tls_wanted(tls: TLSSettings) -> bool:
    """TLS when enabled, and also whenever a certificate file is configured: never a quiet plaintext fallback."""
    return tls.enabled or any(getattr(tls, k) is not None for k in ("ca_file", "cert_file", "key_file"))


_GRPC_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$")


def _check_manager_address(value: str) -> None:
    """host:port (a DNS name, an IPv4 address or [IPv6]) or a gRPC target with a scheme (dns:, unix:, ...)."""
    if value.startswith(_GRPC_SCHEMES):
        return
    expected = f"expected host:port (e.g. manager.example.com:9090) or a gRPC target such as dns:///host:port, got {value!r}"
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(expected)
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(expected) from None
    elif not _HOSTNAME.match(host):
        raise ValueError(expected)


class ManagerSettings(Section):
    """`manager:` the link to the central Manager; no address means standalone."""

    address: Str | None = None
    tls: TLSSettings = Field(default_factory=TLSSettings)
    heartbeat_interval: PositiveDuration = 60.0
    sync_interval: PositiveDuration = 30.0
    timeout: PositiveDuration = 10.0
    labels: dict[str, Str] = Field(default_factory=dict)
    # The Manager re-creates a node it lost as "unknown" on the next heartbeat and still answers success,
    # so registering again on a schedule is the only way its facts come back (docs/manager.md).
    register_interval: PositiveDuration = 300.0
    # The address registered as the node's IP; the Manager dials it (port 9091) to operate agents.
    advertise_ip: IPAddress | None = None

    @field_validator("address")
    @classmethod
    def _address_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty (leave it out to run standalone)")
        if value is not None:
            _check_manager_address(value.strip())
        return value


class ManagerAPISettings(Section):
    """`manager_api:` the optional gRPC API the Manager calls; off unless `listen` is set."""

    listen: Listen | None = None
    token: Str | None = None
    tls: TLSSettings = Field(default_factory=TLSSettings)
    # Peers allowed to connect at all (CIDRs), checked on every call whatever the auth; empty = any peer.
    allow_from: list[Cidr] = Field(default_factory=list)
    # Plaintext without a token, as the original Manager dials: only together with allow_from (docs/manager.md).
    insecure: bool = False
    # The original Manager pings every 45 s on idle connections; gRPC's default policy answers GOAWAY.
    min_ping_interval: PositiveDuration = 10.0

    @model_validator(mode="after")
    def _protected(self) -> ManagerAPISettings:
        if self.tls.enabled and (self.tls.cert_file is None or self.tls.key_file is None):
            raise ValueError("tls.enabled needs tls.cert_file and tls.key_file to serve TLS")
        if self.insecure and not self.allow_from:
            raise ValueError("insecure: true needs allow_from: the Manager's addresses (CIDRs) that may connect")
        if self.listen is not None and not is_loopback(split_listen(self.listen)[0]):
            # Anyone who can reach this port could stop every agent on the node.
            if not self.tls.enabled and not self.token and not self.insecure:
                raise ValueError(
                    f"listen {self.listen!r} is not loopback: set manager_api.token or enable manager_api.tls"
                    " (or, for the original Manager, insecure: true with allow_from)"
                )
        return self


class CollectorSettings(Section):
    """One node-metrics collector of `collectors:` (the original daemon's section)."""

    enabled: bool = True
    interval: PositiveDuration = 60.0


class DiskCollectorSettings(CollectorSettings):
    mount_points: list[Str] = Field(default_factory=list)  # empty = every mounted filesystem


class NetworkCollectorSettings(CollectorSettings):
    interfaces: list[Str] = Field(default_factory=list)  # empty = every interface


class CollectorsSettings(Section):
    """`collectors:` node metrics for the Manager. Without the section all four run; with it, only those listed."""

    cpu: CollectorSettings
    memory: CollectorSettings
    disk: DiskCollectorSettings
    network: NetworkCollectorSettings

    @model_validator(mode="before")
    @classmethod
    def _unlisted_are_off(cls, data: Any) -> Any:
        # As in the original daemon, a collector left out of a written section does not run.
        if isinstance(data, dict):
            return {name: {"enabled": False} for name in ("cpu", "memory", "disk", "network")} | data
        return data

    @classmethod
    def all_on(cls) -> CollectorsSettings:
        return cls(cpu=CollectorSettings(), memory=CollectorSettings(), disk=DiskCollectorSettings(),
                   network=NetworkCollectorSettings())
