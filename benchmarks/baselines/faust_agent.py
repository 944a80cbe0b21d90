"""Faust baseline: a plain faust-streaming agent, one message per event, the same decode.

Faust quirks (DESIGN §6): it binds its web port even with the web disabled, so each run
gets its own; it does not exit on SIGTERM, so the agent ends the process itself
(``os._exit``) once it has seen ``--events`` events, after printing its result.
"""

from __future__ import annotations

import logging

import faust

try:
    from driftline.benchmarks.baselines.common import PerEventStep, Reporter, RowWindow, base_parser
except ImportError:  # run by path in a separate virtualenv
    from common import PerEventStep, Reporter, RowWindow, base_parser  # type: ignore[no-redef]


def main() -> None:
    p = base_parser(__doc__ or "")
    p.add_argument("--web-port", type=int, required=True)
    p.add_argument("--partitions", type=int, default=8)
    a = p.parse_args()
    rep, win = Reporter(), RowWindow(a.features)
    app = faust.App(
        a.group,
        broker=f"kafka://{a.bootstrap}",
        web_port=a.web_port,
        web_enabled=False,
        web_host="127.0.0.1",
        store="memory://",
        topic_partitions=a.partitions,
        topic_disable_leader=True,
        topic_allow_declare=False,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
    )
    topic = app.topic(a.topic, key_type=bytes, value_type=bytes, value_serializer="raw",
                      key_serializer="raw", partitions=a.partitions)
    step = PerEventStep(rep, win, a.events, "faust-streaming agent")

    @app.agent(topic)
    async def decode(stream):  # type: ignore[no-untyped-def]
        async for value in stream:
            step(value)

    @app.task
    async def ready() -> None:
        rep.line("ready")

    logging.basicConfig(level=logging.WARNING)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
