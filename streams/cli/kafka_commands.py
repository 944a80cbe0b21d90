"""Commands that talk to Kafka: ``produce``, ``alerts``, ``status``, ``annotate``,
``reference``, ``slo``."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import typer
from confluent_kafka import OFFSET_END, Consumer, KafkaError, Producer, TopicPartition
from rich.console import Console
from rich.table import Table as RichTable

from driftline.detectors.errors import DriftlineError
from driftline.detectors.offline import profile_table
from driftline.detectors.reference import ReferenceProfile
from driftline.detectors.tables import read_table
from driftline.schemas.codecs import alert_to_dict, encode_event
from driftline.streams.admin import (
    UnknownTopicError,
    ensure_topics,
    partition_count,
    read_compacted,
)
from driftline.streams.changes import annotation
from driftline.streams.kafka_config import producer_config, redacted
from driftline.streams.producer import DriftlineProducer
from driftline.streams.settings import Settings
from driftline.streams.subscriber import AlertSubscriber
from driftline.streams.synthetic import DriftSpec, SyntheticModels
from driftline.streams.worker import topic_specs

console = Console()
BootstrapOpt = typer.Option(None, "--bootstrap", "-b", help="Kafka bootstrap servers")


def _settings(bootstrap: str | None) -> Settings:
    return Settings(bootstrap_servers=bootstrap) if bootstrap else Settings()


def produce(
    bootstrap: str | None = BootstrapOpt,
    models: int = typer.Option(3, help="synthetic models"),
    rate: float = typer.Option(1000.0, help="events/s per model (0: as fast as possible)"),
    events: int | None = typer.Option(None, help="stop after this many events per model"),
    duration: float | None = typer.Option(None, help="stop after this many seconds"),
    drift_model: str | None = typer.Option(None, help="model to drift"),
    drift_feature: str = typer.Option("f7", help="feature to drift"),
    drift_at: float = typer.Option(
        30.0, help="when the drift starts (seconds, or events with --drift-unit events)"),
    drift_unit: str = typer.Option("seconds", help="seconds | events"),
    shift: float = typer.Option(1.0, help="drift size in standard deviations"),
    single: bool = typer.Option(False, help="one JSON message per event instead of SDK envelopes"),
    replay: Path | None = typer.Option(None, help="replay a CSV/Parquet/NPZ file instead"),
    model: str = typer.Option("replay", help="model id of the replayed file"),
    speed: float = typer.Option(0.0, help="replay speed: 0 = as fast as possible, N = N x event time"),
    seed: int = typer.Option(0, help="random seed"),
) -> None:
    """Produce synthetic inference events (with drift injection) or replay a file."""
    s = _settings(bootstrap)
    ensure_topics(s.kafka(), topic_specs(s))
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    producer = DriftlineProducer(s.kafka(), s.inference_topic)
    raw = Producer(producer_config(s.kafka())) if single else None

    def send(ev: dict[str, Any]) -> None:
        if raw is not None:
            key = str(ev["model"]).encode()
            while True:
                try:
                    raw.produce(s.inference_topic, encode_event(ev), key=key)
                    break
                except BufferError:
                    raw.poll(0.05)
            raw.poll(0)
        else:
            producer.emit_event(ev)

    sent = 0
    t0 = time.monotonic()
    try:
        if replay is not None:
            sent = _replay(replay, model, speed, send, stop)
        else:
            drift = (DriftSpec(drift_model, drift_feature, drift_at, shift, drift_unit),) \
                if drift_model else ()
            gen = SyntheticModels(models, seed=seed, drift=drift)
            step = 0.1
            per_step = max(int(rate * step), 1) if rate > 0 else 500
            per_model = dict.fromkeys(gen.models, 0)
            next_t = time.monotonic()
            while not stop.is_set():
                if duration is not None and time.monotonic() - t0 >= duration:
                    break
                if events is not None and all(v >= events for v in per_model.values()):
                    break
                for m in gen.models:
                    k = per_step if events is None else min(per_step, events - per_model[m])
                    if k <= 0:
                        continue
                    for ev in gen.events(m, k):
                        send(ev)
                    per_model[m] += k
                    sent += k
                if rate > 0:
                    next_t += step
                    time.sleep(max(0.0, next_t - time.monotonic()))
    finally:
        producer.close(30)
        if raw is not None:
            raw.flush(30)
    st = producer.stats()
    el = time.monotonic() - t0
    typer.echo(f"produced {sent:,} events in {el:.1f} s ({sent / max(el, 1e-9):,.0f} ev/s)"
               + ("" if single else f"; delivered {st.delivered:,}, failed {st.failed}, "
                  f"dropped {st.dropped}"))


def _replay(path: Path, model: str, speed: float, send: Callable[[dict[str, Any]], None],
            stop: threading.Event) -> int:
    """Replay a file in event-time order; ``speed`` N compresses time N-fold."""
    table = read_table(path)
    n = len(table)
    order = list(range(n))
    if table.ts is not None:
        order.sort(key=lambda i: float(table.ts[i]))  # type: ignore[index]
    names = list(table.features)
    first_ts = float(table.ts[order[0]]) if table.ts is not None and n else 0.0
    start = time.monotonic()
    for k, i in enumerate(order):
        if stop.is_set():
            return k
        ev: dict[str, Any] = {"model": model, "features": {
            name: _plain(table.features[name][i]) for name in names}}
        if table.ts is not None:
            ev["ts"] = float(table.ts[i])
            if speed > 0:
                due = (ev["ts"] - first_ts) / speed
                delay = due - (time.monotonic() - start)
                if delay > 0:
                    time.sleep(delay)
        if table.prediction is not None:
            ev["prediction"] = _plain(table.prediction[i])
        if table.segments:
            ev["segment"] = {key: str(col[i]) for key, col in table.segments.items()}
        send(ev)
    return n


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and v != v:
        return None
    return v


def alerts(
    bootstrap: str | None = BootstrapOpt,
    follow: bool = typer.Option(False, "--follow", "-f", help="keep waiting for new alerts"),
    as_json: bool = typer.Option(False, "--json", help="one JSON alert per line"),
    model: list[str] = typer.Option([], "--model", help="only these models"),
    kind: list[str] = typer.Option([], "--kind", help="only these kinds"),
    group: str | None = typer.Option(None, help="consumer group (resume where it stopped)"),
) -> None:
    """Print drift alerts from the alerts topic (repeats after replays are dropped)."""
    s = _settings(bootstrap)
    sub = AlertSubscriber(s.kafka(), s.alerts_topic, group_id=group, follow=follow,
                          models=model or None, kinds=kind or None)
    signal.signal(signal.SIGTERM, lambda *_: sub.close())
    try:
        for a in sub:
            if as_json:
                sys.stdout.write(orjson.dumps(alert_to_dict(a)).decode() + "\n")
                sys.stdout.flush()
            else:
                feats = ", ".join(f"{f.name}({f.score:.1f})" for f in a.top_features[:3])
                color = "red" if a.state == "firing" else "green"
                console.print(
                    f"[{color}]{a.state:8}[/] {a.kind:10} {a.model:20} feature={a.feature} "
                    f"{a.statistic}={a.score:.1f} thr={a.threshold:.1f} n={a.window.n} "
                    f"top: {feats}  [dim]{a.alert_id}[/]")
    except KeyboardInterrupt:
        pass
    except TimeoutError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        sub.close()


def _end_offsets(base: dict[str, Any], topic: str, partitions: int,
                 timeout: float = 10.0) -> dict[int, int]:
    """End offset per partition from fetch responses (``_PARTITION_EOF``), not ListOffsets."""
    c = Consumer({**base, "group.id": "driftline-status-probe", "enable.auto.commit": False,
                  "enable.partition.eof": True})
    ends: dict[int, int] = {}
    try:
        c.assign([TopicPartition(topic, p, OFFSET_END) for p in range(partitions)])
        deadline = time.monotonic() + timeout
        while len(ends) < partitions and time.monotonic() < deadline:
            for m in c.consume(100, 0.2):
                err = m.error()
                if err is not None and err.code() == KafkaError._PARTITION_EOF:
                    ends[m.partition()] = m.offset()
    finally:
        c.close()
    return ends


def collect_status(settings: Settings) -> dict[str, Any]:
    """The whole group's accounting, from the compacted status topic, plus lag."""
    base = settings.kafka()
    try:
        records = read_compacted(base, settings.status_topic, timeout=30)
    except UnknownTopicError:
        records = {}
    rows = [orjson.loads(v) for v in records.values()]
    dl_total = sum(int(r.get("events_deadlettered", 0)) for r in rows)
    models = _per_model([r for r in rows if not r.get("unattributed")])
    n = partition_count(base, settings.inference_topic) or 0
    lag: dict[str, int] = {}
    if n:
        ends = _end_offsets(base, settings.inference_topic, n)
        c = Consumer({**base, "group.id": settings.group_id, "enable.auto.commit": False})
        try:
            committed = c.committed([TopicPartition(settings.inference_topic, p)
                                     for p in range(n)], timeout=10)
        finally:
            c.close()
        for tp in committed:
            end = ends.get(tp.partition)
            if end is not None:
                lag[str(tp.partition)] = max(end - max(tp.offset, 0), 0)
    return {
        "models": models,
        "deadletter_total": dl_total,
        "models_tracked": len(models),
        "lag": lag,
        "lag_total": sum(lag.values()),
    }


