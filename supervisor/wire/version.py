"""agentd's version and the control envelope's protocol version, with no imports, so agentctl's quick path
can send them without pydantic.

They live here, not in supervisor/__init__.py, because supervisord's package is also named `supervisor`:
installed into the same environment it overwrites that file, and agentd must keep working
(docs/decisions.md, "The import name `supervisor`").
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1  # of the control envelope (supervisor/wire/protocol.py)
