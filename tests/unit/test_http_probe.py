"""The health worker's http_endpoint check against real local HTTP and HTTPS servers (self-signed, with and
without its CA), and the config that chooses verification.

The tests here start no process; the ones with real processes are in tests/system/test_http_probe.py."""

from __future__ import annotations

import asyncio
import http.server
import socket
import ssl
import threading
import time

import pytest

from supervisor.config.health_check import HealthCheck
from workers.http_probe import EndpointProbe


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        code = {"/ok": 200, "/broken": 500, "/moved": 302}.get(self.path, 404)
        self.send_response(code)
        if code == 302:
            self.send_header("Location", "/ok")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class Server:
    """A real ThreadingHTTPServer on 127.0.0.1:0, TLS when given a certificate."""

    def __init__(self, cert=None, key=None) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        if cert is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        scheme = "https" if cert is not None else "http"
        self.base = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def plain():
    s = Server()
    yield s
    s.close()


def probe(url, timeout=5.0, **kw):
    async def run():
        p = EndpointProbe()
        try:
            return await p.get(url, timeout, **kw)
        finally:
            await p.aclose()
    return asyncio.run(run())


def test_plain_http_status_decides(plain):
    assert probe(plain.base + "/ok") == (True, "HTTP 200")
    assert probe(plain.base + "/broken") == (False, "HTTP 500")
    assert probe(plain.base + "/moved") == (False, "HTTP 302")  # a redirect is not "alive": not followed


def test_refused_connection_says_so():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ok, why = probe(f"http://127.0.0.1:{port}/")
    assert not ok and why == "Connection refused"


def test_silent_server_is_bounded_by_the_timeout():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # accepts (kernel backlog), never answers
        t0 = time.monotonic()
        ok, why = probe(f"http://127.0.0.1:{listener.getsockname()[1]}/", timeout=0.5)
        elapsed = time.monotonic() - t0
    assert not ok and why == "no answer within 0.5 s"
    assert elapsed < 10  # bounded: not the library's own default timeouts


def test_a_probe_never_raises_for_a_bad_url():
    for url in ("http://127.0.0.1:99999/", "http://exa mple/", "ftp://127.0.0.1/"):
        ok, why = probe(url, timeout=2)
        assert not ok and why, url
    with pytest.raises(ValueError, match="must be an http"):
        HealthCheck(http_endpoint="http://127.0.0.1:99999/")


def test_environment_proxies_are_ignored(plain, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    assert probe(plain.base + "/ok") == (True, "HTTP 200")


def test_config_checks_the_tls_options(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert HealthCheck(http_endpoint="https://127.0.0.1:1/", http_ca_file=str(ca)).http_ca_file == ca
    assert HealthCheck().http_tls_verify is True
    with pytest.raises(ValueError, match="must be an absolute path"):
        HealthCheck(http_ca_file="ca.pem")
    with pytest.raises(ValueError, match="does not exist"):
        HealthCheck(http_ca_file=str(tmp_path / "nope.pem"))
    with pytest.raises(ValueError, match="contradict"):
        HealthCheck(http_ca_file=str(ca), http_tls_verify=False)
