"""The health worker's http_endpoint check against real local HTTP and HTTPS servers (self-signed, with and
without its CA), and the config that chooses verification.

The tests here use real processes; the unit ones are in tests/unit/test_http_probe.py."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.certs import make_cert
from tests.support.daemon import TestDaemon
from tests.support.wait import wait_until
from tests.unit.test_http_probe import Server, probe  # the same real test server and client as the unit half
from workers.http_probe import EndpointProbe


@pytest.fixture
def tls(tmp_path):
    cert, key = make_cert(tmp_path, "agent", "IP:127.0.0.1")
    s = Server(cert, key)
    s.cert = cert
    yield s
    s.close()


def test_self_signed_https_fails_verification_without_its_ca(tls):
    ok, why = probe(tls.base + "/ok")
    assert not ok and why.startswith("TLS: ") and ("self-signed" in why or "self signed" in why), why


def test_self_signed_https_passes_with_its_ca_file(tls):
    assert probe(tls.base + "/ok", ca_file=str(tls.cert)) == (True, "HTTP 200")
    assert probe(tls.base + "/broken", ca_file=str(tls.cert)) == (False, "HTTP 500")


def test_the_ca_does_not_excuse_a_wrong_name(tmp_path):
    cert, key = make_cert(tmp_path, "elsewhere", "DNS:elsewhere.example")
    s = Server(cert, key)
    try:
        ok, why = probe(s.base + "/ok", ca_file=str(cert))
    finally:
        s.close()
    assert not ok and why.startswith("TLS: ") and "127.0.0.1" in why, why


def test_verification_off_only_when_asked(tls):
    assert probe(tls.base + "/ok", verify=False) == (True, "HTTP 200")


def test_unreadable_ca_file_is_the_probe_failure(tls, tmp_path):
    ok, why = probe(tls.base + "/ok", ca_file=str(tmp_path / "gone.pem"))
    assert not ok and why == "No such file or directory"


def test_a_rotated_ca_file_is_loaded_again(tls, tmp_path):
    other, _ = make_cert(tmp_path, "other", "IP:127.0.0.1")
    ca = tmp_path / "ca.pem"
    ca.write_bytes(other.read_bytes())

    async def run():
        p = EndpointProbe()
        try:
            first = await p.get(tls.base + "/ok", 5, ca_file=str(ca))
            ca.write_bytes(tls.cert.read_bytes())
            stat = ca.stat()
            import os
            os.utime(ca, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
            return first, await p.get(tls.base + "/ok", 5, ca_file=str(ca))
        finally:
            await p.aclose()

    first, second = asyncio.run(run())
    assert not first[0] and second == (True, "HTTP 200")


def test_daemon_judges_a_self_signed_endpoint_by_its_configured_ca(agentd: TestDaemon, tls):
    fast = {"interval": 0.5, "heartbeat_timeout": None, "http_endpoint": tls.base + "/ok", "http_timeout": 2, "endpoint_failures": 2}
    agentd.extra = {"resources": {"interval": 0.5}}
    agentd.write_config([
        agentd.helper_agent("trusting", "well-behaved", health_check={**fast, "http_ca_file": str(tls.cert)}),
        agentd.helper_agent("strict", "well-behaved", health_check=fast),
    ])
    agentd.start()
    wait_until(lambda: agentd.status("trusting")["health"] == "healthy", timeout=40)
    wait_until(lambda: agentd.status("strict")["restarts"] >= 1, timeout=60, message="strict restarted for its unverifiable endpoint")
    assert agentd.status("strict")["restarts_by_reason"] == {"endpoint_failed": 1}
    assert agentd.status("trusting")["restarts"] == 0
    assert "TLS: " in agentd.log_text()
