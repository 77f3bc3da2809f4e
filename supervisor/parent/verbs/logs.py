"""`logs ID [-n N] [-f] [--grep RE] [--since T] [--until T]`: an agent's log: tail, follow, or search.

A search (grep or a time bound) reads the rotated copies too (supervisor/common/log_reading.py). An agent no longer
configured can still be read while its log directory exists (retention removes it after log.max_age).
"""

from __future__ import annotations

import asyncio
import re

from supervisor.common.log_reading import read_log
from supervisor.wire.protocol import ControlError, ErrorCode
from supervisor.wire.verbs.logs import NAME, Args, Result  # noqa: F401  (the verb's contract, for the dispatch)
from supervisor.parent.verbs.context import VerbContext


def _safe_id(agent_id: str) -> bool:
    # A removed agent's id names a directory: never let it climb out of log_dir.
    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", agent_id) is not None and ".." not in agent_id


async def handle(ctx: VerbContext, args: Args) -> Result:
    path = ctx.log_path(args.id)
    if ctx.registry.find(args.id) is None and not (_safe_id(args.id) and path.parent.is_dir()):
        ctx.registry.get(args.id)  # not configured and no logs left: the usual not_found
    if args.since is not None and args.until is not None and args.since > args.until:
        raise ControlError(ErrorCode.BAD_REQUEST, "--since is after --until")
    # File reads can be slow on a loaded disk; keep them off the event loop.
    return await asyncio.get_running_loop().run_in_executor(None, read_log, path, args)
