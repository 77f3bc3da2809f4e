"""check_depth (supervisor/common/json_limits.py) against the real depth of what json.loads reads."""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import given, settings, strategies as st

from supervisor.common.json_limits import MAX_JSON_DEPTH, JsonTooDeep, check_depth

# Strings full of what could fool a byte scan: brackets, quotes, backslashes, escapes, non-ASCII.
tricky_text = st.text(alphabet=st.sampled_from(list('[]{}"\\\\/ aé\u2028\U0001f600')), max_size=12)
leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | tricky_text
documents = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(tricky_text, inner, max_size=3),
                         max_leaves=40)


def depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


def nest(value: object, levels: int, kind: str) -> object:
    for _ in range(levels):
        value = [value] if kind == "list" else {"k[\"{": value}
    return value


@settings(max_examples=300, deadline=None)
@given(documents, st.integers(0, 100), st.sampled_from(["list", "dict"]), st.sampled_from(["utf-8", "utf-16", "utf-32"]),
       st.booleans())
def test_too_deep_exactly_when_json_nests_past_the_limit(doc, extra, kind, encoding, ascii_only):
    value = nest(doc, extra, kind)
    data = json.dumps(value, ensure_ascii=ascii_only).encode(encoding)
    too_deep = depth(value) > MAX_JSON_DEPTH
    if too_deep:
        with pytest.raises(JsonTooDeep):
            check_depth(data)
    else:
        check_depth(data)


@given(st.binary(max_size=300))
def test_any_bytes_either_pass_or_raise_the_typed_error(data):
    try:
        check_depth(data, limit=3)
    except JsonTooDeep as exc:
        assert exc.reason == "nested_too_deeply"


def test_nesting_past_the_interpreter_stack_is_refused_before_json_sees_it():
    data = b"[" * (sys.getrecursionlimit() * 10) + b"]" * (sys.getrecursionlimit() * 10)
    with pytest.raises(JsonTooDeep):
        check_depth(data)
    check_depth(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)  # at the limit: allowed
    with pytest.raises(JsonTooDeep):
        check_depth(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1))
