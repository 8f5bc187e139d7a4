"""Benchmarks of specae (run from the repository root as `python -m benchmarks.<script>`); not installed."""
