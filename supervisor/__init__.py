"""agentd: the parent daemon, agentctl and what they share, in subpackages by role (docs/architecture.md).

Deliberately empty: supervisord's package has the same import name and its installer overwrites this
file; with nothing here, both keep working side by side (docs/decisions.md, "The import name `supervisor`").
"""
