"""agentd and supervisord installed into one environment both keep working (docs/decisions.md, "The import
name `supervisor`"): their packages share the import name, and supervisord's installer overwrites
`supervisor/__init__.py`, so agentd keeps nothing there.

Real installs with pip into a throwaway venv; agentd's own dependencies come from the project's venv by a
path entry, so only the two packages under test are installed. Skips, saying why, when supervisord cannot
be fetched (no package registry).
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUPERVISORD = "supervisor>=4.3,<4.4"


def _site_packages(env: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)}))


def _pip(env: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "--quiet",
                           "--disable-pip-version-check", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture
def env(tmp_path: Path) -> Path:
    """A venv without pip that sees this project's dependencies (not agentd itself) through a path entry."""
    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(target)
    ours = Path(sysconfig.get_path("purelib"))
    # A plain path line: the project venv's own .pth files (its editable agentd) are not processed.
    (_site_packages(target) / "project_deps.pth").write_text(f"{ours}\n")
    return target


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    """supervisord's wheel from the registry and agentd's built from this checkout, once for the module."""
    where = tmp_path_factory.mktemp("wheels")
    fetched = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                              "--dest", str(where), SUPERVISORD], capture_output=True, text=True, timeout=600)
    if fetched.returncode != 0:
        pytest.skip(f"cannot fetch {SUPERVISORD} from the package registry: {fetched.stderr.strip()[-300:]}")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "--wheel-dir", str(where), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    return where


def _install_supervisord(env: Path, wheels: Path) -> None:
    done = _pip(env, "install", "--no-deps", "--no-index", "--find-links", str(wheels), SUPERVISORD)
    assert done.returncode == 0, done.stderr


def _install_agentd(env: Path, wheels: Path) -> None:
    done = _pip(env, "install", "--no-deps", "--ignore-installed", "--no-index", "--find-links", str(wheels), "agentd")
    assert done.returncode == 0, done.stderr


def _both_work(env: Path) -> None:
    bin_dir = env / "bin"
    for argv in (["agentd", "--help"], ["agentctl", "--help"], ["agentctl", "--run-dir", str(env), "status"]):
        run = subprocess.run([str(bin_dir / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=60)
        assert "Traceback" not in run.stderr, f"{argv}: {run.stderr}"
        assert run.returncode in (0, 3), f"{argv}: rc {run.returncode}: {run.stderr}"  # 3: daemon not running
    version = subprocess.run([str(bin_dir / "supervisord"), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("4.3"), version.stderr
    # cwd: not the checkout, whose own supervisor/ folder would be imported instead of the installed ones
    imports = subprocess.run([str(bin_dir / "python"), "-c", "import supervisor.parent.daemon, supervisor.options"],
                             capture_output=True, text=True, timeout=60, cwd=env)
    assert imports.returncode == 0, imports.stderr


def test_supervisord_installed_after_agentd(env: Path, wheels: Path) -> None:
    _install_agentd(env, wheels)
    _install_supervisord(env, wheels)
    _both_work(env)


def test_agentd_installed_after_supervisord(env: Path, wheels: Path) -> None:
    _install_supervisord(env, wheels)
    _install_agentd(env, wheels)
    _both_work(env)


def test_supervisord_beside_an_editable_agentd(env: Path, wheels: Path) -> None:
    done = _pip(env, "install", "--no-deps", "--no-build-isolation", "--editable", str(ROOT))
    assert done.returncode == 0, done.stderr
    _install_supervisord(env, wheels)
    _both_work(env)
