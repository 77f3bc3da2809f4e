"""Pins the Manager gRPC wire format (docs/manager-link.md) through the generated descriptors; any drift fails here.

The tests here start no process; the ones with real processes are in tests/system/test_proto_wire.py."""

from __future__ import annotations

import struct

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor

from supervisor.wire.proto import daemon_pb2, daemon_pb2_grpc, manager_pb2, manager_pb2_grpc


# Written by hand from docs/manager-link.md, never derived from the .proto files, so that a change to a
# .proto file has to be made here as well, on purpose. Field spec: (number, "type"), where type is a
# scalar name, "repeated X", "map<K,V>" or a message full name.
MANAGER_MESSAGES: dict[str, dict[str, tuple[int, str]]] = {
    "manager.RegisterNodeRequest": {
        "node_id": (1, "string"),
        "hostname": (2, "string"),
        "ip": (3, "string"),
        "os": (4, "string"),
        "arch": (5, "string"),
        "labels": (6, "map<string,string>"),
        "daemon_version": (7, "string"),
        "agent_version": (8, "string"),
    },
    "manager.RegisterNodeResponse": {"success": (1, "bool"), "message": (2, "string")},
    "manager.HeartbeatRequest": {"node_id": (1, "string"), "timestamp": (2, "int64")},
    "manager.HeartbeatResponse": {"success": (1, "bool"), "message": (2, "string")},
    "manager.ReportMetricsRequest": {"node_id": (1, "string"), "metrics": (2, "repeated manager.MetricData")},
    "manager.MetricData": {"type": (1, "string"), "timestamp": (2, "int64"), "values": (3, "map<string,double>")},
    "manager.ReportMetricsResponse": {"success": (1, "bool"), "message": (2, "string")},
}


# The agent methods are in docs/manager-link.md. The legacy node methods (Register ... PushUpdate) are not:
# their messages follow the ops-scaffold Manager's own daemon.proto, so the method table matches it.
DAEMON_MESSAGES: dict[str, dict[str, tuple[int, str]]] = {
    "proto.SyncAgentStatesRequest": {"node_id": (1, "string"), "states": (2, "repeated proto.AgentState")},
    "proto.AgentState": {
        "agent_id": (1, "string"),
        "status": (2, "string"),
        "pid": (3, "int32"),
        "last_heartbeat": (4, "int64"),
        "type": (5, "string"),
        "version": (6, "string"),
    },
    "proto.SyncAgentStatesResponse": {"success": (1, "bool"), "message": (2, "string")},
    "proto.ListAgentsRequest": {},
    "proto.ListAgentsResponse": {"agents": (1, "repeated proto.AgentInfo")},
    "proto.AgentInfo": {
        "id": (1, "string"),
        "type": (2, "string"),
        "version": (3, "string"),
        "status": (4, "string"),
        "pid": (5, "int32"),
        "start_time": (6, "int64"),
        "restart_count": (7, "int32"),
        "last_heartbeat": (8, "int64"),
    },
    "proto.AgentOperationRequest": {"agent_id": (1, "string"), "operation": (2, "string")},
    "proto.AgentOperationResponse": {"success": (1, "bool"), "error_message": (2, "string")},
    "proto.AgentMetricsRequest": {"agent_id": (1, "string"), "duration_seconds": (2, "int64")},
    "proto.AgentMetricsResponse": {"agent_id": (1, "string"), "data_points": (2, "repeated proto.ResourceDataPoint")},
    "proto.ResourceDataPoint": {
        "timestamp": (1, "int64"),
        "cpu": (2, "double"),
        "memory_rss": (3, "uint64"),
        "memory_vms": (4, "uint64"),
        "disk_read_bytes": (5, "uint64"),
        "disk_write_bytes": (6, "uint64"),
        "open_files": (7, "int32"),
    },
    # Legacy node methods (not in docs/manager-link.md; from the ops-scaffold Manager's daemon.proto).
    "proto.RegisterRequest": {
        "hostname": (1, "string"),
        "ip": (2, "string"),
        "os": (3, "string"),
        "arch": (4, "string"),
        "labels": (5, "map<string,string>"),
        "daemon_version": (6, "string"),
        "agent_version": (7, "string"),
    },
    "proto.RegisterResponse": {"node_id": (1, "string"), "success": (2, "bool"), "message": (3, "string")},
    "proto.HeartbeatRequest": {"node_id": (1, "string"), "timestamp": (2, "int64"), "status": (3, "string")},
    "proto.HeartbeatResponse": {"success": (1, "bool"), "message": (2, "string")},
    "proto.MetricsRequest": {"node_id": (1, "string"), "timestamp": (2, "int64"), "data": (3, "bytes")},
    "proto.MetricsResponse": {"success": (1, "bool"), "message": (2, "string")},
    "proto.ConfigRequest": {"node_id": (1, "string"), "config_type": (2, "string")},
    "proto.ConfigResponse": {"success": (1, "bool"), "message": (2, "string"), "config_data": (3, "bytes")},
    "proto.UpdateRequest": {
        "node_id": (1, "string"),
        "component": (2, "string"),
        "version": (3, "string"),
        "download_url": (4, "string"),
        "hash": (5, "string"),
        "signature": (6, "string"),
        "update_data": (7, "bytes"),
    },
    "proto.UpdateResponse": {"success": (1, "bool"), "message": (2, "string")},
}


