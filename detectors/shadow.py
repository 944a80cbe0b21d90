"""Shadow mode: a candidate model's predictions paired with the live model's by event id.

A shadow event carries ``shadow_of: <live model>`` and the ``event_id`` of the live
prediction it shadows. :class:`ShadowBook` (one per live model and partition, held by its
state) keeps, per candidate, the unpaired predictions of both sides in bounded stores
(event-time TTL and a maximum count; what leaves unpaired is counted), and the pairs in a
sliding window of count panes. At every pane close it reports the agreement rate (equal
labels, or scores within ``tolerance`` when there are no labels), the score difference
(candidate minus live) and the distance between the live and candidate prediction
distributions (Jensen-Shannon and PSI), and raises a ``shadow`` alert when the agreement
over at least ``min_pairs`` comparable pairs falls below ``min_agreement``; the alert
resolves after ``clear_after`` evaluations back above it.

Pairing is batched: the pending ids are in the label join's id index
(:mod:`.join_index`, a batch taken in, looked up or let go with one call), the per-pair
statistics numpy on whole batches.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from itertools import repeat
from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftline.detectors.join_index import IdIndex
from driftline.detectors.monitor import alert_id
from driftline.detectors.policy import AlertPolicy, PolicyConfig
from driftline.detectors.quality import is_set
from driftline.detectors.serialization import pack, unpack
from driftline.detectors.stats import ReferenceTerms
from driftline.detectors.windows import CountRule, PaneRing
from driftline.schemas.models import DriftAlert, EventBatch, FeatureScore, WindowInfo

SNAPSHOT_KIND = "driftline.shadow"
DETECTOR = "shadow_pairs"
LABELS = 16  # distinct prediction labels kept per candidate (first seen); the rest is "other"
DEFAULT_SCORE_EDGES = tuple(np.round(np.linspace(0.1, 0.9, 9), 6).tolist())
ObjectArray = NDArray[np.object_]


@dataclass(frozen=True)
class ShadowConfig:
    """How shadow candidates are paired, windowed and judged."""

    tolerance: float = 0.05  # scores agree when |candidate - live| <= this
    min_agreement: float = 0.95  # a candidate diverges below this agreement rate ...
    min_pairs: int = 1000  # ... over at least this many comparable pairs in the window
    pane_pairs: int = 500
    panes: int = 4
    ttl_s: float = 300.0  # event time an unpaired prediction waits for its pair
    max_pending: int = 10_000  # unpaired predictions kept per side and candidate
    max_candidates: int = 8  # candidates tracked per live model (more are counted, ignored)
    clear_after: int = 3

    def __post_init__(self) -> None:
        for name in ("min_pairs", "pane_pairs", "panes", "max_pending", "max_candidates",
                     "clear_after"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 2**40:
                raise ValueError(f"{name} must be a positive integer, not {v!r}")
        for name in ("tolerance", "min_agreement", "ttl_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, not {v!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PendingSide:
    """Unpaired predictions of one side, in arrival order, indexed by event id."""

    def __init__(self) -> None:
        self.ids: ObjectArray = np.empty(0, dtype=object)
        self.ts = np.empty(0)
        self.score = np.empty(0)
        self.label: ObjectArray = np.empty(0, dtype=object)
        self.alive = np.empty(0, dtype=bool)
        self.size = 0  # used slots
        self.n_alive = 0
        self.index = IdIndex()  # event id -> slot (the newest prediction of that id)

    def take(self, ids: ObjectArray) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Pair ``ids`` with pending entries: (rows of ``ids``, slots), each slot used once."""
        if not self.index or ids.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        pos = self._slots(ids)
        rows = np.flatnonzero(pos >= 0)
        slots, first = np.unique(pos[rows], return_index=True)
        rows = rows[first]
        order = np.argsort(rows, kind="stable")
        rows, slots = rows[order], slots[order]
        self.index.discard(self.ids[slots].tolist())
        self.alive[slots] = False
        self.n_alive -= int(slots.size)
        return rows, slots

    def put(self, ids: ObjectArray, ts: NDArray[np.float64], score: NDArray[np.float64],
            label: ObjectArray) -> None:
        k = int(ids.size)
        if k == 0:
            return
        if self.size + k > self.ids.size:
            self._compact(force=True)
            if self.size + k > self.ids.size:
                self._grow(max(2 * self.ids.size, self.size + k, 64))
        s = slice(self.size, self.size + k)
        self.ids[s], self.ts[s], self.score[s], self.label[s] = ids, ts, score, label
        self.alive[s] = True
        self.index.put(ids.tolist(), np.arange(self.size, self.size + k, dtype=np.int64))
        self.size += k
        self.n_alive += k

    def expire(self, cutoff: float, max_pending: int) -> int:
        """Drop entries older than ``cutoff`` (event time) and the oldest beyond
        ``max_pending``; returns how many left unpaired."""
        n = self.size
        if self.n_alive == 0:
            return 0
        alive = self.alive[:n]
        with np.errstate(invalid="ignore"):
            gone = alive & (self.ts[:n] < cutoff)
        over = self.n_alive - int(gone.sum()) - max_pending
        if over > 0:
            gone[np.flatnonzero(alive & ~gone)[:over]] = True
        slots = np.flatnonzero(gone)
        if slots.size:
            ids = self.ids[slots]
            self.index.discard(ids[self._slots(ids) == slots].tolist())
            self.alive[slots] = False
            self.n_alive -= int(slots.size)
        self._compact()
        return int(slots.size)

    def _grow(self, cap: int) -> None:
        def grown(a: NDArray[Any]) -> NDArray[Any]:
            out = np.empty(cap, dtype=a.dtype)
            out[: self.size] = a[: self.size]
            return out

        self.ids, self.ts, self.score = grown(self.ids), grown(self.ts), grown(self.score)
        self.label, self.alive = grown(self.label), grown(self.alive)

    def _compact(self, force: bool = False) -> None:
        """Drop paired and expired slots once they outnumber the live ones."""
        dead = self.size - self.n_alive
        if dead == 0 or (not force and dead <= max(self.n_alive, 1024)):
            return
        keep = np.flatnonzero(self.alive[: self.size])
        indexed = self._indexed(keep)
        k = int(keep.size)
        for name in ("ids", "ts", "score", "label", "alive"):
            a = getattr(self, name)
            a[:k] = a[keep]
            if a.dtype == object:
                a[k : self.size] = None
        self.size = k
        self.index.clear()  # every indexed entry is renumbered: a fresh index
        self.index.put(self.ids[:k][indexed].tolist(), np.flatnonzero(indexed).astype(np.int64))

    def _indexed(self, slots: NDArray[np.int64]) -> NDArray[np.bool_]:
        """Which of these slots the index points to (an older duplicate id is not)."""
        return np.asarray(self._slots(self.ids[slots]) == slots)

    def _slots(self, ids: ObjectArray) -> NDArray[np.int64]:
        """The slot of each id, -1 when it is not pending (one call to the index)."""
        return np.frombuffer(self.index.get_slots(ids.tolist()), dtype=np.int64)

    # -- state: the live entries only, in order (a canonical form) -----------------------
    def state(self) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
        keep = np.flatnonzero(self.alive[: self.size])
        meta = {"ids": self.ids[keep].tolist(), "labels": self.label[keep].tolist()}
        arrays = {"ts": self.ts[keep].copy(), "score": self.score[keep].copy(),
                  "indexed": self._indexed(keep)}
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, NDArray[Any]]) -> PendingSide:
        ids, labels = meta["ids"], meta["labels"]
        ts, score, indexed = arrays["ts"], arrays["score"], arrays["indexed"]
        n = len(ids)
        if not (isinstance(ids, list) and isinstance(labels, list) and len(labels) == n
                and ts.shape == (n,) and score.shape == (n,) and indexed.shape == (n,)):
            raise ValueError("pending shadow predictions do not line up")
        if not all(type(i) is str for i in ids) or not all(
                lb is None or type(lb) is str for lb in labels):
            raise ValueError("pending ids and labels must be strings")
        side = cls()
        side.put(_obj(ids), ts.astype(np.float64), score.astype(np.float64), _obj(labels))
        side.index = IdIndex()
        at = np.flatnonzero(indexed.astype(bool))
        side.index.put([ids[s] for s in at.tolist()], at.astype(np.int64))
        return side


