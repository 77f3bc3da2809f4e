"""Messages between the parent and its zygote on their private SEQPACKET socket pair (docs/decisions.md,
"Worker memory: a zygote"). One datagram per message; a spawn request carries its descriptors by
SCM_RIGHTS, in the order of `fds`.
"""

from __future__ import annotations

from pydantic import BaseModel


class ZygoteSetup(BaseModel):
    """The parent's first message, once it has read its config: what to import, how to log."""

    preload: list[str]
    log_level: str
    log_format: str


class ZygoteReady(BaseModel):
    """Sent once, when the zygote has imported what its workers share and can fork them."""

    pid: int
    preloaded: list[str]
    failed: dict[str, str] = {}  # module -> why its import failed (the worker imports it itself)


class SpawnRequest(BaseModel):
    """Fork a worker that runs `module`'s main(argv) (`workers.<kind>`) with `env`; the descriptors sent
    with the request are dup2'd onto the numbers in `fds` (the ones argv names), every other one is closed."""

    name: str
    module: str
    argv: list[str]
    env: dict[str, str]
    fds: list[int]


class SpawnReply(BaseModel):
    """The worker's pid (by then a child of the parent, not of the zygote), or why there is none."""

    pid: int | None = None
    error: str | None = None
