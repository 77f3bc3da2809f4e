"""The contract shared by the parent, the workers and agentctl: control envelope, worker messages, agent
states, ZeroMQ endpoints and the gRPC definitions (docs/architecture.md, "Layers")."""
