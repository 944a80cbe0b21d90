"""Plumbing shared by the throughput and scaling benchmarks.

A broker (embedded Tansu, or ``--bootstrap``), run-unique topic names, the pre-produced
data set (single InferenceEvents and SDK envelopes of the same events, key = model),
reference profiles on a references topic, and child processes whose JSON-lines progress
drives a rich progress bar. Every process started here is stopped here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Producer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from driftline.detectors.reference import build_profile
from driftline.schemas.codecs import encode_envelope_columns, encode_envelope_rows
from driftline.streams.admin import TopicSpec, delete_topics, ensure_topics
from driftline.streams.broker import EmbeddedBroker
from driftline.streams.kafka_config import client_config, producer_config
from driftline.streams.producer import encode_batch, event_columns
from driftline.streams.synthetic import SyntheticModels

console = Console(stderr=True)
PYTHON = sys.executable
_ENVELOPE_KEYS = ("model", "model_version")  # envelope-wide fields, not repeated per event
#: Models of the benchmark's data with a shadow candidate (``produce_data(shadow=True)``).
SHADOWED = 2


class BenchError(RuntimeError):
    """A benchmark step failed (the message says which and why)."""


def progress_bar() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description:<34}"), BarColumn(),
                    MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                    TimeElapsedColumn(), console=console, transient=False)


@contextlib.contextmanager
def broker(bootstrap: str | None) -> Iterator[str]:
    """``bootstrap`` as given, or an embedded broker started and stopped around the block."""
    if bootstrap:
        yield bootstrap
        return
    b = EmbeddedBroker().start()
    try:
        yield b.bootstrap
    finally:
        b.stop()


@dataclass
class Run:
    """Names of one benchmark run (every topic and group is new)."""

    bootstrap: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    partitions: int = 8
    created: list[str] = field(default_factory=list)

    def name(self, suffix: str) -> str:
        return f"bench-{self.run_id}.{suffix}"

    @property
    def single_topic(self) -> str:
        return self.name("single")

    @property
    def envelope_topic(self) -> str:
        return self.name("envelope")

    @property
    def columns_topic(self) -> str:
        return self.name("columns")

    @property
    def shadow_topic(self) -> str:
        """The envelopes plus shadow candidates of some models (``shadow_of`` set)."""
        return self.name("envelope-shadow")

    @property
    def candidates_topic(self) -> str:
        """The same candidates' events without ``shadow_of``: models of their own."""
        return self.name("envelope-candidates")

    @property
    def rows_topic(self) -> str:
        return self.name("rows")

    @property
    def references_topic(self) -> str:
        return self.name("references")

    def kafka(self) -> dict[str, str]:
        return client_config(self.bootstrap)

    def create(self, specs: Sequence[TopicSpec]) -> None:
        ensure_topics(self.kafka(), specs, strict=True)
        self.created += [s.name for s in specs]

    def worker_settings(self, label: str, topic: str, **extra: Any) -> dict[str, Any]:
        """Settings fields of a driftline worker with its own group and topics."""
        n = self.name(label)
        return {
            "bootstrap_servers": self.bootstrap, "group_id": n, "client_id": n,
            "inference_topic": topic, "references_topic": self.references_topic,
            "labels_topic": f"{n}.labels", "alerts_topic": f"{n}.alerts",
            "deadletter_topic": f"{n}.deadletter", "changes_topic": f"{n}.changes",
            "state_topic": f"{n}.state", "status_topic": f"{n}.status",
            "partitions": self.partitions, "metrics_port": 0, "log_level": "WARNING", **extra,
        }  # fmt: skip

    def worker_topics(self, label: str) -> list[str]:
        n = self.name(label)
        return [f"{n}.{t}" for t in ("labels", "alerts", "deadletter", "changes", "state",
                                     "status")]

    def cleanup(self, extra: Sequence[str] = ()) -> None:
        """Delete the run's topics (matters on a real cluster; the embedded one is dropped)."""
        with contextlib.suppress(Exception):
            delete_topics(self.kafka(), [*self.created, *extra], timeout=10)


