"""``ncli measure``: feature file -> Neural Collapse metrics (docs/metrics.md)."""
