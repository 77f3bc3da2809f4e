"""Facts about this node for the Manager: hostname, primary IP, OS, architecture, and numeric node metrics.

Everything here is plain and blocking (psutil, statvfs); the sync worker calls it in a thread.
"""

from __future__ import annotations

import ipaddress
import os
import platform
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from supervisor.proto import manager_pb2

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


def arch() -> str:
    return platform.machine()


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


def node_facts(probe: tuple[str, int] = PROBE_ADDRESS) -> NodeFacts:
    return NodeFacts(hostname=hostname(), ip=primary_ip(probe), os=os_name(), arch=arch(), distro=distro())


# ----------------------------------------------------------------------------------------------- metrics


def _disk_values(prefix: str, path: Path | str, values: dict[str, float]) -> None:
    try:
        usage = psutil.disk_usage(str(path))
    except OSError:
        return  # e.g. data_dir not created yet: report what we can
    values[f"{prefix}_total"] = float(usage.total)
    values[f"{prefix}_used"] = float(usage.used)
    values[f"{prefix}_free"] = float(usage.free)
    values[f"{prefix}_percent"] = float(usage.percent)


class NodeMetrics:
    """Collects node metrics; keep one instance so cpu percent is measured between two calls."""

    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = data_dir
        psutil.cpu_percent(interval=None)  # the first call only sets the reference point

    def values(self) -> dict[str, dict[str, float]]:
        """Metric type -> name -> number."""
        cpu: dict[str, float] = {"percent": float(psutil.cpu_percent(interval=None)), "count": float(psutil.cpu_count() or 0)}
        try:
            load1, load5, load15 = os.getloadavg()
            cpu.update(load1=load1, load5=load5, load15=load15)
        except OSError:
            pass
        vm = psutil.virtual_memory()
        sw = psutil.swap_memory()
        memory = {
            "total": float(vm.total), "used": float(vm.used), "available": float(vm.available), "percent": float(vm.percent),
            "swap_total": float(sw.total), "swap_used": float(sw.used), "swap_percent": float(sw.percent),
        }
        disk: dict[str, float] = {}
        _disk_values("root", "/", disk)
        if self.data_dir is not None:
            _disk_values("data_dir", self.data_dir, disk)
        network: dict[str, float] = {}
        net = psutil.net_io_counters()
        if net is not None:
            network = {
                "bytes_sent": float(net.bytes_sent), "bytes_recv": float(net.bytes_recv),
                "packets_sent": float(net.packets_sent), "packets_recv": float(net.packets_recv),
                "errin": float(net.errin), "errout": float(net.errout), "dropin": float(net.dropin), "dropout": float(net.dropout),
            }
        boot = psutil.boot_time()
        system = {"process_count": float(len(psutil.pids())), "uptime": max(0.0, time.time() - boot), "boot_time": float(boot)}
        return {"cpu": cpu, "memory": memory, "disk": disk, "network": network, "system": system}

    def collect(self) -> list[manager_pb2.MetricData]:
        """One MetricData per type, all stamped with the same unix second."""
        now = int(time.time())
        return [manager_pb2.MetricData(type=kind, timestamp=now, values=values) for kind, values in self.values().items() if values]
