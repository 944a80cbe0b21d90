"""Segment cells of a table (``segment_<key>`` columns) numbered by segment."""

from __future__ import annotations

import numpy as np

from driftline.detectors.tables import Table, _segment_codes_by_row, segment_codes, segment_of


def test_segment_codes_number_rows_as_segment_of_reads_them() -> None:
    """Columnar numbering of segment cells: the same segments, in order of first sight,
    as row by row; 1, True, "1" and 1.0 are told apart as their text is; empty cells
    (None, "", NaN objects) leave the key out; rows with no cell are -1."""
    rng = np.random.default_rng(0)
    n = 5000
    segs = {"region": np.array(["eu", "us", None, "", "apac"], dtype=object)[rng.integers(0, 5, n)],
            "tier": np.array([1, True, "1", np.nan, "gold", 2.5, False, 0, 1.0],
                             dtype=object)[rng.integers(0, 9, n)],
            "x": np.array([float("nan")] * n, dtype=object)}
    table = Table({"a": rng.normal(size=n)}, None, segs, None)
    objects, codes = segment_codes(table)
    want_objects, want_codes = _segment_codes_by_row(table)
    assert objects == want_objects and np.array_equal(codes, want_codes)
    assert {"tier": "1"} in objects and {"tier": "true"} in objects
    for row in range(0, n, 97):
        seg = segment_of(table, row)
        assert (codes[row] == -1) if seg is None else objects[codes[row]] == seg
    # more combinations than 64 bits hold: row by row, the same result
    wide = {f"k{j}": np.array([f"v{i}" for i in rng.integers(0, 2000, 300)], dtype=object)
            for j in range(6)}
    table = Table({"a": np.zeros(300)}, None, wide, None)
    objects, codes = segment_codes(table)
    want_objects, want_codes = _segment_codes_by_row(table)
    assert objects == want_objects and np.array_equal(codes, want_codes)
