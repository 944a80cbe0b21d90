"""Per-segment windows of one model: which segment a row belongs to, and one ring each.

A row's segment value is its ``segment`` object restricted to the configured keys
(all keys when none are configured), written canonically as sorted ``k=v`` pairs
joined by commas (``region=eu,tier=gold``; ``%``, ``,`` and ``=`` are percent-escaped).
The first ``max_segments`` values a model shows get a ring of their own, in order of
first sight; rows of every later value are pooled into one ring labelled ``other``
(a label that cannot be a canonical value: those always contain ``=``) and counted.

Grouping is columnar: per key, ``dict.get`` is mapped over the column (no Python frame
per row) and factorised; the codes are combined with ``np.unique``, only distinct
combinations are looked at in Python, and rows are split by slot with one argsort.

False alarms: segment rings hold only the per-column histograms and are tested against
the same reference with the same calibration. Once a model has segments, the model's
false-alarm budget per event is split in two: the overall window spends
``1 - SEGMENT_SHARE`` of it and the segment windows ``SEGMENT_SHARE``. A segment window's
evaluation spends that share in proportion to the segment's own new events, so all
segment evaluations together spend at most the share per event however many segments
there are (a traffic-weighted Bonferroni over segments on top of the per-column family).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftline.detectors.windows import PaneRing

#: Label of the ring that pools the segment values beyond ``max_segments``.
OTHER = "other"
#: The segment object alerts of the pooled ring carry.
OTHER_SEGMENT: dict[str, str] = {"other": "*"}
#: Share of a segmented model's false-alarm budget spent on its segment windows.
SEGMENT_SHARE = 0.5
_NONE = -1


def _esc(s: str) -> str:
    return s.replace("%", "%25").replace(",", "%2C").replace("=", "%3D")


def canonical(segment: Mapping[str, str], keys: tuple[str, ...] = ()) -> str:
    """``k=v,k2=v2`` over the sorted keys (only ``keys`` when given); ``""`` for none."""
    items = sorted((k, v) for k, v in segment.items() if not keys or k in keys)
    return ",".join(f"{_esc(k)}={_esc(v)}" for k, v in items)


def parse(label: str) -> dict[str, str]:
    """The segment object of a canonical value (``OTHER_SEGMENT`` for ``other``)."""
    if label == OTHER:
        return dict(OTHER_SEGMENT)
    out: dict[str, str] = {}
    for part in label.split(","):
        if not part:
            continue
        k, _, v = part.partition("=")
        out[_unesc(k)] = _unesc(v)
    return out


def _unesc(s: str) -> str:
    return s.replace("%3D", "=").replace("%2C", ",").replace("%25", "%")


@dataclass
class Segments:
    """The segment rings of one model, in order of first sight, plus the pooled one."""

    max_segments: int
    keys: tuple[str, ...]
    make_ring: Any  # () -> PaneRing
    labels: list[str] = field(default_factory=list)  # slot -> label ("other" last if used)
    rings: dict[str, PaneRing] = field(default_factory=dict)
    since_eval: dict[str, int] = field(default_factory=dict)  # events since last evaluation
    events: dict[str, int] = field(default_factory=dict)  # events ever applied, per label
    overflow_events: int = 0  # rows pooled into "other"
    last_events: dict[str, int] = field(default_factory=dict)  # per label, the last update

    @property
    def active(self) -> bool:
        """Whether the model has shown any segment (the budget is split from then on)."""
        return bool(self.labels)

    def ring(self, label: str) -> PaneRing:
        r = self.rings.get(label)
        if r is None:
            r = self.rings[label] = self.make_ring()
            self.labels.append(label)
            self.since_eval[label] = 0
            self.events[label] = 0
        return r

    def _slot(self, label: str) -> int:
        """Slot of one segment value; new values get a ring while there is room."""
        if not label:
            return _NONE
        if label not in self.rings:
            own = len(self.labels) - (OTHER in self.rings)
            self.ring(label if own < self.max_segments else OTHER)
            if label not in self.rings:
                label = OTHER
        return self.labels.index(label)

    def group(self, segment: NDArray[np.object_],
              rows: NDArray[np.int64]) -> list[tuple[str, NDArray[np.int64]]]:
        """``(label, rows)`` of every segment among ``rows``, in slot order.

        Columnar: per segment key one C-level pass (``dict.get`` mapped over the
        column) and a factorisation; the per-key codes are combined with
        ``np.unique``; only each distinct combination is looked at in Python.
        """
        self.last_events = {}
        if rows.size == 0:
            return []
        col = segment[rows]
        has = np.asarray(col != None, dtype=bool)  # noqa: E711 (elementwise, C loop)
        if not has.any():
            return []
        idx = rows[has]
        dicts = col[has].tolist()
        keys = self.keys or tuple(sorted(set().union(*dicts)))
        code = np.zeros(len(dicts), dtype=np.int64)
        values: list[list[Any]] = []
        for k in keys:
            vals = list(map(dict.get, dicts, repeat(k)))
            table = {v: i for i, v in enumerate(dict.fromkeys(vals))}
            sub = np.fromiter(map(table.__getitem__, vals), dtype=np.int64, count=len(vals))
            code = np.unique(code * len(table) + sub, return_inverse=True)[1].reshape(-1)
            values.append(vals)
        _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
        slots = np.empty(first.size, dtype=np.int64)
        for u in np.argsort(first, kind="stable").tolist():  # in order of first sight
            i = int(first[u])
            seg = {k: v[i] for k, v in zip(keys, values, strict=True) if v[i] is not None}
            slots[u] = self._slot(canonical(seg))
        codes = slots[inverse.reshape(-1)]
        keep = codes != _NONE
        idx, codes = idx[keep], codes[keep]
        order = np.argsort(codes, kind="stable")
        idx, codes = idx[order], codes[order]
        cuts = np.flatnonzero(np.diff(codes)) + 1
        out: list[tuple[str, NDArray[np.int64]]] = []
        for part, c in zip(np.split(idx, cuts), codes[np.r_[0, cuts]].tolist(), strict=True):
            if part.size == 0:
                continue
            label = self.labels[c]
            out.append((label, part))
            self.events[label] += int(part.size)
            self.last_events[label] = int(part.size)
            if label == OTHER:
                self.overflow_events += int(part.size)
        return out

    # -- state ------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
        meta: dict[str, Any] = {
            "labels": list(self.labels),
            "since_eval": [self.since_eval[x] for x in self.labels],
            "events": [self.events[x] for x in self.labels],
            "overflow_events": self.overflow_events,
            "rings": [],
        }
        arrays: dict[str, NDArray[Any]] = {}
        for i, label in enumerate(self.labels):
            rmeta, rarrays = self.rings[label].state()
            meta["rings"].append(rmeta)
            arrays.update({f"seg{i}.{k}": v for k, v in rarrays.items()})
        return meta, arrays

    def load(self, meta: Mapping[str, Any], arrays: Mapping[str, NDArray[Any]]) -> None:
        labels = meta["labels"]
        if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
            raise ValueError("segment labels must be a list of strings")
        if len(set(labels)) != len(labels) or \
                len([x for x in labels if x != OTHER]) > self.max_segments:
            raise ValueError("segment labels repeat or exceed the maximum")
        since, events, rings = meta["since_eval"], meta["events"], meta["rings"]
        if not (len(since) == len(events) == len(rings) == len(labels)):
            raise ValueError("segment tables differ in length")
        for v in (*since, *events, meta["overflow_events"]):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**62:
                raise ValueError(f"bad segment counter {v!r}")
        self.labels, self.rings, self.since_eval, self.events = [], {}, {}, {}
        self.last_events = {}
        for i, label in enumerate(labels):
            ring = self.ring(label)
            prefix = f"seg{i}."
            ring.load(rings[i], {k[len(prefix):]: v for k, v in arrays.items()
                                 if k.startswith(prefix)})
            self.since_eval[label] = since[i]
            self.events[label] = events[i]
        self.overflow_events = meta["overflow_events"]
