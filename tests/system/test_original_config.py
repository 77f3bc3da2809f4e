"""The original daemon's config files load unchanged: every key mapped or warned about, env overrides, migrate-config.

tests/fixtures/original/ holds the original's shipped files verbatim (github.com/bingooyong/ops-scaffold-framework
at a428bb6: daemon/configs/daemon.yaml, daemon.container.yaml, daemon.dev.yaml,
daemon.multi-agent.example.yaml and test/integration/config/daemon.test.yaml).

The tests here use real processes; the unit ones are in tests/unit/test_original_config.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from supervisor.config.loading import load_config
from supervisor.config.original_config import is_original
from supervisor.config.original_notes import FORMAT_WARNING


FIXTURES = Path(__file__).parents[1] / "fixtures" / "original"


SHIPPED = sorted(p.name for p in FIXTURES.glob("*.yaml"))


ROOT = Path(__file__).resolve().parents[2]


def migrate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "supervisor.parent.agentd_cli", "migrate-config", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def comparable(config) -> dict:
    dumped = config.model_dump(mode="json", exclude={"warnings", "source"})
    return dumped


@pytest.mark.parametrize("name", SHIPPED)
def test_migrate_config_prints_an_equivalent_native_file(tmp_path, name):
    original = tmp_path / name
    original.write_text((FIXTURES / name).read_text())
    result = migrate(original)
    assert result.returncode == 0, result.stderr
    native = yaml.safe_load(result.stdout)
    assert not is_original(native)
    # Written beside the original, it loads to the same configuration, without the format warning.
    migrated = tmp_path / f"migrated-{name}"
    migrated.write_text(result.stdout)
    again = load_config(migrated, env={})
    assert comparable(again) == comparable(load_config(original, env={}))
    assert FORMAT_WARNING not in again.warnings
    assert "# daemon.work_dir: data_dir" in result.stdout  # a comment on a key that changed meaning


def test_migrate_config_refuses_a_native_file(tmp_path):
    path = tmp_path / "agentd.yaml"
    path.write_text("agents: []\n")
    result = migrate(path)
    assert result.returncode == 1 and "already in agentd's native form" in result.stderr
