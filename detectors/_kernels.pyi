"""Compiled inner loops of the window tests and the segment grouping (detectors/_kernels.c)."""

from typing import Any

def window_scores(ref: Any, smoothed: Any, props: Any, ref_n: Any, win: Any, out: Any,
                  columns: int, width: int, /) -> None: ...
def factorise(keys: Any, first: Any, inverse: Any, /) -> int: ...
