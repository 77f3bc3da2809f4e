"""Mechanisms used by more than one role: logging, time and size formatting, Prometheus text, process
table and cgroups, the pid file, the metadata files (docs/architecture.md, "Layers")."""
