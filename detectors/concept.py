"""Concept drift from joined labels: windowed confusion metrics, an error-stream
detector and a business threshold rule, with firing / resolved alerts of kind ``concept``.

:class:`ConceptMonitor` keeps the outcome of the last ``window`` labelled predictions
in a ring (one byte each) with running counts, so accuracy, false positive rate, false
negative rate and error rate of the window are exact at any time. Binary models: the
label is positive when it equals ``positive_label``; the prediction is positive when its
class does, or else when its score is at least ``score_threshold``. Multiclass models:
only accuracy and error rate (predicted class == label).

Every ``eval_every`` labelled events (a fixed cadence, so the outcome does not depend on
how the events were batched) the window is evaluated: the rule (e.g. ``fpr > 0.05 over
10000``) and the error-stream detector (river ADWIN or DDM on the 0/1 errors; it counts
only a change towards more errors) each go through the alert policy's hysteresis. Below
``min_labelled`` labelled events in the window nothing is decided.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftline.detectors.errors import SnapshotError
from driftline.detectors.label_join import Joined, canonical_label
from driftline.detectors.monitor import alert_id
from driftline.detectors.policy import AlertPolicy, PolicyConfig
from driftline.detectors.river_adapters import ADWIN, DDM
from driftline.detectors.river_adapters import preload as river_preload
from driftline.detectors.serialization import pack, unpack
from driftline.schemas.models import DriftAlert, FeatureScore, WindowInfo

SNAPSHOT_KIND = "driftline.concept"
METRICS = ("accuracy", "fpr", "fnr", "error_rate")
DETECTORS = ("adwin", "ddm", "none")
EXEMPLARS = 5  # event ids of the newest errors carried by an alert
_RULE = re.compile(r"^\s*(accuracy|fpr|fnr|error_rate)\s*(>|<)\s*([0-9.eE+-]+)"
                   r"(?:\s+over\s+([0-9_,]+)(?:\s+labell?ed(?:\s+events)?)?)?\s*$")


def preload() -> None:
    """Import the error-stream detectors' library now: a worker does it at start, so a
    model's first labelled batch does not stall ~0.15 s on importing river."""
    river_preload(ADWIN, DDM)


@dataclass(frozen=True)
class ConceptRule:
    """A business threshold on one window metric, e.g. ``fpr > 0.05``."""

    metric: str
    op: str  # ">" fires above the threshold, "<" below
    threshold: float

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric is one of {METRICS}, not {self.metric!r}")
        if self.op not in (">", "<"):
            raise ValueError("op is '>' or '<'")
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0:
            raise ValueError(f"threshold must be a number in [0, 1], not {t!r}")

    def exceeded(self, value: float) -> bool:
        return value > self.threshold if self.op == ">" else value < self.threshold

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"

    @classmethod
    def default_for(cls, metric: str, threshold: float) -> ConceptRule:
        """Accuracy fires below its threshold, the error metrics above."""
        return cls(metric, "<" if metric == "accuracy" else ">", float(threshold))

    @classmethod
    def parse(cls, text: str) -> tuple[ConceptRule, int | None]:
        """``"fpr > 0.05 over 10000"`` -> (rule, window); ``over N`` is optional."""
        m = _RULE.match(text)
        if m is None:
            raise ValueError(f"cannot read concept rule {text!r}; expected e.g. "
                             "'fpr > 0.05 over 10000'")
        window = int(m.group(4).replace("_", "").replace(",", "")) if m.group(4) else None
        return cls(m.group(1), m.group(2), float(m.group(3))), window


