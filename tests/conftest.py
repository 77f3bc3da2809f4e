"""Shared fixtures: a real agentd per test, and a final check that no test left a process behind."""

from __future__ import annotations

import pytest

from tests.support.daemon import TAG_VAR, TestDaemon, processes_tagged
from tests.support.wait import wait_until


@pytest.fixture
def agentd():
    """A TestDaemon; the test configures and starts it. Everything it started is killed afterwards."""
    d = TestDaemon()
    try:
        yield d
    finally:
        d.cleanup()
        leftovers = processes_tagged(d.tag)
        assert not leftovers, f"processes left behind by the test: {leftovers}"
