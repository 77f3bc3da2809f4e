"""How deeply a JSON document from outside may nest, checked on its bytes before json.loads sees them.

json.loads and pydantic recurse once per level; a document nested past the interpreter's stack ended in
RecursionError, which once took a whole pytest run down with it ("AST constructor recursion depth
mismatch"). Every ingress surface that parses JSON (HTTP and Unix heartbeats, the control socket, metadata
files) runs `check_depth` first instead (docs/threat-model.md).
"""

from __future__ import annotations

import json
from itertools import accumulate

# No document agentd reads nests deeper than 4 (a batch of heartbeats, a control request's params, a
# metadata record); 64 leaves agents' own fields room while staying far below the interpreter's recursion
# limit (1000) less the frames of the caller, of json and of pydantic's validators.
MAX_JSON_DEPTH = 64

# What is left of a text for the depth: its quotes, to tell strings apart, and its brackets.
_NOT_QUOTES_OR_BRACKETS = bytes(b for b in range(256) if b not in b'"[]{}')
_PARENS = bytes.maketrans(b"[{]}", b"(())")
PASSES = 8  # innermost-pair removals before walking what is left (a real document is flat after 2-4)


class JsonTooDeep(ValueError):
    """A document nests deeper than the bound; `reason` is the typed reason to answer or log with."""

    reason = "nested_too_deeply"

    def __init__(self, limit: int) -> None:
        super().__init__(f"nested deeper than {limit} levels")
        self.limit = limit


def check_depth(data: bytes | bytearray, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise JsonTooDeep if the JSON text `data` nests more than `limit` arrays or objects inside each other.

    Exact for JSON; for text that is not, it may also say too deep where json.loads would stop at a syntax
    error, never the other way. Two `count`s when the text opens at most `limit` brackets (every heartbeat
    and control request); else C-speed passes over its brackets outside strings (docs/performance.md)."""
    if data.count(b"{") + data.count(b"[") <= limit:
        return
    if 0 in data[:4]:  # UTF-16 or UTF-32, which json.loads takes too: a quote byte could be half a character
        try:
            data = data.decode(json.detect_encoding(data)).encode("utf-8", "surrogatepass")
        except (UnicodeError, LookupError):
            return  # json.loads cannot decode it either
    # Escaped backslashes first, then escaped quotes: every '"' left opens or closes a string (UTF-8 never has
    # a '"' or '\\' byte inside a multi-byte character), so every other piece between quotes is outside one.
    text = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_QUOTES_OR_BRACKETS)
    nest = b"".join(text.split(b'"')[::2]).translate(_PARENS)
    # Each pass drops every innermost pair, so the depth of what is left falls by exactly one (at most one
    # for text that is not JSON): after k passes a run of limit + 1 - k openers means too deep.
    for k in range(PASSES):
        if b"(" * (limit + 1 - k) in nest:
            raise JsonTooDeep(limit)
        inner = nest.replace(b"()", b"")
        if len(inner) == len(nest):
            return  # nothing left, or only brackets that do not pair and no long run (json.loads words it)
        nest = inner
    # A walk over what is left, rarely reached: C-speed, linear in the brackets still there.
    if max(accumulate(memoryview(nest.translate(_STEPS)).cast("b")), default=0) > limit - PASSES:
        raise JsonTooDeep(limit)


_STEPS = bytes.maketrans(b"()", b"\x01\xff")  # +1, -1 as signed bytes
