"""agentd's own directories, checked before use: never one that another user controls.

agentd runs as root. A run_dir, data_dir or log_dir that another non-root user owns, or that anyone may
write to, lets that user plant symlinks or files that root then follows, overwrites or chowns. So an
existing directory is used as it is (never chmod-ed: a shared directory keeps its mode and sticky bit)
only when root or agentd's own user owns it and it is not world-writable; otherwise agentd refuses with
one line (docs/operations.md).
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path


class UnsafePath(ValueError):
    """A directory agentd will not use; the message is one line for the operator."""


def _owner(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def check_dir(path: Path, what: str) -> None:
    """Refuse an existing directory that another non-root user owns, or a world-writable one."""
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{what} {path} is not a directory")
    if st.st_uid not in (0, os.geteuid()):
        raise UnsafePath(f"{what} {path} is owned by {_owner(st.st_uid)}, not by root or agentd's user; refusing to use it")
    if st.st_mode & stat.S_IWOTH:
        raise UnsafePath(f"{what} {path} is world-writable (mode {stat.S_IMODE(st.st_mode):04o}); give agentd a directory of its own")


def prepare_dir(path: Path, what: str, mode: int) -> None:
    """Create `path` with `mode` if missing (parents as usual), else check it as it is."""
    path = Path(path)
    if not path.exists():
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)  # only a directory we just created: the umask must not decide
    check_dir(path, what)
