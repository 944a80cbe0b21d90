"""Binning against a reference: the vectorised ``Binner.bins`` against the per-column
searchsorted it replaced (kept here as the oracle), on seeded random references and
batches with every edge case of the values and the feature order."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from driftline.detectors import binning
from driftline.detectors.binning import Binner
from driftline.detectors.reference import NumericProfile, build_profile
from driftline.schemas.models import EventBatch
from tests.synth import make_batch


def _oracle_bins(binner: Binner, batch: EventBatch) -> np.ndarray:
    """The previous implementation: one searchsorted per numeric column."""
    cols = binner._columns
    layout = binner.layout
    out = np.full((len(batch), len(cols)), layout.missing_bin, dtype=np.int64)
    index = {name: i for i, name in enumerate(batch.feature_names)}
    columns = np.ascontiguousarray(batch.numeric.T)
    for j, col in enumerate(cols):
        if layout.kinds[j] == "prediction":
            values, texts = batch.prediction_score, batch.prediction_label
        else:
            i = index.get(col.name)
            if i is None:
                continue
            values = columns[i]
            texts = batch.text[:, i] if batch.text is not None else None
        if isinstance(col, NumericProfile):
            b = np.searchsorted(col.edges, values, side="right")
            out[:, j] = np.where(np.isfinite(values), b, layout.missing_bin)
        else:
            out[:, j] = binner._categorical_bins(j, col, values, texts)
    return out


def _reference(rng: np.random.Generator, k: int, prediction: str) -> tuple[object, list[str]]:
    names = [f"f{i}" for i in range(k)]
    cols: dict[str, object] = {}
    for name in names:
        kind = rng.integers(0, 5)
        if kind == 0:  # few distinct values: few edges
            cols[name] = rng.integers(0, 3, 400).astype(float)
        elif kind == 1:  # many bins: more edges than are compared at once
            cols[name] = rng.normal(size=400)
        elif kind == 2:
            cols[name] = rng.choice(["a", "b", "c"], 400)
        elif kind == 3:  # constant: no edges
            cols[name] = np.full(400, 2.5)
        else:
            cols[name] = rng.lognormal(size=400)
    pred = {"none": None, "score": rng.random(400),
            "label": rng.choice(["yes", "no"], 400)}[prediction]
    bins = int(rng.choice([4, 16, 64]))
    prof = build_profile("m", cols, prediction=pred, bins=bins, multivariate=False,
                         categorical=[n for n in names if isinstance(cols[n][0], str)])  # type: ignore[index]
    return prof, names


def _values(rng: np.random.Generator, n: int, edges: np.ndarray) -> np.ndarray:
    v = rng.normal(size=n) * 2
    if edges.size:  # values exactly on edges, and -0.0 next to 0.0
        on = rng.random(n) < 0.2
        v[on] = rng.choice(edges, on.sum())
    special = rng.random(n) < 0.1
    v[special] = rng.choice([np.nan, np.inf, -np.inf, -0.0, 0.0, 1e308, -1e308], special.sum())
    return v


@pytest.mark.parametrize("seed", range(60))
def test_bins_equal_the_per_column_searchsorted(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # odd seeds compare one edge rank at a time (as large batches do), even ones at once
    monkeypatch.setattr(binning, "_BROADCAST_CELLS", 0 if seed % 2 else 1 << 20)
    rng = np.random.default_rng(seed)
    prediction = ("none", "score", "label")[seed % 3]
    prof, names = _reference(rng, int(rng.integers(1, 8)), prediction)
    binner = Binner(prof)
    for _ in range(12 if seed % 5 == 0 else 4):  # orders through one binner (plans cached, some evicted)
        n = int(rng.choice([0, 1, 7, 50]))
        order = [x for x in names if rng.random() < 0.85] + (["extra"] if rng.random() < 0.3 else [])
        rng.shuffle(order)
        edges = {c.name: c.edges for c in prof.columns if isinstance(c, NumericProfile)}
        x = np.column_stack([_values(rng, n, edges.get(name, np.zeros(0))) for name in order]) \
            if order else np.zeros((n, 0))
        score = _values(rng, n, prof.prediction.edges) if isinstance(
            prof.prediction, NumericProfile) else np.full(n, np.nan)
        batch = make_batch(x.reshape(n, len(order)), names=tuple(order), prediction=score)
        if prediction == "label":
            batch = dataclasses.replace(batch, prediction_label=np.asarray(
                [rng.choice(["yes", "no", "maybe", None]) for _ in range(n)], dtype=object))
        if rng.random() < 0.3 and order:  # text values in some columns
            text = np.full((n, len(order)), None, dtype=object)
            text[rng.random((n, len(order))) < 0.3] = "a"
            batch = dataclasses.replace(batch, text=text)
        got, want = binner.bins(batch), _oracle_bins(binner, batch)
        assert got.dtype == want.dtype == np.int64
        np.testing.assert_array_equal(got, want)


def test_a_point_mass_gets_a_bin_of_its_own_so_its_drift_is_seen() -> None:
    """A binary feature with 2% ones: every quantile edge is 0, so it used to have one
    populated bin and no drift could move it. The mass at 0 now has a bin of its own;
    a rise to 10% ones is flagged on that feature, and the unchanged stream is not."""
    from driftline.detectors.monitor import ModelMonitor, MonitorConfig

    rng = np.random.default_rng(0)
    ref = build_profile("m", {"rare": (rng.random(5000) < 0.02).astype(float),
                              "f": rng.normal(size=5000)}, created_at=0.0, multivariate=False)
    col = ref.columns[0]
    assert isinstance(col, NumericProfile) and col.name == "rare"
    assert col.counts.tolist() == [0, int(col.counts[1]), int(col.counts[2])]
    assert col.counts[2] > 50  # the ones have their own bin
    fired: dict[float, list[str]] = {}
    for rate in (0.02, 0.10):
        mon = ModelMonitor(ref, MonitorConfig(pane_size=1000, min_samples=2000))
        fired[rate] = []
        for i in range(20):
            x = np.column_stack([(rng.random(1000) < rate).astype(float), rng.normal(size=1000)])
            for ev in mon.update(make_batch(x, offset0=i * 1000, names=("rare", "f"))):
                fired[rate] += [a.feature for a in ev.alerts if a.state == "firing"]
    assert fired[0.02] == [] and fired[0.10] and fired[0.10][0] == "rare"