def produce_data(run: Run, events: int, *, models: int = 10, features: int = 20,
                 envelopes: bool = True, columns: bool = False, shadow: bool = False,
                 progress: Progress | None = None, seed: int = 0) -> dict[str, Any]:
    """Pre-produce ``events`` single events (and, with ``envelopes``, the same events as
    batch envelopes of 500, encoded as the producer SDK encodes them: packed columns)
    plus one reference profile per model; returns what was written. ``columns``: the same
    events once more as JSON columns envelopes and as rows envelopes (the other forms of
    the envelope contract, which other producers may write). ``shadow``: the envelopes
    once more with a shadow candidate for the first ``SHADOWED`` models (the same event
    ids, scores close to the live ones, ``shadow_of`` the live model, keyed by it), and
    once more with the same candidates' events as models of their own (no ``shadow_of``):
    the same events with and without shadow pairing."""
    specs = [TopicSpec(run.single_topic, run.partitions),
             TopicSpec(run.references_topic, 1, compact=True)]
    if envelopes:
        specs.append(TopicSpec(run.envelope_topic, run.partitions))
    if columns:
        specs += [TopicSpec(run.columns_topic, run.partitions),
                  TopicSpec(run.rows_topic, run.partitions)]
    if shadow:
        specs += [TopicSpec(run.shadow_topic, run.partitions),
                  TopicSpec(run.candidates_topic, run.partitions)]
    run.create(specs)
    gen = SyntheticModels(models, features, seed=seed)
    shadowed = gen.models[:SHADOWED] if shadow else []
    noise = np.random.default_rng(seed + 1)
    base = run.kafka()
    prod = Producer(producer_config(base, **{
        "client.id": "driftline-bench", "linger.ms": 20, "batch.num.messages": 10000,
        "queue.buffering.max.messages": 1_000_000, "message.max.bytes": 16_777_216}))
    # one reference per model, from the same distribution as the events (no drift)
    for m in gen.models:
        ref_events = gen.events(m, 5000)
        cols = {k: np.array([e["features"][k] for e in ref_events])  # type: ignore[index]
                for k in gen.names}
        prof = build_profile(m, cols, prediction=[e["prediction"] for e in ref_events],
                             model_version="v1", source="bench")
        prod.produce(run.references_topic, prof.to_json(), key=m.encode())
        if m in shadowed:  # the candidate's reference: its scores on the same events
            scores = _candidate_scores([e["prediction"] for e in ref_events], noise)
            cand = build_profile(candidate(m), cols, prediction=scores, model_version="v1",
                                 source="bench")
            prod.produce(run.references_topic, cand.to_json(), key=candidate(m).encode())
    task = progress.add_task("pre-produce", total=events, rate="") if progress else None
    chunk = 500  # the SDK's default batch_size: one envelope per chunk
    sent = nbytes = n_env = n_cand = 0
    t0 = time.monotonic()

    def send(topic: str, value: bytes, key: bytes) -> None:
        while True:
            try:
                prod.produce(topic, value, key=key)
                return
            except BufferError:
                prod.poll(0.05)

    for model, evs in gen.round_robin(chunk):
        take = evs[: events - sent]
        key = model.encode()
        for ev in take:
            value = orjson.dumps(ev)
            nbytes += len(value)
            send(run.single_topic, value, key)
        rows = [{k: v for k, v in ev.items() if k not in _ENVELOPE_KEYS} for ev in take]
        if envelopes and take:
            # exactly what DriftlineProducer.emit_event() + its background thread write
            env = encode_batch(model, rows, "v1")
            send(run.envelope_topic, env, key)
            n_env += 1
            if columns:
                send(run.rows_topic, encode_envelope_rows(model, rows, model_version="v1"), key)
            if shadow:
                send(run.shadow_topic, env, key)
                send(run.candidates_topic, env, key)
            if model in shadowed:
                scores = _candidate_scores([r["prediction"] for r in rows], noise)
                cand = [{**r, "prediction": v} for r, v in zip(rows, scores, strict=True)]
                send(run.shadow_topic, encode_batch(
                    candidate(model), [{**r, "shadow_of": model} for r in cand], "v1"), key)
                send(run.candidates_topic, encode_batch(candidate(model), cand, "v1"), key)
                n_cand += len(cand)
        if columns and take:
            cols = event_columns(rows)
            assert cols is not None  # synthetic events share their fields
            send(run.columns_topic, encode_envelope_columns(model, cols, len(take),
                                                            model_version="v1"), key)
        prod.poll(0)
        sent += len(take)
        if progress is not None and task is not None:
            el = time.monotonic() - t0
            progress.update(task, completed=sent, rate=f"{sent / max(el, 1e-9):,.0f} ev/s")
        if sent >= events:
            break
    left = prod.flush(120)
    if left:
        raise BenchError(f"{left} messages not acknowledged by the broker")
    out: dict[str, Any] = {"events": sent, "models": models, "features": features,
                           "partitions": run.partitions, "mean_event_bytes": nbytes / max(sent, 1)}
    if envelopes:
        out["envelopes"] = n_env
        out["events_per_envelope"] = sent / max(n_env, 1)
    if shadow:
        out["shadow_models"] = len(shadowed)
        out["shadow_events"] = sent + n_cand  # on each of the two shadow topics
    out["produce_seconds"] = time.monotonic() - t0
    return out


