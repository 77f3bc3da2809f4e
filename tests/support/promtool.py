"""Prometheus' own checker for tests: `promtool` from PATH, installed from Debian's `prometheus` package when
missing and we are root, else the test is skipped with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

_tried: list[str] = []  # one install attempt per test session; later callers get its outcome


def promtool_path() -> Path:
    """The promtool binary, or pytest.skip with why there is none."""
    found = shutil.which("promtool")
    if found:
        return Path(found)
    if not _tried:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            _tried.append("promtool is not installed (Debian: apt-get install prometheus) and this run cannot install it")
        else:
            done = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "prometheus"],
                                  capture_output=True, text=True, timeout=600, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
            _tried.append("" if done.returncode == 0 else f"apt-get install prometheus failed: {done.stderr.strip()[-300:]}")
    found = shutil.which("promtool")
    if not found:
        pytest.skip(_tried[0] or "promtool not found after installing prometheus")
    return Path(found)


def check(promtool: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run `promtool check ...`; the result carries promtool's own complaints."""
    return subprocess.run([str(promtool), "check", *args], input=stdin, capture_output=True, text=True, timeout=60)
