"""Benchmarks of driftline against its baselines, run by `driftline bench`."""
