"""The Manager-facing API worker, `python -m workers.manager_api`: serves proto.DaemonService over gRPC.

It acts only through the parent's control verbs (status, start, stop, restart, history), like agentctl does.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import logging
import sys
from datetime import datetime
from pathlib import Path

import grpc
import grpc.aio
from pydantic import BaseModel

from supervisor.config.fields import is_loopback, split_listen
from supervisor.config.manager_sections import ManagerAPISettings, TLSSettings, tls_wanted
from supervisor.wire.protocol import ErrorCode
from supervisor.wire.proto import daemon_pb2, daemon_pb2_grpc
from supervisor.wire.verbs import VerbContract
from supervisor.wire.verbs import history as history_verb
from supervisor.wire.verbs import restart as restart_verb
from supervisor.wire.verbs import start as start_verb
from supervisor.wire.verbs import status as status_verb
from supervisor.wire.verbs import stop as stop_verb
from supervisor.wire.verbs.agent_actions import ActionArgs
from workers.link import UNAVAILABLE, ControlFailure, WorkerLink
from workers.tls_files import read_pem
from workers.runner import StartupError, begin_process, json_object, read_worker_settings, stop_event, worker_arg_parser

log = logging.getLogger("workers.manager_api")
# grpc logs a line per call at debug level; agentd's own debug log would drown in them.
logging.getLogger("grpc._cython.cygrpc").setLevel(logging.INFO)

OPERATIONS = {"start": start_verb, "stop": stop_verb, "restart": restart_verb}
CONTROL_TIMEOUT = 10.0
# OperateAgent waits for the action like the original (the Manager gives it 90 s). The state machine bounds
# the wait by the agent's own stop_timeout (then SIGKILL) and start_seconds; this only caps it below the
# caller's deadline, so the answer arrives before the Manager gives up.
OPERATE_WAIT_MAX = 85.0
DEADLINE_MARGIN = 2.0
DEFAULT_METRICS_SECONDS = 3600
MAX_DATA_POINTS = 10_000
STOP_GRACE = 1.0
COUNTERS = ("list_agents", "operate_agent", "get_agent_metrics", "unauthenticated", "denied_peers", "errors")
# The parent's typed errors as gRPC status codes.
STATUS_OF = {
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.SHUTTING_DOWN: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.FAILED: grpc.StatusCode.FAILED_PRECONDITION,
}


def _unix(iso: str | None) -> int:
    if not iso:
        return 0
    try:
        return int(datetime.fromisoformat(iso).timestamp())
    except ValueError:
        return 0


class DaemonAPI(daemon_pb2_grpc.DaemonServiceServicer):
    """ListAgents, OperateAgent and GetAgentMetrics on top of the parent's verbs; the rest is UNIMPLEMENTED."""

    def __init__(self, link: WorkerLink) -> None:
        self.link = link
        self.counters = link.counters

    async def _call(self, context: grpc.aio.ServicerContext, verb: VerbContract, args: BaseModel, timeout: float = CONTROL_TIMEOUT):
        """The verb's Result, or the call aborted with the parent's error as a gRPC status."""
        try:
            return await self.link.call(verb, args, timeout)
        except ControlFailure as exc:
            self.counters["errors"] += 1
            status = STATUS_OF.get(exc.code, grpc.StatusCode.UNAVAILABLE if exc.code == UNAVAILABLE else grpc.StatusCode.INTERNAL)
            await context.abort(status, exc.message)
            raise  # abort raises; this only satisfies type checkers

    async def ListAgents(self, request, context):
        self.counters["list_agents"] += 1
        result = await self._call(context, status_verb, status_verb.Args())
        agents = [
            daemon_pb2.AgentInfo(
                id=a.id, type=a.type, version=a.version or "", status=a.state, pid=a.pid or 0,
                start_time=_unix(a.started_at), restart_count=a.restarts, last_heartbeat=_unix(a.last_heartbeat),
            )
            for a in result.agents
        ]
        return daemon_pb2.ListAgentsResponse(agents=agents)

    async def OperateAgent(self, request, context):
        self.counters["operate_agent"] += 1
        operation = request.operation.strip().lower()
        if not request.agent_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "agent_id is required")
        if operation not in OPERATIONS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"unknown operation {request.operation!r}: use start, stop or restart")
        wait = operate_wait(context.time_remaining())
        args = ActionArgs(ids=[request.agent_id], wait=True, timeout=wait)
        result = await self._call(context, OPERATIONS[operation], args, timeout=wait + CONTROL_TIMEOUT)
        outcome = result.results[0] if result.results else None
        # Still stopping or starting when the wait ran out is not a success: the Manager would record the
        # expected status at once. agentd carries on, and the state sync reports where the agent ends up.
        ok = outcome is not None and outcome.ok and not result.pending
        message = outcome.message if outcome is not None else ""
        log.info("Manager asked to %s %s: %s", operation, request.agent_id, message)
        return daemon_pb2.AgentOperationResponse(success=ok, error_message="" if ok else message or "failed")

    async def GetAgentMetrics(self, request, context):
        self.counters["get_agent_metrics"] += 1
        if not request.agent_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "agent_id is required")
        seconds = request.duration_seconds if request.duration_seconds > 0 else DEFAULT_METRICS_SECONDS
        args = history_verb.Args(id=request.agent_id, since=float(seconds), limit=MAX_DATA_POINTS)
        result = await self._call(context, history_verb, args)
        points = [
            daemon_pb2.ResourceDataPoint(
                timestamp=int(s.ts), cpu=s.cpu or 0.0, memory_rss=s.rss, memory_vms=s.vms,
                disk_read_bytes=s.read_bytes or 0, disk_write_bytes=s.write_bytes or 0, open_files=s.fds or 0,
            )
            for s in result.samples
        ]
        return daemon_pb2.AgentMetricsResponse(agent_id=request.agent_id, data_points=points)

    # The Manager's node-side methods: agentd speaks them as a client of manager.ManagerService instead.
    async def _unimplemented(self, context, method: str):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not served by agentd")

    async def Register(self, request, context):
        await self._unimplemented(context, "Register")

    async def Heartbeat(self, request, context):
        await self._unimplemented(context, "Heartbeat")

    async def ReportMetrics(self, request, context):
        await self._unimplemented(context, "ReportMetrics")

    async def GetConfig(self, request, context):
        await self._unimplemented(context, "GetConfig")

    async def PushUpdate(self, request, context):
        await self._unimplemented(context, "PushUpdate")

    async def SyncAgentStates(self, request, context):
        await self._unimplemented(context, "SyncAgentStates")


