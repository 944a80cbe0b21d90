"""What every baseline process shares: the per-event decode and the stdout protocol.

Imports only the standard library, numpy and orjson, so a baseline can also run in a
separate virtualenv (e.g. one holding an engine whose pins clash with driftline's).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Any

import numpy as np
import orjson

__all__ = ["PerEventStep", "Reporter", "RowWindow", "base_parser", "consumer_settings", "cpu_seconds"]


class RowWindow:
    """A ring of numpy rows; :meth:`add` decodes one single-event message into the next row.

    This is the per-event work of every baseline: ``orjson.loads`` and the feature values
    copied into a preallocated float64 row.
    """

    __slots__ = ("_loads", "buf", "mask", "n")

    def __init__(self, width: int = 20, size: int = 4096) -> None:
        if size & (size - 1):
            raise ValueError("size must be a power of two")
        self.buf = np.zeros((size, width))
        self.mask = size - 1
        self.n = 0
        self._loads = orjson.loads

    def add(self, value: bytes) -> None:
        self.buf[self.n & self.mask] = list(self._loads(value)["features"].values())
        self.n += 1


class Reporter:
    """JSON lines on stdout: ``progress`` (throttled) and one final ``result``."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self._next = 0.0
        self._lock = threading.Lock()
        self.t_first: float | None = None
        self.cpu_first = 0.0

    def first(self) -> None:
        """Mark the first event (once): its time and the process's CPU seconds so far."""
        if self.t_first is None:
            self.t_first = time.monotonic()
            self.cpu_first = cpu_seconds()

    def line(self, kind: str, **fields: Any) -> None:
        with self._lock:
            sys.stdout.write(orjson.dumps({"kind": kind, **fields}).decode() + "\n")
            sys.stdout.flush()

    def progress(self, n: int, **fields: Any) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval
            self.line("progress", n=n, t=now, **fields)

    def result(self, n: int, t_first: float | None, t_last: float | None, **fields: Any) -> None:
        eps = n / (t_last - t_first) if t_first is not None and t_last and t_last > t_first else 0.0
        if self.t_first is not None:  # CPU of the whole process (all threads) while consuming
            fields.setdefault("cpu_s", cpu_seconds() - self.cpu_first)
        self.line("result", n=n, t_first=t_first, t_last=t_last, eps=eps, pid=os.getpid(), **fields)


class PerEventStep:
    """The per-event callback of a per-message engine: decode the value into the window,
    report progress, and end the process with the result once ``target`` events are in."""

    def __init__(self, rep: Reporter, win: RowWindow, target: int, engine: str) -> None:
        self.rep, self.win, self.target, self.engine = rep, win, target, engine

    def __call__(self, value: bytes) -> None:
        rep = self.rep
        if rep.t_first is None:
            rep.first()
        self.win.add(value)
        n = self.win.n
        rep.progress(n)
        if n >= self.target:
            rep.result(n, rep.t_first, time.monotonic(), engine=self.engine)
            sys.stdout.flush()
            os._exit(0)


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--events", type=int, required=True, help="stop after this many events")
    p.add_argument("--group", default=f"bench-{os.getpid()}")
    p.add_argument("--features", type=int, default=20)
    return p


def consumer_settings(bootstrap: str, group: str) -> dict[str, Any]:
    """librdkafka settings of the raw baseline (fast fetch queue, as measured in DESIGN §7)."""
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        "fetch.queue.backoff.ms": 10,
    }
