"""The layering rule of docs/architecture.md ("Layers"), read from the imports of every module.

Workers and agentctl import only the shared contract (supervisor.wire), configuration (supervisor.config)
and common code (supervisor.common), never the parent; the shared layers import no role above them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Which top-level packages each layer may import from this project.
ALLOWED = {
    "supervisor.wire": {"supervisor.wire"},
    "supervisor.common": {"supervisor.wire", "supervisor.common"},
    "supervisor.config": {"supervisor.wire", "supervisor.common", "supervisor.config"},
    "supervisor.ctl": {"supervisor.wire", "supervisor.common", "supervisor.config", "supervisor.ctl"},
    "workers": {"supervisor.wire", "supervisor.common", "supervisor.config", "workers"},
    "supervisor.parent": {"supervisor.wire", "supervisor.common", "supervisor.config", "supervisor.parent"},
}

def layer_of(module: str) -> str | None:
    """The layer a dotted module name belongs to, or None for the package roots (supervisor, workers)."""
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> list[tuple[int, str]]:
    """Every project module a file imports (absolute, or relative resolved), with its line."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in ("supervisor", "workers")]


def sources() -> list[Path]:
    return sorted(p for top in ("supervisor", "workers") for p in (ROOT / top).rglob("*.py") if "_pb2" not in p.name)


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layers(path: Path) -> None:
    own = layer_of(module_name(path))
    if own is None:
        return  # supervisor/__init__.py, workers/__init__.py: version constants only
    wrong: dict[int, str] = {}
    for line, name in imported(path):
        target = layer_of(name)
        if target is not None and target not in ALLOWED[own] and line not in wrong:
            wrong[line] = f"{path.relative_to(ROOT)}:{line} imports {name}: {own} may import only {sorted(ALLOWED[own])}"
    assert not wrong, "\n".join(wrong.values())


def test_every_module_is_in_a_layer() -> None:
    loose = [str(p.relative_to(ROOT)) for p in sources()
             if layer_of(module_name(p)) is None and p.name != "__init__.py"]
    assert not loose, f"modules outside every layer: {loose}"