def model_rules(text: str) -> dict[str, str]:
    """``"fraud=fpr > 0.05 over 10000; churn=accuracy < 0.9"`` -> {model: rule text};
    every rule is checked."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        model, sep, rule = part.rpartition("=")
        model = model.strip()
        if not sep or not model:
            raise ValueError(f"expected model=rule, got {part.strip()!r}")
        ConceptRule.parse(rule)
        out[model] = rule.strip()
    return out


@dataclass(frozen=True)
class ConceptConfig:
    """How one model's labelled predictions are scored and alerted on."""

    task: str = "binary"  # or "multiclass"
    positive_label: str = "1"  # canonical (see label_join.canonical_label)
    score_threshold: float = 0.5
    window: int = 10_000  # labelled events the metrics cover
    min_labelled: int = 1_000  # fewer in the window: nothing is decided
    eval_every: int = 500  # labelled events between evaluations
    rule: ConceptRule | None = None
    detector: str = "adwin"
    detector_delta: float = 0.002  # ADWIN's confidence
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def __post_init__(self) -> None:
        if self.task not in ("binary", "multiclass"):
            raise ValueError("task is 'binary' or 'multiclass'")
        if self.detector not in DETECTORS:
            raise ValueError(f"detector is one of {DETECTORS}")
        for name in ("window", "min_labelled", "eval_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10_000_000:
                raise ValueError(f"{name} must be an integer in [1, 1e7], not {v!r}")
        if self.min_labelled > self.window:
            raise ValueError("min_labelled cannot exceed the window")
        if not isinstance(self.positive_label, str) or not self.positive_label:
            raise ValueError("positive_label must be a non-empty string")
        st = self.score_threshold
        if isinstance(st, bool) or not isinstance(st, (int, float)) or not math.isfinite(st):
            raise ValueError("score_threshold must be a finite number")
        d = self.detector_delta
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 < d < 1.0:
            raise ValueError("detector_delta must be in (0, 1)")
        if self.rule is not None and self.task == "multiclass" and self.rule.metric in (
                "fpr", "fnr"):
            raise ValueError("multiclass models have accuracy and error_rate only")

    def with_rule(self, text: str) -> ConceptConfig:
        """This config with a rule read from text; ``over N`` sets the window and the
        minimum number of labelled events."""
        rule, window = ConceptRule.parse(text)
        d = asdict(self)
        d.update(rule=rule, policy=self.policy)
        if window is not None:
            d.update(window=window, min_labelled=window)
        return ConceptConfig(**d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConceptConfig:
        d = dict(d)
        d["policy"] = PolicyConfig(**d.get("policy", {}))
        rule = d.get("rule")
        d["rule"] = None if rule is None else ConceptRule(**rule)
        return cls(**d)


def quality(counts: NDArray[np.int64], task: str) -> dict[str, float]:
    """Window metrics from the outcome counts (NaN when a rate has no denominator).

    Binary counts are ``[tn, fp, fn, tp]``; multiclass ``[correct, wrong, 0, 0]``.
    """
    c = [int(x) for x in counts]
    n = sum(c)
    nan = math.nan
    if task == "binary":
        tn, fp, fn, tp = c
        acc = (tn + tp) / n if n else nan
        return {"accuracy": acc, "error_rate": 1.0 - acc if n else nan,
                "fpr": fp / (fp + tn) if fp + tn else nan,
                "fnr": fn / (fn + tp) if fn + tp else nan}
    right, wrong = c[0], c[1]
    return {"accuracy": right / n if n else nan, "error_rate": wrong / n if n else nan}


class ConceptMonitor:
    """One model's labelled window, error-stream detector and concept alert policy."""

    def __init__(self, model: str, config: ConceptConfig | None = None) -> None:
        self.model = model
        self.config = cfg = config or ConceptConfig()
        self.codes = np.zeros(cfg.window, dtype=np.int8)
        self.ts = np.full(cfg.window, np.nan, dtype=np.float64)
        self.head = 0  # next ring slot
        self.n = 0  # filled slots
        self.counts = np.zeros(4, dtype=np.int64)
        self.labelled = 0  # labelled events ever scored
        self.unscored = 0  # joined rows without a usable prediction
        self.since_eval_n = 0
        self.since_eval_errors = 0
        self.detected = False  # the detector flagged a change since the last evaluation
        self.last_error_rate = math.nan  # window error rate at the previous evaluation
        self.exemplars: deque[str] = deque(maxlen=EXEMPLARS)
        self.policy = AlertPolicy(cfg.policy)
        self.firing_keys: set[str] = set()
        self.quality: dict[str, float] = {}
        self.detector: ADWIN | DDM | None = (
            ADWIN(delta=cfg.detector_delta) if cfg.detector == "adwin"
            else DDM() if cfg.detector == "ddm" else None)

    # -- scoring -----------------------------------------------------------------------
    def outcomes(self, rows: Joined) -> tuple[NDArray[np.int8], NDArray[np.bool_]]:
        """Per joined row its outcome code and whether it could be scored."""
        cfg = self.config
        k = len(rows)
        codes = np.zeros(k, dtype=np.int8)
        ok = np.ones(k, dtype=bool)
        score = rows.score
        if cfg.task == "binary":
            pos = cfg.positive_label
            alias: set[str | None] = {"1", "true"} if pos in ("1", "true") else {pos}
            actual = np.fromiter(map(alias.__contains__, rows.label), dtype=bool, count=k)
            predicted = score >= cfg.score_threshold  # rows without a predicted class
            given = rows.predicted
            if given.count(None) != k:
                has = np.fromiter((p is not None for p in given), dtype=bool, count=k)
                predicted = np.where(
                    has, np.fromiter(map(alias.__contains__, given), dtype=bool, count=k),
                    predicted)
                ok = has | np.isfinite(score)
            else:
                ok = np.isfinite(score)
            codes[ok] = (2 * actual + predicted)[ok]
        else:
            for i in range(k):
                p = rows.predicted[i]
                if p is None:
                    if not math.isfinite(score[i]):
                        ok[i] = False
                        continue
                    p = canonical_label(float(score[i]))
                codes[i] = 0 if p == rows.label[i] else 1
        return codes, ok

    def _errors(self, codes: NDArray[np.int8]) -> NDArray[np.bool_]:
        wrong: NDArray[np.bool_] = ((codes == 1) | (codes == 2) if self.config.task == "binary"
                                    else codes == 1)
        return wrong

    # -- the stream --------------------------------------------------------------------
    def update(self, rows: Joined) -> list[DriftAlert]:
        """Score joined rows in order; return the alerts of the evaluations they completed."""
        if len(rows) == 0:
            return []
        codes, ok = self.outcomes(rows)
        self.unscored += int((~ok).sum())
        idx = np.flatnonzero(ok)
        if idx.size == 0:
            return []
        codes, ts = codes[idx], rows.label_ts[idx]
        ids = [rows.event_id[i] for i in idx.tolist()]
        errors = self._errors(codes)
        alerts: list[DriftAlert] = []
        cfg = self.config
        pos = 0
        while pos < codes.size:
            room = cfg.eval_every - self.labelled % cfg.eval_every
            take = min(room, codes.size - pos, cfg.window)
            sl = slice(pos, pos + take)
            self._push(codes[sl], ts[sl])
            err = errors[sl]
            self._detect(err)
            for j in np.flatnonzero(err).tolist():
                self.exemplars.append(ids[pos + j])
            self.since_eval_n += take
            self.since_eval_errors += int(err.sum())
            self.labelled += take
            pos += take
            if self.labelled % cfg.eval_every == 0:
                alerts += self._evaluate()
        return alerts

    def _push(self, codes: NDArray[np.int8], ts: NDArray[np.float64]) -> None:
        w, k = self.config.window, codes.size
        slots = (self.head + np.arange(k)) % w
        if self.n + k > w:  # the oldest rows leave the window
            leaving = slots[w - self.n:] if self.n < w else slots  # after the empty slots
            self.counts -= np.bincount(self.codes[leaving], minlength=4).astype(np.int64)
        self.codes[slots] = codes
        self.ts[slots] = ts
        self.counts += np.bincount(codes, minlength=4).astype(np.int64)
        self.head = int((self.head + k) % w)
        self.n = min(self.n + k, w)

    def _detect(self, errors: NDArray[np.bool_]) -> None:
        if self.detector is None:
            return
        self.detector.update(errors.astype(np.float64))
        if self.detector.drift_detected:
            self.detected = True

    def _evaluate(self) -> list[DriftAlert]:
        cfg = self.config
        self.quality = q = quality(self.counts, cfg.task)
        chunk_rate = self.since_eval_errors / self.since_eval_n if self.since_eval_n else math.nan
        before = self.last_error_rate
        detected = self.detected
        self.last_error_rate = q["error_rate"]
        self.since_eval_n = self.since_eval_errors = 0
        self.detected = False
        if self.n < cfg.min_labelled:
            return []
        pane = self.labelled // cfg.eval_every
        alerts: list[DriftAlert] = []
        rule = cfg.rule
        if rule is not None:
            value = q[rule.metric]
            if math.isfinite(value):
                state = self.policy.step("rule", rule.exceeded(value))
                if state is not None:
                    alerts.append(self._alert("rule", state, "threshold", rule.metric, value,
                                              rule.threshold, pane))
        if self.detector is not None:
            # a change towards fewer errors is no alarm
            worse = detected and math.isfinite(before) and chunk_rate > before
            state = self.policy.step("detector", worse)
            if state is not None:
                alerts.append(self._alert("detector", state, cfg.detector, "error_rate",
                                          chunk_rate, before, pane))
        return alerts

    def _alert(self, key: str, state: str, detector: str, statistic: str, score: float,
               threshold: float, pane: int) -> DriftAlert:
        if state == "firing":
            self.firing_keys.add(key)
        else:
            self.firing_keys.discard(key)
        filled = self.ts[: self.n] if self.n < self.config.window else self.ts
        finite = filled[np.isfinite(filled)]
        start = float(finite.min()) if finite.size else None
        end = float(finite.max()) if finite.size else None
        feature = statistic if key == "rule" else f"{detector}:{statistic}"
        top = tuple(FeatureScore(m, m, v, threshold if m == statistic and key == "rule"
                                 else math.nan) for m, v in self.quality.items())
        return DriftAlert(
            alert_id=alert_id(self.model, "concept", feature, "", pane, state),
            model=self.model, kind="concept", state=state, detector=detector,
            statistic=statistic, score=float(score), threshold=float(threshold),
            window=WindowInfo(start, end, int(self.n), pane=pane),
            top_features=top, created_at=end or 0.0,
            exemplars=tuple(self.exemplars) if state == "firing" else (),
        )

    def firing_alerts(self) -> list[tuple[str, str]]:
        """(kind, feature) of every alert firing now (the features alerts of each key
        carry: the rule's metric, or ``detector:error_rate``)."""
        cfg = self.config
        out = []
        if "rule" in self.firing_keys and cfg.rule is not None:
            out.append(("concept", cfg.rule.metric))
        if "detector" in self.firing_keys:
            out.append(("concept", f"{cfg.detector}:error_rate"))
        return out

    # -- state -------------------------------------------------------------------------
    def snapshot(self, *, key: bytes | None = None) -> bytes:
        meta = {
            "model": self.model, "config": self.config.to_dict(), "head": self.head,
            "n": self.n, "labelled": self.labelled, "unscored": self.unscored,
            "since_eval": [self.since_eval_n, self.since_eval_errors],
            "detected": self.detected,
            "last_error_rate": self.last_error_rate if math.isfinite(self.last_error_rate)
            else None,
            "exemplars": list(self.exemplars), "policy": self.policy.to_dict(),
            "firing": sorted(self.firing_keys),
            "quality": {k: (v if math.isfinite(v) else None) for k, v in self.quality.items()},
        }
        arrays: dict[str, np.ndarray] = {"codes": self.codes, "ts": self.ts,
                                         "counts": self.counts}
        if self.detector is not None:
            arrays["detector"] = np.frombuffer(self.detector.snapshot(), dtype=np.uint8)
        return pack(SNAPSHOT_KIND, meta, arrays, key=key)

    @classmethod
    def from_snapshot(cls, data: bytes, *, key: bytes | None = None) -> ConceptMonitor:
        meta, arrays, _ = unpack(data, SNAPSHOT_KIND, key=key)
        try:
            cfg = ConceptConfig.from_dict(meta["config"])
            new = cls(str(meta["model"]), cfg)
            codes, ts, counts = arrays["codes"], arrays["ts"], arrays["counts"]
            if (codes.dtype != np.int8 or codes.shape != (cfg.window,) or ts.shape != (cfg.window,)
                    or ts.dtype != np.float64 or counts.shape != (4,) or counts.dtype != np.int64):
                raise ValueError("ring arrays do not fit the window")
            if codes.min(initial=0) < 0 or codes.max(initial=0) > 3:
                raise ValueError("bad outcome codes")
            head, n = _int(meta["head"]), _int(meta["n"])
            if head >= cfg.window or n > cfg.window:
                raise ValueError("ring position out of range")
            filled = codes[:n] if n < cfg.window else codes
            if not np.array_equal(np.bincount(filled, minlength=4), counts):
                raise ValueError("counts do not match the ring")
            new.codes, new.ts, new.counts, new.head, new.n = codes, ts, counts, head, n
            new.labelled, new.unscored = _int(meta["labelled"]), _int(meta["unscored"])
            se = meta["since_eval"]
            new.since_eval_n, new.since_eval_errors = _int(se[0]), _int(se[1])
            if not isinstance(meta["detected"], bool):
                raise ValueError("detected must be a bool")
            new.detected = meta["detected"]
            ler = meta["last_error_rate"]
            new.last_error_rate = math.nan if ler is None else float(ler)
            ex = meta["exemplars"]
            if not isinstance(ex, list) or not all(isinstance(e, str) for e in ex):
                raise ValueError("exemplars must be strings")
            new.exemplars.extend(ex)
            new.policy.load(meta["policy"])
            firing = meta["firing"]
            if not isinstance(firing, list) or not set(firing) <= {"rule", "detector"}:
                raise ValueError("bad firing keys")
            new.firing_keys = set(firing)
            new.quality = {str(k): (math.nan if v is None else float(v))
                           for k, v in meta["quality"].items()}
            if new.detector is not None:
                new.detector.restore(arrays["detector"].tobytes())
            elif "detector" in arrays:
                raise ValueError("detector state without a detector")
        except SnapshotError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise SnapshotError(f"malformed concept snapshot: {exc!r}") from None
        return new


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**62:
        raise ValueError(f"bad counter {v!r}")
    return v
