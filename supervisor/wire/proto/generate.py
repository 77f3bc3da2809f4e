"""Regenerate the Python gRPC modules from the .proto files beside this script.

Usage: python -m supervisor.wire.proto.generate [--check]   (--check: compare with the committed files, change nothing)
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.metadata
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
# protoc runs with the repository root as its include path, so the generated imports read
# "from supervisor.wire.proto import x_pb2" and need no post-processing to work inside the package.
ROOT = PROTO_DIR.parents[2]
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
# Output embeds the protoc and grpc versions, so only this version regenerates byte-identical files.
PINNED_GRPCIO_TOOLS = "1.85.1"


def proto_files() -> list[Path]:
    """The .proto sources, in a stable order."""
    return sorted(PROTO_DIR.glob("*.proto"))


def expected_outputs() -> list[str]:
    """Names of the generated files the sources produce."""
    return sorted(p.stem + suffix for p in proto_files() for suffix in GENERATED_SUFFIXES)


def committed_outputs() -> list[str]:
    """Names of the generated files currently next to the sources."""
    return sorted(p.name for p in PROTO_DIR.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def tools_version() -> str:
    """Installed grpcio-tools version, or "" when it is missing."""
    try:
        return importlib.metadata.version("grpcio-tools")
    except importlib.metadata.PackageNotFoundError:
        return ""


def run_protoc(out_root: Path) -> None:
    """Generate into out_root/supervisor/proto/; raise RuntimeError if protoc fails."""
    from grpc_tools import protoc  # imported late so --help works without grpcio-tools

    import importlib.resources

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    (out_root / PROTO_DIR.relative_to(ROOT)).mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(str(p) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed (its messages are above)")


def check() -> list[str]:
    """Generate into a temp dir; return one line per generated file that differs from, or is missing in, the tree."""
    problems = []
    with tempfile.TemporaryDirectory(prefix="agentd-proto-") as tmp:
        run_protoc(Path(tmp))
        fresh_dir = Path(tmp) / PROTO_DIR.relative_to(ROOT)
        for name in expected_outputs():
            committed = PROTO_DIR / name
            if not committed.exists():
                problems.append(f"missing: {committed.relative_to(ROOT)}")
            elif not filecmp.cmp(fresh_dir / name, committed, shallow=False):
                problems.append(f"differs: {committed.relative_to(ROOT)}")
    for name in sorted(set(committed_outputs()) - set(expected_outputs())):
        problems.append(f"stale (no .proto for it): {(PROTO_DIR / name).relative_to(ROOT)}")
    return problems


def generate() -> list[str]:
    """Regenerate in place and delete generated files whose .proto is gone; return the files written."""
    run_protoc(ROOT)
    for name in sorted(set(committed_outputs()) - set(expected_outputs())):
        (PROTO_DIR / name).unlink()
    return [str((PROTO_DIR / name).relative_to(ROOT)) for name in expected_outputs()]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; exit 0 on success, 1 when --check finds differences, 2 when it cannot run."""
    parser = argparse.ArgumentParser(prog="python -m supervisor.wire.proto.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare a fresh generation with the committed files")
    opts = parser.parse_args(argv)

    version = tools_version()
    if not version:
        print(f"grpcio-tools is not installed: pip install 'grpcio-tools=={PINNED_GRPCIO_TOOLS}'", file=sys.stderr)
        return 2
    if version != PINNED_GRPCIO_TOOLS:
        print(
            f"warning: grpcio-tools {version} is installed but the committed modules come from {PINNED_GRPCIO_TOOLS};"
            " the output will differ in its version lines",
            file=sys.stderr,
        )
    try:
        if opts.check:
            problems = check()
        else:
            for path in generate():
                print(f"wrote {path}")
            return 0
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if problems:
        print("generated protobuf modules are out of date (run: python -m supervisor.wire.proto.generate):", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"ok: {len(expected_outputs())} generated files match {len(proto_files())} .proto files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
