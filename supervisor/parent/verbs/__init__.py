"""Control verbs' handlers: one module per verb, `async def handle(ctx: VerbContext, args: Args) -> Result`.

A handler gets `context.VerbContext`, exactly what verbs use of the parent, never the daemon.

Each module imports NAME, `Args` and `Result` from its contract in supervisor/wire/verbs/<verb>.py, which
workers and agentctl call through too (docs/architecture.md, "Control protocol").
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
