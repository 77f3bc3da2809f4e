"""One time convention for people: local time with its offset (agentctl and agentd's log), UTC on request."""

from __future__ import annotations

import os
import time

import pytest

from supervisor.common import timefmt


@pytest.fixture
def kolkata():
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"
    time.tzset()
    yield
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()
    timefmt.use_utc(False)


def test_local_time_carries_its_offset(kolkata):
    assert timefmt.show("2026-12-03T12:00:00Z") == "2026-12-03 17:30:00+05:30"
    assert timefmt.show(1764763200.25, ms=True) == "2025-12-03 17:30:00.250+05:30"
    assert timefmt.clock(1764763200) == "17:30:00+05:30"


def test_utc_on_request_and_odd_input(kolkata):
    timefmt.use_utc(True)
    assert timefmt.show("2026-12-03T12:00:00+01:00") == "2026-12-03 11:00:00+00:00"
    assert timefmt.show(None) == "-"
    assert timefmt.show("yesterday") == "yesterday"


def test_agentd_log_lines_carry_the_offset(kolkata, capsys):
    import logging

    from supervisor.common.logging_setup import TextFormatter

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    record.created = 1764763200.5
    line = TextFormatter("%(asctime)s %(message)s").format(record)
    assert line == "2025-12-03 17:30:00.500+05:30 hello"
