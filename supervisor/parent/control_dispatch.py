"""One control request to one verb: version check, argument validation, error wording (docs/architecture.md, "Control protocol").

The verbs get the narrow interface they need (`VerbContext`), never the daemon.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from supervisor.config.errors import describe_validation_error
from supervisor.parent.shutdown import Shutdown
from supervisor.parent.verbs import VERBS
from supervisor.wire.protocol import PROTOCOL_VERSION, ControlError, ErrorCode, Reply, Request, error_reply

log = logging.getLogger("supervisor.parent.daemon")  # the parent's log lines keep their logger name


async def dispatch(request: Request, context, shutdown: Shutdown) -> Reply:
    """Run the verb `request` names with `context`; every failure is a reply, never an exception."""
    if request.v != PROTOCOL_VERSION:
        return error_reply(request.id, ErrorCode.UNSUPPORTED_VERSION, f"protocol version {request.v} is not supported (agentd speaks {PROTOCOL_VERSION}); use the agentctl that came with this agentd")
    verb = VERBS.get(request.verb)
    if verb is None:
        return error_reply(request.id, ErrorCode.UNKNOWN_VERB, f"unknown command '{request.verb}'; known: {', '.join(sorted(VERBS))}")
    if shutdown.refuses(request.verb):
        return error_reply(request.id, ErrorCode.SHUTTING_DOWN, "agentd is shutting down")
    try:
        args = verb.Args.model_validate(request.args)
    except ValidationError as exc:
        return error_reply(request.id, ErrorCode.BAD_REQUEST, f"{request.verb}: {describe_validation_error(exc)}")
    try:
        result = await verb.handle(context, args)
    except ControlError as exc:
        return error_reply(request.id, exc.code, exc.message)
    except Exception:
        log.exception("control: %s failed", request.verb)
        return error_reply(request.id, ErrorCode.INTERNAL, f"internal error while running '{request.verb}'; see the agentd log")
    return Reply(id=request.id, ok=True, result=result.model_dump(mode="json"))
