"""`logs ID [-n N] [-f] [--grep RE] [--since T] [--until T]`: an agent's log: tail, follow, or search."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME = "logs"


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    lines: int = Field(default=50, ge=0, le=100_000)
    offset: int | None = Field(default=None, ge=0)  # follow mode: bytes already seen
    max_bytes: int = Field(default=256 * 1024, ge=1, le=4 * 1024 * 1024)
    grep: str | None = Field(default=None, max_length=1000)  # a Python regular expression
    since: float | None = None  # wall clock (epoch seconds)
    until: float | None = None

    @field_validator("grep")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value


class Result(BaseModel):
    path: str
    text: str
    offset: int  # pass back as `offset` to get what comes next
    rotated: bool = False
    searched: list[str] | None = None  # with grep/since/until: the files read, oldest first
    skipped_files: int = 0  # files left out: over the search's byte budget
