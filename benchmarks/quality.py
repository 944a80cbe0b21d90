"""Detection quality: false alerts, detection delay and two-sample power, side by side.

Same seeded data for every contender, in one run. The stream has 20 standard normal
features and two categorical ones (``cat``: five categories; ``wide``: 80 with a Zipf
tail, more than the 32 a profile keeps, the rarest at 0.06%); f0 and f1 are correlated
(0.7) and f10..f14 follow two latent factors (each feature's marginal stays N(0, 1)).
Scenarios change one thing at event 20,000: a mean, a variance, a category mix, and
three changes that keep every marginal (the f0-f1 correlation flips sign; f1 stops
following f0, as after a broken join; f12 leaves its factor, as a sensor swapped for
another with the same distribution).

Streamed (first table): driftline's calibrated pane tests (defaults: 5 x 1,000-event
panes, target 1 false alert per 1,000,000 events) with the multivariate statistics (the
default) and with the per-column chi-square tests only; river's ADWIN and KSWIN on every
feature (defaults); scipy's two-sample KS per feature with a Bonferroni correction at 0.05
on the same 5,000-event windows (alibi-detect's KSDrift rule). Delays count events from
the change to the first alert that names a changed feature (or a pair containing one).

Two-sample (second table): windows of 1,000 events drawn from the reference distribution
(false-alarm rate) or from each changed distribution (power), each tested at family-wise
level 0.05: ``driftline evaluate`` (chi-square per column + the multivariate statistics,
Bonferroni), the chi-square columns alone, scipy KS + Bonferroni (against 5,000 reference
rows), and alibi-detect's MMDDrift (permutation test against 1,000 reference rows; its
kernel matrix is quadratic) when the ``alibi`` extra is installed.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from driftline.benchmarks.report import write
from driftline.detectors.monitor import ModelMonitor, MonitorConfig
from driftline.detectors.offline import compare
from driftline.detectors.reference import ReferenceProfile, build_profile
from driftline.detectors.tables import Table
from driftline.schemas.models import EventBatch

F = 20
CHANGE = 20_000
STREAM = 40_000
WINDOW = 5_000  # streamed scipy KS window (driftline's default window)
TWO_SAMPLE = 1_000  # two-sample windows: small enough that power is not always 1
RHO = 0.7
CATEGORICAL = ("cat", "wide")
CATS = np.array(["a", "b", "c", "d", "e"], dtype=object)
P_CATS = [0.4, 0.25, 0.15, 0.1, 0.1]
WIDE = np.array([f"w{k}" for k in range(80)], dtype=object)
P_WIDE = 1.0 / np.arange(1, 81) ** 1.5 / (1.0 / np.arange(1, 81) ** 1.5).sum()
FACTOR = slice(10, 15)
LOADINGS = np.array([[0.8, 0.4], [0.7, 0.56], [0.6, 0.66], [0.4, 0.8], [0.2, 0.87]])
COMBINED = "driftline (chi2 + multivariate, target 1/1M)"
PER_COLUMN = "driftline (chi2 per column only)"
SCIPY = "scipy ks_2samp + Bonferroni 0.05"


def _stream(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, F))
    x[:, 1] = RHO * x[:, 0] + np.sqrt(1 - RHO**2) * x[:, 1]
    noise = np.sqrt(1.0 - (LOADINGS**2).sum(axis=1))
    x[:, FACTOR] = rng.normal(size=(n, 2)) @ LOADINGS.T + noise * x[:, FACTOR]
    cat = np.stack([CATS[rng.choice(5, size=n, p=P_CATS)],
                    WIDE[rng.choice(WIDE.size, size=n, p=P_WIDE)]], axis=1)
    return x, cat  # categorical columns: cat, wide


def _batch(x: np.ndarray, cat: np.ndarray, start: int) -> EventBatch:
    n = x.shape[0]
    names = (*[f"f{i}" for i in range(F)], *CATEGORICAL)
    numeric = np.concatenate([x, np.full((n, len(CATEGORICAL)), np.nan)], axis=1)
    text = np.full((n, F + len(CATEGORICAL)), None, dtype=object)
    text[:, F:] = cat
    nan = np.full(n, np.nan)
    none = np.full(n, None, dtype=object)
    return EventBatch("q", names, numeric, text, nan, nan.copy(), None, none, none, none,
                      nan.copy(), np.zeros(n, np.int64), np.arange(start, start + n))


def _table(x: np.ndarray, cat: np.ndarray) -> Table:
    cols: dict[str, Any] = {f"f{i}": x[:, i] for i in range(F)}
    cols.update({name: cat[:, j] for j, name in enumerate(CATEGORICAL)})
    return Table(cols, None, {}, None)


def _profile(seed: int = 0) -> tuple[ReferenceProfile, np.ndarray]:
    x, cat = _stream(np.random.default_rng(seed), 20_000)
    cols: dict[str, Any] = {f"f{i}": x[:, i] for i in range(F)}
    cols.update({name: cat[:, j] for j, name in enumerate(CATEGORICAL)})
    return build_profile("q", cols, categorical=list(CATEGORICAL)), x


Inject = Callable[[np.ndarray, np.ndarray, int, np.random.Generator], None]


def _flip(x: np.ndarray, cat: np.ndarray, s: int, rng: np.random.Generator) -> None:
    x[s:, 1] = -RHO * x[s:, 0] + np.sqrt(1 - RHO**2) * rng.normal(size=len(x) - s)


def _fresh(j: int) -> Inject:
    def inject(x: np.ndarray, cat: np.ndarray, s: int, rng: np.random.Generator) -> None:
        x[s:, j] = rng.normal(size=len(x) - s)  # same N(0, 1) marginal, no dependence left
    return inject


def _mix(x: np.ndarray, cat: np.ndarray, s: int, rng: np.random.Generator) -> None:
    cat[s:, 0] = CATS[rng.choice(5, size=len(cat) - s, p=[0.25, 0.25, 0.2, 0.15, 0.15])]


def _shift(x: np.ndarray, cat: np.ndarray, s: int, rng: np.random.Generator) -> None:
    x[s:, 3] += 0.5


def _small_shift(x: np.ndarray, cat: np.ndarray, s: int, rng: np.random.Generator) -> None:
    x[s:, 3] += 0.25


def _scale(x: np.ndarray, cat: np.ndarray, s: int, rng: np.random.Generator) -> None:
    x[s:, 5] *= 1.5


#: name -> (features whose naming counts as a detection, marginals unchanged?, change)
SCENARIOS: dict[str, tuple[frozenset[str], bool, Inject]] = {
    "mean +0.5σ (f3)": (frozenset({"f3"}), False, _shift),
    "mean +0.25σ (f3)": (frozenset({"f3"}), False, _small_shift),
    "variance ×2.25 (f5)": (frozenset({"f5"}), False, _scale),
    "category mix (cat)": (frozenset({"cat"}), False, _mix),
    "correlation flip (f0·f1)": (frozenset({"f0", "f1"}), True, _flip),
    "decorrelation (f0·f1)": (frozenset({"f0", "f1"}), True, _fresh(1)),
    "factor break (f12)": (frozenset({"f12"}), True, _fresh(12)),
}


def _named(names: list[str]) -> set[str]:
    """Features named by an alert: pairs ``a:b`` and one-hot ``cat=x`` count for their features."""
    out: set[str] = set()
    for n in names:
        for part in n.split(":"):
            out.add(part.split("=")[0].removesuffix(".missing"))
    return out


def _driftline_alarms(profile: ReferenceProfile, x: np.ndarray, cat: np.ndarray,
                      chunk: int = 5000, config: MonitorConfig | None = None
                      ) -> list[tuple[int, list[str], str]]:
    mon = ModelMonitor(profile, config)
    out = []
    for k in range(0, len(x), chunk):
        for ev in mon.update(_batch(x[k : k + chunk], cat[k : k + chunk], k)):
            for a in ev.alerts:
                if a.state == "firing":
                    names = [f.name for f in a.top_features if f.score > f.threshold]
                    out.append((ev.index, names or [a.feature or ""], a.statistic))
    return out


def _scipy_alarms(ref: np.ndarray, x: np.ndarray, window: int = WINDOW, pane: int = 1000,
                  alpha: float = 0.05) -> list[tuple[int, list[str], str]]:
    out = []
    sample = ref[:5000]
    for end in range(window, len(x) + 1, pane):
        w = x[end - window : end]
        p = np.array([stats.ks_2samp(w[:, j], sample[:, j]).pvalue for j in range(x.shape[1])])
        hit = [f"f{j}" for j in np.flatnonzero(p < alpha / x.shape[1])]
        if hit:
            out.append((end - 1, hit, "ks"))
    return out


def _river_alarms(make: Callable[[], Any], x: np.ndarray, names: list[str]
                  ) -> list[tuple[int, list[str], str]]:
    out = []
    for j, name in enumerate(names):
        d = make()
        for i, v in enumerate(x[:, j].tolist()):
            d.update(v)
            if d.drift_detected:
                out.append((i, [name], "river"))
    return sorted(out)


def _delay(alarms: list[tuple[int, list[str], str]], targets: frozenset[str]
           ) -> tuple[int | None, str | None]:
    for idx, names, statistic in alarms:
        if idx >= CHANGE and _named(names) & targets:
            return idx - CHANGE, statistic
    return None, None


def _ks_window(ref: np.ndarray, x: np.ndarray, alpha: float = 0.05) -> bool:
    p = [stats.ks_2samp(x[:, j], ref[:, j]).pvalue for j in range(x.shape[1])]
    return bool(min(p) < alpha / x.shape[1])


def _alibi_mmd(ref: np.ndarray) -> Callable[[np.ndarray], bool] | None:
    try:
        from alibi_detect.cd import MMDDrift  # optional extra
    except ImportError:
        return None
    for backend in ("pytorch", "tensorflow", "keops"):
        try:
            cd = MMDDrift(ref[:1000].astype(np.float32), backend=backend, p_val=0.05,
                          n_permutations=100)
        except (ImportError, NotImplementedError, ValueError):
            continue
        return lambda w: bool(cd.predict(w.astype(np.float32))["data"]["is_drift"])
    return None


def _two_sample(profile: ReferenceProfile, ref: np.ndarray, rounds: int
                ) -> dict[str, dict[str, Any]]:
    """Share of windows flagged at family-wise 0.05: no drift, then every scenario."""
    alibi = _alibi_mmd(ref)
    testers: dict[str, Callable[[np.ndarray, np.ndarray], bool] | None] = {
        "driftline evaluate (chi2 per column + multivariate)":
            lambda x, c: compare(profile, _table(x, c)).drift,
        "driftline evaluate, chi2 per column only":
            lambda x, c: compare(profile, _table(x, c), multivariate=False).drift,
        SCIPY + " (numeric features)": lambda x, c: _ks_window(ref[:5000], x),
        "alibi-detect MMDDrift (numeric features)":
            None if alibi is None else (lambda x, c: alibi(x)),
    }
    cases: dict[str, Inject | None] = {"no drift": None}
    cases.update({name: inject for name, (_, _, inject) in SCENARIOS.items()})
    out: dict[str, dict[str, Any]] = {name: {} for name in testers}
    for i, (case, inject) in enumerate(cases.items()):
        rng = np.random.default_rng(7 + i)
        flagged = {name: 0 for name in testers}
        for _ in range(rounds):
            x, cat = _stream(rng, TWO_SAMPLE)
            if inject is not None:
                inject(x, cat, 0, rng)
            for name, test in testers.items():
                if test is not None and test(x, cat):
                    flagged[name] += 1
        for name, test in testers.items():
            out[name][case] = "not installed" if test is None else flagged[name] / rounds
    return out


def run(events: int = 1_000_000, json_out: Path | None = None, quick: bool = False) -> dict[str, Any]:
    from river import drift as rdrift

    profile, ref = _profile()
    rng = np.random.default_rng(1)
    results: dict[str, dict[str, Any]] = {}

    n_dl = events // 4 if quick else events
    x, cat = _stream(rng, n_dl)
    for name, cfg in ((COMBINED, None), (PER_COLUMN, MonitorConfig(multivariate=False))):
        fa = _driftline_alarms(profile, x, cat, config=cfg)
        results[name] = {"false_alerts_per_million": len(fa) / n_dl * 1e6, "events_no_drift": n_dl}
    n_sc = min(n_dl, 50_000 if quick else 200_000)
    fa = _scipy_alarms(ref, x[:n_sc])
    results[SCIPY] = {"false_alerts_per_million": len(fa) / n_sc * 1e6, "events_no_drift": n_sc}
    rivers = (("river ADWIN (per feature)", rdrift.ADWIN, 10_000 if quick else 50_000),
              ("river KSWIN (per feature)", partial(rdrift.KSWIN, seed=0),  # samples at random
               1_000 if quick else 5_000))
    for name, make, n in rivers:
        fa = _river_alarms(make, x[:n], [f"f{j}" for j in range(F)])
        results[name] = {"false_alerts_per_million": len(fa) / n * 1e6, "events_no_drift": n}

    first_statistic: dict[str, str | None] = {}
    for scen, (targets, _, inject) in SCENARIOS.items():
        srng = np.random.default_rng(2)
        xs, cs = _stream(srng, STREAM)
        inject(xs, cs, CHANGE, srng)
        delay, statistic = _delay(_driftline_alarms(profile, xs, cs, chunk=500), targets)
        results[COMBINED][scen] = delay
        first_statistic[scen] = statistic
        results[PER_COLUMN][scen] = _delay(_driftline_alarms(
            profile, xs, cs, chunk=500, config=MonitorConfig(multivariate=False)), targets)[0]
        numeric = sorted(t for t in targets if t != "cat")
        results[SCIPY][scen] = _delay(_scipy_alarms(ref, xs), targets)[0] if numeric else "n/a"
        for name, make, _ in rivers:
            if not numeric or (quick and "KSWIN" in name):
                results[name][scen] = "n/a"
                continue
            cols = [int(t[1:]) for t in numeric]
            sub = xs[: CHANGE + 20_000 if "ADWIN" in name else CHANGE + 5_000][:, cols]
            results[name][scen] = _delay(_river_alarms(make, sub, numeric), targets)[0]

    header = ("detector", "false alerts / 1M events", *SCENARIOS, "no-drift events")
    table: list[tuple[Any, ...]] = [
        (name, r["false_alerts_per_million"], *[("missed" if r[s] is None else r[s])
                                                 for s in SCENARIOS], r["events_no_drift"])
        for name, r in results.items()
    ]
    rounds = 25 if quick else 100
    two = _two_sample(profile, ref, rounds)
    cases = ("no drift", *SCENARIOS)
    table.append(("**two-sample, windows of 1,000 at family-wise 0.05**",
                  "false-alarm rate", *[f"power: {s}" for s in SCENARIOS], "windows per case"))
    for name, r in two.items():
        table.append((name, *[r[c] for c in cases], rounds))
    data = {"results": results, "first_statistic": first_statistic, "two_sample": two,
            "two_sample_windows": rounds, "two_sample_window": TWO_SAMPLE, "change_at": CHANGE,
            "features": F + len(CATEGORICAL),
            "marginals_unchanged": [s for s, v in SCENARIOS.items() if v[1]]}
    write("quality", data, table, header, json_out=json_out)
    return data
