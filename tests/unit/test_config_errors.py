"""supervisor/config/errors.py: the one translator of pydantic errors, for config files and control replies."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

from supervisor.config.agent import AgentDefaults
from supervisor.config.errors import describe_validation_error, explain, unknown_key
from supervisor.config.fields import Lower, is_loopback
from supervisor.config.units import Duration


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str] = []
    wait: bool = True
    timeout: Duration = 10.0


def _error(model: type[BaseModel], data: object) -> ValidationError:
    try:
        model.model_validate(data)
    except ValidationError as exc:
        return exc
    raise AssertionError(f"{data!r} validated")


def test_a_control_reply_is_worded_as_a_config_file_problem():
    assert describe_validation_error(_error(_Args, {"ids": 5})) == "ids: expected a list, got 5"
    assert describe_validation_error(_error(_Args, {"ids": [1, None]})) == "ids[0]: expected a string, got 1; ids[1]: must not be null"
    assert describe_validation_error(_error(_Args, [1])) == "expected a mapping, got a list"


def test_an_unknown_key_gets_a_suggestion_when_the_model_is_known():
    exc = _error(_Args, {"idz": []})
    assert describe_validation_error(exc) == "unknown key 'idz'"
    assert describe_validation_error(exc, model=_Args) == "unknown key 'idz' (did you mean 'ids'?)"


def test_at_most_limit_problems_then_how_many_more():
    exc = _error(_Args, {"a": 1, "b": 2, "c": 3})
    assert describe_validation_error(exc, limit=2) == "unknown key 'a'; unknown key 'b'; and 1 more"


def test_unknown_key_lists_few_known_keys_and_suggests_close_ones():
    assert unknown_key("retires", ["retries", "policy"]) == "unknown key 'retires' (did you mean 'retries'?)"
    assert unknown_key("zzz", ["a", "b"]) == "unknown key 'zzz' (known keys: a, b)"
    assert unknown_key("zzz", [f"k{i}" for i in range(11)]) == "unknown key 'zzz'"


def test_a_refused_key_says_where_it_belongs():
    err = _error(AgentDefaults, {"id": "x"}).errors(include_url=False)[0]
    assert explain(AgentDefaults, "agent_defaults", err) == ("agent_defaults", "'id' cannot be set in agent_defaults (each agent needs its own)")


def test_lower_takes_any_case_and_spacing_before_the_choice():
    from typing import Annotated, Literal

    class M(BaseModel):
        mode: Annotated[Literal["auto", "off"], Lower] = "auto"

    assert M(mode=" OFF ").mode == "off"
    assert "must be one of 'auto' or 'off'" in describe_validation_error(_error(M, {"mode": "on"}))


def test_loopback_is_localhost_and_loopback_addresses_only():
    assert all(is_loopback(h) for h in ("localhost", "127.0.0.1", "127.9.9.9", "::1"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "example.com", "::"))


def test_loopback_covers_peer_addresses_too():
    # What getpeername gives on a dual-stack socket, and a scoped IPv6 address: one rule for config and peers.
    assert is_loopback("::ffff:127.0.0.1") and is_loopback("::1%lo")
    assert not is_loopback("::ffff:10.0.0.1") and not is_loopback("fe80::1%eth0")
