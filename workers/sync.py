"""The Manager link worker, `python -m workers.sync`: node registration, heartbeats, metrics and agent state sync over gRPC.

The process: settings, the channel and the link to the parent; the work itself is workers/manager_sync.py.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from supervisor.config.manager_sections import CollectorsSettings, ManagerSettings
from supervisor.common.node_identity import node_id as stored_node_id
from workers.link import WorkerLink
from workers.manager_channel import channel_credentials, open_channel, tls_mode
from workers.manager_sync import ManagerSync
from workers.runner import StartupError, begin_process, json_object, read_worker_settings, start_link, stop_event, worker_arg_parser

log = logging.getLogger("workers.sync")
# grpc logs a line per call at debug level; agentd's own debug log would drown in them.
logging.getLogger("grpc._cython.cygrpc").setLevel(logging.INFO)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    return worker_arg_parser("sync", __doc__, "sync", 'JSON: {"manager": {...}, "node_id": "...", "collectors": {...}, "api_listen": "host:port"}',
                             config_help="standalone: read manager settings, node id and run_dir from the config").parse_args(argv)


async def _run(run_dir: Path, name: str, settings: ManagerSettings, node_id: str, creds, collectors: CollectorsSettings, api_listen: str | None) -> None:
    stop = stop_event()
    link = WorkerLink(run_dir, name, want_state=True)
    # Every second, as before issue 11: its info (connected, pending, last_sync) is the Manager line of
    # `agentctl status`, and shutdown waits on it to see the final states reported (shutdown.let_manager_sync).
    link.beat_fast = lambda: True
    channel = open_channel(settings, creds)
    sync = ManagerSync(link, settings, node_id, channel, tls=tls_mode(settings.tls),
                       collectors=collectors, api_listen=api_listen)
    if not await start_link(link, stop):
        await channel.close(grace=None)
        return
    stopping = asyncio.create_task(stop.wait())
    sync.start()
    log.info("%s: syncing node %s with the Manager at %s (tls %s, %d agents known)", name, node_id, settings.address,
             sync.info["tls"], len(link.agents))
    await stopping
    log.info("%s: stopping (%d states pending)", name, len(sync.pending))
    await sync.close()
    await link.close()


SETTINGS_KEYS = {"manager", "node_id", "data_dir", "collectors", "api_listen"}


def _from_config(config) -> tuple[ManagerSettings, str | None, CollectorsSettings, str | None]:
    settings = config.manager
    # No node_id file is created for a config that has no Manager.
    node_id = stored_node_id(config.daemon.id, config.daemon.data_dir) if settings.address else None
    return settings, node_id, config.collectors, config.manager_api.listen


def _from_json(doc, loaded: tuple) -> tuple[ManagerSettings, str | None, CollectorsSettings, str | None]:
    _settings, node_id, collectors, api_listen = loaded
    unknown = set(json_object(doc)) - SETTINGS_KEYS
    if unknown:
        log.warning("--settings: ignoring unknown keys %s", ", ".join(sorted(unknown)))
    settings = ManagerSettings.model_validate(doc.get("manager") or {})
    if doc.get("collectors") is not None:
        collectors = CollectorsSettings.model_validate(doc["collectors"])
    return settings, doc.get("node_id") or node_id, collectors, doc.get("api_listen") or api_listen


def main(argv: list[str] | None = None) -> int:
    """Run the worker until SIGTERM or SIGINT; 0 on a clean stop, 2 when it cannot start."""
    args = _parse_args(argv)
    begin_process(args)
    default = (ManagerSettings(), None, CollectorsSettings.all_on(), None)
    loaded = read_worker_settings(args, default, _from_config, _from_json, need_run_dir=False)
    if loaded is None:
        return 2
    run_dir, (settings, node_id, collectors, api_listen) = loaded
    try:
        if run_dir is None:
            raise StartupError("--run-dir is required without --config")
        if not settings.address:
            raise StartupError("manager.address is not set: there is no Manager to sync with")
        if not isinstance(node_id, str) or not node_id.strip():
            raise StartupError("no node id: pass node_id in --settings, or use --config")
        creds = channel_credentials(settings.tls)
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 2
    asyncio.run(_run(run_dir, args.name, settings, node_id, creds, collectors, api_listen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
