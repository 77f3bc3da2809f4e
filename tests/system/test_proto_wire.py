"""Pins the Manager gRPC wire format (docs/manager-link.md) through the generated descriptors; any drift fails here.

The tests here use real processes; the unit ones are in tests/unit/test_proto_wire.py."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[2]


def test_committed_modules_match_fresh_generation():
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpc_tools is not importable (pip install grpcio-tools) so the modules cannot be regenerated")
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor.wire.proto.generate", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"generate --check failed:\n{proc.stdout}{proc.stderr}"
