"""agentctl and the clients of the control socket and the heartbeat intake (docs/agentctl.md)."""
