"""Pydantic validation errors turned into one line a person can act on: for config files and for control
replies alike (no URLs, no dumps; docs/configuration.md, docs/agentd.md "check-config")."""

from __future__ import annotations

import difflib
import re
from types import NoneType, UnionType
from typing import Annotated, Any, Callable, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from supervisor.config.units import describe_value

__all__ = ["ConfigError", "Problems", "clean_loc", "describe_validation_error", "explain", "unknown_key"]


class ConfigError(Exception):
    """A config file is unusable; `.problems` lists every problem as "<file>: <path>: <problem>"."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


_TYPE_WORDS = {
    "float": "a number",
    "int": "an integer",
    "bool": "true or false",
    "string": "a string",
    "list": "a list",
    "dict": "a mapping",
    "model": "a mapping",
    "model_attributes": "a mapping",
    "path": "a path",
}
_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", "≥"),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "≤"),
}
_UNION_TAG = re.compile(r"^[a-z][a-z0-9_-]*\[.*\]$")


def clean_loc(loc: tuple) -> tuple:
    """The error's location as the user wrote it."""
    # pydantic adds tags such as "[key]" or "function-after[...]" that mean nothing to a user.
    return tuple(p for p in loc if isinstance(p, int) or (p != "[key]" and not _UNION_TAG.match(p)))


def _join_path(prefix: str, loc: tuple) -> str:
    path = prefix
    for part in loc:
        path = f"{path}[{part}]" if isinstance(part, int) else (f"{path}.{part}" if path else str(part))
    return path


def _unwrap(tp: Any) -> Any:
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, UnionType):
            rest = [a for a in get_args(tp) if a is not NoneType]
            if len(rest) != 1:
                return tp
            tp = rest[0]
        else:
            return tp


def _fields_at(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """Field names of the model found at `loc` below `model`, for "did you mean" suggestions."""
    if model is None:
        return []
    tp: Any = model
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return []
            tp = field.annotation
        elif get_origin(tp) is list and isinstance(part, int):
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            return []
    tp = _unwrap(tp)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def unknown_key(key: Any, known: list[str]) -> str:
    """"unknown key 'x'", with the closest known key or, when there are few, all of them."""
    message = f"unknown key {describe_value(str(key))}"
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    if close:
        return f"{message} (did you mean {close[0]!r}?)"
    if known and len(known) <= 10:
        return f"{message} (known keys: {', '.join(known)})"
    return message


def explain(model: type[BaseModel] | None, prefix: str, err: dict) -> tuple[str, str]:
    """(path, problem) for one pydantic error of `model` (None: unknown), its path below `prefix`."""
    loc = clean_loc(tuple(err["loc"]))
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "extra_forbidden":
        refused = getattr(model, "refused_keys", {}).get(loc[0]) if len(loc) == 1 else None
        if refused is not None:
            return prefix, refused
        return _join_path(prefix, loc[:-1]), unknown_key(loc[-1], _fields_at(model, loc[:-1]))
    path = _join_path(prefix, loc)
    if kind == "missing":
        return path, "is required"
    if value is None:
        return path, "must not be null"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return path, str(ctx["error"])
    if kind in _BOUNDS:
        key, symbol = _BOUNDS[kind]
        return path, f"must be {symbol} {describe_value(ctx.get(key))}, got {describe_value(value)}"
    if kind == "int_from_float":
        return path, f"expected an integer, got {describe_value(value)}"
    if kind == "literal_error":
        return path, f"must be one of {ctx.get('expected')}, got {describe_value(value)}"
    if kind == "too_short":
        minimum = ctx.get("min_length", 1)
        return path, "must not be empty" if minimum == 1 else f"needs at least {minimum} items"
    if kind == "too_long":
        return path, f"allows at most {ctx.get('max_length')} items"
    if kind == "finite_number":
        return path, "must be a finite number"
    base = kind.removesuffix("_type").removesuffix("_parsing")
    if base != kind and base in _TYPE_WORDS:
        return path, f"expected {_TYPE_WORDS[base]}, got {describe_value(value)}"
    return path, str(err.get("msg", kind)).splitlines()[0]


class Problems:
    """Problems grouped by top-level key, so they come out in the order of the file."""

    def __init__(self, source: str):
        self.source = source
        self.by_key: dict[str, list[str]] = {}

    def add(self, key: str, path: str, problem: str) -> None:
        line = f"{self.source}: {path}: {problem}" if path else f"{self.source}: {problem}"
        self.by_key.setdefault(key, []).append(line)

    def add_validation(self, key: str, prefix: str, model: type[BaseModel], error: ValidationError,
                       skip: Callable[[tuple], bool] | None = None) -> None:
        for err in error.errors(include_url=False):
            if skip is None or not skip(clean_loc(tuple(err["loc"]))):
                self.add(key, *explain(model, prefix, err))

    def __bool__(self) -> bool:
        return bool(self.by_key)

    def ordered(self, key_order: list[str]) -> list[str]:
        keys = [k for k in key_order if k in self.by_key] + [k for k in self.by_key if k not in key_order]
        return [line for k in keys for line in self.by_key[k]]


def describe_validation_error(exc: ValidationError, limit: int = 5, model: type[BaseModel] | None = None) -> str:
    """'ids[0]: expected a string, got 5; unknown key 'x'' — at most `limit` problems, worded as in config files."""
    errors = exc.errors(include_url=False)
    parts = []
    for err in errors[:limit]:
        path, problem = explain(model, "", err)
        parts.append(f"{path}: {problem}" if path else problem)
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more")
    return "; ".join(parts)
