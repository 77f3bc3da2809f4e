"""The intake sockets the parent binds, and which workers it runs with what settings
(docs/architecture.md, "Workers")."""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from supervisor.config.daemon_sections import HeartbeatSettings
from supervisor.config.schema import Config
from supervisor.parent.listeners import HTTP_PORT_FILE, bound_address, close_socket_file, read_port, remember_port, tcp_listener, unix_listener
from supervisor.parent.worker_pool import WorkerSpec

log = logging.getLogger("supervisor.parent.daemon")  # the parent's log lines keep their logger name


@dataclass
class IntakeSockets:
    """The listening sockets the intake workers inherit, bound by the parent before they start."""

    http_sock: socket.socket | None = None
    unix_sock: socket.socket | None = None
    http_address: str | None = None
    unix_path: Path | None = None


def open_intake_sockets(hb: HeartbeatSettings, data_dir: Path, closers: list[Callable[[], None]]) -> IntakeSockets:
    """Bind what `heartbeat:` enables (HTTP on the port used last time when it is free); `closers` gets how to undo each."""
    out = IntakeSockets()
    if hb.http.enabled:
        port_file = data_dir / HTTP_PORT_FILE
        out.http_sock = tcp_listener(hb.http.listen, read_port(port_file))
        closers.append(out.http_sock.close)
        out.http_address = bound_address(out.http_sock)
        remember_port(port_file, out.http_sock.getsockname()[1])
        log.info("heartbeat HTTP intake on %s", out.http_address)
    if hb.unix.enabled:
        out.unix_sock = unix_listener(hb.unix.path)
        out.unix_path = Path(hb.unix.path)
        unix_sock = out.unix_sock
        closers.append(lambda: close_socket_file(unix_sock, hb.unix.path))
    return out


def heartbeat_env(http_address: str | None, unix_path: Path | None) -> dict[str, str]:
    """The AGENTD_HEARTBEAT_* variables every agent gets, from the addresses actually bound."""
    env = {}
    if http_address:
        host, _, port = http_address.rpartition(":")
        host = host.strip("[]")
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        env["AGENTD_HEARTBEAT_URL"] = f"http://{host}:{port}/heartbeat"
    if unix_path:
        env["AGENTD_HEARTBEAT_SOCKET"] = str(unix_path)
    return env


def forked_kinds(config: Config) -> list[str]:
    """The kinds of worker `worker_specs` runs that the zygote forks, so it preloads those and no others."""
    kinds = ["health"]
    if config.heartbeat.http.enabled:
        kinds.append("heartbeat_http")
    if config.heartbeat.unix.enabled:
        kinds.append("heartbeat_unix")
    return kinds


def worker_specs(config: Config, sockets: IntakeSockets, node_id: str, data_dir: Path) -> list[WorkerSpec]:
    """Intake workers for the bound sockets (they inherit them), the health worker, and the Manager's."""
    hb = config.heartbeat
    http_sock, unix_sock = sockets.http_sock, sockets.unix_sock
    specs = []
    if http_sock is not None:
        fd = http_sock.fileno()
        settings = hb.http.model_dump_json()
        for i in range(hb.http.processes):
            specs.append(WorkerSpec(f"heartbeat-http-{i}", "heartbeat_http", ["--settings", settings, "--listen-fd", str(fd)], (fd,)))
    if unix_sock is not None:
        fd = unix_sock.fileno()
        specs.append(WorkerSpec("heartbeat-unix", "heartbeat_unix", ["--settings", hb.unix.model_dump_json(), "--listen-fd", str(fd)], (fd,)))
    health_settings = json.dumps({"resources": config.resources.model_dump(mode="json")})
    specs.append(WorkerSpec("health", "health", ["--settings", health_settings]))
    if config.manager.address:
        sync_settings = json.dumps({"manager": config.manager.model_dump(mode="json"), "node_id": node_id, "data_dir": str(data_dir),
                                    "collectors": config.collectors.model_dump(mode="json"), "api_listen": config.manager_api.listen})
        specs.append(WorkerSpec("sync", "sync", ["--settings", sync_settings]))
    if config.manager_api.listen:
        api_settings = json.dumps({"manager_api": config.manager_api.model_dump(mode="json"), "node_id": node_id})
        specs.append(WorkerSpec("manager-api", "manager_api", ["--settings", api_settings]))
    return specs
