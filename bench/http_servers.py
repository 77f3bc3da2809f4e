"""Compare HTTP servers for the heartbeat intake: same tiny JSON endpoint, same inherited socket, same load.

Run `python bench/http_servers.py` (see bench/README.md). Each server runs in its own process on a
listening socket this script binds to 127.0.0.1:0 and passes down by fd, exactly as agentd's parent does.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BODY = json.dumps({"agent_id": "bench", "pid": os.getpid(), "status": "running", "version": "1.0", "cpu": 1.5, "memory": 1 << 20}).encode()
REPLY = b'{"success":true,"message":"accepted","timestamp":"%s"}'


def _reply() -> bytes:
    return REPLY % time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()).encode()


def _handle(body: bytes) -> tuple[int, bytes]:
    # The work every candidate does per request: parse the JSON object, check one field, answer.
    try:
        doc = json.loads(body)
        ok = isinstance(doc, dict) and isinstance(doc.get("agent_id"), str)
    except ValueError:
        ok = False
    return (200, _reply()) if ok else (400, b'{"success":false,"message":"invalid"}')


# ------------------------------------------------------------------------------------------- servers


def serve_uvicorn(fd: int, loop: str, http: str, via_config_fd: bool = False) -> None:
    import uvicorn

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        chunks = []
        more = True
        while more:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        status, out = _handle(b"".join(chunks))
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out})

    if via_config_fd:
        # Config(fd=N) wraps the fd as AF_UNIX, so asyncio never sets TCP_NODELAY on accepted connections:
        # every response written in two parts then waits out the peer's delayed ACK (~40 ms).
        uvicorn.Server(uvicorn.Config(app, fd=fd, loop=loop, http=http, lifespan="off", access_log=False, log_level="warning")).run()
        return
    config = uvicorn.Config(app, loop=loop, http=http, lifespan="off", access_log=False, log_level="warning")
    server = uvicorn.Server(config)
    _run_loop(server.serve(sockets=[socket.socket(fileno=fd)]), loop)


def serve_granian(fd: int, interface: str) -> None:
    # Granian has no public "serve this fd" option; its embedded server plus the private SocketHolder does it.
    from granian._granian import SocketHolder
    from granian.constants import Interfaces
    from granian.server.embed import Server

    class InheritedSocketServer(Server):
        def _init_shared_socket(self):
            self._ssp = None
            self._shd = SocketHolder(fd, False, 1024)
            self._sfd = fd

    if interface == "rsgi":
        async def app(scope, proto):
            status, out = _handle(await proto())
            proto.response_bytes(status, [("content-type", "application/json")], out)
        iface = Interfaces.RSGI
    else:
        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            chunks, more = [], True
            while more:
                msg = await receive()
                chunks.append(msg.get("body", b""))
                more = msg.get("more_body", False)
            status, out = _handle(b"".join(chunks))
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
            await send({"type": "http.response.body", "body": out})
        iface = Interfaces.ASGI

    server = InheritedSocketServer(app, interface=iface, runtime_threads=1, log_level="warning")
    _run_loop(server.serve(), "uvloop")


def serve_aiohttp(fd: int, loop: str) -> None:
    from aiohttp import web

    async def heartbeat(request: web.Request) -> web.Response:
        status, out = _handle(await request.read())
        return web.Response(status=status, body=out, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/heartbeat", heartbeat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, socket.socket(fileno=fd)).start()
        await asyncio.Event().wait()

    _run_loop(main(), loop)


def serve_protocol(fd: int, loop: str) -> None:
    """A bare asyncio.Protocol around httptools' parser: the shape workers/heartbeat_http.py would use."""
    import httptools

    class Proto(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpRequestParser(self)
            self.body: list[bytes] = []

        def connection_made(self, transport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

        def on_message_begin(self) -> None:
            self.body = []

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            status, out = _handle(b"".join(self.body))
            head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % (
                status, b"OK" if status == 200 else b"Bad Request", len(out))
            self.transport.write(head + out)
            if not self.parser.should_keep_alive():
                self.transport.close()

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Proto, sock=socket.socket(fileno=fd))
        await server.serve_forever()

    _run_loop(main(), loop)


def serve_agentd(fd: int, processes: int) -> None:
    """The real intake worker(s), sharing one socket, behind a stand-in parent that drains events and answers `snapshot`."""
    import zmq

    from supervisor.wire.protocol import Reply, Request

    run_dir = Path(tempfile.mkdtemp(prefix="ahb", dir="/tmp"))
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(f"ipc://{run_dir}/events.ipc")
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"ipc://{run_dir}/state.ipc")
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"ipc://{run_dir}/control.ipc")
    agent = {"id": "bench", "type": "custom", "state": "running", "pid": int(os.environ["BENCH_AGENT_PID"])}
    settings = json.dumps({"listen": "127.0.0.1:0", "processes": 1, "max_body": 65536, "request_timeout": 10})
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "workers.heartbeat_http", "--run-dir", str(run_dir), "--name", f"heartbeat-http-{i}",
             "--settings", settings, "--listen-fd", str(fd), "--log-level", "warning"],
            cwd=ROOT, pass_fds=[fd])
        for i in range(processes)
    ]

    def stop(*_):
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait()
        shutil.rmtree(run_dir)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    poller.register(router, zmq.POLLIN)
    while True:
        for sock, _ in poller.poll(1000):
            if sock is pull:
                pull.recv()
            else:
                ident, payload = router.recv_multipart()
                req = Request.model_validate_json(payload)
                reply = Reply(id=req.id, ok=True, result={"seq": 0, "agents": [agent], "last_heartbeat": {}})
                router.send_multipart([ident, reply.model_dump_json().encode()])


