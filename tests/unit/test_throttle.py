from __future__ import annotations

from driftline.streams.throttle import LogThrottle


def test_ready_once_per_period_and_first_at_once() -> None:
    now = [5.0]  # a clock that starts below the period (a fresh machine's monotonic clock)
    t = LogThrottle(60.0, clock=lambda: now[0])
    seen = []
    for step in range(130):
        now[0] = 5.0 + step
        seen.append(t.ready())
    assert [i for i, ok in enumerate(seen) if ok] == [0, 60, 120]
