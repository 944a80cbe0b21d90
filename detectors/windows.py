"""Sliding windows as a ring of panes; panes close by count or by event time.

A pane holds pane-additive sums: per-column histograms plus any extra arrays (sums of
feature maps for multivariate statistics). The window is the sum of the last ``panes``
closed panes; closing a pane adds it and evicts the oldest by subtraction, so an
evaluation costs the same whatever the window length. Count and event-time windows are
the same ring with a different rule for which pane a row joins and when a pane closes.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

Arrays = dict[str, NDArray[np.float64] | NDArray[np.int64]]


@dataclass
class Pane:
    """One pane's sums and bounds. ``pane_id`` orders panes (count index or time slot)."""

    pane_id: int
    sums: Arrays
    n: int = 0
    start_ts: float = math.inf
    end_ts: float = -math.inf
    first_offset: int = -1
    last_offset: int = -1
    last_seq: int = -1  # the global sequence number of the newest event in the pane

    def add(
        self,
        sums: Mapping[str, NDArray[np.float64] | NDArray[np.int64]],
        n: int,
        ts: NDArray[np.float64],
        offsets: NDArray[np.int64],
        last_seq: int,
    ) -> None:
        for k, v in sums.items():
            self.sums[k] += v
        self.n += n
        finite = ts[np.isfinite(ts)]
        if finite.size:
            self.start_ts = min(self.start_ts, float(finite.min()))
            self.end_ts = max(self.end_ts, float(finite.max()))
        valid = offsets[offsets >= 0]
        if valid.size:
            lo, hi = int(valid.min()), int(valid.max())
            self.first_offset = lo if self.first_offset < 0 else min(self.first_offset, lo)
            self.last_offset = max(self.last_offset, hi)
        self.last_seq = max(self.last_seq, last_seq)

    def merge(self, sums: Mapping[str, NDArray[np.float64] | NDArray[np.int64]], n: int,
              start_ts: float, end_ts: float, first_offset: int, last_offset: int,
              last_seq: int) -> None:
        """Like :meth:`add`, for rows already reduced to their sums and bounds: the
        smallest and largest finite event time (``inf``/``-inf`` when none) and offset
        (``-1`` when none)."""
        for k, v in sums.items():
            self.sums[k] += v
        self.n += n
        self.start_ts = min(self.start_ts, start_ts)
        self.end_ts = max(self.end_ts, end_ts)
        if first_offset >= 0:
            self.first_offset = first_offset if self.first_offset < 0 \
                else min(self.first_offset, first_offset)
            self.last_offset = max(self.last_offset, last_offset)
        self.last_seq = max(self.last_seq, last_seq)

    def meta(self) -> list[float]:
        return [self.pane_id, self.n, self.start_ts, self.end_ts,
                self.first_offset, self.last_offset, self.last_seq]

    @classmethod
    def from_meta(cls, meta: list[float], sums: Arrays) -> Pane:
        pid, n, s, e, fo, lo, seq = meta
        if not all(math.isfinite(v) and abs(v) < 2**62 for v in (pid, n, fo, lo, seq)) or n < 0:
            raise ValueError("bad pane bounds")
        return cls(int(pid), sums, int(n), float(s), float(e), int(fo), int(lo), int(seq))


@dataclass(frozen=True)
class CountRule:
    """A pane closes every ``pane_size`` events."""

    pane_size: int = 1000

    def pane_ids(self, seq_start: int, n: int, ts: NDArray[np.float64]) -> NDArray[np.int64]:
        return (seq_start + np.arange(n, dtype=np.int64)) // self.pane_size

    def closable_through(self, seq_next: int, max_ts: float) -> int:
        """Panes with id <= the returned value may close."""
        return seq_next // self.pane_size - 1


@dataclass(frozen=True)
class TimeRule:
    """Panes are event-time slots of ``pane_seconds``; they close when the watermark
    (max event time minus ``allowed_lateness``) passes their end."""

    pane_seconds: float = 300.0
    allowed_lateness: float = 0.0

    def pane_ids(self, seq_start: int, n: int, ts: NDArray[np.float64]) -> NDArray[np.int64]:
        ok = np.isfinite(ts)
        slots = np.floor(np.where(ok, ts, 0.0) / self.pane_seconds)
        return np.where(ok & (np.abs(slots) < 2**62), slots, 0).astype(np.int64)

    def closable_through(self, seq_next: int, max_ts: float) -> int:
        if not math.isfinite(max_ts):
            return -(2**62)
        return math.floor((max_ts - self.allowed_lateness) / self.pane_seconds) - 1


Rule = CountRule | TimeRule


