"""Property tests for the parsers an outsider can reach (issue 8): the heartbeat parser and the control
request parser, fed arbitrary JSON (surrogates, control characters, huge integers, deep nesting, wrong
types). No exception escapes but the typed rejection, every rejection says why, and whatever is
accepted can be sent on (the lone surrogate that wedged an intake could not be)."""

from __future__ import annotations

import json
import os
import time

import pydantic_core
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from supervisor.parent.control_server import BadRequest, parse_request
from supervisor.wire.messages import AgentView, Heartbeat
from supervisor.wire.protocol import Reply
from workers.agent_directory import AgentDirectory
from workers.heartbeat_rules import HeartbeatRejected, decode_json, parse_heartbeat, parse_time, parse_time_general
from workers.http_connection import HttpConnection, bearer_token

NASTY_TEXT = ["\ud800", "\udfff", "\x00", "\x1b[2J", "\x1b]0;t\x07", "\u202e", "\u200b", "\x7f", "\x85", "é", "🙂", ""]
FIELDS = ["agent_id", "pid", "timestamp", "status", "version", "cpu", "memory", "token", "generation"]

texts = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(NASTY_TEXT) | st.text(max_size=5), max_size=6).map("".join),
    st.text(min_size=250, max_size=300),
)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.just(2**31), st.just(2**63), st.just(10**4000),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4), max_leaves=12)
heartbeat_like = st.dictionaries(st.sampled_from(FIELDS) | texts, values, max_size=8)


def _dumps(obj: object) -> bytes:
    # ensure_ascii writes a lone surrogate as the \ud800 escape, exactly what a hostile client sends.
    return json.dumps(obj, allow_nan=True).encode()