def _run_loop(coro, loop: str) -> None:
    if loop == "uvloop":
        import uvloop
        uvloop.run(coro)
    else:
        asyncio.run(coro)


SERVERS = {
    "uvicorn-asyncio-h11": lambda fd: serve_uvicorn(fd, "asyncio", "h11"),
    "uvicorn-config-fd": lambda fd: serve_uvicorn(fd, "uvloop", "httptools", via_config_fd=True),
    "uvicorn-httptools-uvloop": lambda fd: serve_uvicorn(fd, "uvloop", "httptools"),
    "granian-rsgi": lambda fd: serve_granian(fd, "rsgi"),
    "granian-asgi": lambda fd: serve_granian(fd, "asgi"),
    "aiohttp-uvloop": lambda fd: serve_aiohttp(fd, "uvloop"),
    "protocol-httptools-asyncio": lambda fd: serve_protocol(fd, "asyncio"),
    "protocol-httptools-uvloop": lambda fd: serve_protocol(fd, "uvloop"),
    "agentd-worker": lambda fd: serve_agentd(fd, 1),
    "agentd-worker-x2": lambda fd: serve_agentd(fd, 2),
    "agentd-worker-batch10": lambda fd: serve_agentd(fd, 1),
}
YARDSTICK = "uvicorn-httptools-uvloop"
BATCH = 10  # heartbeats per request for the *-batch10 rows (POST /heartbeats)


def _target(name: str) -> tuple[str, bytes, int]:
    """Path, body and heartbeats per request that the load generator sends to this server."""
    if name.endswith("-batch10"):
        return "/heartbeats", b"[" + b",".join([BODY] * BATCH) + b"]", BATCH
    return "/heartbeat", BODY, 1


# ------------------------------------------------------------------------------------------- load


WRK_LUA = """wrk.method = "POST"
wrk.body = [==[%s]==]
wrk.headers["Content-Type"] = "application/json"
"""


