"""``driftline investigate``: what drifted in a model (or one segment), and since when.

Gathering (Kafka) and analysis (pure) are separate: :func:`gather` reads the model's
events since a time from the inference topic, its reference from the references topic
and change events from the changes topic; :func:`analyse` answers

- which features drifted against the reference (the offline two-sample comparison of
  :func:`driftline.detectors.offline.compare`), and whether the prediction did;
- when it started: a change-point estimate (:mod:`driftline.detectors.changepoint`)
  on the per-pane chi-square statistic of the most drifted column;
- which change events came before that point, closest first.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftline.detectors.binning import Binner
from driftline.detectors.changepoint import cusum
from driftline.detectors.offline import FeatureResult, Report, compare
from driftline.detectors.reference import CategoricalProfile, NumericProfile, ReferenceProfile
from driftline.detectors.stats import chi_square
from driftline.detectors.tables import Table
from driftline.schemas.models import EventBatch
from driftline.schemas.validation import parse_iso_ts

#: Standardised CUSUM above which the change point is reported as significant.
CHANGE_SIGNIFICANCE = 5.0
PLOTTED = 6  # columns with distributions kept for the report
SAMPLE = 2000  # values per side kept for the CDF plots

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


_EPOCH_MIN, _EPOCH_MAX = 0.0, 253402300799.0  # 1970-01-01 .. 9999-12-31T23:59:59Z


def parse_since(text: str, now: float | None = None) -> float:
    """``2h`` / ``30m`` / ``1d`` before now, epoch seconds, or an ISO-8601 time (naive
    means UTC, as in events and ``annotate --ts``), as epoch seconds."""
    now = time.time() if now is None else now
    m = _DURATION.match(text)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        when = float(text)
    except ValueError:
        try:
            when = parse_iso_ts(text.strip())
        except ValueError:
            raise ValueError(f"--since takes 2h, 30m, 1d, epoch seconds or an ISO-8601 time, "
                             f"not {text!r}") from None
    if not math.isfinite(when) or not _EPOCH_MIN <= when <= _EPOCH_MAX:
        raise ValueError(f"--since {text!r} is not a time in epoch seconds (years 1970 to "
                         "9999; milliseconds or nanoseconds are not taken)")
    return when


def parse_segment(pairs: Sequence[str]) -> dict[str, str]:
    """``["region=eu", "tier=gold"]`` -> ``{"region": "eu", "tier": "gold"}``."""
    out: dict[str, str] = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise ValueError(f"--segment takes key=value, not {p!r}")
        if k in out and out[k] != v:
            raise ValueError(f"--segment names {k} twice ({out[k]!r} and {v!r}); events have "
                             "one value per key: run once per value")
        out[k] = v
    return out


def segment_rows(batch: EventBatch, segment: Mapping[str, str]) -> NDArray[np.int64]:
    """Rows whose segment holds every pair of ``segment`` (all rows when it is empty)."""
    if not segment:
        return np.arange(len(batch), dtype=np.int64)
    want = tuple(segment.items())
    return np.flatnonzero([s is not None and all(s.get(k) == v for k, v in want)
                           for s in batch.segment.tolist()]).astype(np.int64)


# -- the answer ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Investigation:
    """Everything ``driftline investigate`` reports (JSON via :meth:`to_dict`)."""

    model: str
    segment: dict[str, str]
    since: float | None
    n_events: int
    reference_id: str
    n_reference: int
    drift: bool
    features: list[FeatureResult]  # every column, most drifted first (prediction included)
    prediction: FeatureResult | None
    top_feature: str | None
    pane_size: int
    panes: list[dict[str, Any]]  # index, start_ts, end_ts, n, first/last offset, score
    change_point: dict[str, Any] | None
    changes: list[dict[str, Any]]  # change events before the change point, closest first
    distributions: list[dict[str, Any]] = field(default_factory=list)
    tests: int = 0
    alpha: float = 0.05

    @property
    def drifted(self) -> list[str]:
        return [f.name for f in self.features if f.drift and f.kind != "prediction"]

    def to_dict(self, *, distributions: bool = False) -> dict[str, Any]:
        d = {
            "model": self.model,
            "segment": self.segment,
            "since": self.since,
            "n_events": self.n_events,
            "reference_id": self.reference_id,
            "n_reference": self.n_reference,
            "drift": self.drift,
            "drifted_features": self.drifted,
            "prediction_drift": bool(self.prediction and self.prediction.drift),
            "prediction": asdict(self.prediction) if self.prediction else None,
            "top_feature": self.top_feature,
            "alpha": self.alpha,
            "tests": self.tests,
            "features": [asdict(f) for f in self.features],
            "pane_size": self.pane_size,
            "panes": self.panes,
            "change_point": self.change_point,
            "changes": self.changes,
        }
        if distributions:
            d["distributions"] = self.distributions
        return d


def events_table(batches: Sequence[EventBatch]) -> tuple[Table, EventBatch | None]:
    """The rows of several batches as one table (time order) and one batch."""
    batches = [b for b in batches if len(b)]
    if not batches:
        return Table({}, None, {}, None), None
    names: list[str] = []
    for b in batches:
        names += [n for n in b.feature_names if n not in names]
    cols: dict[str, list[NDArray[Any]]] = {n: [] for n in names}
    textual = {n: False for n in names}
    for b in batches:
        idx = {n: i for i, n in enumerate(b.feature_names)}
        for n in names:
            i = idx.get(n)
            if i is None:
                cols[n].append(np.full(len(b), np.nan))
                continue
            num = b.numeric[:, i]
            txt = b.text[:, i] if b.text is not None else None
            if txt is not None and any(t is not None for t in txt.tolist()):
                textual[n] = True
                cols[n].append(np.asarray([t if t is not None else (None if np.isnan(v) else v)
                                           for t, v in zip(txt.tolist(), num.tolist(),
                                                           strict=True)], dtype=object))
            else:
                cols[n].append(num)
    features: dict[str, NDArray[Any]] = {}
    for n in names:
        parts = [p.astype(object) for p in cols[n]] if textual[n] else cols[n]
        arr = np.concatenate(parts)
        if textual[n]:
            arr = np.asarray([None if isinstance(v, float) and math.isnan(v) else v
                              for v in arr.tolist()], dtype=object)
        features[n] = arr
    labels = [b.prediction_label for b in batches]
    pred: NDArray[Any] | None
    if all(lab is not None for lab in labels):
        pred = np.concatenate([lab for lab in labels if lab is not None])
    else:
        pred = np.concatenate([b.prediction_score for b in batches])
        if not np.isfinite(pred).any():
            pred = None
    ts = np.concatenate([b.ts for b in batches])
    order = np.argsort(np.where(np.isfinite(ts), ts, -np.inf), kind="stable")
    table = Table({k: v[order] for k, v in features.items()},
                  None if pred is None else pred[order], {}, ts[order])
    merged = _concat(batches, order)
    return table, merged


def _concat(batches: Sequence[EventBatch], order: NDArray[np.int64]) -> EventBatch:
    """The batches as one (for offsets and segments), rows in ``order``."""
    def cat(name: str) -> NDArray[Any]:
        return np.concatenate([getattr(b, name) for b in batches])[order]

    n = int(order.size)
    none = np.full(n, None, dtype=object)
    return EventBatch(model=batches[0].model, feature_names=(), numeric=np.zeros((n, 0)),
                      text=None, ts=cat("ts"), prediction_score=np.full(n, np.nan),
                      prediction_label=None, event_id=none, model_version=none.copy(),
                      segment=cat("segment"), latency_ms=np.full(n, np.nan),
                      partition=cat("partition"), offset=cat("offset"))


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def analyse(
    reference: ReferenceProfile,
    batches: Sequence[EventBatch],
    changes: Sequence[Mapping[str, Any]] = (),
    *,
    segment: Mapping[str, str] | None = None,
    since: float | None = None,
    pane_size: int = 500,
    alpha: float = 0.05,
) -> Investigation:
    """The answer over the model's events (already filtered to the segment)."""
    table, merged = events_table(batches)
    n = len(table)
    seg = dict(segment or {})
    if n == 0 or merged is None:
        return Investigation(reference.model, seg, since, 0, reference.reference_id,
                             reference.size, False, [], None, None, pane_size, [], None, [],
                             alpha=alpha)
    report: Report = compare(reference, table, alpha=alpha, multivariate=False)
    ranked = sorted(report.features, key=lambda f: -(f.score / f.threshold
                                                     if f.threshold > 0 else 0.0))
    pred = next((f for f in report.features if f.kind == "prediction"), None)
    inputs = [f for f in ranked if f.kind != "prediction"]
    top = next((f for f in inputs if f.drift), inputs[0] if inputs else None)

    # per-pane statistics against the reference, panes of equal event counts in time order
    from driftline.detectors.tables import to_batch

    binner = Binner(reference)
    bins = binner.bins(to_batch(reference.model, table))
    size = max(min(pane_size, n // 8), 20) if n >= 160 else max(n // 4, 1)
    layout = binner.layout
    names = list(layout.names)
    panes: list[dict[str, Any]] = []
    scores: list[NDArray[np.float64]] = []
    ts = table.ts if table.ts is not None else np.full(n, np.nan)
    for i, start in enumerate(range(0, n - size + 1, size)):
        stop = start + size if start + 2 * size <= n else n  # the tail joins the last pane
        chi = chi_square(layout.ref_counts, binner.histogram(bins[start:stop]))
        scores.append(chi.statistic)
        t = ts[start:stop][np.isfinite(ts[start:stop])]
        offs = merged.offset[start:stop]
        panes.append({"index": i, "n": stop - start,
                      "start_ts": _finite(float(t.min())) if t.size else None,
                      "end_ts": _finite(float(t.max())) if t.size else None,
                      "first_offset": int(offs.min()), "last_offset": int(offs.max()),
                      "score": None})
        if stop == n:
            break
    change_point: dict[str, Any] | None = None
    ranked_changes: list[dict[str, Any]] = []
    if top is not None and panes:
        j = names.index(top.name)
        series = np.asarray([s[j] for s in scores])
        for p, v in zip(panes, series.tolist(), strict=True):
            p["score"] = _finite(float(v))
        cp = cusum(series)
        if cp is not None:
            at = panes[cp.index]
            change_point = {
                "pane": cp.index, "feature": top.name, "statistic": cp.statistic,
                "significant": bool(cp.statistic >= CHANGE_SIGNIFICANCE and top.drift),
                "ts": at["start_ts"], "offset": at["first_offset"],
                "mean_before": cp.before, "mean_after": cp.after,
            }
            ranked_changes = rank_changes(changes, at["start_ts"], at["end_ts"], reference.model)
    distributions = _distributions(reference, table, bins, binner,
                                   [f.name for f in ranked[:PLOTTED]])
    return Investigation(
        model=reference.model, segment=seg, since=since, n_events=n,
        reference_id=reference.reference_id, n_reference=reference.size, drift=report.drift,
        features=ranked, prediction=pred, top_feature=top.name if top else None,
        pane_size=size, panes=panes, change_point=change_point, changes=ranked_changes,
        distributions=distributions, tests=report.tests, alpha=alpha,
    )


def relative_time(seconds_before: float) -> str:
    """How a change event stands to the change pane's start: ``"120 s before"``, or
    ``"30 s after (inside the change pane)"`` for one the pane holds."""
    if seconds_before >= 0:
        return f"{seconds_before:.0f} s before"
    return f"{-seconds_before:.0f} s after (inside the change pane)"


def rank_changes(changes: Sequence[Mapping[str, Any]], start_ts: float | None,
                 end_ts: float | None, model: str) -> list[dict[str, Any]]:
    """Change events of ``model`` at or before the change pane's end, closest to its start
    first (the estimate is good to about one pane, so a change inside it still counts)."""
    if start_ts is None:
        return []
    end = end_ts if end_ts is not None else start_ts
    out = []
    for c in changes:
        ts = c.get("ts")
        if c.get("model") != model or not isinstance(ts, (int, float)) or ts > end:
            continue
        out.append({**c, "seconds_before": float(start_ts - ts)})
    return sorted(out, key=lambda c: abs(c["seconds_before"]))


def _spread(values: NDArray[np.float64]) -> list[float]:
    """At most ``SAMPLE`` of the values, sorted, evenly spread over their whole range (the
    smallest and the largest included): the CDF plots' points."""
    v = np.sort(values[np.isfinite(values)])
    if v.size <= SAMPLE:
        return v.tolist()
    return v[np.linspace(0, v.size - 1, SAMPLE).round().astype(np.intp)].tolist()


def _distributions(reference: ReferenceProfile, table: Table, bins: NDArray[np.int64],
                   binner: Binner, names: Sequence[str]) -> list[dict[str, Any]]:
    """Reference and current distributions of some columns, for the report's plots."""
    hist = binner.histogram(bins)
    layout = binner.layout
    cols = {c.name: c for c in reference.columns}
    out: list[dict[str, Any]] = []
    for name in names:
        j = layout.names.index(name)
        is_pred = layout.kinds[j] == "prediction"
        col = reference.prediction if is_pred else cols.get(name)
        if col is None:
            continue
        nb = int(layout.n_bins[j])
        d: dict[str, Any] = {"name": name, "kind": layout.kinds[j],
                             "reference_counts": layout.ref_counts[j, :nb].tolist(),
                             "current_counts": hist[j, :nb].tolist(),
                             "reference_missing": int(layout.ref_counts[j, -1]),
                             "current_missing": int(hist[j, -1])}
        if isinstance(col, NumericProfile):
            values = table.prediction if is_pred else table.features.get(name)
            cur = np.asarray(values, dtype=np.float64) if values is not None else np.zeros(0)
            d.update(type="numeric", edges=np.asarray(col.edges).tolist(), min=col.min,
                     max=col.max, reference_sample=_spread(np.asarray(col.sample, np.float64)),
                     current_sample=_spread(cur))
        elif isinstance(col, CategoricalProfile):
            d.update(type="categorical", categories=[*col.categories, "(other)"])
        out.append(d)
    return out


# -- gathering from Kafka -------------------------------------------------------------------
def gather(kafka: Mapping[str, Any], *, inference_topic: str, references_topic: str,
           changes_topic: str, model: str, segment: Mapping[str, str], since: float | None,
           timeout: float = 60.0, max_events: int = 1_000_000, key: bytes | None = None
           ) -> tuple[ReferenceProfile | None, list[EventBatch], list[dict[str, Any]], int]:
    """The model's reference, its events since ``since`` in the segment (the newest
    ``max_events`` at most, in batches), change events, and how many messages could not
    be decoded. ``key``: the snapshot key the workers sign references with (a signed
    reference is verified with it; raises SnapshotError when it does not verify)."""
    from driftline.detectors.serialization import verify_record
    from driftline.schemas.codecs import decode_change, decode_inference
    from driftline.streams.admin import UnknownTopicError, iter_to_end, read_compacted

    refs = read_compacted(kafka, references_topic, timeout)
    raw = refs.get(model.encode())
    reference = None if raw is None else ReferenceProfile.from_json(verify_record(raw, key))
    since_ms = None if since is None else max(int(since * 1000), 0)
    batches: list[EventBatch] = []
    bad = kept = 0
    chunk: list[tuple[bytes, int, int, float]] = []

    def flush() -> None:
        nonlocal bad, kept
        if not chunk:
            return
        vals, parts, offs, stamps = (list(x) for x in zip(*chunk, strict=True))
        res = decode_inference(vals, topic=inference_topic, partitions=parts, offsets=offs,
                               timestamps=stamps)
        bad += sum(1 for r in res.rejections if r.model in (None, model))
        b = res.batches.get(model)
        if b is not None:
            keep = segment_rows(b, segment)
            if since is not None:
                t = b.ts[keep]
                keep = keep[~(np.isfinite(t) & (t < since))]
            if keep.size:
                batches.append(b.take(keep))
                kept += int(keep.size)
                while kept - len(batches[0]) >= max_events:
                    kept -= len(batches.pop(0))
        chunk.clear()

    for msg in iter_to_end(kafka, inference_topic, timeout, since_ms=since_ms):
        value = msg.value()
        if value is None:
            continue
        ts_type, ts_ms = msg.timestamp()
        chunk.append((value, int(msg.partition() or 0), int(msg.offset() or 0),
                      ts_ms / 1000.0 if ts_type and ts_ms > 0 else math.nan))
        if len(chunk) >= 2000:
            flush()
    flush()
    changes: list[dict[str, Any]] = []
    try:
        for msg in iter_to_end(kafka, changes_topic, timeout):
            try:
                c = decode_change(msg.value() or b"")
            except ValueError:
                continue
            if c.get("model") == model:
                changes.append(c)
    except UnknownTopicError:
        pass
    return reference, batches, changes, bad