raw_json = st.one_of(
    heartbeat_like.map(_dumps),
    values.map(_dumps),
    st.integers(1, 30_000).map(lambda n: b"[" * n + b"]" * n),  # deeper than the interpreter's stack
    st.integers(1, 30_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(4000, 6000).map(lambda n: b'{"agent_id": "a", "pid": 1, "memory": ' + b"9" * n + b"}"),
    st.binary(max_size=200),
)

AGENT = AgentView(id="a", type="custom", state="running", pid=os.getpid(), generation=3)
DIRECTORY = AgentDirectory(lambda: {"a": AGENT})
PROFILE = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _rejection_is_typed(exc: HeartbeatRejected) -> None:
    assert exc.status in (400, 401, 404) and exc.reason and exc.message.strip()
    json.dumps({"message": exc.message})  # a reply can always carry it
    assert len(exc.message) < 4000  # a 4000-digit number is named by its size, never echoed


def _accepted_can_be_forwarded(fields: dict) -> None:
    pydantic_core.to_json(fields)  # what the link does at submit: this raised for "\ud800"
    Heartbeat(**{"agent_id": "a", **fields})  # the socket path names the agent by peer credentials instead
    for key in ("status", "version"):
        if key in fields:
            assert fields[key].isprintable() and len(fields[key]) <= 256


@PROFILE
@given(raw_json, st.booleans())
def test_heartbeat_parser_answers_every_input(data, agent_id_required):
    try:
        doc = decode_json(data)
    except HeartbeatRejected as exc:
        _rejection_is_typed(exc)
        return
    try:
        fields = parse_heartbeat(doc, agent_id_required=agent_id_required, received_at=time.time())
    except HeartbeatRejected as exc:
        _rejection_is_typed(exc)
        return
    _accepted_can_be_forwarded(fields)


# Texts built from JSON's own tokens and its near misses, so most are almost-JSON: where a fast parser and
# json.loads could disagree (whitespace json does not allow, NaN spellings, number shapes, escapes).
_TOKENS = ['{', '}', '[', ']', ',', ':', '"', '\\', '"a"', '"\\u00e9"', '"\\ud800"', '"\\udc00"', '\\u', 'u0041',
           '1', '-', '0', '01', '.', '5', 'e', 'E', '+', '1e400', '-1e-400', '9' * 30, '0.1', 'true', 'false', 'null',
           'NaN', '-NaN', 'nan', 'Infinity', '-Infinity', 'inf', ' ', '\t', '\n', '\r', '\x0c', '\x0b', '\xa0',
           '\u2028', '\x00', '\x1f', '\x7f', 'é', '\ufeff']
near_json = st.one_of(
    st.lists(st.sampled_from(_TOKENS), max_size=30).map(lambda parts: "".join(parts).encode("utf-8", "surrogatepass")),
    st.tuples(st.sampled_from(["", " ", "\t\n", "\x0c", "\ufeff"]), values.map(_dumps), st.sampled_from(["", " \r\n", "\x0b", "x"]))
    .map(lambda t: t[0].encode() + t[1] + t[2].encode()),
    st.floats(allow_nan=False).map(lambda f: repr(f).encode()),
    st.from_regex(r"-?(0|[1-9][0-9]{0,400})(\.[0-9]{1,400})?([eE][+-]?[0-9]{1,4})?", fullmatch=True).map(str.encode),
)


def _same(a: object, b: object) -> bool:
    """Equal as JSON values, telling NaN, -0.0, 1 and 1.0, and True and 1 apart."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return repr(a) == repr(b)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


@PROFILE
@given(raw_json | near_json)
def test_fast_json_decoding_answers_exactly_as_json_does(data):
    """decode_json's jiter fast path: every input gets the value, or the error message, json.loads gives."""
    def outcome(fast: bool):
        try:
            return True, decode_json(data, fast=fast)
        except HeartbeatRejected as exc:
            return False, exc.message
    fast, reference = outcome(True), outcome(False)
    assert fast[0] == reference[0] and _same(fast[1], reference[1]), (data, fast, reference)


authorization_values = st.one_of(
    st.binary(max_size=40),
    st.tuples(st.sampled_from([b"Bearer", b"bearer", b"BEARER", b"Basic", b"Bearer\t", b"", b" Bearer"]),
              st.sampled_from([b" ", b"  ", b"\t", b"\xa0", b""]), st.binary(max_size=20),
              st.sampled_from([b"", b" ", b"\xa0", b"\x85", b" x"])).map(b"".join),
)


@PROFILE
@given(authorization_values)
def test_authorization_fast_path_reads_the_token_as_the_general_parse_does(value):
    """HttpConnection.on_header's shortcut for "Bearer <token>" gives exactly bearer_token's answer."""
    conn = HttpConnection.__new__(HttpConnection)  # on_header needs no loop, server or transport
    conn.token = "unset"
    conn.on_header(b"Authorization", value)
    assert conn.token == bearer_token(value), value


def _two(low: int, high: int) -> st.SearchStrategy[str]:
    return st.integers(low, high).map(lambda n: f"{n:02d}")


# Timestamps near the shape the fast path takes, and every way off it: other separators and zones, a comma
# or empty fraction, too many digits, non-ASCII digits, days and hours that do not exist, leap seconds.
timestamp_parts = st.tuples(
    st.sampled_from(["2024", "0000", "0001", "9999", "1970", "٢٠٢٤", "20", "+2024"]), st.sampled_from(["-", "", "/"]),
    _two(0, 13), st.sampled_from(["-", ""]), _two(0, 32),
    st.sampled_from(["T", "t", " ", "_", "\ud800"]), _two(0, 25), st.sampled_from([":", ""]), _two(0, 61),
    st.sampled_from([":", ""]), _two(0, 61),
    st.sampled_from(["", ".", ".5", ".25", ".123456", ".1234567", ".000000001", ",5", ".5a", ".٥", "..5"]),
    st.sampled_from(["", "Z", "z", "+02:30", "-05:00", "+24:00", "-23:59", "+0200", "+02", "+02:30:00", "-00:00", "+02:3", "Z\n", "ZZ"]),
).map("".join)


@st.composite
def timestamps(draw) -> str:
    text = draw(timestamp_parts)
    if text and draw(st.booleans()):  # one character replaced anywhere
        at = draw(st.integers(0, len(text) - 1))
        text = text[:at] + draw(st.characters()) + text[at + 1:]
    return text


@settings(PROFILE, max_examples=500)
@given(timestamps() | st.sampled_from(["2024-03-01T12:00:00", "2024-03-01 12:00:00"]).flatmap(
    lambda start: st.tuples(st.just(start), st.sampled_from(["", ".", ".5", ".1234567", ",5"]),
                            st.sampled_from(["Z", "+02:30", "+0200", ""]))).map("".join) | st.text(max_size=40))
@example("2024-03-01T12:00:00.Z")  # fromisoformat takes an empty fraction
@example("2024-03-01T12:00:00,5Z")
@example("2024-03-01T12:00:00.1234567Z")
@example("2016-12-31T23:59:60Z")
@example("2024-03-01T12:00:00.5+02:3Z")
def test_timestamp_fast_path_reads_every_time_as_the_general_parse_does(text):
    """parse_time's fromisoformat shortcut accepts what the general RFC 3339 parse does, as the same instant."""
    fast, reference = parse_time(text), parse_time_general(text)
    if reference is None:
        assert fast is None, (text, fast)
    else:
        assert fast is not None and abs(fast - reference) < 1e-6, (text, fast, reference)


@PROFILE
@given(heartbeat_like, st.sampled_from([None, "tok"]), st.sampled_from([None, os.getpid(), 1]))
def test_directory_check_answers_every_heartbeat(doc, token, peer_pid):
    try:
        fields = DIRECTORY.check(doc, agent_id_required=peer_pid is None, token=token, peer_pid=peer_pid, received_at=time.time())
    except HeartbeatRejected as exc:
        _rejection_is_typed(exc)
        return
    _accepted_can_be_forwarded(fields)
    assert fields["agent_id"] == "a" and fields["generation"] == 3


request_like = st.fixed_dictionaries(
    {}, optional={"v": values, "id": values | texts, "verb": values | texts, "args": values | st.dictionaries(texts, values, max_size=3)}
)
raw_requests = st.one_of(
    request_like.map(_dumps),
    values.map(_dumps),
    st.integers(1, 30_000).map(lambda n: b'{"id": "x", "verb": "status", "args": {"a": ' + b"[" * n + b"]" * n + b"}}"),
    st.integers(4300, 9000).map(lambda n: b'{"id": "x", "verb": "status", "args": {"a": ' + b"1" * n + b"}}"),
    st.binary(max_size=200),
)


@PROFILE
@given(raw_requests)
def test_control_request_parser_answers_every_payload(payload):
    try:
        request = parse_request(payload)
    except BadRequest as exc:
        assert exc.message.strip()
        Reply(id=exc.request_id, ok=False).model_dump_json()  # the echoed id can always be sent back
        return
    assert 1 <= len(request.id) <= 64 and 1 <= len(request.verb) <= 64
    Reply(id=request.id, ok=True, result={}).model_dump_json()