def candidate(model: str) -> str:
    """The model id of ``model``'s shadow candidate in the benchmark's data."""
    return f"{model}-candidate"


def _candidate_scores(scores: list[float], rng: np.random.Generator) -> list[float]:
    """A candidate's scores: the live ones moved a little (it mostly agrees)."""
    moved = np.clip(np.asarray(scores, dtype=np.float64) + rng.normal(0, 0.02, len(scores)),
                    0.0, 1.0)
    return [round(float(v), 5) for v in moved]


class Child:
    """A benchmark child process speaking the JSON-lines protocol of ``common.Reporter``."""

    def __init__(self, label: str, argv: Sequence[str], *, log_dir: Path,
                 stdin: bool = False, env: dict[str, str] | None = None) -> None:
        self.label = label
        self.log_path = log_dir / f"{label.replace(' ', '_').replace('/', '_')}.log"
        self.progress: dict[str, Any] = {"n": 0}
        self.samples: list[tuple[float, int]] = []  # (monotonic time, events) per progress line
        self.result: dict[str, Any] | None = None
        self.ready = threading.Event()
        self.done = threading.Event()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                list(argv), stdout=subprocess.PIPE, stderr=log,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
                cwd=log_dir,  # engines' state directories (Faust, Quix) land here, not in cwd
                text=True, bufsize=1, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            kind = msg.get("kind")
            if kind == "progress":
                self.progress = msg
                self.samples.append((float(msg["t"]), int(msg["n"])))
            elif kind == "ready":
                self.ready.set()
            elif kind == "result":
                self.result = msg
                self.done.set()
        self.done.set()

    def send(self, line: str) -> None:
        if self.proc.stdin is not None and self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.proc.stdin.write(line + "\n")
                self.proc.stdin.flush()

    @property
    def n(self) -> int:
        r = self.result
        return int(r["n"]) if r is not None else int(self.progress.get("n", 0))

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> int | None:
        """Close stdin / SIGTERM, then SIGKILL the whole process group after ``grace``."""
        p = self.proc
        if p.poll() is None:
            if p.stdin is not None:
                with contextlib.suppress(OSError):
                    p.stdin.close()
            try:
                p.wait(min(grace, 3.0) if p.stdin is not None else 0.5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(grace)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        # children the child left behind in its group (e.g. librdkafka never forks; faust
        # neither, but be sure)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        return p.returncode


def run_children(progress: Progress, description: str, children: Sequence[Child], total: int,
                 *, timeout: float, until_total: bool = False) -> list[dict[str, Any]]:
    """Follow children until each has a result (or, with ``until_total``, until their
    progress adds up to ``total``, then send them ``stop``); return their results."""
    task = progress.add_task(description, total=total, rate="")
    t0 = time.monotonic()
    stopping = False
    try:
        while True:
            n = sum(c.n for c in children)
            el = time.monotonic() - t0
            progress.update(task, completed=min(n, total), rate=f"{n / max(el, 1e-9):,.0f} ev/s")
            if until_total and n >= total and not stopping:
                stopping = True
                for c in children:
                    c.send("stop")
            if all(c.done.is_set() for c in children):
                break
            for c in children:
                if c.proc.poll() is not None and not c.done.is_set():
                    c.done.wait(2.0)
            if el > timeout:
                raise BenchError(f"{description}: no result after {timeout:.0f} s "
                                 f"({n:,} of {total:,} events); log:\n{children[0].log_tail()}")
            time.sleep(0.1)
        missing = [c for c in children if c.result is None]
        if missing:
            c = missing[0]
            raise BenchError(f"{description}: {c.label} exited ({c.proc.poll()}) without a "
                             f"result; log {c.log_path}:\n{c.log_tail()}")
        n = sum(c.n for c in children)
        progress.update(task, completed=min(n, total))
        return [c.result for c in children if c.result is not None]
    finally:
        for c in children:
            c.stop()


def module_argv(module: str, *args: Any) -> list[str]:
    return [PYTHON, "-m", f"driftline.benchmarks.baselines.{module}", *map(str, args)]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="driftline-bench-"))


