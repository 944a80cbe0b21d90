"""Shadow mode: pairing by event id, bounded stores, agreement statistics, alerts, state."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry
from synth import make_batch

from driftline.detectors.monitor import MonitorConfig
from driftline.detectors.shadow import PendingSide, ShadowBook, ShadowConfig
from driftline.detectors.stats import jensen_shannon, psi
from driftline.schemas.codecs import encode_envelope_rows
from driftline.schemas.limits import Limits
from driftline.schemas.models import EventBatch
from driftline.streams.cli.shadow import merge_summaries
from driftline.streams.metrics import WorkerMetrics
from driftline.streams.model_state import ModelState
from driftline.streams.processor import Incoming, Processor


def obj(values: list[object]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def preds(model: str, ids: list[str | None], score: np.ndarray, ts: float | np.ndarray = 0.0,
          shadow_of: str | None = None, labels: list[str] | None = None) -> EventBatch:
    n = len(ids)
    b = make_batch(np.zeros((n, 1)), model=model, ts=np.broadcast_to(ts, (n,)).copy(),
                   prediction=np.asarray(score, dtype=np.float64))
    return replace(b, event_id=obj(list(ids)),
                   shadow_of=None if shadow_of is None else obj([shadow_of] * n),
                   prediction_label=None if labels is None else obj(list(labels)))


def test_pending_side_pairs_each_entry_once_and_expires_bounded() -> None:
    side = PendingSide()
    side.put(obj(["a", "b", "c", "b"]), np.array([1.0, 2.0, 3.0, 4.0]), np.arange(4.0),
             obj([None] * 4))
    rows, slots = side.take(obj(["x", "b", "a", "b"]))
    assert rows.tolist() == [1, 2]  # "b" pairs with its newest entry, once
    assert side.score[slots].tolist() == [3.0, 0.0]
    assert side.n_alive == 2  # "c" and the older, shadowed "b"
    assert side.expire(cutoff=2.5, max_pending=10) == 1  # the old "b" (ts 2) leaves unpaired
    assert side.take(obj(["c"]))[0].tolist() == [0]
    side.put(obj([f"e{i}" for i in range(5000)]), np.full(5000, 9.0), np.zeros(5000),
             obj([None] * 5000))
    assert side.expire(cutoff=0.0, max_pending=100) == 4900
    assert side.n_alive == 100 and len(side.index) == 100
    assert side.take(obj(["e4899", "e4900"]))[0].tolist() == [1]  # the oldest went first


def feed(book: ShadowBook, rng: np.random.Generator, batches: int, shift: float,
         per: int = 250, t0: float = 1000.0, labels: bool = False, tag: str = "") -> list:
    """Interleaved live and candidate batches (candidate order reversed, one batch late)."""
    evals = []
    prev = None
    for k in range(batches):
        ids = [f"{tag}{k}-{i}" for i in range(per)]
        s = rng.random(per)
        ts = t0 + k
        lab = [("yes" if v > 0.5 else "no") for v in s] if labels else None
        for u in book.add_live(preds("live", ids, s, ts, labels=lab)):
            evals += u.evaluations
        cand = preds("cand", ids[::-1], np.clip(s[::-1] + shift, 0, 1), ts, "live",
                     labels=None if lab is None else [
                         ("yes" if v > 0.5 else "no") for v in np.clip(s[::-1] + shift, 0, 1)])
        if prev is not None:
            u = book.add_shadow("cand", prev)
            if u is not None:
                evals += u.evaluations
        prev = cand
    return evals


def test_identical_candidate_agrees_and_stays_silent() -> None:
    book = ShadowBook("live", ShadowConfig())
    book.add_shadow("cand", preds("cand", ["warmup"], np.zeros(1), 1000.0, "live"))
    evals = feed(book, np.random.default_rng(0), 40, 0.0)
    assert evals and all(e.alert is None for e in evals)
    last = evals[-1]
    assert last.agreement == 1.0 and last.score_diff_mean == 0.0 and last.js == 0.0
    s = book.summary()[0]
    assert s["pairs_total"] == 39 * 250 and s["firing"] is False


def test_shifted_candidate_fires_and_resolves_when_back() -> None:
    book = ShadowBook("live", ShadowConfig(min_pairs=1000, pane_pairs=500, panes=4))
    book.add_shadow("cand", preds("cand", ["warmup"], np.zeros(1), 1000.0, "live"))
    rng = np.random.default_rng(1)
    evals = feed(book, rng, 24, 0.0, tag="a")
    evals += feed(book, rng, 24, 0.1, t0=2000.0, tag="b")
    evals += feed(book, rng, 40, 0.0, t0=3000.0, tag="c")
    alerts = [e.alert for e in evals if e.alert is not None]
    assert [a.state for a in alerts] == ["firing", "resolved"]
    a = alerts[0]
    assert (a.kind, a.model, a.feature, a.statistic) == ("shadow", "live", "cand", "agreement")
    assert a.score < 0.95 and a.window.n >= 1000
    diff = next(f for f in a.top_features if f.statistic == "score_diff_mean")
    assert 0.0 < diff.score <= 0.1  # fires while the shift is filling the window


def test_labels_compare_by_equality_and_distance_reported() -> None:
    book = ShadowBook("live", ShadowConfig())
    book.add_shadow("cand", preds("cand", ["w"], np.zeros(1), 1000.0, "live", labels=["no"]))
    evals = feed(book, np.random.default_rng(2), 20, 0.2, labels=True)
    last = evals[-1]
    # labels flip where s in (0.3, 0.5]: about 20% disagree, whatever the score tolerance
    assert 0.75 < last.agreement < 0.85
    assert last.js > 0.05  # the label distributions differ
    # the distances are the statistics module's, of the window's label histograms
    ring = book.candidates["cand"].ring
    nb = book.edges.size + 1
    live, cand = ring.totals["live"][None, nb:], ring.totals["cand"][None, nb:]
    assert last.js == pytest.approx(float(jensen_shannon(live, cand)[0]), rel=1e-12)
    assert last.psi == pytest.approx(float(psi(live, cand)[0]), rel=1e-12)
    assert last.psi > 0.01


def test_unpaired_predictions_expire_by_event_time_and_are_counted() -> None:
    book = ShadowBook("live", ShadowConfig(ttl_s=10.0))
    book.add_shadow("cand", preds("cand", ["s0", "s1"], np.zeros(2), 0.0, "live"))
    book.add_live(preds("live", ["l0", "s1"], np.zeros(2), 5.0))
    book.add_live(preds("live", ["l1"], np.zeros(1), 30.0))
    s = book.summary()[0]
    assert (s["pairs_total"], s["unpaired_shadow"], s["unpaired_live"]) == (1, 1, 1)
    assert s["pending_live"] == 0  # l1 is not kept: the candidate is silent beyond the TTL


def test_a_silent_candidate_pins_no_live_predictions() -> None:
    book = ShadowBook("live", ShadowConfig(ttl_s=10.0))
    book.add_shadow("cand", preds("cand", ["s0"], np.zeros(1), 0.0, "live"))
    book.add_live(preds("live", ["a", "b"], np.zeros(2), 5.0))
    assert book.summary()[0]["pending_live"] == 2
    book.add_live(preds("live", [f"x{i}" for i in range(100)], np.zeros(100), 50.0))
    s = book.summary()[0]
    assert s["pending_live"] == 0 and s["unpaired_live"] == 2 and s["unpaired_shadow"] == 1
    book.add_shadow("cand", preds("cand", ["y0"], np.zeros(1), 51.0, "live"))
    book.add_live(preds("live", ["y0", "y1"], np.zeros(2), 51.0))  # back: pairs again
    s = book.summary()[0]
    assert s["pairs_total"] == 1 and s["pending_live"] == 1


def test_candidates_are_bounded_and_ids_required() -> None:
    book = ShadowBook("live", ShadowConfig(max_candidates=2))
    for c in ("c1", "c2", "c3"):
        book.add_shadow(c, preds(c, ["a", "b"], np.zeros(2), 0.0, "live"))
    assert list(book.candidates) == ["c1", "c2"] and book.ignored == 2
    assert book.add_shadow("c1", preds("c1", [None], np.zeros(1), 0.0, "live")) is None


def test_book_snapshot_round_trip_is_exact_and_continues_identically() -> None:
    rng = np.random.default_rng(5)
    a = ShadowBook("live", ShadowConfig(pane_pairs=300))
    a.add_shadow("cand", preds("cand", ["w"], np.zeros(1), 1000.0, "live"))
    feed(a, rng, 7, 0.08)
    a.add_shadow("cand", preds("cand", ["w", "w", "late"], np.ones(3), 1010.0, "live"))
    blob = a.snapshot()
    b = ShadowBook.restore(blob, ShadowConfig(pane_pairs=300))
    assert b.snapshot() == blob
    ea = feed(a, np.random.default_rng(9), 12, 0.08, tag="z")
    eb = feed(b, np.random.default_rng(9), 12, 0.08, tag="z")
    assert [(e.window.pane, e.agreement, e.alert) for e in ea] == \
        [(e.window.pane, e.agreement, e.alert) for e in eb]
    assert a.snapshot() == b.snapshot()


def test_shadow_config_is_validated() -> None:
    with pytest.raises(ValueError):
        ShadowConfig(min_pairs=0)
    with pytest.raises(ValueError):
        ShadowConfig(tolerance=float("nan"))


def envelope(model: str, ids: list[str], score: np.ndarray, shadow_of: str | None) -> bytes:
    evs = []
    for i, s in zip(ids, score.tolist(), strict=True):
        ev: dict[str, object] = {"event_id": i, "ts": 1000.0, "features": {"a": s},
                                 "prediction": s}
        if shadow_of:
            ev["shadow_of"] = shadow_of
        evs.append(ev)
    return encode_envelope_rows(model, evs)


def test_processor_pairs_shadow_events_in_the_live_models_state() -> None:
    """Both models keep their own monitors; pairs live in the live model's state, which
    survives a snapshot round trip exactly and reports a summary."""
    registry = CollectorRegistry()
    proc = Processor(config=MonitorConfig(pane_size=500, min_samples=1000,
                                          calibration_rounds=20),
                     limits=Limits(), metrics=WorkerMetrics(registry),
                     auto_reference_events=1000,
                     shadow=ShadowConfig(min_pairs=1000, pane_pairs=500))
    rng = np.random.default_rng(3)
    off = 0
    alerts = []
    for k in range(12):
        ids = [f"{k}-{i}" for i in range(400)]
        s = rng.random(400)
        shift = 0.2 if k >= 4 else 0.0
        msgs = [envelope("live", ids, s, None), envelope("cand", ids, s + shift, "live")]
        out = proc.process([Incoming("t", 0, off + j, m) for j, m in enumerate(msgs)])
        off += len(msgs)
        alerts += [a for a in out.alerts if a.kind == "shadow"]
    live, cand = proc.models["live@0"], proc.models["cand@0"]
    assert cand.shadow is None and cand.events_applied == 12 * 400  # monitored as itself
    assert live.shadow is not None
    assert [a.state for a in alerts] == ["firing"] and alerts[0].feature == "cand"
    summary = live.shadow.summary()[0]
    assert summary["pairs_total"] == 12 * 400 and summary["firing"]
    assert live.alerts_firing >= 1
    blob = live.snapshot()
    again = ModelState.restore(blob, live.reference, proc.config)
    assert again.snapshot() == blob
    rows = merge_summaries([{"model": "live", "shadow": [summary]},
                            {"model": "live", "shadow": [summary]}])
    assert rows[0]["verdict"] == "diverged" and rows[0]["pairs_total"] == 2 * 12 * 400
    text = orjson.dumps(rows).decode()
    assert '"candidate":"cand"' in text
    labels = {"model": "live", "candidate": "cand"}
    assert registry.get_sample_value("driftline_shadow_pairs_total", labels) == 12 * 400
    assert registry.get_sample_value("driftline_shadow_agreement_ratio", labels) < 0.95
    assert registry.get_sample_value("driftline_shadow_score_diff_count", labels) == 12 * 400
    assert registry.get_sample_value("driftline_quality_metric", {
        "model": "live", "feature": "a", "metric": "missing_rate"}) == 0.0
    assert registry.get_sample_value("driftline_alerts_total", {
        "model": "live", "kind": "shadow", "state": "firing"}) == 1
    assert registry.get_sample_value("driftline_alerts_total", {  # there from the pairing's
        "model": "live", "kind": "shadow", "state": "resolved"}) == 0  # start, at 0
    assert registry.get_sample_value("driftline_drift_state", {
        "model": "live", "kind": "shadow", "feature": "cand"}) == 1.0
    proc.drop(["live@0", "cand@0"])
    assert registry.get_sample_value("driftline_shadow_pairs_total", labels) is None


def test_report_skips_status_records_it_cannot_read() -> None:
    good = {"candidate": "c", "pairs_total": 1500, "window_pairs": 1500,
            "window_comparable": 1500, "window_agreeing": 1490, "firing": False,
            "score_diff_mean": 0.001, "min_agreement": 0.95, "min_pairs": 1000}
    rows = merge_summaries([
        [], {"shadow": "x"}, {"shadow": [1, {"candidate": 3}]},
        {"shadow": [{**good, "pairs_total": "many"}]}, {"shadow": [{**good, "js": "far"}]},
        {"shadow": [good]},
    ])
    assert len(rows) == 1 and rows[0]["pairs_total"] == 1500
    assert rows[0]["verdict"] == "safe" and abs(rows[0]["agreement"] - 1490 / 1500) < 1e-12
    low = merge_summaries([{"shadow": [{**good, "window_comparable": 999}]}])
    assert low[0]["verdict"] == "insufficient"
