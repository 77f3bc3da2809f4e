"""Configuration: the YAML schema, its units, error wording and the original daemon's keys
(docs/configuration.md)."""
