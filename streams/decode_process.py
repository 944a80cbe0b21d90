"""Decoding inference messages in a child process, one batch ahead of the processor.

Decoding and validating single JSON events is about half of a worker's CPU time; a
:class:`DecodeProcess` runs :func:`~driftline.schemas.codecs.decode_inference` in a child
interpreter (started with ``spawn``: the worker's librdkafka threads must not be forked),
so the worker applies batch *k* while the child decodes batch *k+1* on another core.

Only bytes cross the pipe, framed by :mod:`driftline.schemas.decoded_frames` (never
pickled). The child answers requests in order. A request whose answer cannot be had (the
child died, or raised) gives ``None`` from :meth:`DecodeProcess.result`, and the caller
decodes that batch itself: the result is the same either way, only slower. After
``MAX_FAILURES`` failures in a row the worker stops starting children and decodes in
its own process.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import threading
import traceback
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict
from multiprocessing.connection import Connection
from typing import Any

from driftline.schemas.codecs import decode_inference
from driftline.schemas.decoded_frames import (
    decode_batches,
    decode_messages,
    encode_batches,
    encode_messages,
)
from driftline.schemas.limits import Limits
from driftline.schemas.models import DecodeResult

__all__ = ["MAX_FAILURES", "DecodeProcess"]

log = logging.getLogger(__name__)

MAX_FAILURES = 3
_OK, _FAILED = b"R", b"E"


def _serve(conn: Connection, limits: dict[str, Any], topic: str) -> None:
    """The child: decode each request frame, answer in order; an empty frame stops it.

    A reader thread takes requests off the pipe while the main thread decodes, so the
    parent can send the next batch while this one's answer is being written (with both
    sides writing frames larger than the pipe buffer, neither would otherwise read)."""
    lim = Limits(**limits)
    requests: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    def read() -> None:
        try:
            while True:
                frame = conn.recv_bytes()
                requests.put(frame)
                if not frame:
                    return
        except (EOFError, OSError):
            requests.put(b"")

    threading.Thread(target=read, name="decode-requests", daemon=True).start()
    while frame := requests.get():
        try:
            values, parts, offs, stamps = decode_messages(frame)
            out = _OK + encode_batches(decode_inference(
                values, limits=lim, topic=topic, partitions=parts, offsets=offs,
                timestamps=stamps))
        except Exception:  # answered, never fatal: the worker decodes this batch itself
            out = _FAILED + traceback.format_exc(limit=5).encode()
        try:
            conn.send_bytes(out)
        except (BrokenPipeError, OSError):
            return


class DecodeProcess:
    """A child process decoding inference batches for one worker, in order."""

    def __init__(self, limits: Limits, topic: str, *, name: str = "driftline-decode") -> None:
        self.limits, self.topic, self.name = limits, topic, name
        self._conn: Connection | None = None
        self._proc: Any = None
        self._generation = 0  # of the running child: tickets of an older one are lost
        self._pending: deque[int] = deque()  # tickets sent and not yet answered, in order
        self._next = 0
        self.failures = 0  # in a row; at MAX_FAILURES no more children are started
        self.restarts = 0

    @property
    def usable(self) -> bool:
        return self.failures < MAX_FAILURES

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=_serve, args=(child, asdict(self.limits), self.topic),
                           name=self.name, daemon=True)
        proc.start()
        child.close()
        self._conn, self._proc = parent, proc
        self._generation += 1
        self._pending.clear()

    def submit(self, values: Sequence[bytes], partitions: Sequence[int],
               offsets: Sequence[int], timestamps: Sequence[float]) -> tuple[int, int] | None:
        """Send a batch to be decoded; its ticket, or None when no child can take it."""
        if not self.usable:
            return None
        try:
            if self._conn is None:
                self._start()
            assert self._conn is not None
            self._conn.send_bytes(encode_messages(values, partitions, offsets, timestamps))
        except (OSError, ValueError) as exc:
            self._failed(f"could not send a batch: {exc}")
            return None
        self._next += 1
        self._pending.append(self._next)
        return self._generation, self._next

    def result(self, ticket: tuple[int, int] | None) -> DecodeResult | None:
        """The decoded batch of ``ticket`` (the oldest one pending), or None when it was
        lost (the child died or failed): the caller then decodes the batch itself."""
        if ticket is None or ticket[0] != self._generation or not self._pending:
            return None
        if self._pending[0] != ticket[1]:
            raise RuntimeError(f"decode results are taken in order: {ticket[1]} before "
                               f"{self._pending[0]}")
        self._pending.popleft()
        assert self._conn is not None
        try:
            frame = self._conn.recv_bytes()
        except (EOFError, OSError) as exc:
            self._failed(f"the decode process ended ({exc!r}, exit code "
                         f"{self._proc.exitcode if self._proc else None})")
            return None
        if frame[:1] != _OK:
            self._failed("the decode process failed on a batch: "
                         + frame[1:].decode("utf-8", "replace")[-2000:])
            return None
        try:
            out = decode_batches(frame[1:])
        except (ValueError, KeyError, TypeError) as exc:
            self._failed(f"unreadable answer from the decode process: {exc!r}")
            return None
        self.failures = 0
        return out

    def discard(self) -> None:
        """Forget every pending batch (their messages will be read again)."""
        while self._pending:
            ticket = (self._generation, self._pending[0])
            self.result(ticket)

    def _failed(self, why: str) -> None:
        self.failures += 1
        log.error("%s; decoding in the worker's process%s", why,
                  "" if self.usable else f" from now on ({self.failures} failures in a row)")
        self._stop_child()
        if self.usable:
            self.restarts += 1

    def _stop_child(self) -> None:
        conn, proc, self._conn, self._proc = self._conn, self._proc, None, None
        self._pending.clear()
        self._generation += 1
        if conn is not None:
            try:
                conn.send_bytes(b"")
            except OSError:
                pass
            conn.close()
        if proc is not None:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)

    def close(self) -> None:
        """Stop the child (pending batches are forgotten)."""
        self._stop_child()
