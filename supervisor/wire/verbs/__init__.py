"""Every control verb's contract: one module per verb with NAME, `Args` and `Result` (pydantic models).

The parent's handler (supervisor/parent/verbs/<verb>.py) validates requests into `Args` and answers with
`Result`; workers (`WorkerLink.call`, workers/link.py) and agentctl (`Ctx.call`, supervisor/ctl/cli_context.py)
send the same `Args` and validate the reply into the same `Result`, so sender and receiver cannot drift apart. See docs/architecture.md, "Control protocol".
"""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel


class VerbContract(Protocol):
    """A verb's module here: its name and its argument and result models."""

    NAME: str
    Args: type[BaseModel]
    Result: type[BaseModel]
