"""gRPC wire definitions shared with the Manager (.proto sources and their generated Python modules)."""
