"""The gRPC channel to the Manager: TLS credentials and a reconnect backoff that never outlasts the sync
worker's own (docs/manager-link.md)."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import grpc.aio

from supervisor.common.backoff import Backoff
from supervisor.config.manager_sections import ManagerSettings, TLSSettings, tls_wanted
from workers.runner import StartupError
from workers.tls_files import read_pem

log = logging.getLogger("workers.sync")  # the sync worker's logger: its log lines read as before

BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0
JITTER = 0.2  # ±20 %, so a fleet that lost its Manager does not come back in lock-step


def backoff_for(settings: ManagerSettings) -> Backoff:
    """Backoff capped at the node heartbeat interval (at most 60 s), so states follow within one beat of a recovery."""
    cap = max(0.5, min(BACKOFF_CAP, settings.heartbeat_interval))
    return Backoff(min(BACKOFF_BASE, cap / 4), cap, jitter=JITTER)


# ----------------------------------------------------------------------------------------------- TLS


def channel_credentials(tls: TLSSettings) -> grpc.ChannelCredentials | None:
    """Credentials for the Manager channel (None = plaintext); raises StartupError for missing or unreadable files."""
    if not tls_wanted(tls):
        return None
    if not tls.enabled:
        log.warning("manager.tls files are configured but tls.enabled is false; using TLS anyway")
    if (tls.cert_file is None) != (tls.key_file is None):
        raise StartupError("manager.tls: cert_file and key_file must be set together (client certificate for mTLS)")
    ca = read_pem("manager", "ca_file", tls.ca_file)
    cert = read_pem("manager", "cert_file", tls.cert_file)
    key = read_pem("manager", "key_file", tls.key_file)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def tls_mode(tls: TLSSettings) -> str:
    if not tls_wanted(tls):
        return "off"
    return "mtls" if tls.cert_file is not None else "tls"


def open_channel(settings: ManagerSettings, creds: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    """An aio channel whose own reconnect backoff never outlasts ours, so a returning Manager is seen quickly."""
    backoff = backoff_for(settings)
    options: list[tuple[str, Any]] = [
        ("grpc.initial_reconnect_backoff_ms", int(backoff.base * 1000)),
        ("grpc.min_reconnect_backoff_ms", int(backoff.base * 1000)),
        ("grpc.max_reconnect_backoff_ms", int(backoff.cap * 1000)),
        ("grpc.enable_retries", 0),  # we retry ourselves, with the newest data rather than the old request
    ]
    if settings.tls.server_name:
        options.append(("grpc.ssl_target_name_override", settings.tls.server_name))
    assert settings.address is not None
    if creds is None:
        return grpc.aio.insecure_channel(settings.address, options=options)
    return grpc.aio.secure_channel(settings.address, creds, options=options)

