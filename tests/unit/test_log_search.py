"""Log search by pattern and time over the live file and its rotated copies; time-based rotation; retention by age."""

from __future__ import annotations

import gzip
import os
import re
import time
from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.common.log_reading import line_time, rotated_path, search_logs
from supervisor.parent.log_files import prune_old_logs, rotate_by_settings

DAY = 86400.0


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def test_line_time_reads_the_common_shapes():
    assert line_time("2026-11-28T22:56:13Z started") == utc("2026-11-28T22:56:13")
    assert line_time("2026-11-28T22:56:13.250+02:00 x") == utc("2026-11-28T20:56:13") + 0.25
    assert line_time('{"@timestamp":"2026-11-28T22:56:13.5Z","message":"hi"}') == utc("2026-11-28T22:56:13") + 0.5
    naive = datetime(2026, 11, 28, 22, 56, 13).timestamp()  # no zone: the node's local time
    assert line_time("2026-11-28 22:56:13,379 agent[1] INFO x") == naive + 0.379
    assert line_time("    at Foo.bar(Foo.java:10)") is None
    assert line_time("x" * 130 + " 2026-11-28T22:56:13Z") is None  # a time deep in the message is not the line's
    assert line_time("2026-13-40T99:00:00Z") is None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_line_time_never_raises(text):
    t = line_time(text)
    assert t is None or isinstance(t, float)


def write_logs(tmp_path):
    """agent.log.2.gz (oldest), agent.log.1, agent.log (live), one line per minute from 10:00 UTC."""
    live = tmp_path / "a" / "agent.log"
    live.parent.mkdir()
    lines = [f"2026-11-28T10:{m:02d}:00Z {'ERROR' if m % 4 == 0 else 'INFO'} line {m}" for m in range(12)]
    with gzip.open(rotated_path(live, 2, True), "wt") as f:
        f.write("\n".join(lines[0:4]) + "\n")
    rotated_path(live, 1, False).write_text("\n".join(lines[4:8]) + "\n  continuation of line 7\n")
    live.write_text("\n".join(lines[8:12]) + "\n")
    for p, minute in ((rotated_path(live, 2, True), 3), (rotated_path(live, 1, False), 7), (live, 11)):
        os.utime(p, (utc(f"2026-11-28T10:{minute:02d}:30"),) * 2)
    return live


def test_grep_searches_rotated_copies_oldest_first(tmp_path):
    live = write_logs(tmp_path)
    found = search_logs(live, re.compile("ERROR"), None, None, 50)
    assert found.lines == ["2026-11-28T10:00:00Z ERROR line 0", "2026-11-28T10:04:00Z ERROR line 4", "2026-11-28T10:08:00Z ERROR line 8"]
    assert len(found.files) == 3 and found.skipped == 0
    assert search_logs(live, re.compile("ERROR"), None, None, 2).lines[0].endswith("line 4")  # the newest 2


def test_since_and_until_use_each_lines_time(tmp_path):
    live = write_logs(tmp_path)
    found = search_logs(live, None, utc("2026-11-28T10:06:00"), utc("2026-11-28T10:09:00"), 50)
    assert found.lines == [
        "2026-11-28T10:06:00Z INFO line 6", "2026-11-28T10:07:00Z INFO line 7", "  continuation of line 7",
        "2026-11-28T10:08:00Z ERROR line 8", "2026-11-28T10:09:00Z INFO line 9",
    ]
    assert len(found.files) == 2  # agent.log.2.gz was last written before --since: not read
    assert search_logs(live, re.compile("line"), utc("2026-11-29T00:00:00"), None, 50).lines == []


def test_time_based_rotation(tmp_path):
    live = tmp_path / "agent.log"
    live.write_text("some output\n")
    now = time.time()
    # Seen 30 s ago, interval 60 s: not yet. Seen 61 s ago: due.
    assert rotate_by_settings(live, 10**9, 3, False, 60.0, now - 30, now) is False
    assert rotate_by_settings(live, 10**9, 3, False, 60.0, now - 61, now) is True
    assert rotated_path(live, 1, False).read_text() == "some output\n" and live.stat().st_size == 0
    live.write_text("more\n")
    # The last rotation (copy 1's mtime) starts the next interval, whatever the daemon remembered.
    assert rotate_by_settings(live, 10**9, 3, False, 60.0, now - 1000, time.time()) is False
    assert rotate_by_settings(live, 10**9, 3, False, None, now - 1000, now + 1000) is False  # no interval: size only
    live.write_text("")
    assert rotate_by_settings(live, 10**9, 3, False, 60.0, now - 1000, now + 1000) is False  # nothing to rotate


def test_retention_by_age_including_agents_no_longer_configured(tmp_path):
    now = time.time()
    old, recent = now - 40 * DAY, now - 1 * DAY

    def make(path, mtime):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x\n")
        os.utime(path, (mtime, mtime))
        return path

    kept_live = make(tmp_path / "web" / "agent.log", old)  # a configured agent's live file is never deleted
    old_copy = make(tmp_path / "web" / "agent.log.3.gz", old)
    new_copy = make(tmp_path / "web" / "agent.log.1.gz", recent)
    gone_live = make(tmp_path / "removed" / "agent.log", old)
    gone_copy = make(tmp_path / "removed" / "agent.log.1.gz", old)
    still_live = make(tmp_path / "recently-removed" / "agent.log", recent)
    other = make(tmp_path / "removed-with-notes" / "notes.txt", old)
    make(tmp_path / "removed-with-notes" / "agent.log", old)

    removed = prune_old_logs(tmp_path, {"web": 30 * DAY}, 30 * DAY, now)
    assert set(removed) == {old_copy, gone_live, gone_copy, tmp_path / "removed", tmp_path / "removed-with-notes" / "agent.log"}
    assert kept_live.exists() and new_copy.exists() and still_live.exists() and other.exists()
    assert not (tmp_path / "removed").exists()
    assert prune_old_logs(tmp_path, {"web": None}, None, now + 100 * DAY) == []  # max_age null: keep forever
