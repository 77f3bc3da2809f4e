"""The node id reported to the Manager: `daemon.id`, else a UUID generated once in data_dir/node_id."""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from pathlib import Path

log = logging.getLogger(__name__)


def node_id(configured: str | None, data_dir: Path) -> str:
    """The configured id, or the one stored in data_dir/node_id (created atomically on first use)."""
    if configured:
        return configured
    path = Path(data_dir) / "node_id"
    try:
        stored = path.read_text().strip()
        if stored:
            return stored
        log.warning("%s is empty; generating a new node id", path)
    except FileNotFoundError:
        pass
    new = str(uuid.uuid4())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".node_id.", suffix=".tmp")
    except OSError as exc:  # a full or read-only data_dir at the very first start
        raise ValueError(f"cannot store the node id in {path}: {exc.strerror or exc} (free space in data_dir, or set daemon.id)") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(new + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ValueError(f"cannot store the node id in {path}: {exc.strerror or exc} (free space in data_dir, or set daemon.id)") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("generated node id %s (stored in %s)", new, path)
    return new
