"""Node metrics for the Manager's ReportMetrics, under the value keys the original daemon sends (docs/manager.md).

One collector per `MetricData.type` (cpu, memory, disk, network), each run on its own interval by the sync
worker, which reports the latest reading of each. `MetricData.values` is a map of numbers, so per-partition
and per-interface details are flattened into keys: `details[<mountpoint or interface>].<field>`, and a string
fact is a key `<field>=<text>` with the value 1.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import psutil

from supervisor.config.manager_sections import CollectorsSettings
from supervisor.wire.proto import manager_pb2

CPU_SAMPLE_SECONDS = 1.0  # usage_percent is measured over this long, as the original does
MAX_TEXT = 200  # a string fact longer than this is cut: it is a key, and keys are stored by the Manager
CPUINFO = Path("/proc/cpuinfo")

Values = dict[str, float]


def text_key(name: str, text: str) -> str:
    """A string fact as a key (value 1): `name=text`, without control characters."""
    clean = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return f"{name}={clean[:MAX_TEXT]}"


def detail_key(item: str, name: str) -> str:
    """The key of one field of one partition or interface."""
    return f"details[{item}].{name}"


# ----------------------------------------------------------------------------------------------- cpu


def cpu_model(path: Path = CPUINFO) -> tuple[str, float]:
    """The first CPU's model name and MHz from /proc/cpuinfo ("", 0.0 where it has none, e.g. many ARM boards)."""
    model, mhz = "", 0.0
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return model, mhz
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        # x86 says "model name"; older ARM kernels "Processor" (where x86's "processor" is the CPU number).
        if not model and value and (key in ("model name", "cpu model") or (key == "processor" and not value.isdigit())):
            model = value
        elif key == "cpu mhz" and not mhz:
            try:
                mhz = float(value)
            except ValueError:
                pass
    return model, mhz


def cpu_values(sample_seconds: float = CPU_SAMPLE_SECONDS) -> Values:
    """usage_percent over a blocking sample, cores, model, mhz and the cumulative user/system/idle/iowait seconds."""
    usage = psutil.cpu_percent(interval=sample_seconds)
    times = psutil.cpu_times()
    model, mhz = cpu_model()
    if not mhz:
        try:
            freq = psutil.cpu_freq()
        except (OSError, NotImplementedError):
            freq = None
        mhz = float(freq.current) if freq else 0.0
    values: Values = {
        "usage_percent": float(usage), "cores": float(psutil.cpu_count(logical=True) or 0), "mhz": mhz,
        "user": float(times.user), "system": float(times.system), "idle": float(times.idle),
        "iowait": float(getattr(times, "iowait", 0.0)),
    }
    if model:
        values[text_key("model", model)] = 1.0
    try:
        values["load1"], values["load5"], values["load15"] = (float(x) for x in os.getloadavg())
    except OSError:
        pass
    return values


# ----------------------------------------------------------------------------------------------- memory


def memory_values() -> Values:
    vm = psutil.virtual_memory()
    sw = psutil.swap_memory()
    return {
        "total_bytes": float(vm.total), "used_bytes": float(vm.used), "free_bytes": float(vm.free),
        "available_bytes": float(vm.available), "usage_percent": float(vm.percent),
        "cached": float(getattr(vm, "cached", 0)), "buffers": float(getattr(vm, "buffers", 0)),
        "swap_total": float(sw.total), "swap_used": float(sw.used), "swap_free": float(sw.free),
        "swap_percent": float(sw.percent),
        # The original's older names, still read by some Manager queries.
        "total": float(vm.total), "available": float(vm.available), "used": float(vm.used), "free": float(vm.free),
    }


# ----------------------------------------------------------------------------------------------- disk


@dataclass(frozen=True)
class Partition:
    """One mounted filesystem as the disk collector sees it."""

    mountpoint: str
    device: str
    fstype: str
    total: int
    used: int
    free: int
    percent: float
    identity: Any  # what makes two mounts the same filesystem (see filesystem_identity)


def filesystem_identity(device: str, mountpoint: str) -> Any:
    """A block device counts once however often it is mounted (bind mounts, btrfs subvolumes); others by st_dev."""
    if device.startswith("/dev/"):
        return os.path.realpath(device)
    try:
        return ("st_dev", os.stat(mountpoint).st_dev)
    except OSError:
        return ("mount", mountpoint)


def unique_partitions(partitions: Iterable[Partition]) -> list[Partition]:
    """One partition per filesystem identity: the one with the shortest mountpoint ("/" over "/var/lib/x")."""
    best: dict[Any, Partition] = {}
    for part in partitions:
        old = best.get(part.identity)
        if old is None or (len(part.mountpoint), part.mountpoint) < (len(old.mountpoint), old.mountpoint):
            best[part.identity] = part
    return sorted(best.values(), key=lambda p: p.mountpoint)


def _io_name(device: str) -> str:
    # disk_io_counters names "sda1" and "dm-0"; /dev/mapper/vg-root is a symlink to ../dm-0.
    return os.path.basename(os.path.realpath(device)) if device.startswith("/dev/") else ""


def disk_values(partitions: list[Partition], io: dict[str, Any]) -> Values:
    """Aggregates over the unique partitions plus one detail group per partition."""
    parts = unique_partitions(partitions)
    values: Values = {}
    total = used = read = write = 0
    for part in parts:
        counters = io.get(_io_name(part.device))
        p_read = int(counters.read_bytes) if counters is not None else 0
        p_write = int(counters.write_bytes) if counters is not None else 0
        total += part.total
        used += part.used
        read += p_read
        write += p_write
        key = part.mountpoint
        values.update({
            detail_key(key, "total"): float(part.total), detail_key(key, "used"): float(part.used),
            detail_key(key, "free"): float(part.free), detail_key(key, "used_percent"): float(part.percent),
            detail_key(key, "read_bytes"): float(p_read), detail_key(key, "write_bytes"): float(p_write),
            text_key(detail_key(key, "device"), part.device): 1.0,
            text_key(detail_key(key, "fstype"), part.fstype): 1.0,
        })
    values.update({
        "total_bytes": float(total), "used_bytes": float(used), "free_bytes": float(total - used),
        "usage_percent": used / total * 100.0 if total else 0.0,
        "read_bytes": float(read), "write_bytes": float(write), "partition_count": float(len(parts)),
    })
    return values


