"""Commands that talk to Kafka: ``produce``, ``alerts``, ``status``, ``annotate``,
``reference``, ``slo``."""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import typer
import yaml
from confluent_kafka import (
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from rich.console import Console
from rich.table import Table as RichTable

from driftline.detectors.errors import DriftlineError
from driftline.detectors.join_index import COMPILED as ID_INDEX_COMPILED
from driftline.detectors.offline import profile_table
from driftline.detectors.reference import ReferenceProfile
from driftline.detectors.segments import canonical
from driftline.detectors.serialization import sign_record, verify_record
from driftline.detectors.stats import KERNELS
from driftline.detectors.tables import read_table, segment_of
from driftline.schemas.codecs import SCANNER, alert_to_dict, encode_event
from driftline.schemas.models import ALERT_KINDS
from driftline.streams.admin import (
    UnknownTopicError,
    ensure_topics,
    partition_count,
    read_compacted,
)
from driftline.streams.changes import annotation
from driftline.streams.cli.terminal import shown
from driftline.streams.kafka_config import producer_config, redacted
from driftline.streams.model_config import (
    ModelConfigError,
    WindowSpec,
    encode_record,
    parse_model_configs,
    record_key,
)
from driftline.streams.producer import DriftlineProducer
from driftline.streams.settings import Settings, unknown_variables
from driftline.streams.subscriber import AlertSubscriber
from driftline.streams.synthetic import DriftSpec, SyntheticModels
from driftline.streams.worker import STATE_MAX_BYTES, topic_specs

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
    seed: int = typer.Option(0, help="random seed (of the draws; the models' distributions "
                             "are the same for every seed)"),
    error_rate: float = typer.Option(
        0.001, min=0.0, max=1.0,
        help="share of synthetic events with outcome=error (the others: ok)"),
) -> None:
    """Produce synthetic inference events (with drift injection) or replay a file."""
    if drift_unit not in ("seconds", "events"):
        typer.echo(f"error: --drift-unit takes seconds or events, not {drift_unit!r}", err=True)
        raise typer.Exit(2)
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
            gen = SyntheticModels(models, seed=seed, drift=drift, error_rate=error_rate)
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
    ts = table.ts
    order = list(range(n))
    first_ts = 0.0
    if ts is not None:  # rows without a time go last, in file order (NaN would unsort)
        finite = np.isfinite(ts)
        order = np.argsort(np.where(finite, ts, np.inf), kind="stable").tolist()
        first_ts = float(ts[order[0]]) if finite.any() else 0.0
    names = list(table.features)
    start = time.monotonic()
    for k, i in enumerate(order):
        if stop.is_set():
            return k
        ev: dict[str, Any] = {"model": model, "features": {
            name: _plain(table.features[name][i]) for name in names}}
        if ts is not None and math.isfinite(ts[i]):
            ev["ts"] = float(ts[i])
            if speed > 0:
                due = (ev["ts"] - first_ts) / speed
                delay = due - (time.monotonic() - start)
                if delay > 0:
                    time.sleep(delay)
        if table.prediction is not None:
            ev["prediction"] = _plain(table.prediction[i])
        if (seg := segment_of(table, i)) is not None:
            ev["segment"] = seg
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
    unknown = sorted(set(kind) - set(ALERT_KINDS))
    if unknown:
        typer.echo(f"error: no alert kind {', '.join(map(repr, unknown))} (kinds: "
                   f"{', '.join(ALERT_KINDS)})", err=True)
        raise typer.Exit(2)
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
                # names come from the topics (anyone with write access): never markup
                # 4 significant digits: an FPR of 0.23 against 0.05 must not read 0.2 vs 0.1
                feats = ", ".join(f"{shown(f.name)}({f.score:.4g})" for f in a.top_features[:3])
                color = "red" if a.state == "firing" else "green"
                seg = f"segment={shown(canonical(a.segment))} " if a.segment else ""
                console.print(
                    f"[{color}]{shown(a.state):8}[/] {shown(a.kind):10} {shown(a.model):20} "
                    f"{seg}feature={shown(a.feature)} {shown(a.statistic)}={a.score:.4g} "
                    f"thr={a.threshold:.4g} n={a.window.n} top: {feats}  "
                    f"[dim]{shown(a.alert_id)}[/]", soft_wrap=True)  # one line: grep-able
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
    rows = [r for r in (_status_row(k, v) for k, v in records.items()) if r is not None]
    dl_total = min(sum(int(r.get("events_deadlettered") or 0) for r in rows), _MAX_COUNT)
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


