"""agentd parent process: registry, lifecycle, metadata, control."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1  # of the control envelope (supervisor/wire/protocol.py); here so that agentctl needs no pydantic for it