def _obj(values: list[Any]) -> ObjectArray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


@dataclass(frozen=True)
class ShadowEvaluation:
    """One candidate's window of pairs at a pane close."""

    candidate: str
    window: WindowInfo
    pairs: int
    comparable: int
    agreement: float  # NaN without comparable pairs
    score_diff_mean: float  # candidate minus live; NaN without scored pairs
    score_diff_sd: float
    js: float
    psi: float
    sufficient: bool
    diverged: bool
    alert: DriftAlert | None = None


@dataclass
class ShadowUpdate:
    """What one batch did to one candidate."""

    candidate: str
    pairs: int = 0
    diffs: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    evaluations: list[ShadowEvaluation] = field(default_factory=list)


class ShadowPairs:
    """One candidate against its live model."""

    def __init__(self, live: str, candidate: str, config: ShadowConfig,
                 score_edges: NDArray[np.float64]) -> None:
        self.live_model, self.candidate, self.config = live, candidate, config
        self.edges = np.asarray(score_edges, dtype=np.float64)
        s = self.edges.size + 1
        self.ring = PaneRing(config.panes, CountRule(config.pane_pairs), {
            "counts": ((4,), "<i8"),  # pairs, comparable, agreeing, both scored
            "diff": ((2,), "<f8"),  # sum d, sum d^2 over both-scored pairs
            "live": ((s + LABELS + 1,), "<i8"),  # score bins, then label bins
            "cand": ((s + LABELS + 1,), "<i8"),
        })
        self.policy = AlertPolicy(PolicyConfig(1, 1, config.clear_after))
        self.live = PendingSide()
        self.shadow = PendingSide()
        self.labels: dict[str, int] = {}
        self.max_ts = -math.inf
        self.shadow_ts = -math.inf  # newest event time of the candidate's predictions
        self.pairs_total = 0
        self.unpaired_live = 0
        self.unpaired_shadow = 0
        self.firing = False
        self.last: ShadowEvaluation | None = None

    # -- the batch -----------------------------------------------------------------------
    def add(self, side: str, ids: ObjectArray, ts: NDArray[np.float64],
            score: NDArray[np.float64], label: ObjectArray, version: str | None) -> ShadowUpdate:
        """Pending predictions of one side (``"live"`` or ``"shadow"``), paired where the
        other side is waiting for them."""
        mine, other = (self.live, self.shadow) if side == "live" else (self.shadow, self.live)
        rows, slots = other.take(ids)
        rest = np.ones(ids.size, dtype=bool)
        rest[rows] = False
        finite = ts[np.isfinite(ts)]
        if finite.size:
            self.max_ts = max(self.max_ts, float(finite.max()))
            if side == "shadow":
                self.shadow_ts = max(self.shadow_ts, float(finite.max()))
        # a candidate silent for longer than the TTL pins no live predictions
        if side == "shadow" or self.max_ts - self.shadow_ts <= self.config.ttl_s:
            mine.put(ids[rest], ts[rest], score[rest], label[rest])
        cutoff = self.max_ts - self.config.ttl_s
        self.unpaired_live += self.live.expire(cutoff, self.config.max_pending)
        self.unpaired_shadow += self.shadow.expire(cutoff, self.config.max_pending)
        out = ShadowUpdate(self.candidate)
        if rows.size == 0:
            return out
        if side == "live":
            ls, ll, lt = score[rows], label[rows], ts[rows]
            cs, cl = other.score[slots], other.label[slots]
        else:
            cs, cl = score[rows], label[rows]
            ls, ll, lt = other.score[slots], other.label[slots], other.ts[slots]
        out.pairs = int(rows.size)
        out.diffs = self._pairs(ls, ll, lt, cs, cl, version, out)
        self.pairs_total += out.pairs
        return out

    def _pairs(self, ls: NDArray[np.float64], ll: ObjectArray, lt: NDArray[np.float64],
               cs: NDArray[np.float64], cl: ObjectArray, version: str | None,
               out: ShadowUpdate) -> NDArray[np.float64]:
        l_set, c_set = is_set(ll), is_set(cl)
        any_label = bool(l_set.any() or c_set.any())  # score predictions carry none
        labelled = l_set & c_set
        scored = np.isfinite(ls) & np.isfinite(cs)
        d = np.where(scored, cs - ls, 0.0)
        agree = scored & (np.abs(d) <= self.config.tolerance)
        if any_label:
            agree = np.where(labelled, np.equal(ll, cl), agree)
            self._learn_labels(ll, cl)
        comparable = labelled | scored
        hl, hc = self._bins(ls, ll, l_set if any_label else None), \
            self._bins(cs, cl, c_set if any_label else None)
        width = self.edges.size + 1 + LABELS + 1
        ring = self.ring
        n = ls.size
        pid = ring.pane_ids(n, lt)
        cuts = np.flatnonzero(np.diff(pid)) + 1
        seq0 = ring.seq
        for grp in np.split(np.arange(n), cuts):
            sd = d[grp][scored[grp]]
            ring.add(int(pid[grp[0]]), {
                "counts": np.asarray([grp.size, comparable[grp].sum(), agree[grp].sum(),
                                      scored[grp].sum()], dtype=np.int64),
                "diff": np.asarray([sd.sum(), (sd * sd).sum()]),
                "live": np.bincount(hl[grp].ravel(), minlength=width + 1)[:width],
                "cand": np.bincount(hc[grp].ravel(), minlength=width + 1)[:width],
            }, int(grp.size), lt[grp], np.full(grp.size, -1, dtype=np.int64),
                last_seq=seq0 + int(grp.max()))
            for p in sorted(ring.open):
                if ring.open[p].n >= self.config.pane_pairs:
                    out.evaluations.append(self._evaluate(ring.close(p).pane_id, version))
        ring.seq = seq0 + n
        return np.asarray(d[scored], dtype=np.float64)

    def _learn_labels(self, ll: ObjectArray, cl: ObjectArray) -> None:
        room = LABELS - len(self.labels)
        if room <= 0:
            return
        seen = (set(ll.tolist()) | set(cl.tolist())) - self.labels.keys() - {None}
        for lb in sorted(seen)[:room]:
            self.labels[lb] = len(self.labels)

    def _bins(self, s: NDArray[np.float64], lb: ObjectArray,
              has: NDArray[np.bool_] | None) -> NDArray[np.int64]:
        """``(n, 2)``: score bin and label bin of each prediction (``width`` = none);
        ``has``: which predictions carry a label (None: none does)."""
        nb = self.edges.size + 1
        width = nb + LABELS + 1
        sb = np.where(np.isfinite(s), np.searchsorted(self.edges, s, side="right"), width)
        if has is None:
            return np.stack([sb, np.full(s.size, width, dtype=sb.dtype)], axis=1)
        codes = np.fromiter(map(self.labels.get, lb, repeat(LABELS)), dtype=np.int64,
                            count=lb.size)
        lbin = np.where(has, nb + codes, width)
        return np.stack([sb, lbin], axis=1)

    def _evaluate(self, pane: int, version: str | None) -> ShadowEvaluation:
        cfg, ring = self.config, self.ring
        counts = ring.totals["counts"]
        pairs, comparable, agreeing, scored = (int(v) for v in counts)
        diff = np.add.reduce([p.sums["diff"] for p in ring.closed], axis=0) if ring.closed \
            else np.zeros(2)
        agreement = agreeing / comparable if comparable else math.nan
        mean = float(diff[0] / scored) if scored else math.nan
        sd = math.sqrt(max(float(diff[1] / scored) - mean * mean, 0.0)) if scored else math.nan
        nb = self.edges.size + 1
        live, cand = ring.totals["live"], ring.totals["cand"]
        part = slice(nb, None) if live[nb:].sum() and cand[nb:].sum() else slice(0, nb)
        _, _, psi_, js_ = ReferenceTerms(live[None, part]).scores(cand[None, part])
        js, ps = float(js_[0]), float(psi_[0])
        start, end, _, _ = ring.window_bounds()
        window = WindowInfo(None if math.isnan(start) else start,
                            None if math.isnan(end) else end, pairs, pane=pane)
        sufficient = comparable >= cfg.min_pairs
        diverged = sufficient and agreement < cfg.min_agreement
        ev = ShadowEvaluation(self.candidate, window, pairs, comparable, agreement, mean, sd,
                              js, ps, sufficient, diverged)
        state = self.policy.step("shadow", diverged) if sufficient else None
        if state is not None:
            self.firing = state == "firing"
            ev = replace(ev, alert=self._alert(ev, state, version))
        self.last = ev
        return ev

    def _alert(self, ev: ShadowEvaluation, state: str, version: str | None) -> DriftAlert:
        cfg = self.config
        return DriftAlert(
            alert_id=alert_id(self.live_model, "shadow", self.candidate, "", ev.window.pane,
                              state),
            model=self.live_model,
            kind="shadow",
            state=state,
            detector=DETECTOR,
            statistic="agreement",
            score=ev.agreement,
            threshold=cfg.min_agreement,
            window=ev.window,
            model_version=version,
            feature=self.candidate,
            severity="critical" if ev.agreement < cfg.min_agreement / 2 else "warning",
            top_features=(
                FeatureScore(self.candidate, "agreement", ev.agreement, cfg.min_agreement),
                FeatureScore(self.candidate, "score_diff_mean", ev.score_diff_mean,
                             cfg.tolerance),
                FeatureScore(self.candidate, "js", ev.js, math.nan),
                FeatureScore(self.candidate, "psi", ev.psi, math.nan),
            ),
            created_at=ev.window.end_ts or 0.0,
        )

    # -- reporting -----------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Plain-JSON summary (status records, ``driftline shadow report``)."""
        ev, cfg = self.last, self.config
        counts = self.ring.totals["counts"]

        def num(x: float | None) -> float | None:
            return None if x is None or not math.isfinite(x) else float(x)

        return {
            "candidate": self.candidate,
            "pairs_total": self.pairs_total,
            "window_pairs": int(counts[0]),
            "window_comparable": int(counts[1]),
            "window_agreeing": int(counts[2]),
            "agreement": num(ev.agreement) if ev else None,
            "score_diff_mean": num(ev.score_diff_mean) if ev else None,
            "score_diff_sd": num(ev.score_diff_sd) if ev else None,
            "js": num(ev.js) if ev else None,
            "psi": num(ev.psi) if ev else None,
            "unpaired_live": self.unpaired_live,
            "unpaired_shadow": self.unpaired_shadow,
            "pending_live": self.live.n_alive,
            "pending_shadow": self.shadow.n_alive,
            "firing": self.firing,
            "min_agreement": cfg.min_agreement,
            "min_pairs": cfg.min_pairs,
        }

    # -- state ---------------------------------------------------------------------------
    def state(self, prefix: str) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
        ring_meta, ring_arrays = self.ring.state()
        arrays = {f"{prefix}ring.{k}": v for k, v in ring_arrays.items()}
        arrays[f"{prefix}edges"] = self.edges
        sides: dict[str, Any] = {}
        for name, side in (("live", self.live), ("shadow", self.shadow)):
            m, a = side.state()
            sides[name] = m
            arrays.update({f"{prefix}{name}.{k}": v for k, v in a.items()})
        meta = {
            "candidate": self.candidate, "ring": ring_meta, "policy": self.policy.to_dict(),
            "labels": sorted(self.labels, key=self.labels.__getitem__), "sides": sides,
            "max_ts": self.max_ts if math.isfinite(self.max_ts) else None,
            "shadow_ts": self.shadow_ts if math.isfinite(self.shadow_ts) else None,
            "pairs_total": self.pairs_total, "unpaired_live": self.unpaired_live,
            "unpaired_shadow": self.unpaired_shadow, "firing": self.firing,
            "last": None if self.last is None else _evaluation_dict(self.last),
        }
        return meta, arrays

    @classmethod
    def from_state(cls, live: str, config: ShadowConfig, meta: dict[str, Any],
                   arrays: dict[str, NDArray[Any]], prefix: str) -> ShadowPairs:
        pairs = cls(live, str(meta["candidate"]), config, arrays[f"{prefix}edges"])
        pairs.ring.load(meta["ring"], {k[len(prefix) + 5:]: v for k, v in arrays.items()
                                       if k.startswith(f"{prefix}ring.")})
        pairs.policy.load(meta["policy"])
        labels = meta["labels"]
        if not isinstance(labels, list) or len(labels) > LABELS or not all(
                type(x) is str for x in labels):
            raise ValueError("bad shadow label list")
        pairs.labels = {x: i for i, x in enumerate(labels)}
        for name in ("live", "shadow"):
            side = PendingSide.from_state(meta["sides"][name], {
                k: arrays[f"{prefix}{name}.{k}"] for k in ("ts", "score", "indexed")})
            setattr(pairs, name, side)
        max_ts = meta["max_ts"]
        pairs.max_ts = -math.inf if max_ts is None else float(max_ts)
        shadow_ts = meta["shadow_ts"]
        pairs.shadow_ts = -math.inf if shadow_ts is None else float(shadow_ts)
        for name in ("pairs_total", "unpaired_live", "unpaired_shadow"):
            v = meta[name]
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**62:
                raise ValueError(f"bad shadow counter {name}")
            setattr(pairs, name, v)
        pairs.firing = bool(meta["firing"])
        last = meta["last"]
        pairs.last = None if last is None else _evaluation_from(pairs.candidate, last)
        return pairs


