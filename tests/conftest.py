"""Shared fixtures: a real agentd per test, and a final check that no test left a process behind.

A test that fails while using the `agentd` fixture carries the tail of that daemon's log in its report,
so a failure on CI explains itself (the temp dir with the full log is gone once the fixture ends).
"""

from __future__ import annotations

import pytest

from tests.support.daemon import TestDaemon, processes_tagged

LOG_TAIL_LINES = 80


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    daemon = getattr(item, "funcargs", {}).get("agentd")
    if report.failed and isinstance(daemon, TestDaemon):
        report.sections.append((f"agentd log, last {LOG_TAIL_LINES} lines ({report.when})", daemon.log_tail(LOG_TAIL_LINES)))


@pytest.fixture
def agentd():
    """A TestDaemon; the test configures and starts it. Everything it started is killed afterwards."""
    d = TestDaemon()
    try:
        yield d
    finally:
        tail = d.log_tail(LOG_TAIL_LINES)  # read before cleanup removes the temp dir
        d.cleanup()
        leftovers = processes_tagged(d.tag)
        assert not leftovers, f"processes left behind by the test: {leftovers}\n--- agentd log, last {LOG_TAIL_LINES} lines ---\n{tail}"
