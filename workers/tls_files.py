"""TLS certificate files for the Manager link and the Manager API: read them or say exactly why not."""

from __future__ import annotations

from pathlib import Path

from workers.runner import StartupError


def read_pem(section: str, name: str, path: Path | None) -> bytes | None:
    """The file's bytes (None when not configured); StartupError when unreadable or not PEM."""
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise StartupError(f"{section}.tls.{name}: cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise StartupError(f"{section}.tls.{name}: {path} is not a PEM file")
    return data
