"""Control verbs: one module per verb, each holding its argument and result models and its handler.

A verb module defines NAME, HELP, `Args` and `Result` (pydantic models) and
`async def handle(daemon, args) -> Result`. agentctl imports the same models to build requests and
read replies, so sender and receiver cannot drift apart.
"""

from __future__ import annotations

from types import ModuleType

from supervisor.parent.verbs import events
from supervisor.parent.verbs import history
from supervisor.parent.verbs import logs
from supervisor.parent.verbs import metrics
from supervisor.parent.verbs import ping
from supervisor.parent.verbs import reload
from supervisor.parent.verbs import restart
from supervisor.parent.verbs import send_signal
from supervisor.parent.verbs import shutdown
from supervisor.parent.verbs import snapshot
from supervisor.parent.verbs import start
from supervisor.parent.verbs import status
from supervisor.parent.verbs import stop
from supervisor.parent.verbs import top
from supervisor.parent.verbs import version
from supervisor.parent.verbs import workers

VERBS: dict[str, ModuleType] = {m.NAME: m for m in (ping, version, status, start, stop, restart, send_signal, reload, logs, events, shutdown, snapshot, workers, top, history, metrics)}
