"""agentd worker processes, one module per worker kind."""
