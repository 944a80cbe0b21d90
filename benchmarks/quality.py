"""Detection quality: false alerts per million events without drift, and detection delay.

Same seeded streams for every contender, in one run: driftline's calibrated pane test
(defaults: 5 x 1,000-event panes, target 1 false alert per 1,000,000 events), river's
ADWIN and KSWIN on every feature (defaults), and scipy's two-sample KS per feature with
a Bonferroni correction at 0.05 on the same 5,000-event windows (the convention of
alibi-detect's KSDrift). Delays count events from the change to the first alert that
names the drifted feature.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from driftline.benchmarks.report import write
from driftline.detectors.monitor import ModelMonitor
from driftline.detectors.reference import ReferenceProfile, build_profile
from driftline.schemas.models import EventBatch

F = 20
CHANGE = 20_000
STREAM = 40_000
CATS = np.array(["a", "b", "c", "d", "e"], dtype=object)


def _stream(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, F))
    cat = CATS[rng.choice(5, size=n, p=[0.4, 0.25, 0.15, 0.1, 0.1])]
    return x, cat


def _batch(x: np.ndarray, cat: np.ndarray, start: int) -> EventBatch:
    n = x.shape[0]
    names = (*[f"f{i}" for i in range(F)], "cat")
    numeric = np.concatenate([x, np.full((n, 1), np.nan)], axis=1)
    text = np.full((n, F + 1), None, dtype=object)
    text[:, F] = cat
    nan = np.full(n, np.nan)
    none = np.full(n, None, dtype=object)
    return EventBatch("q", names, numeric, text, nan, nan.copy(), None, none, none, none,
                      nan.copy(), np.zeros(n, np.int64), np.arange(start, start + n))


def _profile(seed: int = 0) -> tuple[ReferenceProfile, np.ndarray]:
    rng = np.random.default_rng(seed)
    x, cat = _stream(rng, 20_000)
    cols: dict[str, Any] = {f"f{i}": x[:, i] for i in range(F)}
    cols["cat"] = cat
    return build_profile("q", cols, categorical=["cat"]), x


SCENARIOS: dict[str, tuple[str, Callable[[np.ndarray, np.ndarray], None]]] = {
    "mean +0.5σ (f3)": ("f3", lambda x, c: x.__setitem__((slice(CHANGE, None), 3),
                                                          x[CHANGE:, 3] + 0.5)),
    "variance ×2.25 (f5)": ("f5", lambda x, c: x.__setitem__((slice(CHANGE, None), 5),
                                                              x[CHANGE:, 5] * 1.5)),
    "category mix (cat)": ("cat", lambda x, c: c.__setitem__(
        slice(CHANGE, None), CATS[np.random.default_rng(9).choice(
            5, size=len(c) - CHANGE, p=[0.25, 0.25, 0.2, 0.15, 0.15])])),
}


def _driftline_alarms(profile: ReferenceProfile, x: np.ndarray, cat: np.ndarray,
                      chunk: int = 5000) -> list[tuple[int, list[str]]]:
    mon = ModelMonitor(profile)
    out = []
    for k in range(0, len(x), chunk):
        for ev in mon.update(_batch(x[k : k + chunk], cat[k : k + chunk], k)):
            for a in ev.alerts:
                if a.state == "firing":
                    out.append((ev.index, [f.name for f in a.top_features if f.score > f.threshold]))
    return out


def _scipy_alarms(ref: np.ndarray, x: np.ndarray, window: int = 5000, pane: int = 1000,
                  alpha: float = 0.05) -> list[tuple[int, list[str]]]:
    out = []
    sample = ref[:5000]
    for end in range(window, len(x) + 1, pane):
        w = x[end - window : end]
        p = np.array([stats.ks_2samp(w[:, j], sample[:, j]).pvalue for j in range(x.shape[1])])
        hit = [f"f{j}" for j in np.flatnonzero(p < alpha / x.shape[1])]
        if hit:
            out.append((end - 1, hit))
    return out


def _river_alarms(make: Callable[[], Any], x: np.ndarray) -> list[tuple[int, list[str]]]:
    out = []
    for j in range(x.shape[1]):
        d = make()
        for i, v in enumerate(x[:, j].tolist()):
            d.update(v)
            if d.drift_detected:
                out.append((i, [f"f{j}"]))
    return sorted(out)


def _delay(alarms: list[tuple[int, list[str]]], feature: str) -> int | None:
    for idx, feats in alarms:
        if idx >= CHANGE and feature in feats:
            return idx - CHANGE
    return None


def run(events: int = 1_000_000, json_out: Path | None = None, quick: bool = False) -> dict[str, Any]:
    from river import drift as rdrift

    profile, ref = _profile()
    rng = np.random.default_rng(1)
    results: dict[str, dict[str, Any]] = {}

    n_dl = events // 4 if quick else events
    x, cat = _stream(rng, n_dl)
    fa = _driftline_alarms(profile, x, cat)
    results["driftline (calibrated chi2, target 1/1M)"] = {
        "false_alerts_per_million": len(fa) / n_dl * 1e6, "events_no_drift": n_dl}
    n_sc = min(n_dl, 50_000 if quick else 200_000)
    fa = _scipy_alarms(ref, x[:n_sc])
    results["scipy ks_2samp + Bonferroni 0.05"] = {
        "false_alerts_per_million": len(fa) / n_sc * 1e6, "events_no_drift": n_sc}
    for name, make, n in (("river ADWIN (per feature)", rdrift.ADWIN, 10_000 if quick else 50_000),
                          ("river KSWIN (per feature)", rdrift.KSWIN, 1_000 if quick else 5_000)):
        fa = _river_alarms(make, x[:n])
        results[name] = {"false_alerts_per_million": len(fa) / n * 1e6, "events_no_drift": n}

    for scen, (feature, inject) in SCENARIOS.items():
        srng = np.random.default_rng(2)
        xs, cs = _stream(srng, STREAM)
        inject(xs, cs)
        results["driftline (calibrated chi2, target 1/1M)"][scen] = _delay(
            _driftline_alarms(profile, xs, cs, chunk=500), feature)
        numeric_only = feature != "cat"
        results["scipy ks_2samp + Bonferroni 0.05"][scen] = _delay(
            _scipy_alarms(ref, xs), feature) if numeric_only else "n/a"
        j = int(feature[1:]) if numeric_only else None
        for name, make in (("river ADWIN (per feature)", rdrift.ADWIN),
                           ("river KSWIN (per feature)", rdrift.KSWIN)):
            if j is None or (quick and "KSWIN" in name):
                results[name][scen] = "n/a"
                continue
            sub = xs[: CHANGE + 20_000 if "ADWIN" in name else CHANGE + 5_000, j : j + 1]
            results[name][scen] = _delay(
                [(i, [feature]) for i, _ in _river_alarms(make, sub)], feature)

    header = ("detector", "false alerts / 1M events", *SCENARIOS, "no-drift events")
    table = [
        (name, r["false_alerts_per_million"], *[("missed" if r[s] is None else r[s])
                                                 for s in SCENARIOS], r["events_no_drift"])
        for name, r in results.items()
    ]
    data = {"results": results, "change_at": CHANGE, "features": F + 1}
    write("quality", data, table, header, json_out=json_out)
    return data
