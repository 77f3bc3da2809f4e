"""Node metrics under the original daemon's keys: real collections, network deltas and resets, disk dedup, filters."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.config.loading import parse_config
from supervisor.config.manager_sections import CollectorsSettings
from workers.node_metrics import (
    NetworkState,
    Partition,
    collectors_for,
    cpu_model,
    disk_values,
    filesystem_identity,
    network_values,
    reading,
)

CPU_KEYS = {"usage_percent", "cores", "mhz", "user", "system", "idle", "iowait"}
MEMORY_KEYS = {
    "total_bytes", "used_bytes", "free_bytes", "available_bytes", "usage_percent", "cached", "buffers",
    "swap_total", "swap_used", "swap_free", "swap_percent", "total", "available", "used", "free",
}
DISK_KEYS = {"total_bytes", "used_bytes", "free_bytes", "usage_percent", "read_bytes", "write_bytes", "partition_count"}
NETWORK_KEYS = {
    "rx_bytes", "tx_bytes", "bytes_sent", "bytes_recv", "packets_sent", "packets_recv", "error_in", "error_out",
    "drop_in", "drop_out", "interface_count", "interval_seconds",
}


def nic(sent, recv, **more):
    fields = dict(packets_sent=1, packets_recv=2, errin=3, errout=4, dropin=5, dropout=6) | more
    return SimpleNamespace(bytes_sent=sent, bytes_recv=recv, **fields)


def by_type(settings: CollectorsSettings) -> dict[str, dict[str, float]]:
    return {c.type: c.collect() for c in collectors_for(settings)}


# ------------------------------------------------------------------------------------------- real machine


def test_real_collections_carry_every_original_key():
    values = by_type(CollectorsSettings.all_on())
    assert set(values) == {"cpu", "memory", "disk", "network"}
    cpu, memory, disk, network = (values[k] for k in ("cpu", "memory", "disk", "network"))
    assert CPU_KEYS <= set(cpu) and 0 <= cpu["usage_percent"] <= 100 and cpu["cores"] == os.cpu_count()
    assert cpu["user"] > 0 and cpu["idle"] > 0
    assert MEMORY_KEYS <= set(memory)
    assert memory["total_bytes"] == memory["total"] >= memory["available_bytes"] > 0 and 0 < memory["usage_percent"] < 100
    assert DISK_KEYS <= set(disk) and disk["partition_count"] >= 1 and disk["total_bytes"] > 0
    assert 0 < disk["usage_percent"] < 100
    root = [k for k in disk if k.startswith("details[/].")]
    assert {"details[/].total", "details[/].used", "details[/].free", "details[/].used_percent",
            "details[/].read_bytes", "details[/].write_bytes"} <= set(root)
    assert any(k.startswith("details[/].device=") for k in root) and any(k.startswith("details[/].fstype=") for k in root)
    assert NETWORK_KEYS <= set(network) and network["interface_count"] >= 1
    assert network["rx_bytes"] == network["tx_bytes"] == network["interval_seconds"] == 0  # the first collection
    assert network["bytes_recv"] >= network["details[lo].bytes_recv"] > 0
    assert all(isinstance(v, float) and math.isfinite(v) for vs in values.values() for v in vs.values())


def test_the_second_network_collection_reports_deltas():
    [collector] = collectors_for(parse_config({"collectors": {"network": {"interfaces": ["lo"]}}}, "t", ".").collectors)
    first = collector.collect()
    with __import__("socket").create_server(("127.0.0.1", 0)) as server:  # some loopback traffic in between
        with __import__("socket").create_connection(server.getsockname()) as client:
            conn, _ = server.accept()
            client.sendall(b"x" * 100_000)
            got = 0
            while got < 100_000:
                got += len(conn.recv(65536))
            conn.close()
    second = collector.collect()
    assert first["interface_count"] == second["interface_count"] == 1
    assert [k for k in second if k.startswith("details[")] and all(k.startswith("details[lo].") for k in second if k.startswith("details["))
    assert second["rx_bytes"] >= 100_000 and second["tx_bytes"] >= 100_000
    assert second["rx_bytes"] == second["bytes_recv"] - first["bytes_recv"]
    assert second["interval_seconds"] > 0


def test_collectors_section_chooses_which_run():
    cfg = parse_config({"collectors": {"cpu": {"enabled": True, "interval": "30s"}, "memory": {"enabled": False},
                                       "disk": {"mount_points": ["/"], "interval": "2m"}}}, "t", ".").collectors
    collectors = {c.type: c for c in collectors_for(cfg)}
    assert set(collectors) == {"cpu", "disk"}  # memory off; network not listed, so off as in the original
    assert collectors["cpu"].interval == 30 and collectors["disk"].interval == 120
    disk = collectors["disk"].collect()
    assert disk["partition_count"] == 1 and {k.split("]")[0] for k in disk if k.startswith("details[")} == {"details[/"}
    assert {c.type for c in collectors_for(parse_config({"agents": []}, "t", ".").collectors)} == {"cpu", "memory", "disk", "network"}


def test_a_listed_virtual_filesystem_is_collected(tmp_path):
    shm = "/dev/shm"
    if not os.path.ismount(shm):
        pytest.skip("no /dev/shm mount here")
    [collector] = collectors_for(parse_config({"collectors": {"disk": {"mount_points": [shm]}}}, "t", ".").collectors)
    disk = collector.collect()
    assert disk["partition_count"] == 1 and disk[f"details[{shm}].total"] > 0


# ------------------------------------------------------------------------------------------- network arithmetic


def test_network_deltas_first_zero_then_differences():
    state = NetworkState()
    first = network_values({"eth0": nic(100, 1000), "lo": nic(5, 5)}, [], state, now=10.0)
    assert (first["rx_bytes"], first["tx_bytes"], first["interval_seconds"]) == (0, 0, 0)
    assert first["bytes_recv"] == 1005 and first["bytes_sent"] == 105 and first["interface_count"] == 2
    assert (first["packets_sent"], first["error_in"], first["drop_out"]) == (2, 6, 12)
    second = network_values({"eth0": nic(150, 1600), "lo": nic(5, 5)}, [], state, now=70.0)
    assert (second["rx_bytes"], second["tx_bytes"], second["interval_seconds"]) == (600, 50, 60)
    assert second["details[eth0].rx_bytes"] == 600 and second["details[lo].rx_bytes"] == 0
    assert second["details[eth0].bytes_recv"] == 1600 and second["details[eth0].error_out"] == 4


def test_a_counter_reset_counts_from_zero_and_a_vanished_interface_is_no_spike():
    state = NetworkState()
    network_values({"eth0": nic(10_000, 50_000), "veth1": nic(7_000_000, 9_000_000)}, [], state, now=0.0)
    # eth0's driver was reloaded (counters restart near 0) and veth1 went away with its big totals.
    after = network_values({"eth0": nic(300, 700)}, [], state, now=5.0)
    assert (after["rx_bytes"], after["tx_bytes"]) == (700, 300)
    # A new interface has no baseline yet: 0 this time, its difference next time.
    later = network_values({"eth0": nic(400, 900), "wg0": nic(1_000, 2_000)}, [], state, now=10.0)
    assert (later["rx_bytes"], later["tx_bytes"]) == (200, 100) and later["interface_count"] == 2
    last = network_values({"eth0": nic(400, 900), "wg0": nic(1_500, 2_100)}, [], state, now=15.0)
    assert (last["rx_bytes"], last["tx_bytes"]) == (100, 500)


def test_interface_filter():
    state = NetworkState()
    values = network_values({"eth0": nic(1, 2), "lo": nic(3, 4), "docker0": nic(5, 6)}, ["eth0", "missing"], state, 1.0)
    assert values["interface_count"] == 1 and values["bytes_sent"] == 1
    assert not any(k.startswith(("details[lo]", "details[docker0]")) for k in values)


# ------------------------------------------------------------------------------------------- disk arithmetic


def part(mount, device, total, used, identity=None, fstype="ext4"):
    return Partition(mount, device, fstype, total, used, total - used, used / total * 100, identity or device)


def test_duplicate_devices_count_once_with_the_shortest_mountpoint():
    parts = [
        part("/var/lib/docker", "/dev/sda1", 1000, 400),  # a bind mount of the root filesystem
        part("/", "/dev/sda1", 1000, 400),
        part("/data", "/dev/sdb1", 3000, 1500),
    ]
    io = {"sda1": SimpleNamespace(read_bytes=11, write_bytes=22), "sdb1": SimpleNamespace(read_bytes=100, write_bytes=200)}
    values = disk_values(parts, io)
    assert values["partition_count"] == 2
    assert (values["total_bytes"], values["used_bytes"], values["free_bytes"]) == (4000, 1900, 2100)
    assert values["usage_percent"] == pytest.approx(47.5)
    assert (values["read_bytes"], values["write_bytes"]) == (111, 222)
    assert not any(k.startswith("details[/var/lib/docker]") for k in values)
    assert values["details[/].total"] == 1000 and values["details[/data].used_percent"] == 50
    assert values["details[/data].read_bytes"] == 100
    assert values["details[/].device=/dev/sda1"] == 1 and values["details[/data].fstype=ext4"] == 1


def test_no_partitions_is_all_zero_not_a_division_error():
    values = disk_values([], {})
    assert values["usage_percent"] == 0 and values["partition_count"] == 0 and values["total_bytes"] == 0


def test_filesystem_identity_of_virtual_mounts_is_their_st_dev(tmp_path):
    assert filesystem_identity("tmpfs", str(tmp_path)) == ("st_dev", os.stat(tmp_path).st_dev)
    assert filesystem_identity("/dev/../dev/sda1", "/") == "/dev/sda1"
    assert filesystem_identity("none", str(tmp_path / "gone")) == ("mount", str(tmp_path / "gone"))


# ------------------------------------------------------------------------------------------- parsing, wire


@pytest.mark.parametrize("text, expected", [
    ("processor\t: 0\nmodel name\t: AMD EPYC 7B13\ncpu MHz\t\t: 2450.000\n\nprocessor\t: 1\nmodel name\t: other\n",
     ("AMD EPYC 7B13", 2450.0)),
    ("Processor\t: ARMv7 Processor rev 4 (v7l)\nBogoMIPS\t: 38.40\n", ("ARMv7 Processor rev 4 (v7l)", 0.0)),
    ("cpu MHz : fast\n", ("", 0.0)),
    ("", ("", 0.0)),
    ("\x00\xff garbage without colons\n:::\n", ("", 0.0)),
])
def test_cpuinfo_parsing(tmp_path, text, expected):
    path = tmp_path / "cpuinfo"
    path.write_text(text, errors="surrogateescape")
    assert cpu_model(path) == expected
    assert cpu_model(tmp_path / "missing") == ("", 0.0)


def test_a_reading_never_carries_a_value_json_cannot_hold():
    metric = reading("cpu", {"usage_percent": 5.0, "bad": math.nan, "worse": math.inf}, at=1700000000.7)
    assert dict(metric.values) == {"usage_percent": 5.0} and metric.timestamp == 1700000000 and metric.type == "cpu"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["model name", "cpu MHz", "Processor", "processor", "flags", "x"]),
                          st.text(max_size=30)), max_size=8))
def test_any_cpuinfo_gives_a_model_and_a_number(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("cpuinfo") / "cpuinfo"
    path.write_text("".join(f"{k}\t: {v}\n" for k, v in lines), errors="surrogateescape")
    model, mhz = cpu_model(path)
    assert isinstance(model, str) and isinstance(mhz, float)
    assert reading("cpu", {f"model={model}"[:220]: 1.0, "mhz": mhz}).type == "cpu"
