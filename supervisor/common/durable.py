"""Making a create, rename or unlink in a directory survive a crash: fsync the directory itself, after the
file's own fsync (the metadata store and the log rotation both rely on it; docs/architecture.md)."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """fsync `directory`, so the names it holds are on disk, not only the files' data."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