MANAGER_METHODS = {
    "RegisterNode": ("manager.RegisterNodeRequest", "manager.RegisterNodeResponse"),
    "Heartbeat": ("manager.HeartbeatRequest", "manager.HeartbeatResponse"),
    "ReportMetrics": ("manager.ReportMetricsRequest", "manager.ReportMetricsResponse"),
}


DAEMON_METHODS = {
    "Register": ("proto.RegisterRequest", "proto.RegisterResponse"),
    "Heartbeat": ("proto.HeartbeatRequest", "proto.HeartbeatResponse"),
    "ReportMetrics": ("proto.MetricsRequest", "proto.MetricsResponse"),
    "GetConfig": ("proto.ConfigRequest", "proto.ConfigResponse"),
    "PushUpdate": ("proto.UpdateRequest", "proto.UpdateResponse"),
    "ListAgents": ("proto.ListAgentsRequest", "proto.ListAgentsResponse"),
    "OperateAgent": ("proto.AgentOperationRequest", "proto.AgentOperationResponse"),
    "GetAgentMetrics": ("proto.AgentMetricsRequest", "proto.AgentMetricsResponse"),
    "SyncAgentStates": ("proto.SyncAgentStatesRequest", "proto.SyncAgentStatesResponse"),
}


FILES = [
    (manager_pb2, "manager", "manager.ManagerService", MANAGER_METHODS, MANAGER_MESSAGES),
    (daemon_pb2, "proto", "proto.DaemonService", DAEMON_METHODS, DAEMON_MESSAGES),
]


FILE_IDS = ["manager", "daemon"]


_SCALARS = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_SINT32: "sint32",
    FieldDescriptor.TYPE_SINT64: "sint64",
    FieldDescriptor.TYPE_FIXED32: "fixed32",
    FieldDescriptor.TYPE_FIXED64: "fixed64",
    FieldDescriptor.TYPE_SFIXED32: "sfixed32",
    FieldDescriptor.TYPE_SFIXED64: "sfixed64",
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_ENUM: "enum",
}


def _is_repeated(field: FieldDescriptor) -> bool:
    """Whether the field is repeated; protobuf 7 dropped FieldDescriptor.label for is_repeated."""
    if hasattr(field, "is_repeated"):
        return field.is_repeated
    return field.label == FieldDescriptor.LABEL_REPEATED


def _type_name(field: FieldDescriptor) -> str:
    """The field's type without its label: a scalar name or a message full name."""
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return field.message_type.full_name
    return _SCALARS[field.type]


def _spec(field: FieldDescriptor) -> tuple[int, str]:
    """(number, type spec) in the notation of the tables above."""
    msg = field.message_type
    if msg is not None and msg.GetOptions().map_entry:
        assert _is_repeated(field), f"{field.full_name}: a map field must be repeated on the wire"
        key, value = msg.fields_by_name["key"], msg.fields_by_name["value"]
        assert (key.number, value.number) == (1, 2), f"{msg.full_name}: map entry must be key=1, value=2"
        return field.number, f"map<{_type_name(key)},{_type_name(value)}>"
    prefix = "repeated " if _is_repeated(field) else ""
    return field.number, prefix + _type_name(field)


def _file_proto(module) -> descriptor_pb2.FileDescriptorProto:
    """The FileDescriptorProto a generated module was built from."""
    fdp = descriptor_pb2.FileDescriptorProto()
    fdp.ParseFromString(module.DESCRIPTOR.serialized_pb)
    return fdp


