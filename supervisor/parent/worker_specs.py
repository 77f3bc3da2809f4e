"""Which workers the parent runs and with what settings, from the config and the sockets it bound
(docs/architecture.md, "Workers")."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from supervisor.config.schema import Config
from supervisor.parent.worker_pool import WorkerSpec


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


def worker_specs(config: Config, http_sock: socket.socket | None, unix_sock: socket.socket | None, node_id: str, data_dir: Path) -> list[WorkerSpec]:
    """Intake workers for the bound sockets (they inherit them), the health worker, and the Manager's."""
    hb = config.heartbeat
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
