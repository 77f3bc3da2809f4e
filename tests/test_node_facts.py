"""Node facts and metrics reported to the Manager: real values, and the fall-backs of the primary IP."""

from __future__ import annotations

import ipaddress
import platform
import socket
import time
from types import SimpleNamespace

import pytest

from workers import node_facts
from workers.node_facts import NodeMetrics, primary_ip


def test_facts_are_the_machine_s_own():
    facts = node_facts.node_facts()
    assert facts.hostname == socket.gethostname()
    assert facts.os == platform.system().lower() and facts.arch == platform.machine()
    ipaddress.ip_address(facts.ip)  # a real address, whatever it is


def test_primary_ip_falls_back_to_an_interface_then_to_loopback(monkeypatch):
    class NoRoute:
        def __init__(self, *args):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def connect(self, address):
            raise OSError("Network is unreachable")

    monkeypatch.setattr(node_facts.socket, "socket", NoRoute)
    addr = lambda family, address: SimpleNamespace(family=family, address=address)  # noqa: E731
    monkeypatch.setattr(node_facts.psutil, "net_if_addrs", lambda: {
        "lo": [addr(socket.AF_INET, "127.0.0.1")],
        "eth0": [addr(socket.AF_INET6, "fe80::1%eth0"), addr(socket.AF_INET, "10.1.2.3")],
    })
    assert primary_ip() == "10.1.2.3"
    monkeypatch.setattr(node_facts.psutil, "net_if_addrs", lambda: {"lo": [addr(socket.AF_INET, "127.0.0.1")]})
    assert primary_ip() == "127.0.0.1"


def test_os_release_pretty_name(tmp_path):
    release = tmp_path / "os-release"
    release.write_text('NAME="Debian GNU/Linux"\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n')
    assert node_facts.distro(release) == "Debian GNU/Linux 12 (bookworm)"
    release.write_text('NAME=Alpine\nVERSION_ID=3.20\n')
    assert node_facts.distro(release) == "Alpine 3.20"
    assert node_facts.distro(tmp_path / "missing") == ""


def test_metrics_are_numbers_grouped_by_type(tmp_path):
    collector = NodeMetrics(tmp_path)
    time.sleep(0.05)  # cpu percent is measured between two calls
    metrics = collector.collect()
    by_type = {m.type: dict(m.values) for m in metrics}
    assert set(by_type) == {"cpu", "memory", "disk", "network", "system"}
    assert all(isinstance(v, float) for values in by_type.values() for v in values.values())
    assert len({m.timestamp for m in metrics}) == 1 and abs(metrics[0].timestamp - time.time()) < 5
    assert 0 <= by_type["cpu"]["percent"] <= 100 and by_type["cpu"]["count"] >= 1
    memory = by_type["memory"]
    assert memory["total"] >= memory["available"] > 0 and "swap_total" in memory
    disk = by_type["disk"]
    assert disk["root_total"] > 0 and disk["data_dir_total"] > 0 and 0 <= disk["data_dir_percent"] <= 100
    assert {"bytes_sent", "bytes_recv", "packets_sent", "packets_recv"} <= set(by_type["network"])
    assert by_type["system"]["process_count"] > 1 and by_type["system"]["uptime"] > 0


def test_a_missing_data_dir_only_drops_its_own_disk_values(tmp_path):
    disk = {m.type: dict(m.values) for m in NodeMetrics(tmp_path / "not-yet").collect()}["disk"]
    assert "root_total" in disk and not any(k.startswith("data_dir") for k in disk)


@pytest.mark.parametrize("ip, usable", [("10.0.0.1", True), ("127.0.0.1", False), ("0.0.0.0", False), ("fe80::1", False), ("x", False)])
def test_which_addresses_count_as_primary(ip, usable):
    assert node_facts._usable(ip) is usable
