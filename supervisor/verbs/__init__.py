"""Control verbs: one module per verb, each holding its argument and result models and its handler.

A verb module defines NAME, HELP, `Args` and `Result` (pydantic models) and
`async def handle(daemon, args) -> Result`. agentctl imports the same models to build requests and
read replies, so sender and receiver cannot drift apart.
"""

from __future__ import annotations

from types import ModuleType

from . import events, history, logs, metrics, ping, reload, restart, send_signal, shutdown, snapshot, start, status, stop, top, version, workers

VERBS: dict[str, ModuleType] = {m.NAME: m for m in (ping, version, status, start, stop, restart, send_signal, reload, logs, events, shutdown, snapshot, workers, top, history, metrics)}