def operate_wait(time_remaining: float | None) -> float:
    """How long OperateAgent waits for the agent to settle: up to OPERATE_WAIT_MAX, within the caller's deadline."""
    if time_remaining is None:
        return OPERATE_WAIT_MAX
    return max(0.0, min(OPERATE_WAIT_MAX, time_remaining - DEADLINE_MARGIN))


def peer_ip(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address in a gRPC peer string ("ipv4:10.0.0.5:1234", "ipv6:[::1]:1234"); IPv4-mapped IPv6 as IPv4."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        host = rest.rpartition(":")[0]
    elif kind == "ipv6":
        host = rest.rpartition(":")[0].strip("[]").split("%", 1)[0]
    else:
        return None  # unix sockets and the like: never a listed network
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class PeerFilter(grpc.aio.ServerInterceptor):
    """Every call must come from an address in allow_from; others get PERMISSION_DENIED before any work."""

    def __init__(self, allow_from: list[str], counters) -> None:
        self.networks = [ipaddress.ip_network(c) for c in allow_from]
        self.counters = counters

    def allowed(self, peer: str) -> bool:
        addr = peer_ip(peer)
        return addr is not None and any(addr.version == n.version and addr in n for n in self.networks)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # every DaemonService method is unary; anything else is UNIMPLEMENTED anyway
        inner = handler.unary_unary

        async def guarded(request, context):
            peer = context.peer()
            if not self.allowed(peer):
                self.counters["denied_peers"] += 1
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "this address may not use the node API (allow_from)")
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(guarded, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


def server_options(settings: ManagerAPISettings) -> list[tuple[str, int]]:
    """gRPC server options: no SO_REUSEPORT, and a ping policy that accepts the original Manager's keepalive."""
    min_ping_ms = int(settings.min_ping_interval * 1000)
    return [
        # SO_REUSEPORT would let a stale second server share the port unnoticed.
        ("grpc.so_reuseport", 0),
        # The Manager pings every 45 s, also between calls; gRPC's default (5 min, none without calls)
        # answers such pings with GOAWAY too_many_pings and drops the connection.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", min_ping_ms),
        ("grpc.http2.max_ping_strikes", 2),
    ]


class TokenAuth(grpc.aio.ServerInterceptor):
    """Every call needs `authorization: Bearer <token>`; anything else gets UNAUTHENTICATED."""

    def __init__(self, token: str, counters) -> None:
        self._token = token.encode()
        self.counters = counters

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def allowed(self, metadata) -> bool:
        for key, value in metadata or ():
            if key.lower() != "authorization":
                continue
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._token):
                return True
        return False

    async def intercept_service(self, continuation, handler_call_details):
        if self.allowed(handler_call_details.invocation_metadata):
            return await continuation(handler_call_details)
        self.counters["unauthenticated"] += 1
        return self._deny


