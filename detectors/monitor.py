"""ModelMonitor: one model's windows, calibrated tests and alert policy, batch by batch.

``update(batch)`` bins the whole batch against the reference in one vectorised pass,
adds each pane's rows to the ring, and evaluates the window every time a pane closes:
a chi-square homogeneity test per column (the calibrated decision), with PSI,
Jensen-Shannon, binned KS and Wasserstein reported beside it. When the reference has a
multivariate part (``ReferenceProfile.multivariate``), each pane also keeps the sums of
the multivariate statistics (RFF kernel MMD, covariance, PCA reconstruction error; see
:mod:`~driftline.detectors.multivariate`), and their p-values join the per-column
chi-square p-values in one Bonferroni / BH family, so the false-alarm target holds for
all of them together. Decisions go through the alert policy per kind (``data`` for
features and the multivariate statistics, ``prediction`` for the model output).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftline.detectors.binning import Binner
from driftline.detectors.calibration import SCALE_MAX, SCALE_MIN, Calibration, calibrate
from driftline.detectors.confidence import DETECTOR as CONFIDENCE_DETECTOR
from driftline.detectors.confidence import FEATURE as CONFIDENCE_FEATURE
from driftline.detectors.confidence import STATISTIC as CONFIDENCE_STATISTIC
from driftline.detectors.confidence import ConfidenceCheck, ConfidenceEvaluation
from driftline.detectors.errors import InputError, ProfileError, SnapshotError
from driftline.detectors.multivariate import MultivariateModel, MVEvaluation
from driftline.detectors.mv_encode import BatchEncoder
from driftline.detectors.policy import AlertPolicy, PolicyConfig
from driftline.detectors.quality import DETECTOR as QUALITY_DETECTOR
from driftline.detectors.quality import (
    METRICS,
    DataQuality,
    QualityConfig,
    QualityEvaluation,
)
from driftline.detectors.reference import CategoricalProfile, NumericProfile, ReferenceProfile
from driftline.detectors.segments import SEGMENT_SHARE, Segments, parse
from driftline.detectors.serialization import pack, unpack
from driftline.detectors.stats import ReferenceTerms, bin_widths
from driftline.detectors.windows import CountRule, Pane, PaneRing, TimeRule
from driftline.schemas.models import DriftAlert, EventBatch, FeatureScore, WindowInfo

SNAPSHOT_KIND = "driftline.monitor"
DETECTOR = "pane_chi2"
MV_DETECTOR = "pane_multivariate"
TOP_FEATURES = 5
TOP_CONTRIBUTORS = 3  # per multivariate statistic in an alert's top_features
CONFIDENCE_KEY = "prediction:confidence"  # policy key of confidence spikes (kind "prediction")


@dataclass(frozen=True)
class MonitorConfig:
    """How one model is windowed, tested and alerted on."""

    panes: int = 5
    pane_size: int = 1000  # count panes (used when pane_seconds is None)
    pane_seconds: float | None = None  # event-time panes
    allowed_lateness: float = 0.0
    late_policy: str = "deadletter"  # or "current": apply late rows to the newest open pane
    min_samples: int = 1000  # a smaller window is "insufficient data"
    target_run_length: float = 1e6  # events between false alerts (per model)
    correction: str = "bonferroni"  # or "bh"
    calibration_rounds: int = 300
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    seed: int = 0
    multivariate: bool = True  # use the reference's multivariate statistics when it has them
    segments: bool = True  # also evaluate per segment value (see detectors/segments.py)
    segment_max: int = 16  # segment values with a ring of their own; the rest are pooled
    segment_keys: tuple[str, ...] = ()  # keys that form the segment value (empty: all)
    quality: QualityConfig = field(default_factory=QualityConfig)  # data quality, confidence

    def __post_init__(self) -> None:
        _check_types(self)
        if self.panes < 1 or self.pane_size < 1 or self.min_samples < 1:
            raise ValueError("panes, pane_size and min_samples must be >= 1")
        if self.pane_seconds is not None and self.pane_seconds <= 0:
            raise ValueError("pane_seconds must be > 0")
        if self.target_run_length <= 0:  # the false-alarm budget divides by it
            raise ValueError("target_run_length must be > 0")
        if self.late_policy not in ("deadletter", "current"):
            raise ValueError("late_policy is 'deadletter' or 'current'")
        if self.correction not in ("bonferroni", "bh"):
            raise ValueError("correction is 'bonferroni' or 'bh'")
        if self.segment_max < 1:
            raise ValueError("segment_max must be >= 1")
        if self.seed < 0 or self.calibration_rounds < 0:  # numpy's generator takes neither
            raise ValueError("seed and calibration_rounds must be >= 0")

    @property
    def nominal_window(self) -> int:
        return self.panes * self.pane_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MonitorConfig:
        d = dict(d)
        d["policy"] = PolicyConfig(**d.get("policy", {}))
        if isinstance(d.get("segment_keys"), list):
            d["segment_keys"] = tuple(d["segment_keys"])
        d["quality"] = QualityConfig(**d.get("quality", {}))
        return cls(**d)


_NO_SEGMENTS: dict[str, Any] = {"labels": [], "since_eval": [], "events": [],
                                "overflow_events": 0, "rings": []}


def _count(v: Any) -> int:
    """A non-negative int64 counter from snapshot meta."""
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**62:
        raise ValueError(f"bad counter {v!r}")
    return v


def _check_types(cfg: MonitorConfig) -> None:
    """Refuse wrongly typed fields (configs also come from snapshots and files)."""
    ints = ("panes", "pane_size", "min_samples", "calibration_rounds", "seed", "segment_max")
    floats = ("allowed_lateness", "target_run_length")
    for name in ints:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or abs(v) > 2**40:
            raise ValueError(f"{name} must be an integer, not {v!r}")
    for name in floats:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, not {v!r}")
    ps = cfg.pane_seconds
    if ps is not None and (isinstance(ps, bool) or not isinstance(ps, (int, float))
                           or not math.isfinite(ps)):
        raise ValueError(f"pane_seconds must be a finite number or null, not {ps!r}")
    if not isinstance(cfg.policy, PolicyConfig):
        raise ValueError("policy must be a PolicyConfig")
    if not isinstance(cfg.quality, QualityConfig):
        raise ValueError("quality must be a QualityConfig")
    if not isinstance(cfg.multivariate, bool):
        raise ValueError(f"multivariate must be true or false, not {cfg.multivariate!r}")
    if not isinstance(cfg.segments, bool):
        raise ValueError(f"segments must be true or false, not {cfg.segments!r}")
    keys = cfg.segment_keys
    if not isinstance(keys, tuple) or not all(isinstance(k, str) and k for k in keys):
        raise ValueError(f"segment_keys must be a tuple of non-empty strings, not {keys!r}")


@dataclass(frozen=True)
class Evaluation:
    """The window's statistics at one pane close, for every column."""

    window: WindowInfo
    index: int  # global sequence number of the newest event in the closed pane
    insufficient: bool
    names: tuple[str, ...]
    kinds: tuple[str, ...]
    chi2: NDArray[np.float64]
    threshold: NDArray[np.float64]
    p_value: NDArray[np.float64]
    drift: NDArray[np.bool_]
    psi: NDArray[np.float64]
    js: NDArray[np.float64]
    ks: NDArray[np.float64]
    wasserstein: NDArray[np.float64]
    alerts: tuple[DriftAlert, ...] = ()
    #: The multivariate statistics (kind "data"), when the reference has them.
    multivariate: MVEvaluation | None = None
    #: The segment value this evaluation is of (canonical, ``""`` for the whole model).
    segment: str = ""
    #: False-alarm budget (family-wise level) this evaluation was decided at.
    alpha: float = math.nan
    #: Data-quality rates and tests (kind "quality"), and the confident-prediction share.
    quality: QualityEvaluation | None = None
    confidence: ConfidenceEvaluation | None = None

    def drifted(self, kind: str | None = None) -> list[str]:
        """Drifted columns (and multivariate statistics, which are of kind "data")."""
        out = [n for n, k, d in zip(self.names, self.kinds, self.drift, strict=True)
               if d and (kind is None or k == kind)]
        mv = self.multivariate
        if mv is not None and kind in (None, "data"):
            out += [n for n, d in zip(mv.names, mv.drift, strict=True) if d]
        return out


