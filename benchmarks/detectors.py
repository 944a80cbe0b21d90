"""Per-event-feature cost of the pane-histogram path against river, alibi-detect and scipy.

Every contender processes the same seeded stream (20 numeric features) in the same run.
Costs are microseconds per event-feature: the pane path updates all features of a
batch at once; river detectors take one value at a time per feature; scipy's and
driftline's exact KS test a 1,000-event window against a 5,000-value reference sample
once per 1,000-event pane (the cost is spread over the pane's events).

The first row is the per-column path alone (``MonitorConfig(multivariate=False)``); the
second is what a worker runs by default, the per-column tests plus the multivariate
statistics (RFF kernel MMD, covariance, PCA reconstruction error) on the same profile.
Their per-event ratio is reported with its target (at most 2x).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from driftline.benchmarks.report import write
from driftline.detectors.exact import ks_2samp
from driftline.detectors.monitor import ModelMonitor, MonitorConfig
from driftline.detectors.reference import build_profile
from driftline.schemas.models import EventBatch

F = 20
#: the combined path (per-column + multivariate) may cost at most this many times the
#: per-column path per event
COMBINED_TARGET = 2.0


def _batch(x: np.ndarray, ts: np.ndarray | None = None) -> EventBatch:
    n = x.shape[0]
    nan = np.full(n, np.nan)
    none = np.full(n, None, dtype=object)
    return EventBatch("bench", tuple(f"f{i}" for i in range(F)), x, None,
                      nan if ts is None else ts, nan.copy(), None,
                      none, none, none, nan.copy(), np.zeros(n, np.int64), np.arange(n))


def _time(fn: Any, *, min_time: float = 0.5) -> float:
    """Seconds per call (best of repeated runs, at least ``min_time`` in total)."""
    best, total, calls = float("inf"), 0.0, 0
    while total < min_time or calls < 3:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, total, calls = min(best, dt), total + dt, calls + 1
    return best


def run(events: int = 200_000, json_out: Path | None = None, quick: bool = False) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(20_000, F))
    profile = build_profile("bench", {f"f{i}": ref[:, i] for i in range(F)})
    x = rng.normal(size=(events, F))
    rows: list[tuple[str, float, str]] = []

    per_event: dict[str, float] = {}
    for key, cfg in (("per_column", MonitorConfig(multivariate=False)),
                     ("combined", MonitorConfig())):
        mon0 = ModelMonitor(profile, cfg)
        assert (mon0.mv is not None) == cfg.multivariate, "profile lacks its multivariate part"

        def feed(cfg: MonitorConfig = cfg, mon0: ModelMonitor = mon0) -> None:
            mon = ModelMonitor(profile, cfg, mon0.calibration, multivariate=mon0.mv)
            for k in range(0, events, 5000):
                mon.update(_batch(x[k : k + 5000]))

        per_event[key] = _time(feed) / events * 1e6
    ratio = per_event["combined"] / per_event["per_column"]
    rows.append(("driftline pane histograms (chi2/PSI/JS/KS/W1, 20 features)",
                 per_event["per_column"] / F, "batch of 5,000; per-column only"))
    rows.append(("driftline per-column + multivariate (RFF MMD, covariance, PCA)",
                 per_event["combined"] / F,
                 f"batch of 5,000; {ratio:.2f}x per-column per event "
                 f"(target <= {COMBINED_TARGET:g}x)"))

    # the same busy model on event-time panes of the same shape: 2,000 events/s, 0.5 s
    # panes (1,000 events), 5 panes; in order, then arriving up to 0.4 s out of order
    rate = 2000.0
    clock = 1_700_000_000.0 + np.arange(events) / rate
    jitter = np.sort(clock + rng.uniform(0, 0.4, events))  # arrival order ...
    late_ts = clock[np.argsort(np.argsort(jitter))]  # ... of events stamped by their clock
    count_cfg = MonitorConfig(multivariate=False)  # compared with the per-column count row
    calib = ModelMonitor(profile, count_cfg).calibration
    timed_cfg = replace(count_cfg, pane_seconds=0.5, allowed_lateness=0.5)
    for label, ts in (("in order", clock), ("up to 0.4 s out of order", late_ts)):
        t = _time(lambda ts=ts: [ModelMonitor(profile, timed_cfg, calibration=calib)
                                 .update(_batch(x[k : k + 5000], ts[k : k + 5000]))
                                 for k in range(0, events, 5000)])
        rows.append((f"driftline event-time panes of ~1,000 events, {label}",
                     t / (events * F) * 1e6, "batch of 5,000"))

    sample = profile.columns[0].sample  # type: ignore[union-attr]
    n_eval = max(events // 1000 // (4 if quick else 1), 1)
    t = _time(lambda: [ks_2samp(x[k * 1000 : (k + 1) * 1000, 0], sample) for k in range(n_eval)])
    rows.append(("driftline exact KS (numpy), window 1,000 vs 5,000", t / (n_eval * 1000) * 1e6,
                 "per pane of 1,000"))
    t = _time(lambda: [stats.ks_2samp(x[k * 1000 : (k + 1) * 1000, 0], sample)
                       for k in range(n_eval)])
    rows.append(("scipy ks_2samp, window 1,000 vs 5,000", t / (n_eval * 1000) * 1e6,
                 "per pane of 1,000"))

    from river import drift as rdrift

    for name, make, n in (("river ADWIN", rdrift.ADWIN, 20_000 if not quick else 5_000),
                          ("river PageHinkley", rdrift.PageHinkley, 20_000 if not quick else 5_000),
                          ("river KSWIN", rdrift.KSWIN, 2_000 if not quick else 500)):
        vals = x[:n, 0].tolist()

        def feed(make: Any = make, vals: list[float] = vals) -> None:
            d = make()
            for v in vals:
                d.update(v)

        t = _time(feed, min_time=0.3)
        rows.append((name, t / n * 1e6, "one value per update"))

    try:
        from alibi_detect.cd import CVMDriftOnline  # optional extra

        cd = CVMDriftOnline(sample[:1000].reshape(-1, 1), ert=1000, window_sizes=[100],
                            n_bootstraps=2000, verbose=False)
        vals = x[:500, :1]
        t = _time(lambda: [cd.predict(v) for v in vals], min_time=0.3)
        rows.append(("alibi-detect CVMDriftOnline", t / len(vals) * 1e6, "one value per update"))
        alibi = "installed"
    except ImportError:
        alibi = "not installed (pip install 'driftline[alibi]')"

    base = rows[0][1]
    table = [(name, us, us / base, note) for name, us, note in rows]
    data = {
        "events": events,
        "features": F,
        "us_per_event_feature": {name: us for name, us, _ in rows},
        "pane_events_per_second_per_model": 1e6 / (base * F),
        "combined_vs_per_column": {
            "us_per_event_per_column": per_event["per_column"],
            "us_per_event_combined": per_event["combined"],
            "ratio": ratio,
            "target": COMBINED_TARGET,
            "within_target": ratio <= COMBINED_TARGET,
        },
        "event_time_vs_count_panes": {name: us / base for name, us, _ in rows
                                      if name.startswith("driftline event-time")},
        "alibi_detect": alibi,
    }
    write("detectors", data, table, ("detector", "µs per event-feature", "× driftline", "how"),
          json_out=json_out, plot=("µs per event-feature (log)", [r[0] for r in rows],
                                   [r[1] for r in rows]))
    return data
