"""Offline front of the engine: one two-sample comparison, or a replay as a stream.

Both use the combined family of the streaming engine: a chi-square test per column plus,
when the reference has them, the multivariate statistics (RFF kernel MMD, covariance,
PCA reconstruction error). The JSON report lists every statistic with its score,
threshold and p-value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from driftline.detectors.binning import Binner, block_histograms
from driftline.detectors.exact import ks_2samp
from driftline.detectors.monitor import Evaluation, ModelMonitor, MonitorConfig, multivariate_for
from driftline.detectors.reference import NumericProfile, ReferenceProfile, build_profile
from driftline.detectors.segments import SEGMENT_SHARE, parse
from driftline.detectors.stats import chi_square, jensen_shannon, ks_binned, psi
from driftline.detectors.tables import PREDICTION, Table, segment_codes, to_batch

#: Fewest rows of a segment the two-sample mode tests: five per bin of the widest column
#: (the chi-square approximation's rule of thumb); smaller segments are listed, not tested.
ROWS_PER_BIN = 5


@dataclass(frozen=True)
class FeatureResult:
    """One column's verdict in a two-sample comparison."""

    name: str
    kind: str
    drift: bool
    statistic: str
    score: float
    threshold: float
    p_value: float
    psi: float
    js: float
    ks: float | None


@dataclass(frozen=True)
class Report:
    """The answer of ``driftline evaluate``."""

    drift: bool
    features: list[FeatureResult]
    alerts: list[dict[str, Any]] = field(default_factory=list)
    mode: str = "two-sample"
    n_reference: int = 0
    n_current: int = 0
    alpha: float | None = None
    #: the multivariate statistics: name, kind, drift, score, threshold, p_value, top
    multivariate: list[dict[str, Any]] = field(default_factory=list)
    tests: int = 0  # size of the family the level is split over (Bonferroni)
    #: stream mode: the last window held fewer than ``min_samples`` events (or no window
    #: closed), so it decided nothing: "no drift" would claim what was not tested
    insufficient: bool = False
    window_events: int | None = None  # stream mode: events in the last window
    min_samples: int | None = None  # stream mode: events a window needs to decide
    #: reference columns the current file lacks (not tested: no values, not drift)
    absent: list[str] = field(default_factory=list)
    #: current columns the reference has no profile of (not tested)
    ignored: list[str] = field(default_factory=list)
    #: two-sample mode with ``segment_<key>`` columns: each segment's verdict (segment,
    #: rows, alpha, insufficient, drift, drifted columns, smallest p-value)
    segments: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "drift": self.drift,
            "insufficient": self.insufficient,
            "window_events": self.window_events,
            "min_samples": self.min_samples,
            "absent": self.absent,
            "ignored": self.ignored,
            "mode": self.mode,
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "alpha": self.alpha,
            "tests": self.tests,
            "features": [f.__dict__ for f in self.features],
            "multivariate": self.multivariate,
            "alerts": self.alerts,
            "segments": self.segments,
        }


def profile_table(model: str, table: Table, *, source: str = "file", bins: int = 16) -> ReferenceProfile:
    """A reference profile from a data file's table."""
    return build_profile(model, table.features, prediction=table.prediction, source=source, bins=bins)


def compare(reference: ReferenceProfile, current: Table, *, alpha: float = 0.05,
            multivariate: bool = True) -> Report:
    """Two-sample test of every column and multivariate statistic at family-wise ``alpha``.

    The per-column decision is the chi-square homogeneity test on the reference's
    quantile bins; numeric columns also get the exact two-sample KS statistic on the raw
    values against the reference's bounded sample. With the reference's multivariate
    statistics (``multivariate``), the Bonferroni family is the columns plus those.

    With ``segment_<key>`` columns, each segment's rows are tested too, as the workers
    do: the whole file spends ``1 - SEGMENT_SHARE`` of ``alpha``, the segments the rest,
    each in proportion to its rows (Bonferroni over its columns).
    """
    binner = Binner(reference)
    batch = to_batch(reference.model, current)
    segments, codes = segment_codes(current)
    whole_alpha = alpha * (1.0 - SEGMENT_SHARE) if segments else alpha
    bins = binner.bins(batch)
    hist = binner.histogram(bins)
    ref = binner.layout.ref_counts
    chi = chi_square(ref, hist)
    have = set(current.features) | ({PREDICTION} if current.prediction is not None else set())
    names = binner.layout.names
    kinds = binner.layout.kinds
    absent = [n for n, k in zip(names, kinds, strict=True)
              if (PREDICTION if k == "prediction" else n) not in have]
    tested = np.asarray([n not in absent for n in names], dtype=bool)
    profiled = set(reference.feature_names)
    ignored = [n for n in current.features if n not in profiled]
    # the multivariate statistics need every column: with one absent they would measure
    # its absence, not a drift
    found = multivariate_for(reference, binner) if multivariate and not absent else None
    mv = None
    if found is not None:
        model, encoder = found
        mv = model.evaluate(model.pane_sums(encoder.encode(batch, bins)), len(batch))
    m = max(int(tested.sum()), 1) + (0 if mv is None else len(mv.names))
    level = whole_alpha / m
    thr = stats.chi2.isf(level, np.maximum(chi.df, 1.0))
    drift = (chi.p_value <= level) & tested
    if mv is not None:
        mv = mv.decided(np.where(np.isfinite(mv.p_value), mv.p_value, 1.0) <= level, level)
    p_psi, p_js = psi(ref, hist), jensen_shannon(ref, hist)
    cols = [*reference.columns, *([reference.prediction] if reference.prediction else [])]
    out: list[FeatureResult] = []
    for j, col in enumerate(cols):
        if not tested[j]:
            continue
        ks: float | None = None
        if isinstance(col, NumericProfile):
            values = batch.prediction_score if binner.layout.kinds[j] == "prediction" else (
                batch.column(col.name))
            ks = ks_2samp(values, col.sample).statistic
        out.append(
            FeatureResult(
                name=col.name,
                kind=binner.layout.kinds[j],
                drift=bool(drift[j]),
                statistic="chi2",
                score=float(chi.statistic[j]),
                threshold=float(thr[j]),
                p_value=float(chi.p_value[j]),
                psi=float(p_psi[j]),
                js=float(p_js[j]),
                ks=None if ks is None or np.isnan(ks) else float(ks),
            )
        )
    _ = ks_binned  # binned KS is reported by the streaming path
    segs = _compare_segments(binner, bins, segments, codes, tested, alpha * SEGMENT_SHARE)
    fired = bool(drift.any()) or (mv is not None and bool(mv.drift.any())) or any(
        s["drift"] for s in segs)
    return Report(fired, out, [], "two-sample", reference.size, len(current), alpha,
                  [] if mv is None else mv.to_dicts(), m, absent=absent, ignored=ignored,
                  segments=segs)