def read_partitions(mount_points: list[str]) -> list[Partition]:
    """Mounted filesystems with their usage; with mount_points, exactly those (also virtual ones like tmpfs)."""
    wanted = set(mount_points)
    # Without a list, only real devices (psutil's all=False), like the original; a listed tmpfs is honoured.
    found = psutil.disk_partitions(all=bool(wanted))
    out = []
    for p in found:
        if wanted and p.mountpoint not in wanted:
            continue
        try:
            usage = psutil.disk_usage(p.mountpoint)
        except OSError:  # unmounted meanwhile, or not ours to read
            continue
        out.append(Partition(p.mountpoint, p.device, p.fstype, usage.total, usage.used, usage.free, usage.percent,
                             filesystem_identity(p.device, p.mountpoint)))
    return out


# ----------------------------------------------------------------------------------------------- network

NET_FIELDS = (  # key, psutil attribute
    ("bytes_sent", "bytes_sent"), ("bytes_recv", "bytes_recv"), ("packets_sent", "packets_sent"),
    ("packets_recv", "packets_recv"), ("error_in", "errin"), ("error_out", "errout"), ("drop_in", "dropin"),
    ("drop_out", "dropout"),
)


def _delta(current: int, previous: int | None) -> int:
    if previous is None:
        return 0  # no baseline yet (first collection, or an interface that just appeared)
    return current - previous if current >= previous else current  # the counter was reset (driver reload, wrap)


@dataclass
class NetworkState:
    """Counters of the previous collection, per interface, and when it was taken (monotonic)."""

    rx: dict[str, int] = field(default_factory=dict)
    tx: dict[str, int] = field(default_factory=dict)
    at: float | None = None


def network_values(counters: dict[str, Any], interfaces: list[str], state: NetworkState, now: float) -> Values:
    """Cumulative totals, rx/tx deltas since the previous call (per interface, so one reset or a vanished
    interface does not turn into a spike), and one detail group per interface. Updates state."""
    wanted = set(interfaces)
    names = sorted(n for n in counters if not wanted or n in wanted)
    values: Values = {}
    totals = dict.fromkeys((k for k, _ in NET_FIELDS), 0)
    rx_delta = tx_delta = 0
    first = state.at is None
    rx_now: dict[str, int] = {}
    tx_now: dict[str, int] = {}
    for name in names:
        c = counters[name]
        for key, attr in NET_FIELDS:
            number = int(getattr(c, attr))
            totals[key] += number
            values[detail_key(name, key)] = float(number)
        rx_now[name], tx_now[name] = int(c.bytes_recv), int(c.bytes_sent)
        rx = 0 if first else _delta(rx_now[name], state.rx.get(name))
        tx = 0 if first else _delta(tx_now[name], state.tx.get(name))
        values[detail_key(name, "rx_bytes")] = float(rx)
        values[detail_key(name, "tx_bytes")] = float(tx)
        rx_delta += rx
        tx_delta += tx
    values.update({k: float(v) for k, v in totals.items()})
    values.update({
        "rx_bytes": float(rx_delta), "tx_bytes": float(tx_delta), "interface_count": float(len(names)),
        "interval_seconds": 0.0 if first else max(0.0, now - state.at),
    })
    state.rx, state.tx, state.at = rx_now, tx_now, now
    return values


# ----------------------------------------------------------------------------------------------- system


def system_values() -> Values:
    """agentd's own extra type: process count, uptime and boot time."""
    boot = psutil.boot_time()
    return {"process_count": float(len(psutil.pids())), "uptime": max(0.0, time.time() - boot), "boot_time": float(boot)}


# ----------------------------------------------------------------------------------------------- collectors


@dataclass
class Collector:
    """One enabled collector: its MetricData type, how often it runs, and a blocking function giving its values."""

    type: str
    interval: float
    collect: Callable[[], Values]


def collectors_for(settings: CollectorsSettings) -> list[Collector]:
    """The enabled collectors of a `collectors:` section."""
    out: list[Collector] = []
    if settings.cpu.enabled:
        out.append(Collector("cpu", settings.cpu.interval, cpu_values))
    if settings.memory.enabled:
        out.append(Collector("memory", settings.memory.interval, memory_values))
    if settings.disk.enabled:
        mounts = list(settings.disk.mount_points)
        out.append(Collector("disk", settings.disk.interval,
                             lambda: disk_values(read_partitions(mounts), psutil.disk_io_counters(perdisk=True) or {})))
    if settings.network.enabled:
        state = NetworkState()
        wanted = list(settings.network.interfaces)
        out.append(Collector("network", settings.network.interval,
                             lambda: network_values(psutil.net_io_counters(pernic=True), wanted, state, time.monotonic())))
    return out


def reading(kind: str, values: Values, at: float | None = None) -> manager_pb2.MetricData:
    """One MetricData stamped with the unix second of its collection. Non-finite values are left out: the
    Manager stores values as JSON, and one NaN fails its whole batch."""
    finite = {k: v for k, v in values.items() if math.isfinite(v)}
    return manager_pb2.MetricData(type=kind, timestamp=int(time.time() if at is None else at), values=finite)
