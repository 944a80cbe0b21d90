"""Batch envelopes as the tests read them: any form turned into rows."""

from __future__ import annotations

import binascii
import math
from typing import Any

import numpy as np


def _unpacked(col: Any) -> list[Any]:
    if isinstance(col, list):
        return col
    if "f64" in col:
        vals = np.frombuffer(binascii.a2b_base64(col["f64"]), "<f8").tolist()
        return [None if math.isnan(v) else v for v in vals]
    index = np.frombuffer(binascii.a2b_base64(col["index"]), "<u4")
    return [col["dict"][i] for i in index]


def as_rows(env: dict[str, Any]) -> dict[str, Any]:
    """A columns envelope (JSON or packed) as the same envelope in rows form; a rows
    envelope as it is."""
    if "columns" not in env:
        return env
    env = dict(env)
    n, cols = env.pop("n"), dict(env.pop("columns"))
    feats = {k: _unpacked(v) for k, v in cols.pop("features").items()}
    others = {k: _unpacked(v) for k, v in cols.items()}
    assert all(len(v) == n for v in (*feats.values(), *others.values()))
    env["events"] = [{"features": {k: v[i] for k, v in feats.items()},
                      **{k: v[i] for k, v in others.items()}} for i in range(n)]
    return env
