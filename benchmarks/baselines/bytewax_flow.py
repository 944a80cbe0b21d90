"""Bytewax 0.21 baseline: ``KafkaSource`` (one consumer per partition, 1,000-message polls),
a per-item ``map`` doing the same decode, a sink that drops the items.

``tail=False``: the dataflow ends at the end of every partition. With ``--processes 2``
run one process per ``--process-id`` (0, 1) with the same ``--addresses``.
"""

from __future__ import annotations

import time
from typing import Any

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSource
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.run import cli_main
from confluent_kafka import OFFSET_BEGINNING

try:
    from driftline.benchmarks.baselines.common import Reporter, RowWindow, base_parser
except ImportError:  # run by path in a separate virtualenv
    from common import Reporter, RowWindow, base_parser  # type: ignore[no-redef]


class _Drop(StatelessSinkPartition[Any]):
    def write_batch(self, items: list[Any]) -> None:
        pass


class NullSink(DynamicSink[Any]):
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Drop:
        return _Drop()


def main() -> None:
    p = base_parser(__doc__ or "")
    p.add_argument("--process-id", type=int, default=None)
    p.add_argument("--addresses", default=None, help="host:port;host:port of every process")
    a = p.parse_args()
    rep, win = Reporter(), RowWindow(a.features)
    state: dict[str, float | None] = {"first": None, "last": None}

    def decode(msg: Any) -> None:
        if state["first"] is None:
            rep.first()
            state["first"] = rep.t_first
        win.add(msg.value)
        state["last"] = time.monotonic()
        rep.progress(win.n)

    flow = Dataflow("driftline_bench")
    src = KafkaSource([a.bootstrap], [a.topic], tail=False, starting_offset=OFFSET_BEGINNING,
                      add_config={"fetch.queue.backoff.ms": "10"}, batch_size=1000)
    items = op.input("in", flow, src)
    op.output("out", op.map("decode", items, decode), NullSink())
    rep.line("ready")
    if a.process_id is None:
        cli_main(flow, workers_per_process=1)
    else:
        cli_main(flow, workers_per_process=1, process_id=a.process_id,
                 addresses=a.addresses.split(";"))
    rep.result(win.n, state["first"], state["last"], engine="bytewax 0.21 KafkaSource")


if __name__ == "__main__":
    main()