_COUNTS = ("events_applied", "events_deadlettered", "events_late", "alerts_firing", "alerts_fired")
#: a worker's counters are int64; sums over records are clamped there, so --json can write them
_MAX_COUNT = 2**63 - 1


def _status_row(key: bytes, value: bytes) -> dict[str, Any] | None:
    """One status record, or None (logged) when it is not one a worker wrote: the status
    topic is only as trustworthy as its ACLs, and one bad record must not hide the rest."""
    try:
        r = orjson.loads(value)
        if not isinstance(r, dict) or not isinstance(r.get("model"), str):
            raise ValueError("not an object with a model")
        for k in _COUNTS:
            v = r.get(k) or 0
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _MAX_COUNT:
                raise ValueError(f"{k} is not a count")
        p = r.get("partition", -1)
        if isinstance(p, bool) or not isinstance(p, int) or not -1 <= p < 2**31:
            raise ValueError("partition is not a partition number")
        t = r.get("updated_at") or 0.0
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            raise ValueError("updated_at is not a time")
        for k in ("reference", "owner"):
            if r.get(k) is not None and not isinstance(r[k], str):
                raise ValueError(f"{k} is not a string")
        if not isinstance(r.get("offsets") or {}, dict):
            raise ValueError("offsets is not an object")
    except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
        typer.echo(f"skipping status record {key[:80]!r}: {exc}", err=True)
        return None
    return r


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
            m[k] = min(m[k] + int(r.get(k) or 0), _MAX_COUNT)
        m["offsets"].update(r.get("offsets") or {})
        if isinstance(r.get("shadow_ignored"), int):  # candidates beyond the limit
            m["shadow_ignored"] = min(m.get("shadow_ignored", 0) + r["shadow_ignored"],
                                      _MAX_COUNT)
        if isinstance(r.get("labels"), dict):  # label join accounting, summed over partitions
            lab = m.setdefault("labels", {})
            for k, v in r["labels"].items():
                if isinstance(v, int):
                    lab[k] = lab.get(k, 0) + v
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
        t.add_column(col, overflow="fold")  # names wrapped on a narrow terminal, never cut
    for r in data["models"]:  # data-derived strings: escaped, never markup
        t.add_row(shown(r["model"]), f"{r['events_applied']:,}", f"{r['events_deadlettered']:,}",
                  str(r["alerts_firing"]), shown(r["reference"]), shown(r["owner"]))
    console.print(t)


reference_app = typer.Typer(help="Reference profiles on the references topic.",
                            no_args_is_help=True)