def _to_ms(value: str) -> float:
    num, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()
    return float(num) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def load_wrk(port: int, connections: int, duration: float, path: str = "/heartbeat", body: bytes = BODY) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(WRK_LUA % body.decode())
    try:
        out = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{int(duration)}s", "--latency", "-s", lua.name,
             f"http://127.0.0.1:{port}{path}"],
            capture_output=True, text=True, timeout=duration + 30, check=True).stdout
    finally:
        os.unlink(lua.name)
    pct = {p: _to_ms(v) for p, v in re.findall(r"^\s+(\d+)%\s+(\S+)$", out, re.M)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50": pct["50"], "p99": pct["99"],
            "non2xx": int(errors.group(1)) if errors else 0, "socket_errors": socket_errors.group(1) if socket_errors else ""}


async def _py_client(port: int, deadline: float, latencies: list[float], path: str, body: bytes, failed: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (b"POST %s HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
               % (path.encode(), len(body))) + body
    try:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 2"):
                failed.append(1)
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
            await reader.readexactly(length)
            latencies.append((time.perf_counter() - start) * 1000)
    finally:
        writer.close()


def load_python(port: int, connections: int, duration: float, path: str = "/heartbeat", body: bytes = BODY) -> dict:
    """Fallback load generator when wrk is missing: keep-alive asyncio clients, one request in flight each."""
    latencies: list[float] = []
    failed: list[int] = []

    async def main() -> float:
        start = time.monotonic()
        await asyncio.gather(*(_py_client(port, start + duration, latencies, path, body, failed) for _ in range(connections)))
        return time.monotonic() - start

    elapsed = asyncio.run(main())
    q = statistics.quantiles(latencies, n=100)
    return {"rps": len(latencies) / elapsed, "p50": q[49], "p99": q[98], "non2xx": len(failed), "socket_errors": ""}


# ------------------------------------------------------------------------------------------- driver


def _wait_ready(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("POST", "/heartbeat", BODY, {"Content-Type": "application/json"})
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not answer 200 in time")


def _server_rss(pid: int) -> int:
    """RSS of the serving processes: the agentd rows' stand-in parent is not counted, only its workers."""
    import psutil
    proc = psutil.Process(pid)
    children = proc.children(recursive=True)
    return sum(p.memory_info().rss for p in (children or [proc]))


def run_one(name: str, args: argparse.Namespace) -> dict:
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    port = listener.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(ROOT), BENCH_AGENT_PID=str(os.getpid()))
    proc = subprocess.Popen([sys.executable, __file__, "--serve", name, "--fd", str(listener.fileno())],
                            pass_fds=[listener.fileno()], env=env, start_new_session=True, stdout=sys.stderr)
    try:
        _wait_ready(port, proc)
        use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk"))
        load = load_wrk if use_wrk else load_python
        path, body, per_request = _target(name)
        load(port, args.connections, min(2.0, args.duration), path, body)  # warm-up
        result = load(port, args.connections, args.duration, path, body)
        result["heartbeats_per_s"] = result["rps"] * per_request
        result["rss_mib"] = _server_rss(proc.pid) / 2**20
        result["client"] = "wrk" if use_wrk else "python"
        return result
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        listener.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset of: " + ", ".join(SERVERS))
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of measured load per server")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        SERVERS[args.serve](args.fd)
        return 0

    results = {}
    for name in args.servers.split(","):
        try:
            results[name] = run_one(name, args)
        except Exception as exc:  # one broken candidate must not hide the others' numbers
            results[name] = {"error": str(exc)}
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    base = results.get(YARDSTICK, {}).get("rps")
    print(f"{'server':28} {'req/s':>9} {'hb/s':>9} {'x yard':>7} {'p50 ms':>7} {'p99 ms':>7} {'RSS MiB':>8}  notes")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:28} error: {r['error']}")
            continue
        ratio = f"{r['heartbeats_per_s'] / base:.2f}" if base else "-"
        notes = " ".join(x for x in (f"non2xx={r['non2xx']}" if r["non2xx"] else "", r["socket_errors"], r["client"]) if x)
        print(f"{name:28} {r['rps']:9.0f} {r['heartbeats_per_s']:9.0f} {ratio:>7} {r['p50']:7.2f} {r['p99']:7.2f} {r['rss_mib']:8.1f}  {notes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
