"""agentd parent process: registry, lifecycle, metadata, control."""

__version__ = "0.1.0"
