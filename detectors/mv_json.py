"""Strict readers for the JSON of a reference's multivariate part.

The multivariate part comes from the references topic: anyone with write access fills it.
Every reader raises ValueError (never coerces with ``str()``/``int()``/``float()``, which
accept the wrong types or raise OverflowError/RecursionError on hostile values).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray


def text(v: object, what: str) -> str:
    """A string."""
    if not isinstance(v, str):
        raise ValueError(f"{what} must be a string, not {type(v).__name__}")
    return v


def texts(v: object, what: str) -> tuple[str, ...]:
    """A list of strings."""
    if not isinstance(v, list):
        raise ValueError(f"{what} must be a list of strings")
    return tuple(text(x, what) for x in v)


def number(v: object, what: str) -> float:
    """A finite JSON number (not a boolean)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{what} must be a number, not {type(v).__name__}")
    out = float(v) if isinstance(v, float) or abs(v) < 2**1000 else math.inf
    if not math.isfinite(out):
        raise ValueError(f"{what} must be finite")
    return out


def flags(v: object, q: int, what: str) -> NDArray[np.bool_]:
    """A ``q x q`` matrix of 0/1 flags."""
    if not isinstance(v, list) or len(v) != q or not all(
            isinstance(row, list) and len(row) == q and all(
                not isinstance(x, float) and x in (0, 1) for x in row) for row in v):
        raise ValueError(f"{what} must be a {q} x {q} matrix of 0/1")
    return np.asarray(v, dtype=bool).reshape(q, q)
