"""Node facts registered with the Manager: real values, Go's arch names, the advertised IP and its fall-backs."""

from __future__ import annotations

import ipaddress
import platform
import socket
from types import SimpleNamespace

import pytest

from workers import node_facts
from workers.node_facts import advertised_ip, go_arch, primary_ip


def test_facts_are_the_machine_s_own():
    facts = node_facts.node_facts()
    assert facts.hostname == socket.gethostname()
    assert facts.os == platform.system().lower() and facts.arch == go_arch(platform.machine())
    assert facts.arch in ("amd64", "arm64", "386", "arm", "ppc64le", "s390x", "riscv64")
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


@pytest.mark.parametrize("machine, go", [
    ("x86_64", "amd64"), ("aarch64", "arm64"), ("armv7l", "arm"), ("i686", "386"), ("ppc64le", "ppc64le"),
    ("s390x", "s390x"), ("riscv64", "riscv64"), ("loongarch64", "loong64"), ("AMD64", "amd64"), ("sparc64", "sparc64"),
    ("", "unknown"),
])
def test_arch_is_named_as_go_names_it(machine, go):
    assert go_arch(machine) == go


def test_the_advertised_ip_is_the_configured_one_then_a_concrete_listen_host_then_the_primary():
    probe = ("192.0.2.1", 53)  # connect() on UDP sends nothing
    assert advertised_ip("10.9.9.9", "10.1.1.1:9091", probe) == "10.9.9.9"
    assert advertised_ip(None, "10.1.1.1:9091", probe) == "10.1.1.1"
    assert advertised_ip(None, "[2001:db8::5]:9091", probe) == "2001:db8::5"
    for unusable in ("0.0.0.0:9091", "[::]:9091", "127.0.0.1:9091", "localhost:9091", None):
        assert advertised_ip(None, unusable, probe) == primary_ip(probe)


@pytest.mark.parametrize("ip, usable", [("10.0.0.1", True), ("127.0.0.1", False), ("0.0.0.0", False), ("fe80::1", False), ("x", False)])
def test_which_addresses_count_as_primary(ip, usable):
    assert node_facts._usable(ip) is usable
