"""`signal ID...|--all SIG`: send a signal to agents' main processes (or whole trees), e.g. HUP to reload."""

from __future__ import annotations

import signal as signal_mod

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME = "signal"


def parse_signal(text: str | int) -> int:
    """'HUP', 'SIGHUP', 'hup' or '1' -> 1; ValueError with the reason otherwise."""
    raw = str(text).strip()
    if raw.isdigit():
        num = int(raw)
        valid = {int(s) for s in signal_mod.valid_signals()}
        if num == 0 or num not in valid:
            raise ValueError(f"{raw} is not a signal number (1-{max(valid)})")
        return num
    name = raw.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return int(signal_mod.Signals[name])
    except KeyError:
        raise ValueError(f"unknown signal {raw!r} (try HUP, USR1, USR2, TERM, INT, KILL or a number)") from None


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[str] = Field(default_factory=list)
    all: bool = False
    signal: str
    tree: bool = False  # every process of the agent, not only its main process

    @field_validator("signal")
    @classmethod
    def _known(cls, value: str) -> str:
        return signal_mod.Signals(parse_signal(value)).name


class SignalOutcome(BaseModel):
    id: str
    ok: bool
    pid: int | None
    message: str


class Result(BaseModel):
    signal: str
    results: list[SignalOutcome]
