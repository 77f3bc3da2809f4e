"""Facts about this node for the Manager's RegisterNode: hostname, IP, OS and architecture (as Go names them).

Everything here is plain and blocking; the sync worker calls it in a thread. Node metrics are in node_metrics.py.
"""

from __future__ import annotations

import ipaddress
import platform
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil

# Only used to pick the outgoing interface: connect() on a UDP socket sends no packet.
PROBE_ADDRESS = ("8.8.8.8", 53)
LOOPBACK_IP = "127.0.0.1"


@dataclass(frozen=True)
class NodeFacts:
    """What RegisterNode says about the machine."""

    hostname: str
    ip: str
    os: str
    arch: str
    distro: str = ""  # PRETTY_NAME from /etc/os-release, for logs and people; not a wire field


def hostname() -> str:
    return socket.gethostname()


def _usable(ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    return not (addr.is_loopback or addr.is_unspecified or addr.is_link_local)


def primary_ip(probe: tuple[str, int] = PROBE_ADDRESS) -> str:
    """The source address the kernel would use towards `probe`, else the first non-loopback IPv4, else 127.0.0.1."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(probe)
            ip = sock.getsockname()[0]
        if _usable(ip):
            return ip
    except OSError:  # no route (an isolated host): fall back to the interface list
        pass
    try:
        interfaces = psutil.net_if_addrs()
    except OSError:
        interfaces = {}
    for family in (socket.AF_INET, socket.AF_INET6):
        for addrs in interfaces.values():
            for addr in addrs:
                if addr.family == family and _usable(addr.address):
                    return addr.address.split("%", 1)[0]
    return LOOPBACK_IP


def os_name() -> str:
    return platform.system().lower()


# platform.machine() (uname -m) to Go's GOARCH, which the original daemon reports and the Manager shows.
GO_ARCH = {
    "x86_64": "amd64", "amd64": "amd64", "i386": "386", "i486": "386", "i586": "386", "i686": "386", "x86": "386",
    "aarch64": "arm64", "arm64": "arm64", "armv8b": "arm64be", "aarch64_be": "arm64be",
    "armv5l": "arm", "armv6l": "arm", "armv7l": "arm", "armv8l": "arm", "arm": "arm",
    "ppc64le": "ppc64le", "ppc64": "ppc64", "ppc": "ppc", "s390x": "s390x", "riscv64": "riscv64",
    "mips": "mips", "mipsel": "mipsle", "mips64": "mips64", "mips64el": "mips64le", "loongarch64": "loong64",
}


def go_arch(machine: str) -> str:
    """Go's name for a uname machine string; an unknown one is passed on lower-cased."""
    machine = machine.strip().lower()
    return GO_ARCH.get(machine, machine or "unknown")


def arch() -> str:
    return go_arch(platform.machine())


def distro(path: Path = Path("/etc/os-release")) -> str:
    """PRETTY_NAME (or NAME VERSION_ID) from os-release; "" when there is none."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip("'\"")
    return fields.get("PRETTY_NAME") or " ".join(v for v in (fields.get("NAME"), fields.get("VERSION_ID")) if v)


def advertised_ip(configured: str | None, api_listen: str | None, probe: tuple[str, int] = PROBE_ADDRESS) -> str:
    """The IP to register, which the Manager dials for the node API: manager.advertise_ip, else a concrete
    non-loopback manager_api.listen host, else the primary IP."""
    if configured:
        return configured
    if api_listen:
        host = api_listen.rpartition(":")[0].strip("[]")
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:  # a host name: the Manager wants an address
            addr = None
        if addr is not None and not addr.is_unspecified and not addr.is_loopback:
            return host
    return primary_ip(probe)


def node_facts(probe: tuple[str, int] = PROBE_ADDRESS, *, advertise_ip: str | None = None,
               api_listen: str | None = None) -> NodeFacts:
    ip = advertised_ip(advertise_ip, api_listen, probe)
    return NodeFacts(hostname=hostname(), ip=ip, os=os_name(), arch=arch(), distro=distro())