def engine_available(module: str) -> str | None:
    """None when ``module`` imports in a child interpreter, else the reason it does not."""
    r = subprocess.run([PYTHON, "-c", f"import {module}"], capture_output=True, text=True,
                       timeout=120)
    if r.returncode == 0:
        return None
    last = (r.stderr.strip().splitlines() or ["import failed"])[-1]
    return f"{module} is not importable here ({last})"


def combined_eps(results: Sequence[dict[str, Any]]) -> tuple[int, float]:
    """Events and events/s of processes sharing one job: all events over the span from the
    first process's first event to the last process's last event."""
    n = sum(int(r["n"]) for r in results)
    firsts = [r["t_first"] for r in results if r.get("t_first") is not None]
    lasts = [r["t_last"] for r in results if r.get("t_last") is not None]
    if not firsts or not lasts or max(lasts) <= min(firsts):
        return n, 0.0
    return n, n / (max(lasts) - min(firsts))


def py_spy() -> str | None:
    import shutil

    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(PYTHON).parent))
    return found


def profiled(argv: Sequence[str], out: Path, rate: int = 100) -> list[str]:
    """``argv`` run under ``py-spy record`` (raw collapsed stacks to ``out``)."""
    spy = py_spy()
    if spy is None:
        raise BenchError("--profile needs py-spy (pip install py-spy)")
    return [spy, "record", "--rate", str(rate), "--format", "raw", "--nonblocking",
            "--output", str(out), "--", *argv]


def summarize_profile(path: Path, *, within: str = "Worker.run", top: int = 20) -> dict[str, Any]:
    """Where the time of the stacks under ``within`` (the worker thread) went, as % of that
    thread's samples: self and inclusive time per function, and self time per source line."""
    import re

    per_line: dict[str, int] = {}
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    strip = re.compile(r"\s\((?:/[^)]*/site-packages/|/[^)]*/(?=driftline/|benchmarks/))")
    line_no = re.compile(r":\d+\)$")
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [strip.sub(" (", f) for f in stack.split(";")]
        if not any(within in f for f in frames):
            continue
        n = int(count)
        total += n
        per_line[frames[-1]] = per_line.get(frames[-1], 0) + n
        funcs = [line_no.sub(")", f) for f in frames]
        own[funcs[-1]] = own.get(funcs[-1], 0) + n
        for f in set(funcs):
            incl[f] = incl.get(f, 0) + n
    if not total:
        return {"samples": 0}

    def pct(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(f, 100.0 * n / total) for f, n in sorted(d.items(), key=lambda x: -x[1])[:top]]

    return {"samples": total, "self_pct": pct(own), "inclusive_pct": pct(incl),
            "self_pct_by_line": pct(per_line)}
