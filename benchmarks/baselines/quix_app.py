"""Quix Streams baseline: a per-message ``StreamingDataFrame.update`` with the same decode.

Quix Streams 3.x pins confluent-kafka below 2.13 while driftline needs 2.16 for the
embedded broker: install it beside driftline with ``pip install --no-deps
'quixstreams==3.28.1' rocksdict jsonlines jsonpath-ng && pip install authlib cachetools``,
or run this file with another virtualenv's Python.
"""

from __future__ import annotations

import logging

from quixstreams import Application

try:
    from driftline.benchmarks.baselines.common import PerEventStep, Reporter, RowWindow, base_parser
except ImportError:  # run by path in a separate virtualenv
    from common import PerEventStep, Reporter, RowWindow, base_parser  # type: ignore[no-redef]


def main() -> None:
    a = base_parser(__doc__ or "").parse_args()
    rep, win = Reporter(), RowWindow(a.features)
    app = Application(
        broker_address=a.bootstrap,
        consumer_group=a.group,
        auto_offset_reset="earliest",
        auto_create_topics=False,
        use_changelog_topics=False,
        loglevel=logging.WARNING,
        # the raw baseline's fetch setting, so the comparison is about the engine
        consumer_extra_config={"fetch.queue.backoff.ms": 10, "session.timeout.ms": 6000,
                               "heartbeat.interval.ms": 1000},
    )
    topic = app.topic(a.topic, key_deserializer="bytes", value_deserializer="bytes")
    sdf = app.dataframe(topic)
    sdf.update(PerEventStep(rep, win, a.events, "quixstreams per-message"))
    rep.line("ready")
    app.run()


if __name__ == "__main__":
    main()
