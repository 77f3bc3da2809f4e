"""The control envelope shared by agentctl, workers and the parent: request, reply, typed error.

Each verb's own argument and result models live in `supervisor/wire/verbs/<verb>.py`; this module is the
frame around them. Everything travels as one JSON object per ZeroMQ message.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from supervisor.wire.version import PROTOCOL_VERSION

__all__ = ["PROTOCOL_VERSION", "MAX_MESSAGE_BYTES", "ErrorCode", "ControlError", "Request", "ErrorInfo", "Reply", "error_reply"]
MAX_MESSAGE_BYTES = 1 << 20  # larger control messages are refused unread


class ErrorCode:
    """Typed error codes; agentctl maps them to exit codes and messages."""

    BAD_REQUEST = "bad_request"
    UNKNOWN_VERB = "unknown_verb"
    NOT_FOUND = "not_found"
    INVALID_CONFIG = "invalid_config"
    FAILED = "failed"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"
    UNSUPPORTED_VERSION = "unsupported_version"
    BUSY = "busy"  # back-pressure: too many requests in progress (from this client, or in all); retry later


class ControlError(Exception):
    """Raised by a verb handler to answer with a typed error instead of a result."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Request(BaseModel):
    """One control request: which verb, its arguments, an id the reply echoes."""

    model_config = ConfigDict(extra="forbid")
    v: int = PROTOCOL_VERSION
    id: str = Field(min_length=1, max_length=64)
    verb: str = Field(min_length=1, max_length=64)
    args: dict[str, Any] = Field(default_factory=dict)


class ErrorInfo(BaseModel):
    """A typed error: a machine-readable code and a sentence for people."""

    code: str
    message: str


class Reply(BaseModel):
    """The answer to a Request: a result or an error, never both."""

    v: int = PROTOCOL_VERSION
    id: str | None
    ok: bool
    result: dict[str, Any] | None = None
    error: ErrorInfo | None = None


def error_reply(request_id: str | None, code: str, message: str) -> Reply:
    """Build a failed Reply."""
    return Reply(id=request_id, ok=False, error=ErrorInfo(code=code, message=message))