@dataclass
class PaneRing:
    """The ring: open panes accumulating, closed panes forming the window."""

    panes: int
    rule: Rule
    shapes: dict[str, tuple[tuple[int, ...], str]]  # name -> (shape, dtype)
    open: dict[int, Pane] = field(default_factory=dict)
    closed: deque[Pane] = field(default_factory=deque)
    totals: Arrays = field(default_factory=dict)
    seq: int = 0  # events ever added
    max_ts: float = -math.inf
    last_closed: int = -(2**62)
    total_n: int = 0

    def __post_init__(self) -> None:
        if not self.totals:
            self.totals = self._zeros()

    def _zeros(self) -> Arrays:
        return {k: np.zeros(s, dtype=d) for k, (s, d) in self.shapes.items()}

    def pane_ids(self, n: int, ts: NDArray[np.float64]) -> NDArray[np.int64]:
        """Which pane each of the next ``n`` rows joins."""
        return self.rule.pane_ids(self.seq, n, ts)

    def is_late(self, pane_ids: NDArray[np.int64]) -> NDArray[np.bool_]:
        """Rows whose pane already closed (event time only; count panes are never late)."""
        return pane_ids <= self.last_closed

    def add(
        self,
        pane_id: int,
        sums: Mapping[str, NDArray[np.float64] | NDArray[np.int64]],
        n: int,
        ts: NDArray[np.float64],
        offsets: NDArray[np.int64],
        last_seq: int,
    ) -> None:
        pane = self.open.get(pane_id)
        if pane is None:
            pane = self.open[pane_id] = Pane(pane_id, self._zeros())
        pane.add(sums, n, ts, offsets, last_seq)

    def pane(self, pane_id: int) -> Pane:
        """The open pane ``pane_id`` (opened when new), for :meth:`Pane.merge`."""
        pane = self.open.get(pane_id)
        if pane is None:
            pane = self.open[pane_id] = Pane(pane_id, self._zeros())
        return pane

    def advance(self, n: int, max_ts: float) -> None:
        """Record that ``n`` rows with newest event time ``max_ts`` were added."""
        self.seq += n
        if math.isfinite(max_ts):
            self.max_ts = max(self.max_ts, max_ts)

    def due(self) -> list[int]:
        """Open pane ids that may close now, oldest first."""
        through = self.rule.closable_through(self.seq, self.max_ts)
        return sorted(p for p in self.open if p <= through)

    def close(self, pane_id: int) -> Pane:
        """Close one pane: it joins the window, panes older than the window leave it."""
        pane = self.open.pop(pane_id, None) or Pane(pane_id, self._zeros())
        self.closed.append(pane)
        self._add_totals(pane, +1)
        self.last_closed = max(self.last_closed, pane_id)
        oldest = pane_id - self.panes + 1 if isinstance(self.rule, TimeRule) else None
        while self.closed and (
            len(self.closed) > self.panes or (oldest is not None and self.closed[0].pane_id < oldest)
        ):
            self._add_totals(self.closed.popleft(), -1)
        return pane

    def close_all_open(self) -> list[Pane]:
        """Idle timeout: close every open pane now, oldest first."""
        return [self.close(p) for p in sorted(self.open)]

    def _add_totals(self, pane: Pane, sign: int) -> None:
        for k, v in pane.sums.items():
            self.totals[k] += sign * v
        self.total_n += sign * pane.n

    def window_bounds(self) -> tuple[float, float, int, int]:
        starts = [p.start_ts for p in self.closed if p.n]
        ends = [p.end_ts for p in self.closed if p.n]
        firsts = [p.first_offset for p in self.closed if p.first_offset >= 0]
        lasts = [p.last_offset for p in self.closed if p.last_offset >= 0]
        return (
            min(starts) if starts else math.nan,
            max(ends) if ends else math.nan,
            min(firsts) if firsts else -1,
            max(lasts) if lasts else -1,
        )

    # -- state ------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, object], dict[str, np.ndarray]]:
        """JSON-able meta and numeric arrays of the whole ring (exact)."""
        arrays: dict[str, np.ndarray] = {}
        groups = {"closed": list(self.closed), "open": [self.open[k] for k in sorted(self.open)]}
        for g, panes in groups.items():
            arrays[f"{g}.meta"] = np.asarray([p.meta() for p in panes], dtype=np.float64).reshape(
                len(panes), 7
            )
            for k, (s, d) in self.shapes.items():
                arrays[f"{g}.{k}"] = (
                    np.stack([p.sums[k] for p in panes]) if panes else np.zeros((0, *s), dtype=d)
                )
        max_ts = self.max_ts if math.isfinite(self.max_ts) else None  # JSON has no infinity
        meta: dict[str, object] = {"seq": self.seq, "max_ts": max_ts,
                                   "last_closed": self.last_closed}
        return meta, arrays

    def load(self, meta: Mapping[str, object], arrays: Mapping[str, np.ndarray]) -> None:
        for name in ("seq", "last_closed"):
            v = meta[name]
            if isinstance(v, bool) or not isinstance(v, int) or abs(v) > 2**62:
                raise ValueError(f"ring {name} must be an int64 integer")
        if meta.get("max_ts") is not None and not isinstance(meta["max_ts"], (int, float)):
            raise ValueError("ring max_ts must be a number or null")
        self.seq = int(meta["seq"])  # type: ignore[call-overload]
        max_ts = meta.get("max_ts")
        self.max_ts = -math.inf if max_ts is None else float(max_ts)  # type: ignore[arg-type]
        self.last_closed = int(meta["last_closed"])  # type: ignore[call-overload]
        self.open, self.closed = {}, deque()
        self.totals, self.total_n = self._zeros(), 0
        for g in ("closed", "open"):
            count = arrays[f"{g}.meta"].shape[0]
            if arrays[f"{g}.meta"].shape != (count, 7):
                raise ValueError(f"ring {g} pane table has the wrong shape")
            for k, (shape, dtype) in self.shapes.items():
                if arrays[f"{g}.{k}"].shape != (count, *shape):
                    raise ValueError(f"ring {g}.{k} has the wrong shape")
                if arrays[f"{g}.{k}"].dtype != np.dtype(dtype):  # (no lossy cast)
                    raise ValueError(f"ring {g}.{k} has the wrong type")
                if k == "hist" and np.any(arrays[f"{g}.{k}"] < 0):
                    raise ValueError("negative counts in a pane")
            for i, m in enumerate(arrays[f"{g}.meta"].tolist()):
                sums: Arrays = {
                    k: np.array(arrays[f"{g}.{k}"][i], dtype=d) for k, (_, d) in self.shapes.items()
                }
                pane = Pane.from_meta(m, sums)
                if g == "closed":
                    self.closed.append(pane)
                    self._add_totals(pane, +1)
                else:
                    self.open[pane.pane_id] = pane