def _per_model(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model: a model's state is kept per source partition (normally one)."""
    out: dict[str, dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: (r["model"], r.get("partition", -1))):
        m = out.setdefault(r["model"], {
            "model": r["model"], "events_applied": 0, "events_deadlettered": 0,
            "events_late": 0, "offsets": {}, "reference": r.get("reference"),
            "alerts_firing": 0, "alerts_fired": 0, "owner": r.get("owner"),
            "partitions": [], "updated_at": 0.0})
        for k in ("events_applied", "events_deadlettered", "events_late", "alerts_firing",
                  "alerts_fired"):
            m[k] += int(r.get(k) or 0)
        m["offsets"].update(r.get("offsets") or {})
        m["partitions"].append(r.get("partition"))
        if r.get("owner") and r.get("owner") != m["owner"]:
            m["owner"] = f"{m['owner']},{r['owner']}"
        m["updated_at"] = max(m["updated_at"], float(r.get("updated_at") or 0.0))
    return list(out.values())


def status(
    bootstrap: str | None = BootstrapOpt,
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Models tracked by the whole group, their accounting, and consumer lag."""
    s = _settings(bootstrap)
    data = collect_status(s)
    if as_json:
        typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    t = RichTable(title=f"driftline status — {len(data['models'])} models, "
                  f"dead letters {data['deadletter_total']}, lag {data['lag_total']}")
    for col in ("model", "applied", "dead-lettered", "alerts firing", "reference", "owner"):
        t.add_column(col)
    for r in data["models"]:
        t.add_row(r["model"], f"{r['events_applied']:,}", f"{r['events_deadlettered']:,}",
                  str(r["alerts_firing"]), str(r["reference"]), str(r["owner"]))
    console.print(t)


reference_app = typer.Typer(help="Reference profiles on the references topic.",
                            no_args_is_help=True)


@reference_app.command("set")
def reference_set(
    model: str = typer.Option(..., "--model", "-m", help="model id"),
    file: Path = typer.Option(..., "--file", "-f", help="CSV/Parquet/NPZ data, or a profile JSON"),
    bootstrap: str | None = BootstrapOpt,
    version: str | None = typer.Option(None, help="model version of this reference"),
) -> None:
    """Replace a model's reference; workers pick it up live and restart its windows."""
    s = _settings(bootstrap)
    try:
        if file.suffix == ".json":
            prof = ReferenceProfile.from_json(file.read_bytes())
            if prof.model != model:
                raise DriftlineError(f"profile is for model {prof.model!r}, not {model!r}")
        else:
            prof = profile_table(model, read_table(file), source=str(file), bins=s.reference_bins)
    except DriftlineError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if version:
        prof = ReferenceProfile(**{**prof.__dict__, "model_version": version})
    ensure_topics(s.kafka(), topic_specs(s))
    p = Producer(producer_config(s.kafka()))
    p.produce(s.references_topic, prof.to_json(), key=model.encode())
    if p.flush(30):
        typer.echo("error: the broker did not acknowledge the reference", err=True)
        raise typer.Exit(1)
    typer.echo(f"reference {prof.reference_id} set for {model} ({prof.size} rows, "
               f"{len(prof.columns)} features)")


@reference_app.command("show")
def reference_show(
    model: str = typer.Option(..., "--model", "-m"),
    bootstrap: str | None = BootstrapOpt,
) -> None:
    """Print a model's current reference profile (JSON)."""
    s = _settings(bootstrap)
    refs = read_compacted(s.kafka(), s.references_topic)
    blob = refs.get(model.encode())
    if blob is None:
        typer.echo(f"no reference for {model}", err=True)
        raise typer.Exit(1)
    typer.echo(orjson.dumps(orjson.loads(blob), option=orjson.OPT_INDENT_2).decode())


slo_app = typer.Typer(help="Service-level objectives as Prometheus rules.", no_args_is_help=True)


@slo_app.command("render")
def slo_render(spec: Path = typer.Argument(..., help="SLO spec (YAML)")) -> None:
    """Print Prometheus recording and multi-window burn-rate alert rules for SPEC."""
    from driftline.streams.slo import load_spec, render_yaml

    typer.echo(render_yaml(load_spec(spec)))


def config_show(bootstrap: str | None = BootstrapOpt) -> None:
    """Print the effective settings (secrets redacted)."""
    s = _settings(bootstrap)
    data = s.model_dump(mode="json")
    data["kafka"] = redacted(s.kafka())
    typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def annotate(
    model: str = typer.Option(..., "--model", "-m", help="model id"),
    kind: str = typer.Option(..., "--kind", "-k",
                             help="deploy | pipeline | data-source | other (also model_version, "
                                  "schema, reference)"),
    text: str = typer.Option(..., "--text", "-t", help="what changed"),
    ts: str | None = typer.Option(None, "--ts",
                                  help="when: epoch seconds or ISO-8601 (default: now)"),
    source: str | None = typer.Option(None, "--source", help="who or what posts it"),
    bootstrap: str | None = BootstrapOpt,
) -> None:
    """Record an upstream change of a model; its alerts list it once its time is past."""
    s = _settings(bootstrap)
    when: float | str | None = ts
    if ts is not None:
        try:
            when = float(ts)
        except ValueError:
            when = ts
    try:
        ev = annotation(model, kind, text, when, source or f"driftline annotate ({_user()})")
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    ensure_topics(s.kafka(), topic_specs(s))
    p = Producer(producer_config(s.kafka()))
    p.produce(s.changes_topic, ev.encode(), key=model.encode())
    if p.flush(30):
        typer.echo("error: the broker did not acknowledge the change", err=True)
        raise typer.Exit(1)
    typer.echo(f"change {ev.id} recorded for {model}: {kind} at {ev.ts:.3f}")


def _user() -> str:
    import getpass
    import socket

    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):
        return socket.gethostname()


COMMANDS: dict[str, Callable[..., None]] = {
    "produce": produce, "alerts": alerts, "status": status, "config": config_show,
    "annotate": annotate,
}