def _evaluation_dict(ev: ShadowEvaluation) -> dict[str, Any]:
    w = ev.window
    return {"window": [w.start_ts, w.end_ts, w.n, w.pane], "pairs": ev.pairs,
            "comparable": ev.comparable,
            "stats": [None if not math.isfinite(x) else x for x in
                      (ev.agreement, ev.score_diff_mean, ev.score_diff_sd, ev.js, ev.psi)],
            "sufficient": ev.sufficient, "diverged": ev.diverged}


def _evaluation_from(candidate: str, d: dict[str, Any]) -> ShadowEvaluation:
    start, end, n, pane = d["window"]
    a, m, sd, js, ps = (math.nan if x is None else float(x) for x in d["stats"])
    return ShadowEvaluation(candidate, WindowInfo(start, end, int(n), pane=int(pane)),
                            int(d["pairs"]), int(d["comparable"]), a, m, sd, js, ps,
                            bool(d["sufficient"]), bool(d["diverged"]))


class ShadowBook:
    """Every shadow candidate of one live model (on one partition)."""

    def __init__(self, live: str, config: ShadowConfig | None = None,
                 score_edges: NDArray[np.float64] | None = None) -> None:
        self.live_model = live
        self.config = config or ShadowConfig()
        self.edges = np.asarray(DEFAULT_SCORE_EDGES if score_edges is None else score_edges,
                                dtype=np.float64)
        self.candidates: dict[str, ShadowPairs] = {}
        self.ignored = 0  # shadow predictions of candidates beyond max_candidates

    def add_live(self, batch: EventBatch) -> list[ShadowUpdate]:
        """The live model's own predictions (rows without ``shadow_of``)."""
        if not self.candidates:
            return []
        rows = np.flatnonzero(is_set(batch.event_id))
        if batch.shadow_of is not None:
            rows = rows[~is_set(batch.shadow_of[rows])]
        if rows.size == 0:
            return []
        args = _columns(batch, rows)
        return [p.add("live", *args) for p in self.candidates.values()]

    def add_shadow(self, candidate: str, batch: EventBatch) -> ShadowUpdate | None:
        """A candidate's predictions that shadow this live model."""
        assert batch.shadow_of is not None
        rows = np.flatnonzero(np.equal(batch.shadow_of, self.live_model)
                              & is_set(batch.event_id))
        if rows.size == 0:
            return None
        pairs = self.candidates.get(candidate)
        if pairs is None:
            if len(self.candidates) >= self.config.max_candidates:
                self.ignored += int(rows.size)
                return None
            pairs = self.candidates[candidate] = ShadowPairs(self.live_model, candidate,
                                                             self.config, self.edges)
        return pairs.add("shadow", *_columns(batch, rows))

    def summary(self) -> list[dict[str, Any]]:
        return [p.summary() for p in self.candidates.values()]

    def snapshot(self) -> bytes:
        metas: list[dict[str, Any]] = []
        arrays: dict[str, NDArray[Any]] = {"edges": self.edges}
        for i, p in enumerate(self.candidates.values()):
            m, a = p.state(f"{i}.")
            metas.append(m)
            arrays.update(a)
        meta = {"live": self.live_model, "config": self.config.to_dict(), "candidates": metas,
                "ignored": self.ignored}
        return pack(SNAPSHOT_KIND, meta, arrays)

    @classmethod
    def restore(cls, data: bytes, config: ShadowConfig | None = None) -> ShadowBook:
        """A book from its snapshot (``config``: the current settings; the snapshot's own
        when None). Raises ValueError/KeyError/TypeError on a malformed snapshot."""
        meta, arrays, _ = unpack(data, SNAPSHOT_KIND)
        cfg = config or ShadowConfig(**meta["config"])
        book = cls(str(meta["live"]), cfg, arrays["edges"])
        for i, m in enumerate(meta["candidates"]):
            p = ShadowPairs.from_state(book.live_model, cfg, m, arrays, f"{i}.")
            book.candidates[p.candidate] = p
        ignored = meta["ignored"]
        if isinstance(ignored, bool) or not isinstance(ignored, int) or ignored < 0:
            raise ValueError("bad ignored counter")
        book.ignored = ignored
        return book


def _columns(batch: EventBatch, rows: NDArray[np.int64]) -> tuple[Any, ...]:
    version = batch.model_version[rows[-1]]
    label = batch.prediction_label[rows] if batch.prediction_label is not None \
        else np.full(rows.size, None, dtype=object)
    return (batch.event_id[rows], batch.ts[rows], batch.prediction_score[rows], label,
            version if isinstance(version, str) else None)