# ----------------------------------------------------------------------------------------------- process


def server_credentials(tls: TLSSettings) -> grpc.ServerCredentials | None:
    """TLS credentials (client certificates required when ca_file is set), or None; StartupError on bad files."""
    if not tls_wanted(tls):
        return None
    if tls.cert_file is None or tls.key_file is None:
        raise StartupError("manager_api.tls: serving TLS needs cert_file and key_file")
    if not tls.enabled:
        log.warning("manager_api.tls files are configured but tls.enabled is false; serving TLS anyway")
    cert, key, ca = (read_pem("manager_api", n, getattr(tls, n)) for n in ("cert_file", "key_file", "ca_file"))
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def check_exposure(settings: ManagerAPISettings) -> None:
    """Refuse a non-loopback listen without a token or TLS, unless it is explicitly insecure and limited by allow_from."""
    assert settings.listen is not None
    host, _port = split_listen(settings.listen)
    if settings.insecure and not settings.allow_from:
        raise StartupError("manager_api.insecure needs manager_api.allow_from: the Manager's addresses")
    if not is_loopback(host) and not settings.token and not tls_wanted(settings.tls) and not settings.insecure:
        raise StartupError(f"manager_api.listen {settings.listen!r} is not loopback: set manager_api.token or enable manager_api.tls")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    return worker_arg_parser("manager_api", __doc__, "manager-api", 'JSON: {"manager_api": {...}, "node_id": "..."}',
                             config_help="standalone: read manager_api and run_dir from the config").parse_args(argv)


async def _run(run_dir: Path, name: str, settings: ManagerAPISettings, creds, node_id: str | None) -> int:
    stop = stop_event()
    link = WorkerLink(run_dir, name, want_state=False)
    for key in COUNTERS:
        link.counters[key] += 0
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if settings.allow_from:  # first: an unlisted peer learns nothing, not even whether a token is needed
        interceptors.append(PeerFilter(settings.allow_from, link.counters))
    if settings.token:
        interceptors.append(TokenAuth(settings.token, link.counters))
    server = grpc.aio.server(interceptors=interceptors, options=server_options(settings))
    daemon_pb2_grpc.add_DaemonServiceServicer_to_server(DaemonAPI(link), server)
    assert settings.listen is not None
    try:
        port = server.add_secure_port(settings.listen, creds) if creds is not None else server.add_insecure_port(settings.listen)
    except RuntimeError as exc:  # grpcio raises on a failed bind
        port, reason = 0, str(exc)
    else:
        reason = "address in use or not available"
    if not port:
        log.error("cannot start: manager_api.listen %s: cannot listen (%s)", settings.listen, reason)
        return 2
    host, _ = split_listen(settings.listen)
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    link.info.update(listen=listen, auth="token" if settings.token else "none",
                     tls=("mtls" if settings.tls.ca_file else "tls") if creds is not None else "off",
                     allow_from=",".join(settings.allow_from) or "any")
    if node_id:
        link.info["node_id"] = node_id
    await server.start()
    await link.start()
    log.info("%s: serving proto.DaemonService on %s (auth %s, tls %s, from %s)", name, listen, link.info["auth"],
             link.info["tls"], link.info["allow_from"])
    if settings.insecure and not settings.token and creds is None:
        log.warning("%s: insecure: plaintext without a token; any process able to connect from %s can stop every agent",
                    name, link.info["allow_from"])
    await stop.wait()
    log.info("%s: stopping", name)
    await server.stop(STOP_GRACE)
    await link.close()
    return 0


def _from_json(doc, loaded: tuple) -> tuple[ManagerAPISettings, str | None]:
    return ManagerAPISettings.model_validate(json_object(doc).get("manager_api") or {}), doc.get("node_id") or loaded[1]


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; 0 on a clean stop, 2 when it cannot start."""
    args = _parse_args(argv)
    begin_process(args)
    default = (ManagerAPISettings(), None)
    loaded = read_worker_settings(args, default, lambda config: (config.manager_api, config.daemon.id), _from_json, need_run_dir=False)
    if loaded is None:
        return 2
    run_dir, (settings, node_id) = loaded
    try:
        if run_dir is None:
            raise StartupError("--run-dir is required without --config")
        if settings.listen is None:
            raise StartupError("manager_api.listen is not set: nothing to serve")
        check_exposure(settings)
        creds = server_credentials(settings.tls)
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 2
    return asyncio.run(_run(run_dir, args.name, settings, creds, node_id))


if __name__ == "__main__":
    sys.exit(main())