def multivariate_for(
    reference: ReferenceProfile, binner: Binner, parsed: MultivariateModel | None = None
) -> tuple[MultivariateModel, BatchEncoder] | None:
    """The reference's multivariate statistics and their batch encoder (None when it has none).

    Raises ProfileError when the multivariate part does not fit the profile.
    """
    if reference.multivariate is None:
        return None
    try:
        model = parsed or MultivariateModel.from_dict(reference.multivariate)
        cats = {c.name: c.categories for c in reference.columns
                if isinstance(c, CategoricalProfile)}
        layout = binner.layout
        return model, BatchEncoder(model.encoding, layout.names, cats, layout.missing_bin)
    except (ValueError, OverflowError) as exc:  # OverflowError: int() of a huge JSON integer
        raise ProfileError(f"unusable multivariate reference: {exc}") from None


def _window_info(bounds: tuple[float, float, int, int], n: int, pane: Pane) -> WindowInfo:
    """A window's description from its bounds (``PaneRing.window_bounds``)."""
    start, end, first, last = bounds
    return WindowInfo(start_ts=None if math.isnan(start) else start,
                      end_ts=None if math.isnan(end) else end, n=int(n),
                      first_offset=first, last_offset=last, pane=pane.pane_id)


def alert_id(model: str, kind: str, feature: str | None, segment: str, pane: int, state: str) -> str:
    """Deterministic alert id: a replay of the same window gives the same id."""
    key = f"{model}|{kind}|{feature or ''}|{segment}|{pane}|{state}"
    return hashlib.sha1(key.encode()).hexdigest()[:20]


