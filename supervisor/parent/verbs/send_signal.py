"""`signal ID...|--all SIG`: send a signal to agents' main processes (or whole trees), e.g. HUP to reload.

The signal goes through the process's pidfd where agentd holds one, so a pid that was reused by another
program can never receive it. A signal that makes the agent exit is an exit like any other: the restart
policy applies (use `stop` to stop an agent).
"""

from __future__ import annotations

import logging
import signal as signal_mod

from supervisor.common.metadata_store import iso_utc
from supervisor.wire.states import PROCESS_STATES
from supervisor.wire.verbs.send_signal import NAME, Args, Result, SignalOutcome  # noqa: F401  (the verb's contract, for the dispatch)
from supervisor.parent.verbs.context import VerbContext


log = logging.getLogger(__name__)


async def handle(ctx: VerbContext, args: Args) -> Result:
    signum = int(signal_mod.Signals[args.signal])
    out = []
    for agent in ctx.registry.select(args.ids, args.all):
        handle = agent.handle
        if handle is None or agent.state not in PROCESS_STATES or handle.exited:
            out.append(SignalOutcome(id=agent.spec.id, ok=False, pid=None, message=f"not running ({agent.state.value})"))
            continue
        try:
            if args.tree:
                ctx.signals.signal_tree(handle, signum)
            else:
                ctx.signals.signal_main(handle, signum)
        except OSError as exc:
            out.append(SignalOutcome(id=agent.spec.id, ok=False, pid=handle.pid, message=f"cannot signal: {exc.strerror or exc}"))
            continue
        whom = "its process tree" if args.tree else f"pid {handle.pid}"
        note = f"{args.signal} sent to {whom} by operator"
        log.info("%s: %s", agent.spec.id, note)
        state = agent.state.value
        ctx.events.append(iso_utc(), agent.spec.id, state, state, note)  # in `events`, beside the transitions
        out.append(SignalOutcome(id=agent.spec.id, ok=True, pid=handle.pid, message=f"{args.signal} sent to {whom}"))
    return Result(signal=args.signal, results=out)