def _compare_segments(binner: Binner, bins: NDArray[np.int64], segments: list[dict[str, str]],
                      codes: NDArray[np.int64], tested: NDArray[np.bool_],
                      alpha: float) -> list[dict[str, Any]]:
    """Every segment's chi-square tests at its traffic share of ``alpha``."""
    if not segments:
        return []
    layout = binner.layout
    rows = np.bincount(codes[codes >= 0], minlength=len(segments))
    total = int(rows.sum())
    least = ROWS_PER_BIN * int(np.max(layout.n_bins))
    columns = max(int(tested.sum()), 1)
    hists = block_histograms(bins, codes, 0, len(segments), bins.shape[1], layout.width)
    out: list[dict[str, Any]] = []
    for g, seg in enumerate(segments):
        n = int(rows[g])
        share = alpha * n / total
        res: dict[str, Any] = {"segment": seg, "rows": n, "alpha": share,
                               "insufficient": n < least, "drift": False,
                               "drifted": [], "p_min": None}
        if not res["insufficient"]:
            chi = chi_square(layout.ref_counts, hists[g])
            p = np.where(tested, chi.p_value, 1.0)
            hit = np.flatnonzero(p <= share / columns)
            res["drift"] = bool(hit.size)
            res["drifted"] = [layout.names[j] for j in hit[np.argsort(p[hit], kind="stable")]]
            res["p_min"] = float(p.min())
        out.append(res)
    return out


def replay(
    reference: ReferenceProfile, current: Table, *, window: int, config: MonitorConfig | None = None
) -> Report:
    """Replay ``current`` as a stream with a window of ``window`` rows (5 panes)."""
    panes = 5 if window >= 5 else 1
    cfg = config or MonitorConfig(
        panes=panes, pane_size=max(window // panes, 1), min_samples=max(window // 2, 1)
    )
    mon = ModelMonitor(reference, cfg)
    alerts: list[dict[str, Any]] = []
    last = None
    last_of: dict[str, Evaluation] = {}  # each segment's last window, in order of first sight
    chunk = max(cfg.pane_size, 1)
    for start in range(0, len(current), chunk):
        for ev in mon.update(to_batch(reference.model, current, start, start + chunk)):
            if ev.segment:
                last_of[ev.segment] = ev
            else:  # the feature table is the whole model's window
                last = ev
            for a in ev.alerts:
                alerts.append({
                    "index": ev.index,
                    "segment": a.segment,  # None: the whole model
                    "kind": a.kind,
                    "state": a.state,
                    "features": list(dict.fromkeys(  # a feature once, by its first score
                        f.name for f in a.top_features if f.score > f.threshold)) or [a.feature],
                    "statistic": a.statistic,
                    "score": a.score,
                    "threshold": a.threshold,
                    "alert_id": a.alert_id,
                })
    features: list[FeatureResult] = []
    if last is not None:
        for j, name in enumerate(last.names):
            features.append(FeatureResult(
                name=name, kind=last.kinds[j], drift=bool(last.drift[j]), statistic="chi2",
                score=float(last.chi2[j]), threshold=float(last.threshold[j]),
                p_value=float(last.p_value[j]), psi=float(last.psi[j]), js=float(last.js[j]),
                ks=None if np.isnan(last.ks[j]) else float(last.ks[j]),
            ))
    fired = any(a["state"] == "firing" for a in alerts)
    mv = last.multivariate if last is not None else None
    tests = 0 if last is None else len(last.names) + (0 if mv is None else len(mv.names))
    return Report(fired, features, alerts, "stream", reference.size, len(current), None,
                  [] if mv is None else mv.to_dicts(), tests,
                  insufficient=last is None or last.insufficient,
                  window_events=None if last is None else last.window.n,
                  min_samples=cfg.min_samples,
                  segments=[_segment_window(label, ev) for label, ev in last_of.items()])


def _segment_window(label: str, ev: Evaluation) -> dict[str, Any]:
    """A segment's last window in a replay, with the keys of :func:`_compare_segments`
    (``rows``: the events of that window; ``alpha``: what its evaluation spent)."""
    hit = np.flatnonzero(ev.drift)
    p = np.where(np.isnan(ev.p_value), 1.0, ev.p_value)
    return {"segment": parse(label), "rows": ev.window.n, "alpha": ev.alpha,
            "insufficient": ev.insufficient, "drift": bool(hit.size),
            "drifted": [ev.names[j] for j in hit[np.argsort(p[hit], kind="stable")]],
            "p_min": None if ev.insufficient else float(p.min())}
