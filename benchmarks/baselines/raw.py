"""Raw baseline: confluent-kafka ``consume()`` in batches + the per-event decode.

The upper bound of any Python consumer on this machine: no framework, no validation,
no windows; ``fetch.queue.backoff.ms=10`` (DESIGN §7: ~3x the default setting).
"""

from __future__ import annotations

import time

from confluent_kafka import Consumer

try:
    from driftline.benchmarks.baselines.common import (
        Reporter,
        RowWindow,
        base_parser,
        consumer_settings,
    )
except ImportError:  # run by path in a separate virtualenv
    from common import Reporter, RowWindow, base_parser, consumer_settings  # type: ignore[no-redef]


def main() -> None:
    p = base_parser(__doc__ or "")
    p.add_argument("--batch", type=int, default=2000, help="messages per consume() call")
    a = p.parse_args()
    rep, win = Reporter(), RowWindow(a.features)
    c = Consumer(consumer_settings(a.bootstrap, a.group))
    c.subscribe([a.topic])
    rep.line("ready")
    add = win.add
    t_first = t_last = None
    n = errors = 0
    try:
        while n < a.events:
            msgs = c.consume(a.batch, 1.0)
            if not msgs:
                continue
            if t_first is None:
                rep.first()
                t_first = rep.t_first
            for m in msgs:
                if m.error() is not None:
                    errors += 1
                    continue
                add(m.value())
            n = win.n
            t_last = time.monotonic()
            rep.progress(n)
        rep.result(n, t_first, t_last, errors=errors, engine="raw confluent-kafka")
    finally:
        c.close()


if __name__ == "__main__":
    main()