@pytest.mark.parametrize(("module", "package", "service", "methods", "messages"), FILES, ids=FILE_IDS)
def test_package_and_syntax(module, package, service, methods, messages):
    fdp = _file_proto(module)
    assert module.DESCRIPTOR.package == package
    assert fdp.syntax == "proto3"
    # proto3 "optional" would add hidden oneofs and change presence; the wire format uses plain fields.
    for msg in fdp.message_type:
        for field in msg.field:
            assert not field.proto3_optional, f"{package}.{msg.name}.{field.name} must not be 'optional'"
            assert field.label in (field.LABEL_OPTIONAL, field.LABEL_REPEATED)


@pytest.mark.parametrize(("module", "package", "service", "methods", "messages"), FILES, ids=FILE_IDS)
def test_service_methods(module, package, service, methods, messages):
    assert list(module.DESCRIPTOR.services_by_name) == [service.split(".", 1)[1]]
    svc = module.DESCRIPTOR.services_by_name[service.split(".", 1)[1]]
    assert svc.full_name == service
    actual = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in svc.methods}
    assert actual == methods
    for method in svc.methods:
        assert not method.client_streaming and not method.server_streaming, f"{method.full_name} must be unary"


@pytest.mark.parametrize(("module", "package", "service", "methods", "messages"), FILES, ids=FILE_IDS)
def test_messages_and_fields(module, package, service, methods, messages):
    top_level = {m.full_name for m in module.DESCRIPTOR.message_types_by_name.values()}
    assert top_level == set(messages), "messages added or removed"
    for full_name, fields in messages.items():
        desc = module.DESCRIPTOR.message_types_by_name[full_name.split(".", 1)[1]]
        actual = {name: _spec(f) for name, f in desc.fields_by_name.items()}
        assert actual == fields, f"{full_name} drifted from the wire format in docs/manager-link.md"
        # Only map entries may be nested: a nested message type would change a full name on the wire.
        for nested in desc.nested_types:
            assert nested.GetOptions().map_entry, f"{nested.full_name}: unexpected nested message"


class _RecordingChannel:
    """Stands in for a grpc.Channel and records the method paths a generated stub binds."""

    def __init__(self):
        self.paths: list[str] = []

    def unary_unary(self, path, *args, **kwargs):
        self.paths.append(path)
        return object()


@pytest.mark.parametrize(
    ("stub_class", "service", "methods"),
    [
        (manager_pb2_grpc.ManagerServiceStub, "manager.ManagerService", MANAGER_METHODS),
        (daemon_pb2_grpc.DaemonServiceStub, "proto.DaemonService", DAEMON_METHODS),
    ],
    ids=FILE_IDS,
)
def test_stub_method_paths(stub_class, service, methods):
    channel = _RecordingChannel()
    stub_class(channel)
    assert sorted(channel.paths) == sorted(f"/{service}/{name}" for name in methods)


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint (negative numbers as their 64-bit two's complement)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _lendelim(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _varint(len(payload)) + payload


def test_golden_bytes_node_heartbeat():
    msg = manager_pb2.HeartbeatRequest(node_id="n1", timestamp=1_700_000_000)
    assert msg.SerializeToString() == _lendelim(1, b"n1") + _key(2, 0) + _varint(1_700_000_000)


def test_golden_bytes_metric_data_map():
    msg = manager_pb2.MetricData(type="cpu", timestamp=5, values={"usage": 12.5})
    entry = _lendelim(1, b"usage") + _key(2, 1) + struct.pack("<d", 12.5)
    assert msg.SerializeToString() == _lendelim(1, b"cpu") + _key(2, 0) + _varint(5) + _lendelim(3, entry)


def test_golden_bytes_agent_state_and_datapoint():
    state = daemon_pb2.AgentState(
        agent_id="web", status="running", pid=-1, last_heartbeat=7, type="custom", version="1"
    )
    assert state.SerializeToString() == (
        _lendelim(1, b"web")
        + _lendelim(2, b"running")
        + _key(3, 0) + _varint(-1)  # int32, not sint32: -1 takes ten bytes
        + _key(4, 0) + _varint(7)
        + _lendelim(5, b"custom")
        + _lendelim(6, b"1")
    )
    point = daemon_pb2.ResourceDataPoint(timestamp=1, cpu=0.5, memory_rss=1 << 40, open_files=3)
    assert point.SerializeToString() == (
        _key(1, 0) + _varint(1)
        + _key(2, 1) + struct.pack("<d", 0.5)  # double: fixed 64-bit, little-endian
        + _key(3, 0) + _varint(1 << 40)  # uint64: needs more than 32 bits
        + _key(7, 0) + _varint(3)
    )
