"""All events of a rows-form envelope checked column by column, for the common case.

A rows envelope arrives as one parsed list of event dicts, so its values can be checked
a column at a time with C-level passes (``map``, ``set``, ``max``) instead of field by
field per event. :func:`rows_block` does that for envelopes whose events all share one
feature-key order, carry only numeric feature values and plain optional fields; for
anything else it returns None and the caller decodes event by event, which accepts
exactly the envelopes accepted here (with the same rows) and names the reason of a
rejection. It never raises.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain, repeat
from typing import Any

import numpy as np

from driftline.schemas.envelope import NAN, NUMS, NUMS_NONE, STR_NONE, ColumnsBlock, Reject
from driftline.schemas.limits import Limits

__all__ = ["rows_block"]

_get = dict.get
_OUTCOMES = frozenset(("ok", "error", None))
_DICT = frozenset((dict,))
_NONE = type(None)

#: ``segment(value, limits)`` -> the validated segment; raises Reject when it is not valid.
SegmentCheck = Callable[[object, Limits], dict[str, str] | None]


def _column(events: list[dict[str, Any]], name: str) -> list[Any] | None:
    """The values of one field (None where absent), or None when no event has it."""
    col = list(map(_get, events, repeat(name)))
    return None if col.count(None) == len(col) else col


def _strings(col: list[Any], limit: int, min_length: int = 0) -> bool:
    """Every value is None or a string of ``min_length``..``limit`` characters."""
    types = set(map(type, col))
    if not types <= STR_NONE:
        return False
    strs = [v for v in col if v is not None] if _NONE in types else col
    lens = list(map(len, strs))
    return not lens or (max(lens) <= limit and min(lens) >= min_length)


def _numbers(col: list[Any], absent: float) -> list[Any] | None:
    """Numbers with None -> ``absent``; None (not the common case) for anything else."""
    types = set(map(type, col))
    if types <= NUMS:
        return col
    if types <= NUMS_NONE:
        return [absent if v is None else v for v in col]
    return None


def rows_block(
    events: list[Any], kafka_ts: float, partition: int, offset: int,
    model_version: str | None, limits: Limits,
    segments: dict[tuple[tuple[str, str], ...], dict[str, str] | None], segment: SegmentCheck,
) -> ColumnsBlock | None:  # fmt: skip
    """The envelope's events as one block, or None when they are not the common case.

    ``model_version`` is the envelope's (the default of events without one); ``segments``
    caches validated segments by their items and ``segment`` validates a new one (and
    caches it), as the event-by-event decoder does, so both give the same segment dicts.
    """
    n = len(events)
    if not n or set(map(type, events)) != _DICT:
        return None
    if any(map(dict.__contains__, events, repeat("model"))):
        return None
    feats: list[Any] = list(map(_get, events, repeat("features")))
    if set(map(type, feats)) != _DICT:
        return None
    keys = tuple(feats[0])
    if list(map(tuple, feats)).count(keys) != n:  # one key order for all (equal tuples)
        return None
    flat = list(chain.from_iterable(map(dict.values, feats)))
    if not set(map(type, flat)) <= NUMS:
        return None
    numeric = np.array(flat, dtype=np.float64).reshape(n, len(keys))

    ts: Any = [kafka_ts] * n  # (a finite column: zip() below stops with it)
    col = _column(events, "ts")
    if col is not None and (ts := _numbers(col, kafka_ts)) is None:
        return None
    scores: Any = repeat(NAN)
    col = _column(events, "prediction")
    if col is not None and (scores := _numbers(col, NAN)) is None:
        return None
    lats: Any = repeat(NAN)
    col = _column(events, "latency_ms")
    if col is not None:
        if (lats := _numbers(col, NAN)) is None:
            return None
        present = [v for v in col if v is not None]
        if present and min(present) < 0:
            return None

    lim = limits.max_string_length
    strs: dict[str, Any] = {}
    for name, limit, min_length in (
        ("event_id", lim, 0),
        ("model_version", lim, 0),
        ("trace_id", lim, 0),
        ("shadow_of", limits.max_model_id_length, 1),
    ):
        col = _column(events, name)
        if col is not None and not _strings(col, limit, min_length):
            return None
        strs[name] = repeat(None) if col is None else col
    if model_version is not None:
        mvs = strs["model_version"]
        strs["model_version"] = (
            repeat(model_version) if type(mvs) is repeat
            else [model_version if v is None else v for v in mvs]
        )  # fmt: skip
    outs: Any = repeat(None)
    col = _column(events, "outcome")
    if col is not None:
        if not set(map(type, col)) <= STR_NONE or not _OUTCOMES.issuperset(col):
            return None
        outs = col

    segs: Any = repeat(None)
    col = _column(events, "segment")
    if col is not None:
        segs = []
        add = segs.append
        for seg in col:
            if seg is None:
                add(None)
                continue
            try:
                add(segments[tuple(seg.items())])
            except (KeyError, TypeError, AttributeError):  # new in this call, or not valid
                try:
                    add(segment(seg, limits))
                except Reject:
                    return None

    extras = list(
        zip(
            ts, scores, repeat(None), strs["event_id"], strs["model_version"], segs, lats,
            repeat(partition), repeat(offset), strs["shadow_of"], strs["trace_id"], outs,
        )
    )  # fmt: skip
    return ColumnsBlock(keys, numeric, [], extras)
