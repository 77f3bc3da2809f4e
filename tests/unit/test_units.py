"""Durations and sizes: parsing, formatting and the pydantic field types."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from supervisor.config.units import (
    Duration,
    OptionalDuration,
    OptionalSize,
    Size,
    format_bytes,
    format_duration,
    parse_duration,
    parse_size,
)


@pytest.mark.parametrize(
    "value, seconds",
    [
        (0, 0.0),
        (30, 30.0),
        (2.5, 2.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("500ms", 0.5),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("2d", 172800.0),
        ("1.5s", 1.5),
        ("45", 45.0),
        ("0.25", 0.25),
        (" 10s ", 10.0),
        ("10S", 10.0),
        ("1m500ms", 60.5),
    ],
)
def test_parse_duration_accepts(value, seconds):
    assert parse_duration(value) == pytest.approx(seconds)
    assert isinstance(parse_duration(value), float)


@pytest.mark.parametrize(
    "value, message",
    [
        ("5 minutes", "not a duration: '5 minutes' (use 30s, 5m, 1h or seconds)"),
        ("abc", "not a duration: 'abc' (use 30s, 5m, 1h or seconds)"),
        ("", "not a duration: '' (use 30s, 5m, 1h or seconds)"),
        ("10x", "not a duration: '10x' (use 30s, 5m, 1h or seconds)"),
        ("inf", "not a duration: 'inf' (use 30s, 5m, 1h or seconds)"),
        (-1, "duration must not be negative, got -1"),
        ("-5s", "duration must not be negative, got '-5s'"),
        ("-3", "duration must not be negative, got '-3'"),
        (float("nan"), "not a duration"),
        (True, "expected a duration (use 30s, 5m, 1h or seconds), got true"),
        (None, "expected a duration (use 30s, 5m, 1h or seconds), got null"),
        ([1], "expected a duration (use 30s, 5m, 1h or seconds), got a list"),
    ],
)
def test_parse_duration_rejects_with_a_readable_message(value, message):
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    "value, size",
    [
        (0, 0),
        (123, 123),
        ("123", 123),
        ("123B", 123),
        ("64KiB", 64 * 1024),
        ("500MiB", 500 * 1024**2),
        ("1GiB", 1024**3),
        ("1.5KiB", 1536),
        ("100MB", 100_000_000),
        ("2kb", 2000),
        ("10K", 10 * 1024),
        ("10M", 10 * 1024**2),
        ("10G", 10 * 1024**3),
        ("500 MiB", 500 * 1024**2),
        ("1TiB", 1024**4),
    ],
)
def test_parse_size_accepts(value, size):
    assert parse_size(value) == size
    assert isinstance(parse_size(value), int)


@pytest.mark.parametrize(
    "value, message",
    [
        ("5 bananas", "not a size: '5 bananas' (use 500MiB, 64KiB, 1GiB or bytes)"),
        ("MiB", "not a size: 'MiB'"),
        ("1.2.3KiB", "not a size: '1.2.3KiB'"),
        ("", "not a size: ''"),
        (-1, "size must not be negative, got -1"),
        ("-1MiB", "size must not be negative, got '-1MiB'"),
        (False, "expected a size (use 500MiB, 64KiB, 1GiB or bytes), got false"),
        ({"a": 1}, "expected a size (use 500MiB, 64KiB, 1GiB or bytes), got a mapping"),
    ],
)
def test_parse_size_rejects_with_a_readable_message(value, message):
    with pytest.raises(ValueError) as info:
        parse_size(value)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    "seconds, text",
    [
        (None, "-"),
        (0, "0s"),
        (0.25, "250ms"),
        (1.5, "1.5s"),
        (45, "45s"),
        (59.6, "1m00s"),
        (125, "2m05s"),
        (3 * 3600 + 4 * 60 + 59, "3h04m"),
        (2 * 86400 + 3 * 3600, "2d03h"),
        (-45, "-45s"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    "n, text",
    [
        (None, "-"),
        (0, "0B"),
        (512, "512B"),
        (1024, "1KiB"),
        (1536, "1.5KiB"),
        (612 * 1024**2, "612MiB"),
        (1024**2 - 1, "1MiB"),
        (3 * 1024**3, "3GiB"),
    ],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text


class _Model(BaseModel):
    timeout: Duration = 10
    grace: OptionalDuration = None
    limit: Size = 1024
    cap: OptionalSize = None


def test_annotated_types_in_a_model():
    m = _Model(timeout="1m", grace="30s", limit="64KiB", cap="1MiB")
    assert (m.timeout, m.grace, m.limit, m.cap) == (60.0, 30.0, 65536, 1024**2)
    m = _Model(grace=None, cap=None)
    assert m.grace is None and m.cap is None


def test_annotated_types_report_the_parse_error():
    with pytest.raises(ValidationError) as info:
        _Model(timeout="soon")
    assert "not a duration: 'soon'" in str(info.value)
    with pytest.raises(ValidationError) as info:
        _Model(limit="lots")
    assert "not a size: 'lots'" in str(info.value)