@reference_app.command("set")
def reference_set(
    model: str = typer.Option(..., "--model", "-m", help="model id"),
    file: Path | None = typer.Option(None, "--file", "-f",
                                     help="CSV/Parquet/NPZ data, or a profile JSON"),
    config: Path | None = typer.Option(
        None, "--config", help="the model's window configuration: one entry of the model "
        "config file (YAML/JSON), e.g. 'window: 1h' and 'pane: 5m' on two lines"),
    bootstrap: str | None = BootstrapOpt,
    version: str | None = typer.Option(None, help="model version of this reference"),
) -> None:
    """Replace a model's reference and/or its window configuration; workers pick them up
    live (the model's windows restart)."""
    s = _settings(bootstrap)
    if file is None and config is None:
        typer.echo("error: give --file (a reference), --config (a configuration) or both",
                   err=True)
        raise typer.Exit(2)
    records: list[tuple[bytes, bytes]] = []
    try:
        if config is not None:
            entry = _config_entry(model, config, s)
            records.append((record_key(model), encode_record(model, entry)))
        if file is not None:
            prof = _profile(model, file, s, version)
            records.append((model.encode(), prof.to_json()))
    except (DriftlineError, ModelConfigError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    ensure_topics(s.kafka(), topic_specs(s))
    # references with large samples pass Kafka's 1 MB default; the topic allows 16 MiB
    p = Producer(producer_config(s.kafka(), **{"message.max.bytes": STATE_MAX_BYTES}))
    key = s.signing_key()
    failed: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failed.append(str(err))

    try:
        for rkey, value in records:
            p.produce(s.references_topic, value if key is None else sign_record(value, key),
                      key=rkey, on_delivery=delivered)
    except KafkaException as exc:
        typer.echo(f"error: the reference was not sent: {exc}", err=True)
        raise typer.Exit(1) from None
    if p.flush(30) or failed:
        typer.echo("error: the broker did not acknowledge the reference"
                   + (f": {failed[0]}" if failed else ""), err=True)
        raise typer.Exit(1)
    if config is not None:
        typer.echo(f"configuration set for {model}")
    if file is not None:
        typer.echo(f"reference {prof.reference_id} set for {model} ({prof.size} rows, "
                   f"{len(prof.columns)} features)")


def _profile(model: str, file: Path, s: Settings, version: str | None) -> ReferenceProfile:
    if file.suffix == ".json":
        prof = ReferenceProfile.from_json(file.read_bytes())
        if prof.model != model:
            raise DriftlineError(f"profile is for model {prof.model!r}, not {model!r}")
    else:
        prof = profile_table(model, read_table(file), source=str(file), bins=s.reference_bins)
    if version and version != prof.model_version:
        prof = prof.with_model_version(version)
    return prof


def _config_entry(model: str, path: Path, s: Settings) -> WindowSpec:
    """A model's entry, validated against the defaults it will inherit here."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        entry = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ModelConfigError(f"{path}: not valid YAML: {exc}") from None
    doc = orjson.dumps({"models": {model: entry if entry is not None else {}}})
    configs = parse_model_configs(doc, s.monitor_config(), s.idle_timeout_s, source=str(path),
                                  json=True)
    return configs.file.models[model]


@reference_app.command("show")
def reference_show(
    model: str = typer.Option(..., "--model", "-m"),
    bootstrap: str | None = BootstrapOpt,
) -> None:
    """Print a model's current reference profile (JSON)."""
    s = _settings(bootstrap)
    try:
        refs = read_compacted(s.kafka(), s.references_topic)
    except UnknownTopicError:
        typer.echo(f"error: {s.references_topic} does not exist yet: no worker has run "
                   "against this cluster (or DRIFTLINE_REFERENCES_TOPIC names another topic)",
                   err=True)
        raise typer.Exit(1) from None
    except TimeoutError as exc:
        typer.echo(f"error: cannot read {s.references_topic}: {exc}", err=True)
        raise typer.Exit(1) from None
    blob = refs.get(model.encode())
    if blob is None:
        typer.echo(f"no reference for {model}", err=True)
        raise typer.Exit(1)
    key = s.signing_key()
    try:
        doc = orjson.loads(verify_record(blob, key))
    except (DriftlineError, orjson.JSONDecodeError) as exc:
        typer.echo(f"error: the reference of {model} is not usable: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())


slo_app = typer.Typer(help="Service-level objectives as Prometheus rules.", no_args_is_help=True)


@slo_app.command("render")
def slo_render(spec: Path = typer.Argument(..., help="SLO spec (YAML)")) -> None:
    """Print Prometheus recording and multi-window burn-rate alert rules for SPEC."""
    from driftline.streams.slo import SloSpecError, load_spec, render_yaml

    try:
        typer.echo(render_yaml(load_spec(spec)))
    except SloSpecError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def config_show(bootstrap: str | None = BootstrapOpt) -> None:
    """Print the effective settings (secrets redacted)."""
    s = _settings(bootstrap)
    data = s.model_dump(mode="json")
    data["kafka"] = redacted(s.kafka())
    data["single_event_scanner"] = "compiled" if SCANNER else "python (not built at install)"
    data["label_join_index"] = "compiled" if ID_INDEX_COMPILED else "dict (not built at install)"
    data["window_kernels"] = "compiled" if KERNELS else "numpy (not built at install)"
    data["unknown_variables"] = unknown_variables(os.environ)  # DRIFTLINE_* no setting reads
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
        ev = annotation(model, kind, text, when, source or f"driftline annotate ({_user()})",
                        max_future_s=s.max_future_s)
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
