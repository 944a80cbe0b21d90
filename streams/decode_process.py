"""Decoding inference messages in a child process, one batch ahead of the processor.

Decoding and validating single JSON events is about half of a worker's CPU time; a
:class:`DecodeProcess` runs :func:`~driftline.schemas.codecs.decode_inference` in a child
interpreter (``python -m driftline.streams.decode_process``: a new process, never a fork
of the worker's librdkafka threads, and independent of the program that embeds the
worker), so the worker applies batch *k* while the child decodes batch *k+1* on another
core.

Only bytes cross the child's stdin and stdout, as length-prefixed frames of
:mod:`driftline.schemas.decoded_frames` (never pickled). The child answers requests in
order. A request whose answer cannot be had (the child died, or raised) gives ``None``
from :meth:`DecodeProcess.result`, and the caller decodes that batch itself: the result
is the same either way, only slower. After ``MAX_FAILURES`` failures in a row the worker
stops starting children and decodes in its own process.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import select
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict
from typing import IO

import orjson

from driftline.schemas.codecs import decode_inference
from driftline.schemas.decoded_frames import (
    decode_batches,
    decode_messages,
    encode_batches,
    encode_messages,
)
from driftline.schemas.limits import Limits
from driftline.schemas.models import DecodeResult

__all__ = ["MAX_FAILURES", "DecodeProcess", "usable_cpus", "wanted"]

log = logging.getLogger(__name__)

MAX_FAILURES = 3
#: where a CPU quota is: cgroup v2 (quota and period in one file), cgroup v1
CGROUP_CPU_FILES: tuple[tuple[str, str | None], ...] = (
    ("/sys/fs/cgroup/cpu.max", None),
    ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"))
ANSWER_TIMEOUT_S = 120.0  # a child silent this long on a pending batch is replaced
PIPE_BYTES = 8 << 20  # pipe size asked for (capped by /proc/sys/fs/pipe-max-size)
_OK, _FAILED = b"R", b"E"
_LEN = struct.Struct("<Q")  # the length of the frame that follows
_CPU = struct.Struct("<d")  # the child's CPU seconds so far, at the head of each answer


def _write(out: IO[bytes], frame: bytes) -> None:
    out.write(_LEN.pack(len(frame)))
    out.write(frame)
    out.flush()


def usable_cpus() -> float:
    """CPUs this process may use: its CPU affinity, capped by a cgroup CPU quota (a
    container's CPU limit, cgroup v2 or v1)."""
    n: float = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    for quota_file, period_file in CGROUP_CPU_FILES:
        try:
            with open(quota_file) as f:
                fields = f.read().split()
            if period_file is not None:
                with open(period_file) as f:
                    fields = [fields[0], f.read().strip()]
            if fields[0] not in ("max", "-1"):
                n = min(n, int(fields[0]) / int(fields[1]))
            break
        except (OSError, ValueError, IndexError):
            continue
    return n


def wanted(setting: str) -> bool:
    """Whether a worker runs a decode process: ``on``, ``off``, or ``auto`` (when it may
    use at least 2 CPUs; with one, the two processes would take turns on it)."""
    if setting == "auto":
        return usable_cpus() >= 2
    return setting == "on"


def _grow_pipe(f: IO[bytes] | None) -> None:
    """Make a pipe hold a whole batch (Linux; up to the system's limit, 1 MiB by
    default): a writer that need not wait for the reader to drain it chunk by chunk
    does not wait for the reader's thread to get the GIL 64 KiB at a time."""
    if f is None or not hasattr(fcntl, "F_SETPIPE_SZ"):
        return
    try:
        with open("/proc/sys/fs/pipe-max-size") as limit:
            size = min(int(limit.read()), PIPE_BYTES)
        fcntl.fcntl(f.fileno(), fcntl.F_SETPIPE_SZ, size)
    except (OSError, ValueError):
        pass  # the default size works, only slower


def _read(fd: int, timeout: float | None = None) -> bytes:
    """The next frame from a pipe (its file descriptor: read directly, never through a
    buffered reader), within ``timeout`` seconds (TimeoutError; None: no limit);
    EOFError at its end. The worker waits with a limit: a child that stops answering
    must not stall it for good."""
    deadline = None if timeout is None else time.monotonic() + timeout

    def exactly(n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    raise TimeoutError(f"no answer within {timeout:g} s")
            chunk = os.read(fd, min(n - got, PIPE_BYTES))
            if not chunk:
                raise EOFError("decode pipe closed")
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    (size,) = _LEN.unpack(exactly(_LEN.size))
    return exactly(size)


def _serve(inp: int, out: IO[bytes], limits: Limits, topic: str) -> None:
    """The child: decode each request frame, answer in order; an empty frame (or the end
    of its input) stops it.

    A reader thread takes requests off the pipe while the main thread decodes, so the
    parent can send the next batch while this one's answer is being written (with both
    sides writing frames larger than the pipe buffer, neither would otherwise read)."""
    t = os.times()
    start = t.user + t.system  # what starting took is not decoding
    inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    def read() -> None:
        try:
            while frame := _read(inp):
                inbox.put(frame)
        except (EOFError, OSError):
            pass
        inbox.put(b"")

    threading.Thread(target=read, name="decode-requests", daemon=True).start()
    while frame := inbox.get():
        try:
            values, parts, offs, stamps = decode_messages(frame)
            answer = _OK + encode_batches(decode_inference(
                values, limits=limits, topic=topic, partitions=parts, offsets=offs,
                timestamps=stamps))
        except Exception:  # answered, never fatal: the worker decodes this batch itself
            answer = _FAILED + traceback.format_exc(limit=5).encode()
        t = os.times()
        try:
            _write(out, answer[:1] + _CPU.pack(t.user + t.system - start) + answer[1:])
        except OSError:
            return


def main() -> None:
    """``python -m driftline.streams.decode_process LIMITS_JSON TOPIC``."""
    limits = Limits(**orjson.loads(sys.argv[1]))
    # answers go to the original stdout; anything else printed there goes to stderr
    out = os.fdopen(os.dup(1), "wb", buffering=1 << 20)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _serve(sys.stdin.fileno(), out, limits, sys.argv[2])


class DecodeProcess:
    """A child process decoding inference batches for one worker, in order."""

    def __init__(self, limits: Limits, topic: str, *,
                 answer_timeout_s: float = ANSWER_TIMEOUT_S) -> None:
        self.limits, self.topic, self.answer_timeout_s = limits, topic, answer_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._generation = 0  # of the running child: tickets of an older one are lost
        self._pending: deque[int] = deque()  # tickets sent and not yet answered, in order
        self._next = 0
        self.failures = 0  # in a row; at MAX_FAILURES no more children are started
        self.restarts = 0
        self._cpu_ended = 0.0  # CPU seconds of the children that ended
        self._cpu_child = 0.0  # of the running one, as its last answer said

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds the children spent serving (as of their last answers)."""
        return self._cpu_ended + self._cpu_child

    @property
    def usable(self) -> bool:
        return self.failures < MAX_FAILURES

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def _start(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "driftline.streams.decode_process",
             orjson.dumps(asdict(self.limits)).decode(), self.topic],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=1 << 20,
            start_new_session=True)  # a Ctrl-C is the worker's to handle; EOF stops it
        for f in (proc.stdin, proc.stdout):
            _grow_pipe(f)
        self._proc = proc
        self._generation += 1
        self._pending.clear()
        return proc

    def submit(self, values: Sequence[bytes], partitions: Sequence[int],
               offsets: Sequence[int], timestamps: Sequence[float]) -> tuple[int, int] | None:
        """Send a batch to be decoded; its ticket, or None when no child can take it."""
        if not self.usable:
            return None
        try:
            proc = self._proc or self._start()
            assert proc.stdin is not None
            _write(proc.stdin, encode_messages(values, partitions, offsets, timestamps))
        except (OSError, ValueError) as exc:
            self._failed(f"could not send a batch to the decode process: {exc}")
            return None
        self._next += 1
        self._pending.append(self._next)
        return self._generation, self._next

    def _answer(self, ticket: tuple[int, int] | None) -> bytes | None:
        """The answer frame of ``ticket`` (the oldest pending), None when it was lost."""
        if ticket is None or ticket[0] != self._generation or not self._pending:
            return None
        if self._pending[0] != ticket[1]:
            raise RuntimeError(f"decode results are taken in order: {ticket[1]} before "
                               f"{self._pending[0]}")
        self._pending.popleft()
        assert self._proc is not None and self._proc.stdout is not None
        try:  # read from the pipe itself: its buffered reader is never used, never holds data
            frame = _read(self._proc.stdout.fileno(), self.answer_timeout_s)
        except TimeoutError as exc:
            self._failed(f"the decode process did not answer ({exc})")
            return None
        except (EOFError, OSError) as exc:
            self._failed(f"the decode process ended ({exc}, exit code {self._proc.poll()})")
            return None
        head = 1 + _CPU.size
        if len(frame) < head:
            self._failed("the decode process sent a short answer")
            return None
        (self._cpu_child,) = _CPU.unpack_from(frame, 1)
        if frame[:1] != _OK:
            self._failed("the decode process failed on a batch: "
                         + frame[head:].decode("utf-8", "replace")[-2000:])
            return None
        return frame[head:]

    def result(self, ticket: tuple[int, int] | None) -> DecodeResult | None:
        """The decoded batch of ``ticket`` (the oldest one pending), or None when it was
        lost (the child died or failed): the caller then decodes the batch itself."""
        frame = self._answer(ticket)
        if frame is None:
            return None
        try:
            out = decode_batches(frame)
        except (ValueError, KeyError, TypeError) as exc:
            self._failed(f"unreadable answer from the decode process: {exc!r}")
            return None
        self.failures = 0
        return out

    def discard(self) -> None:
        """Forget every pending batch (their messages will be read again)."""
        while self._pending:
            self._answer((self._generation, self._pending[0]))

    def _failed(self, why: str) -> None:
        self.failures += 1
        log.error("%s; decoding in the worker's process%s", why,
                  "" if self.usable else f" from now on ({self.failures} failures in a row)")
        self._stop_child()
        if self.usable:
            self.restarts += 1

    def _stop_child(self) -> None:
        proc, self._proc = self._proc, None
        self._pending.clear()
        self._cpu_ended += self._cpu_child
        self._cpu_child = 0.0
        self._generation += 1
        if proc is None:
            return
        for f in (proc.stdin, proc.stdout):  # the end of its input stops the child
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:  # hung (or stopped): it does not get a say
            proc.kill()
            proc.wait(5)

    def close(self) -> None:
        """Stop the child (pending batches are forgotten)."""
        self._stop_child()


if __name__ == "__main__":
    main()
