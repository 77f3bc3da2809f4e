"""Test support: step the wall clock of every Python process that starts with this directory on PYTHONPATH.

Stepping the machine's real clock would disturb every other process on a shared test box, and libfaketime
is not installed; this moves `time.time()` (and `time.time_ns()`) by the number of seconds written in
$AGENTD_TEST_WALL_OFFSET_FILE, re-read at most every 50 ms, while the monotonic clock runs on untouched:
exactly what an NTP step does. agentd, its workers and Python agents all see the step at the same moment.
"""

import os
import time

_path = os.environ.get("AGENTD_TEST_WALL_OFFSET_FILE")
if _path:
    _real_time, _real_time_ns, _mono = time.time, time.time_ns, time.monotonic
    _state = {"offset": 0.0, "next": 0.0}

    def _offset() -> float:
        now = _mono()
        if now >= _state["next"]:
            _state["next"] = now + 0.05
            try:
                with open(_path) as f:
                    _state["offset"] = float(f.read().strip() or 0)
            except (OSError, ValueError):
                pass
        return _state["offset"]

    def _time() -> float:
        return _real_time() + _offset()

    def _time_ns() -> int:
        return _real_time_ns() + int(_offset() * 1e9)

    time.time, time.time_ns = _time, _time_ns
