from __future__ import annotations

import logging

import pytest

from driftline.streams.throttle import LogThrottle, ThrottledLog


def test_ready_once_per_period_and_first_at_once() -> None:
    now = [5.0]  # a clock that starts below the period (a fresh machine's monotonic clock)
    t = LogThrottle(60.0, clock=lambda: now[0])
    seen = []
    for step in range(130):
        now[0] = 5.0 + step
        seen.append(t.ready())
    assert [i for i, ok in enumerate(seen) if ok] == [0, 60, 120]


def test_librdkafka_lines_of_one_facility_once_a_minute_with_the_count_held_back(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    sink = ThrottledLog(logging.getLogger("driftline.test.rdkafka"), clock=lambda: now[0])
    with caplog.at_level(logging.DEBUG, logger="driftline.test.rdkafka"):
        for step in range(130):  # a reconnect failure every second, and debug lines
            now[0] = float(step)
            sink.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1",
                     "Connect to ipv4#127.0.0.1:9 failed: Connection refused")
            sink.log(logging.WARNING, "%s [%s] %s", "REQTMOUT", "rdkafka#producer-1", "timeout")
            sink.log(logging.DEBUG, "%s [%s] %s", "BROKER", "rdkafka#producer-1", "state")
    lines = [r.getMessage() for r in caplog.records]
    fail = [m for m in lines if m.startswith("FAIL")]
    assert len(fail) == 3 and "more like it" not in fail[0]
    assert fail[1].endswith("(59 more like it in the last 60 s)")
    assert len([m for m in lines if m.startswith("REQTMOUT")]) == 3
    assert len([m for m in lines if m.startswith("BROKER")]) == 130  # below WARNING: all


def test_the_sdk_client_logs_through_the_throttle_and_counts_client_errors() -> None:
    """No broker at the address: librdkafka reports errors, counted in stats()."""
    import time

    from driftline.streams.producer import DriftlineProducer

    p = DriftlineProducer("127.0.0.1:9")
    try:
        assert isinstance(p._client_config("127.0.0.1:9", None)["logger"], ThrottledLog)
        end = time.monotonic() + 30
        while p.stats().client_errors == 0 and time.monotonic() < end:
            time.sleep(0.1)
        assert p.stats().client_errors > 0
    finally:
        p.close(timeout=0.1)
