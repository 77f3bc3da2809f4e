"""The Manager-facing API worker, `python -m workers.manager_api`: serves proto.DaemonService over gRPC.

It acts only through the parent's control verbs (status, start, stop, restart, history), like agentctl does.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import json
import logging
import sys
import uuid
from datetime import datetime
from pathlib import Path

import grpc
import grpc.aio
import zmq
from pydantic import ValidationError

from supervisor.config import ConfigError, ManagerAPISettings, TLSSettings, load_config, split_listen
from supervisor.protocol import ErrorCode, Reply, Request
from supervisor.proto import daemon_pb2, daemon_pb2_grpc
from workers.link import WorkerLink
from workers.tls_files import read_pem, tls_wanted
from workers.runner import StartupError, begin_process, stop_event, worker_arg_parser

log = logging.getLogger("workers.manager_api")
# grpc logs a line per call at debug level; agentd's own debug log would drown in them.
logging.getLogger("grpc._cython.cygrpc").setLevel(logging.INFO)

OPERATIONS = ("start", "stop", "restart")
CONTROL_TIMEOUT = 10.0
DEFAULT_METRICS_SECONDS = 3600
MAX_DATA_POINTS = 10_000
STOP_GRACE = 1.0
COUNTERS = ("list_agents", "operate_agent", "get_agent_metrics", "unauthenticated", "errors")
# The parent's typed errors as gRPC status codes.
STATUS_OF = {
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.SHUTTING_DOWN: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.FAILED: grpc.StatusCode.FAILED_PRECONDITION,
}


class ControlFailure(Exception):
    """The parent refused a request (typed code) or did not answer (code "unavailable")."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def control(link: WorkerLink, verb: str, args: dict, timeout: float = CONTROL_TIMEOUT) -> dict:
    """One control request that keeps the parent's error code (WorkerLink.request keeps only the text)."""
    sock = link.ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"ipc://{link.run_dir / 'control.ipc'}")
        req = Request(id=uuid.uuid4().hex[:16], verb=verb, args=args)
        await sock.send(req.model_dump_json().encode())
        while True:
            if not await sock.poll(int(timeout * 1000)):
                raise ControlFailure("unavailable", f"agentd did not answer '{verb}' within {timeout:g} s")
            try:
                reply = Reply.model_validate_json(await sock.recv())
            except ValidationError as exc:
                message = f"unreadable reply from agentd to '{verb}' ({exc.error_count()} problems)"
                raise ControlFailure(ErrorCode.INTERNAL, message) from None
            if reply.id == req.id:
                break
    finally:
        sock.close(linger=0)
    if not reply.ok:
        error = reply.error
        raise ControlFailure(error.code if error else ErrorCode.INTERNAL, error.message if error else "request failed")
    return reply.result or {}


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

    async def _call(self, context: grpc.aio.ServicerContext, verb: str, args: dict) -> dict:
        try:
            return await control(self.link, verb, args)
        except ControlFailure as exc:
            self.counters["errors"] += 1
            status = STATUS_OF.get(exc.code, grpc.StatusCode.UNAVAILABLE if exc.code == "unavailable" else grpc.StatusCode.INTERNAL)
            await context.abort(status, exc.message)
            raise  # abort raises; this only satisfies type checkers

    async def ListAgents(self, request, context):
        self.counters["list_agents"] += 1
        result = await self._call(context, "status", {})
        agents = [
            daemon_pb2.AgentInfo(
                id=a["id"], type=a["type"], version=a.get("version") or "", status=a["state"], pid=a.get("pid") or 0,
                start_time=_unix(a.get("started_at")), restart_count=a.get("restarts") or 0,
                last_heartbeat=_unix(a.get("last_heartbeat")),
            )
            for a in result.get("agents", [])
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
        result = await self._call(context, operation, {"ids": [request.agent_id], "wait": False})
        outcome = (result.get("results") or [{}])[0]
        ok = bool(outcome.get("ok"))
        log.info("Manager asked to %s %s: %s", operation, request.agent_id, outcome.get("message", ""))
        return daemon_pb2.AgentOperationResponse(success=ok, error_message="" if ok else outcome.get("message", "failed"))

    async def GetAgentMetrics(self, request, context):
        self.counters["get_agent_metrics"] += 1
        if not request.agent_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "agent_id is required")
        seconds = request.duration_seconds if request.duration_seconds > 0 else DEFAULT_METRICS_SECONDS
        result = await self._call(context, "history", {"id": request.agent_id, "since": float(seconds), "limit": MAX_DATA_POINTS})
        points = [
            daemon_pb2.ResourceDataPoint(
                timestamp=int(s["ts"]), cpu=s.get("cpu") or 0.0, memory_rss=s.get("rss") or 0, memory_vms=s.get("vms") or 0,
                disk_read_bytes=s.get("read_bytes") or 0, disk_write_bytes=s.get("write_bytes") or 0,
                open_files=s.get("fds") or 0,
            )
            for s in result.get("samples", [])
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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    """Refuse a non-loopback listen without a token or TLS: whoever reaches it could stop every agent."""
    assert settings.listen is not None
    host, _port = split_listen(settings.listen)
    if not _is_loopback(host) and not settings.token and not tls_wanted(settings.tls):
        raise StartupError(f"manager_api.listen {settings.listen!r} is not loopback: set manager_api.token or enable manager_api.tls")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    return worker_arg_parser("manager_api", __doc__, "manager-api", 'JSON: {"manager_api": {...}, "node_id": "..."}',
                             config_help="standalone: read manager_api and run_dir from the config").parse_args(argv)


async def _run(run_dir: Path, name: str, settings: ManagerAPISettings, creds, node_id: str | None) -> int:
    stop = stop_event()
    link = WorkerLink(run_dir, name, want_state=False)
    for key in COUNTERS:
        link.counters[key] += 0
    interceptors = [TokenAuth(settings.token, link.counters)] if settings.token else []
    # SO_REUSEPORT would let a stale second server share the port unnoticed.
    server = grpc.aio.server(interceptors=interceptors, options=[("grpc.so_reuseport", 0)])
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
                     tls=("mtls" if settings.tls.ca_file else "tls") if creds is not None else "off")
    if node_id:
        link.info["node_id"] = node_id
    await server.start()
    await link.start()
    log.info("%s: serving proto.DaemonService on %s (auth %s, tls %s)", name, listen, link.info["auth"], link.info["tls"])
    await stop.wait()
    log.info("%s: stopping", name)
    await server.stop(STOP_GRACE)
    await link.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; 0 on a clean stop, 2 when it cannot start."""
    args = _parse_args(argv)
    begin_process(args)
    run_dir = args.run_dir
    settings = ManagerAPISettings()
    node_id = None
    try:
        if args.config is not None:
            config = load_config(args.config)
            settings = config.manager_api
            run_dir = run_dir or config.daemon.run_dir
            node_id = config.daemon.id
        if args.settings is not None:
            doc = json.loads(args.settings)
            if not isinstance(doc, dict):
                raise ValueError("must be a JSON object")
            settings = ManagerAPISettings.model_validate(doc.get("manager_api") or {})
            node_id = doc.get("node_id") or node_id
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    except (ValueError, ValidationError) as exc:
        log.error("--settings: %s", exc)
        return 2
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