class ModelMonitor:
    """Windows, calibrated tests and alert policy for one model against its reference."""

    name = DETECTOR

    def __init__(
        self,
        reference: ReferenceProfile,
        config: MonitorConfig | None = None,
        calibration: Calibration | None = None,
        *,
        multivariate: MultivariateModel | None = None,
    ) -> None:
        """``multivariate``: the reference's parsed multivariate part, when already at hand."""
        self.reference = reference
        self.config = config or MonitorConfig()
        self.binner = Binner(reference)
        layout = self.binner.layout
        self.mv: MultivariateModel | None = None
        self._encoder: BatchEncoder | None = None
        if self.config.multivariate:
            found = multivariate_for(reference, self.binner, multivariate)
            if found is not None:
                self.mv, self._encoder = found
        self.calibration = calibration or calibrate(
            layout.ref_counts,
            self.config.nominal_window,
            target_run_length=self.config.target_run_length,
            correction=self.config.correction,
            rounds=self.config.calibration_rounds,
            seed=self.config.seed,
        )
        self._segment_calibration: Calibration | None = None
        numeric_cols = [c for c in (*reference.columns, reference.prediction) if c is not None]
        edges = [c.edges if isinstance(c, NumericProfile) else np.zeros(0) for c in numeric_cols]
        lows = np.asarray([c.min if isinstance(c, NumericProfile) else 0.0 for c in numeric_cols])
        highs = np.asarray([c.max if isinstance(c, NumericProfile) else 0.0 for c in numeric_cols])
        self._widths = bin_widths(edges, lows, highs, layout.width)
        self._terms = ReferenceTerms(layout.ref_counts)  # shared by every evaluation
        self._kind_cols = {kind: [i for i, k in enumerate(layout.kinds) if k == kind]
                           for kind in layout.kinds}
        self._kind_index = {k: np.asarray(v, dtype=np.intp) for k, v in self._kind_cols.items()}
        self._scale = np.asarray(
            [c.std if isinstance(c, NumericProfile) else 0.0 for c in numeric_cols]
        )
        qc = self.config.quality
        self.quality = DataQuality(reference, layout.missing_bin, qc) if qc.enabled else None
        self._confident = qc.confidence and ConfidenceCheck.applies(reference)
        self._reset()

    def _reset(self) -> None:
        cfg = self.config
        rule = (
            TimeRule(cfg.pane_seconds, cfg.allowed_lateness)
            if cfg.pane_seconds is not None
            else CountRule(cfg.pane_size)
        )
        c, w = len(self.binner.layout.names), self.binner.layout.width
        shapes: dict[str, tuple[tuple[int, ...], str]] = {"hist": ((c, w), "<i8")}
        if self.mv is not None:
            shapes.update(self.mv.shapes())
        if self.quality is not None:
            shapes.update(self.quality.shapes())
        self.confidence = ConfidenceCheck(self.reference, cfg.quality) if self._confident else None
        if self.confidence is not None:
            shapes.update(self.confidence.shapes())
        self.ring = PaneRing(cfg.panes, rule, shapes)
        hist = {"hist": shapes["hist"]}
        self.segments: Segments | None = Segments(
            cfg.segment_max, cfg.segment_keys, lambda: PaneRing(cfg.panes, rule, dict(hist))
        ) if cfg.segments else None
        self.policy = AlertPolicy(cfg.policy)
        self.events_since_eval = 0
        self.evaluations = 0
        self.late_events = 0
        self.last_late_rows: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self.last_evaluations: list[Evaluation] = []
        self.firing_keys: set[str] = set()
        #: (kind, feature) each firing key's alert fired with: its resolution names the same
        #: feature (and alert series), whichever column leads when it resolves
        self.firing_features: dict[str, tuple[str, str]] = {}

    def firing_alerts(self) -> list[tuple[str, str]]:
        """(kind, feature) of every alert firing now, as it fired (those restored from a
        snapshot written before the features were kept are left out)."""
        return [self.firing_features[k] for k in sorted(self.firing_keys)
                if k in self.firing_features]

    @property
    def drift_detected(self) -> bool:
        """Whether an alert started firing during the last update."""
        return any(a.state == "firing" for e in self.last_evaluations for a in e.alerts)

    # -- the hot path -----------------------------------------------------------------
    def update(self, batch: EventBatch) -> list[Evaluation]:
        """Add a batch of this model's events; return the evaluations of panes it closed."""
        if not isinstance(batch, EventBatch):
            raise InputError("ModelMonitor.update takes an EventBatch")
        n = len(batch)
        self.last_late_rows = np.zeros(0, dtype=np.int64)
        self.last_evaluations = []
        if n == 0:
            return []
        bins = self.binner.bins(batch)
        ts = batch.ts
        pane_ids = self.ring.pane_ids(n, ts)
        keep = np.ones(n, dtype=bool)
        if isinstance(self.ring.rule, TimeRule):
            keep &= np.isfinite(ts)
            late = keep & self.ring.is_late(pane_ids)
            if late.any():
                self.late_events += int(late.sum())
                if self.config.late_policy == "deadletter":
                    keep &= ~late
                    self.last_late_rows = np.flatnonzero(late).astype(np.int64)
                else:
                    pane_ids = np.where(late, self.ring.last_closed + 1, pane_ids)
            if not np.isfinite(ts).all():
                missing_ts = np.flatnonzero(~np.isfinite(ts))
                self.last_late_rows = np.union1d(self.last_late_rows, missing_ts).astype(np.int64)
        rows = np.flatnonzero(keep)
        kept_pids = pane_ids[rows]
        qflags = self.quality.flags(batch, bins) if self.quality is not None else None
        cflags = self.confidence.flags(batch) if self.confidence is not None else None
        if cflags is not None and self.confidence is not None:
            self.confidence.learn(cflags[rows])
        seq0 = self.ring.seq
        out: list[Evaluation] = []
        if rows.size:
            pid = pane_ids[rows]
            order = np.argsort(pid, kind="stable")
            rows, pid = rows[order], pid[order]
            cuts = np.flatnonzero(np.diff(pid)) + 1
            for grp in np.split(np.arange(rows.size), cuts):
                r = rows[grp]
                sums: dict[str, NDArray[Any]] = {"hist": self.binner.histogram(bins[r])}
                if self.mv is not None and self._encoder is not None:
                    sums.update(self._mv_sums(batch, bins, r))
                if qflags is not None and self.quality is not None:
                    sums["quality"] = self.quality.sums(qflags, r, sums["hist"])
                if cflags is not None:
                    sums["confidence"] = cflags[r].sum(axis=0).astype(np.int64)
                self.ring.add(
                    int(pid[grp[0]]),
                    sums,
                    int(r.size),
                    ts[r],
                    batch.offset[r],
                    last_seq=seq0 + int(r.max()),
                )
                # counted before the pane can close, so each evaluation spends the false-alarm
                # budget of exactly the events since the previous one
                self.events_since_eval += int(r.size)
                if isinstance(self.ring.rule, CountRule):
                    out.extend(self._close_due(batch))
            finite = ts[rows][np.isfinite(ts[rows])]
            self.ring.advance(0, float(finite.max()) if finite.size else math.nan)
        self.ring.seq = seq0 + n if isinstance(self.ring.rule, CountRule) else self.ring.seq + n
        out.extend(self._close_due(batch))
        if self.segments is not None:
            out.extend(self._update_segments(batch, bins, np.flatnonzero(keep), kept_pids, seq0))
        self.last_evaluations = out
        return out

    def _update_segments(self, batch: EventBatch, bins: NDArray[np.int64],
                         rows: NDArray[np.int64], pids: NDArray[np.int64],
                         seq0: int) -> list[Evaluation]:
        """Add the kept rows to their segments' rings; evaluate the panes that closed.

        Count panes count each segment's own events; event-time panes share the model's
        slots and watermark, so every segment's panes close when the model's do.
        """
        segs = self.segments
        assert segs is not None
        pane_of = None
        if isinstance(self.ring.rule, TimeRule):
            pane_of = np.empty(len(batch), dtype=np.int64)
            pane_of[rows] = pids
        return self._evaluate_segments(segs.add(
            batch.segment, rows, bins, batch.ts, batch.offset, seq0, pane_of, self.ring.max_ts),
            batch)

    def tick(self, now: float | None = None, idle_timeout: float | None = None,
             last_seen: float | None = None) -> list[Evaluation]:
        """Idle timeout: nothing arrived for ``idle_timeout`` s (``now - last_seen``, wall time).

        Count panes: the open, partial pane closes and is evaluated; the next event starts a
        new pane. Event-time panes: the watermark is moved on by the wall time passed since
        the last event, as if event time had kept flowing; the panes it passes close (empty
        ones too, at most ``panes`` of them, so the window drains and reports insufficient
        data when traffic stops). The ring keeps its real newest event time, so events of a
        pane that is still open when traffic resumes are not late.
        """
        now = time.time() if now is None else now
        if idle_timeout is None or last_seen is None or now - last_seen < idle_timeout:
            return []
        ring = self.ring
        timed = isinstance(ring.rule, TimeRule)
        size = self.config.pane_size
        if timed:
            if not math.isfinite(ring.max_ts):
                return []
            through = ring.rule.closable_through(ring.seq, ring.max_ts + (now - last_seen))
            first = max(ring.last_closed + 1, through - self.config.panes + 1)
            ids = sorted({*(p for p in ring.open if p <= through), *range(first, through + 1)})
            panes = [ring.close(p) for p in ids]
        else:
            panes = ring.close_all_open()
            ring.seq = -(-ring.seq // size) * size  # the next event opens a new pane
        evs = [self._evaluate(p, None) for p in panes]
        if self.segments is not None:  # segment windows follow the model's: the same panes close
            for label in list(self.segments.labels):
                sring = self.segments.rings[label]
                if timed:
                    closing = [sring.close(p) for p in sorted(p for p in sring.open if p <= through)]
                else:
                    closing = sring.close_all_open()
                    sring.seq = -(-sring.seq // size) * size
                evs += self._evaluate_segments([(label, p) for p in closing], None)
        self.last_evaluations = evs
        return evs

    def _close_due(self, batch: EventBatch | None) -> list[Evaluation]:
        if isinstance(self.ring.rule, CountRule):
            # count panes: the ring's seq is advanced row by row through last_seq
            open_ids = sorted(self.ring.open)
            done = [p for p in open_ids
                    if self.ring.open[p].n >= self.config.pane_size]
        else:
            done = self.ring.due()
        return [self._evaluate(self.ring.close(p), batch) for p in done]

    # -- evaluation -------------------------------------------------------------------
    def _evaluate(self, pane: Pane, batch: EventBatch | None) -> Evaluation:
        """Test the model's window (segment windows: :meth:`_evaluate_segments`)."""
        layout = self.binner.layout
        segs = self.segments
        ring = self.ring
        # event-time panes spend the budget of the events they hold, so the decisions do not
        # depend on the order events arrived in (a replay decides as the live run did)
        timed = isinstance(ring.rule, TimeRule)
        new_events = pane.n if timed else max(self.events_since_eval, pane.n)
        self.events_since_eval = 0
        share = 1.0 - SEGMENT_SHARE if segs is not None and segs.active else 1.0
        win = ring.totals["hist"]
        terms = self._terms
        n = ring.total_n
        chi2, df, psi, js = terms.scores(win)
        p = self.calibration.p_values(chi2, df)
        mv = self.mv.evaluate(self._window_sums(), n) if self.mv is not None else None
        p_all = p if mv is None else np.concatenate([p, mv.p_value])
        n_mv = p_all.size
        q = self.quality.evaluate(ring.totals["quality"], n) \
            if self.quality is not None else None
        conf = self.confidence.evaluate(ring.totals["confidence"]) \
            if self.confidence is not None else None
        p_all = np.concatenate([p_all, *([q.tests] if q is not None else []),
                                *([conf.p_value] if conf is not None else [])])
        alpha = self.calibration.alpha_eval(new_events) * share
        insufficient = n < self.config.min_samples
        decided = (np.zeros(p_all.size, dtype=bool) if insufficient
                   else self.calibration.decide(p_all, alpha))
        drift = decided[: p.size]
        family = p_all.size
        thr = self.calibration.thresholds(df, alpha, family)
        if mv is not None:
            mv = mv.decided(decided[p.size : n_mv], alpha / family)
        if q is not None:
            q = q.with_decisions(decided[n_mv : n_mv + q.tests.size])
        if conf is not None:
            conf = replace(conf, drift=bool(decided[-1]))
        ks, _ = terms.ks_binned(win, layout.n_bins, layout.numeric)
        wd = terms.wasserstein_binned(win, layout.n_bins, self._widths, self._scale)
        self.evaluations += 1
        ev = Evaluation(
            window=_window_info(ring.window_bounds(), n, pane),
            index=pane.last_seq,
            insufficient=insufficient,
            names=layout.names,
            kinds=layout.kinds,
            chi2=chi2,
            threshold=thr,
            p_value=p,
            drift=drift,
            psi=psi,
            js=js,
            ks=ks,
            wasserstein=wd,
            multivariate=mv,
            alpha=alpha,
            quality=q,
            confidence=conf,
        )
        if insufficient:
            return ev
        alerts = tuple(self._alerts(ev, batch)) + tuple(self._check_alerts(ev, batch))
        if alerts:
            ev = replace(ev, alerts=alerts)
        return ev

    @property
    def segment_calibration(self) -> Calibration:
        """The calibration of segment windows: the model's, each column's scale raised to
        what a window of ``min_samples`` events needs. Segment windows may hold that few
        (event-time panes), and there a rare category makes the statistic heavier than
        at the model's nominal window. Computed at first use (the seed makes it the same
        after a restore)."""
        if self._segment_calibration is None:
            self.use_small_window_scale(self.small_window_scale())
        assert self._segment_calibration is not None
        return self._segment_calibration

    def small_window_scale(self) -> NDArray[np.float64]:
        """Each column's calibration scale at a window of ``min_samples`` events (a
        bootstrap, ~20 ms for 20 columns: a worker computes it when a reference arrives,
        once per reference and configuration, not on the hot path)."""
        return calibrate(self.binner.layout.ref_counts, self.config.min_samples,
                         target_run_length=self.config.target_run_length,
                         correction=self.config.correction,
                         rounds=self.config.calibration_rounds, seed=self.config.seed).scale

    def use_small_window_scale(self, scale: NDArray[np.float64]) -> None:
        """Set :attr:`segment_calibration` from :meth:`small_window_scale` (computed by
        this monitor or another one on the same reference and configuration)."""
        if scale.shape != self.calibration.scale.shape:
            raise ValueError("small-window scale does not fit the reference's columns")
        self._segment_calibration = replace(
            self.calibration, scale=np.maximum(self.calibration.scale, scale))

    def _evaluate_segments(self, closing: Iterable[tuple[str, Pane]],
                           batch: EventBatch | None) -> list[Evaluation]:
        """Test the windows of segment values, one per ``(label, pane)`` closed. Each
        window is scored as it stands when its pair is drawn (a segment's next pane may
        close later in the same batch); the tests of their scores run together.

        Segment windows test the per-column statistic against the same reference and
        calibration as the model's (at the segments' share of the budget) and report
        PSI and JS besides; KS, Wasserstein and the model-wide checks are the model's.
        """
        segs = self.segments
        assert segs is not None
        timed = isinstance(self.ring.rule, TimeRule)
        taken: list[tuple[str, Pane, int, float, tuple[float, float, int, int]]] = []
        scores: list[tuple[NDArray[np.float64], ...]] = []
        cal = self.segment_calibration
        for label, pane in closing:
            ring = segs.rings[label]
            new_events = pane.n if timed else max(segs.since_eval[label], pane.n)
            segs.since_eval[label] = 0
            scores.append(self._terms.scores(ring.totals["hist"]))  # before later closes
            taken.append((label, pane, ring.total_n, cal.alpha_eval(new_events) * SEGMENT_SHARE,
                          ring.window_bounds()))
        if not taken:
            return []
        layout = self.binner.layout
        chi2, df, psi, js = (np.stack([s[j] for s in scores]) for j in range(4))
        p = cal.p_values(chi2, df)
        alpha = np.asarray([t[3] for t in taken], dtype=np.float64)
        sufficient = [t[2] >= self.config.min_samples for t in taken]
        decided = cal.decide_rows(p, alpha) & np.asarray(sufficient)[:, None]
        thr = cal.thresholds(df, alpha[:, None], p.shape[1])
        nan = np.full(len(layout.names), np.nan)
        nan.flags.writeable = False  # shared by the evaluations of this call
        out: list[Evaluation] = []
        for i, (label, pane, n, a, bounds) in enumerate(taken):
            ev = Evaluation(window=_window_info(bounds, n, pane), index=pane.last_seq,
                            insufficient=not sufficient[i], names=layout.names,
                            kinds=layout.kinds, chi2=chi2[i], threshold=thr[i], p_value=p[i],
                            drift=decided[i], psi=psi[i], js=js[i], ks=nan, wasserstein=nan,
                            segment=label, alpha=a)
            if sufficient[i]:
                alerts = tuple(self._alerts(ev, batch))
                if alerts:
                    ev = replace(ev, alerts=alerts)
            out.append(ev)
        return out

    def _mv_sums(self, batch: EventBatch, bins: NDArray[np.int64],
                 rows: NDArray[np.int64]) -> dict[str, NDArray[Any]]:
        """Multivariate pane sums of some rows, encoded block by block."""
        assert self.mv is not None and self._encoder is not None
        step, enc = self.mv.block_rows, self._encoder
        return self.mv.block_sums(enc.encode(batch, bins, rows[k : k + step])
                                  for k in range(0, rows.size, step))

    def _window_sums(self) -> dict[str, NDArray[Any]]:
        """Multivariate window sums, added afresh over the closed panes in order.

        Float sums are not taken from the ring's running totals: adding and evicting
        panes would leave rounding residue there that depends on the whole history, and
        a restored monitor (whose totals are rebuilt from its panes) would then differ in
        the last bits. Summing a handful of panes per evaluation is cheap and exact.
        """
        assert self.mv is not None
        closed = self.ring.closed
        if not closed:
            return {k: np.zeros(s, dtype=np.float64) for k, (s, _) in self.mv.shapes().items()}
        return {k: np.add.reduce([p.sums[k] for p in closed], axis=0) for k in self.mv.shapes()}

    def _alerts(self, ev: Evaluation, batch: EventBatch | None) -> list[DriftAlert]:
        out: list[DriftAlert] = []
        version = None
        if batch is not None and len(batch):
            v = batch.model_version[-1]
            version = v if isinstance(v, str) else None
        mv = ev.multivariate
        kinds = set(ev.kinds) | ({"data"} if mv is not None else set())
        seg = ev.segment
        for kind in sorted(kinds):
            key = f"{kind}@{seg}" if seg else kind
            cols = self._kind_cols.get(kind, [])  # ev.kinds are the layout's
            stats = list(range(len(mv.names))) if mv is not None and kind == "data" else []
            drifted = bool(ev.drift[self._kind_index[kind]].any()) if cols else False
            drifted = drifted or (mv is not None and bool(mv.drift[stats].any()))
            state = self.policy.step(key, drifted)
            if state is None:
                continue
            ranked = sorted(cols, key=lambda i: (ev.p_value[i], -ev.chi2[i]))
            mv_hits: list[int] = []
            if state == "firing":
                self.firing_keys.add(key)
                uni = [i for i in ranked if ev.drift[i]]
                if mv is not None:
                    mv_hits = sorted((i for i in stats if mv.drift[i]),
                                     key=lambda i: (mv.p_value[i], -mv.score[i]))
                ranked = uni or ([] if mv_hits else ranked)
            else:
                self.firing_keys.discard(key)
            feats = [FeatureScore(ev.names[i], "chi2", float(ev.chi2[i]), float(ev.threshold[i]),
                                  float(ev.p_value[i])) for i in ranked[:TOP_FEATURES]]
            contributions = {i: mv.contributors(i, TOP_CONTRIBUTORS) for i in mv_hits} \
                if mv is not None else {}
            for i in mv_hits:
                feats += [FeatureScore(c.name, c.statistic, c.score, c.threshold, c.p_value)
                          for c in contributions[i]]
            fired = self.firing_features.pop(key, None) if state == "resolved" else None
            if fired is not None and fired[1] in ev.names:  # resolved: the column that fired
                ranked = [ev.names.index(fired[1]), *(i for i in ranked
                                                      if ev.names[i] != fired[1])]
                mv_hits = []
            if ranked or mv is None or not mv_hits:
                top = ranked[0]
                detector, statistic, feature = DETECTOR, "chi2", ev.names[top]
                score, thr, p = float(ev.chi2[top]), float(ev.threshold[top]), float(ev.p_value[top])
            else:  # only multivariate statistics rejected: the strongest one leads
                lead = mv_hits[0]
                parts = contributions[lead]
                detector, statistic = MV_DETECTOR, mv.names[lead]
                feature = parts[0].source if parts else mv.names[lead]
                score, thr, p = float(mv.score[lead]), float(mv.threshold[lead]), \
                    float(mv.p_value[lead])
            if fired is not None:
                feature = fired[1]  # (a multivariate lead: its name, its current scores)
            elif state == "firing":
                self.firing_features[key] = (kind, feature)
            out.append(
                DriftAlert(
                    alert_id=alert_id(self.reference.model, kind, feature, seg, ev.window.pane,
                                      state),
                    model=self.reference.model,
                    kind=kind,
                    state=state,
                    detector=detector,
                    statistic=statistic,
                    score=score,
                    threshold=thr,
                    p_value=p,
                    window=ev.window,
                    model_version=version,
                    feature=feature,
                    reference=self.reference.reference_id,
                    segment=parse(seg) if seg else None,
                    severity="critical" if p < 1e-12 else "warning",
                    top_features=tuple(feats),
                    created_at=ev.window.end_ts or 0.0,
                )
            )
        return out

    def _check_alerts(self, ev: Evaluation, batch: EventBatch | None) -> list[DriftAlert]:
        """Alerts of the data-quality checks (kind "quality") and of confidence spikes
        (kind "prediction", statistic "confidence_spike"), each with its own policy key."""
        version = None
        if batch is not None and len(batch):
            v = batch.model_version[-1]
            version = v if isinstance(v, str) else None
        found: list[tuple[str, str, str | None, list[FeatureScore]]] = []
        q, conf = ev.quality, ev.confidence
        if q is not None:
            hits = q.findings() if q.drift.any() else []
            state = self.policy.step("quality", bool(hits))
            ranked = (hits or q.ranked()) if state is not None else []
            if state is not None and ranked:
                floor = self.config.quality.min_increase
                found.append(("quality", state, None, [
                    FeatureScore(q.names[j], METRICS[m], float(q.rate[j, m]),
                                 float(q.reference_rate[j, m] + floor), float(q.p_value[j, m]))
                    for j, m in ranked[:TOP_FEATURES]]))
        if conf is not None:
            state = self.policy.step(CONFIDENCE_KEY, conf.drift)
            if state is not None:
                thr = conf.baseline + self.config.quality.confidence_min_increase
                found.append((CONFIDENCE_KEY, state, CONFIDENCE_FEATURE, [FeatureScore(
                    CONFIDENCE_FEATURE, CONFIDENCE_STATISTIC, conf.share, thr,
                    float(conf.p_value[0]))]))
        out: list[DriftAlert] = []
        for key, state, feature, feats in found:
            (self.firing_keys.add if state == "firing" else self.firing_keys.discard)(key)
            kind = key.split(":")[0]
            lead = feats[0]
            if state == "firing":
                self.firing_features[key] = (kind, feature or lead.name)
            else:  # resolved: the feature it fired with (its current scores lead)
                fired = self.firing_features.pop(key, None)
                feature = fired[1] if fired is not None else feature
                lead = next((f for f in feats if f.name == feature), lead)
            p = lead.p_value if lead.p_value is not None and math.isfinite(lead.p_value) else 1.0
            out.append(DriftAlert(
                alert_id=alert_id(self.reference.model, kind, feature or lead.name, "",
                                  ev.window.pane, state),
                model=self.reference.model,
                kind=kind,
                state=state,
                detector=QUALITY_DETECTOR if kind == "quality" else CONFIDENCE_DETECTOR,
                statistic=lead.statistic,
                score=lead.score,
                threshold=lead.threshold,
                p_value=p,
                window=ev.window,
                model_version=version,
                feature=feature or lead.name,
                reference=self.reference.reference_id,
                severity="critical" if p < 1e-12 else "warning",
                top_features=tuple(feats),
                created_at=ev.window.end_ts or 0.0,
            ))
        return out

    # -- state ------------------------------------------------------------------------
    def snapshot(self, *, key: bytes | None = None, extra: dict[str, Any] | None = None) -> bytes:
        """The whole running state, exact, in the plain snapshot format."""
        ring_meta, arrays = self.ring.state()
        arrays["calibration.scale"] = self.calibration.scale
        meta = {
            "reference_id": self.reference.reference_id,
            "config": self.config.to_dict(),
            "ring": ring_meta,
            "policy": self.policy.to_dict(),
            "events_since_eval": self.events_since_eval,
            "evaluations": self.evaluations,
            "late_events": self.late_events,
            "firing": sorted(self.firing_keys),
            "firing_features": {k: list(v) for k, v in sorted(self.firing_features.items())},
            "extra": extra or {},
        }
        if self.segments is not None:
            meta["segments"], seg_arrays = self.segments.state()
            arrays.update(seg_arrays)
        if self.confidence is not None:
            meta["confidence"] = self.confidence.state()
        return pack(SNAPSHOT_KIND, meta, arrays, key=key)

    @classmethod
    def from_snapshot(
        cls, reference: ReferenceProfile, data: bytes, *, key: bytes | None = None
    ) -> tuple[ModelMonitor, dict[str, Any]]:
        """A monitor restored from a snapshot, without re-running the calibration."""
        meta, arrays, _ = unpack(data, SNAPSHOT_KIND, key=key)
        try:
            cfg = MonitorConfig.from_dict(meta["config"])
            cal = Calibration(cfg.target_run_length, arrays["calibration.scale"], cfg.correction,
                              cfg.calibration_rounds)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SnapshotError(f"malformed monitor snapshot: {exc!r}") from None
        mon = cls(reference, cfg, cal)
        # restore() checks the scale against this monitor's own: check it against the reference
        want = (len(mon.binner.layout.names),)
        if cal.scale.shape != want:
            raise SnapshotError(f"snapshot calibration has shape {cal.scale.shape}, the reference "
                                f"needs {want}")
        return mon, mon.restore(data, key=key)

    def restore(self, data: bytes, *, key: bytes | None = None) -> dict[str, Any]:
        """Load a snapshot of a monitor on the same reference; returns its ``extra`` dict."""
        meta, arrays, _ = unpack(data, SNAPSHOT_KIND, key=key)
        try:
            if meta["reference_id"] != self.reference.reference_id:
                raise SnapshotError(
                    f"snapshot is for reference {meta['reference_id']!r}, "
                    f"not {self.reference.reference_id!r}"
                )
            config = MonitorConfig.from_dict(meta["config"])
            scale = arrays.pop("calibration.scale")
            if scale.shape != self.calibration.scale.shape or not np.all(
                    (scale >= SCALE_MIN) & (scale <= SCALE_MAX)):  # NaN fails too
                raise SnapshotError("snapshot calibration does not fit the reference")
            # load into a new monitor and swap, so a rejected snapshot changes nothing
            new = ModelMonitor(self.reference, config, Calibration(
                config.target_run_length, scale, config.correction, config.calibration_rounds),
                multivariate=self.mv)
            for name in new.mv.shapes() if new.mv is not None else ():
                for group in ("closed", "open"):
                    a = arrays.get(f"{group}.{name}")
                    if a is not None and not np.all(np.isfinite(a)):  # before the ring adds them
                        raise ValueError(f"non-finite {group}.{name}")
            for name, (shape, dtype) in new.ring.shapes.items():  # snapshots older than a check
                if name in ("quality", "confidence"):
                    for group in ("closed", "open"):
                        rows = arrays[f"{group}.meta"].shape[0]
                        arrays.setdefault(f"{group}.{name}", np.zeros((rows, *shape), dtype))
            new.ring.load(meta["ring"], {k: v for k, v in arrays.items()
                                         if not k.startswith("seg")})
            if new.segments is not None:
                new.segments.load(meta.get("segments") or _NO_SEGMENTS, arrays)
            for pane in (*new.ring.closed, *new.ring.open.values()):
                for k in ("quality", "confidence"):
                    v = pane.sums.get(k)
                    if v is not None and (np.any(v < 0) or np.any(v > pane.n)):
                        raise ValueError(f"pane counts {k!r} out of range")
            if new.confidence is not None and "confidence" in meta:
                new.confidence.load(meta["confidence"])
            bounds = new.mv.row_bounds() if new.mv is not None else {}
            for pane in (*new.ring.closed, *new.ring.open.values()):
                for k, bound in bounds.items():
                    v = pane.sums[k]
                    if not (np.all(np.isfinite(v)) and np.all(np.abs(v) <= bound * pane.n + 1e-6)):
                        raise ValueError(f"pane sums {k!r} out of range")
            new.policy.load(meta["policy"])
            new.events_since_eval = _count(meta["events_since_eval"])
            new.evaluations = _count(meta["evaluations"])
            new.late_events = _count(meta["late_events"])
            firing = meta["firing"]
            if not isinstance(firing, list) or not all(isinstance(k, str) for k in firing):
                raise ValueError("firing must be a list of alert keys")
            new.firing_keys = set(firing)
            features = meta.get("firing_features") or {}  # absent from older snapshots
            if not isinstance(features, dict) or not all(
                    isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v)
                    for v in features.values()):
                raise ValueError("firing_features must map keys to [kind, feature]")
            new.firing_features = {k: (v[0], v[1]) for k, v in features.items()
                                   if k in new.firing_keys}
            extra: dict[str, Any] = meta.get("extra") or {}
            if not isinstance(extra, dict):
                raise ValueError("extra must be an object")
        except SnapshotError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
            raise SnapshotError(f"malformed monitor snapshot: {exc!r}") from None
        self.__dict__.update(new.__dict__)
        return extra
