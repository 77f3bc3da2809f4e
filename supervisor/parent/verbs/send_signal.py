"""`signal ID...|--all SIG`: send a signal to agents' main processes (or whole trees), e.g. HUP to reload.

The signal goes through the process's pidfd where agentd holds one, so a pid that was reused by another
program can never receive it. A signal that makes the agent exit is an exit like any other: the restart
policy applies (use `stop` to stop an agent).
"""

from __future__ import annotations

import logging
import signal as signal_mod

from pydantic import BaseModel, ConfigDict, Field, field_validator

from supervisor.common.metadata_store import iso_utc
from supervisor.wire.states import PROCESS_STATES

log = logging.getLogger(__name__)

NAME = "signal"
HELP = "Send a signal to agents' main processes (or whole trees with --tree)."


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


async def handle(daemon, args: Args) -> Result:
    signum = int(signal_mod.Signals[args.signal])
    out = []
    for agent in daemon.registry.select(args.ids, args.all):
        handle = agent.handle
        if handle is None or agent.state not in PROCESS_STATES or handle.exited:
            out.append(SignalOutcome(id=agent.spec.id, ok=False, pid=None, message=f"not running ({agent.state.value})"))
            continue
        try:
            if args.tree:
                daemon.ops.signal_tree(handle, signum)
            else:
                daemon.ops.signal_main(handle, signum)
        except OSError as exc:
            out.append(SignalOutcome(id=agent.spec.id, ok=False, pid=handle.pid, message=f"cannot signal: {exc.strerror or exc}"))
            continue
        whom = "its process tree" if args.tree else f"pid {handle.pid}"
        note = f"{args.signal} sent to {whom} by operator"
        log.info("%s: %s", agent.spec.id, note)
        state = agent.state.value
        daemon.events.append(iso_utc(), agent.spec.id, state, state, note)  # in `events`, beside the transitions
        out.append(SignalOutcome(id=agent.spec.id, ok=True, pid=handle.pid, message=f"{args.signal} sent to {whom}"))
    return Result(signal=args.signal, results=out)
