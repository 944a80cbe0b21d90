"""Baseline consumers and runners of the throughput and scaling benchmarks.

Every baseline runs in its own process (``python -m driftline.benchmarks.baselines.<name>``)
and does the same work per event: ``orjson.loads`` of a single InferenceEvent and its 20
feature values copied into a row of a numpy window (:class:`.common.RowWindow`). Each
reports JSON lines on stdout (:class:`.common.Reporter`): progress while it runs, then one
result with the first and last event's ``time.monotonic()`` (system-wide, so times of
several processes compare).
"""
