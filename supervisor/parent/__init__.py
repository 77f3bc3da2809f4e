"""The parent daemon: the loop, the registry and lifecycle of agents, the stores, the worker pool and the
control verbs. Nothing outside this package imports it (docs/architecture.md, "Layers")."""
