"""Reading reference/current data files (CSV, Parquet, NPZ) into columns and batches.

Columns named ``prediction`` hold the model output, columns ``segment_<key>`` the
segment; every other column is a feature. NPZ files are loaded with
``allow_pickle=False``: object arrays are refused, never unpickled.
"""

from __future__ import annotations

import csv
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftline.detectors.errors import InputError
from driftline.schemas.models import EventBatch
from driftline.schemas.validation import parse_iso_ts

PREDICTION = "prediction"
SEGMENT_PREFIX = "segment_"
TIMESTAMP = "ts"


@dataclass(frozen=True)
class Table:
    """Columns of a data file, split into features, prediction, segments and time."""

    features: dict[str, NDArray[Any]]
    prediction: NDArray[Any] | None
    segments: dict[str, NDArray[Any]]
    ts: NDArray[np.float64] | None

    def __len__(self) -> int:
        return len(next(iter(self.features.values()))) if self.features else 0


# cells a numeric column reads as missing: pandas' default NA strings, any case
_MISSING = frozenset(("", "nan", "-nan", "null", "none", "na", "n/a", "#n/a", "#n/a n/a", "#na",
                      "<na>", "1.#ind", "-1.#ind", "1.#qnan", "-1.#qnan"))


def _coerce(values: list[str]) -> NDArray[Any]:
    """A CSV column as float64 when every cell is a number or a missing-value marker
    (``_MISSING``), else as objects (only empty cells missing)."""
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        if v.strip().lower() in _MISSING:
            out[i] = math.nan
            continue
        try:
            out[i] = float(v)
        except ValueError:
            return np.asarray([None if c == "" else c for c in values], dtype=object)
    return out


#: Suffixes of files that are no CSV, refused by name rather than read as one.
_NOT_CSV = (".json", ".jsonl", ".ndjson", ".gz", ".zip", ".xlsx", ".xls", ".avro", ".orc")


def read_columns(path: str | Path) -> dict[str, NDArray[Any]]:
    """Columns of a CSV, Parquet or NPZ file; InputError when it cannot be read as one."""
    p = Path(path)
    suffix = p.suffix.lower()
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: a directory, not a data file")
    if suffix in _NOT_CSV:
        raise InputError(f"{p}: {suffix} files are not read; give a CSV, Parquet "
                         "(.parquet, .pq) or NPZ file")
    try:
        return _read_columns(p, suffix)
    except InputError:
        raise
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start}); a CSV "
                         "must be UTF-8") from None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"{p}: cannot be read: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # pyarrow's errors (ArrowInvalid...) are not ValueErrors
        if type(exc).__module__.startswith("pyarrow"):
            raise InputError(f"{p}: not a readable Parquet file: {exc}") from None
        raise


def _read_columns(p: Path, suffix: str) -> dict[str, NDArray[Any]]:
    if suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                return {k: np.asarray(z[k]) for k in z.files}
        except ValueError as exc:
            raise InputError(f"{p}: {exc} (object arrays are not loaded)") from None
    if suffix in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq  # optional: pip install 'driftline[files]'
        except ImportError:
            raise InputError("reading Parquet needs pyarrow: pip install 'driftline[files]'") from None
        tbl = pq.read_table(p)
        return {
            name: np.asarray(tbl.column(name).to_numpy(zero_copy_only=False))
            for name in tbl.column_names
        }
    with p.open(newline="", encoding="utf-8-sig") as fh:  # a spreadsheet's BOM is no name
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise InputError(f"{p}: empty CSV file") from None
        rows = list(reader)
    names = [h.strip() for h in header]
    if "" in names:
        raise InputError(f"{p}: column {names.index('') + 1} of the header has no name "
                         "(a trailing comma?)")
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"{p}: the header names {', '.join(map(repr, twice))} more than once")
    cols: dict[str, list[str]] = {n: [] for n in names}
    for lineno, row in enumerate(rows, start=2):
        if len(row) != len(names):
            raise InputError(f"{p}:{lineno}: {len(row)} cells, header has {len(names)}")
        for name, cell in zip(names, row, strict=True):
            cols[name].append(cell.strip())
    return {k: _text(v) if k.startswith(SEGMENT_PREFIX) else _coerce(v)
            for k, v in cols.items()}


def _text(values: list[str]) -> NDArray[np.object_]:
    """A CSV column as it is written (segment values: ``1`` stays ``"1"``); empty: None."""
    return np.asarray([c or None for c in values], dtype=object)


def _segment_value(v: Any) -> str | None:
    """A segment cell as the segment's value; None (the key is left out) when empty."""
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def segment_of(table: Table, row: int) -> dict[str, str] | None:
    """Row ``row``'s segment: its non-empty ``segment_<key>`` cells (None: none)."""
    seg = {k: s for k, col in table.segments.items()
           if (s := _segment_value(col[row])) is not None}
    return seg or None


def segment_codes(table: Table) -> tuple[list[dict[str, str]], NDArray[np.int64]]:
    """The table's segments (first seen first, as :func:`segment_of` gives them) and each
    row's segment number (-1: no segment cell). Columnar: each key's distinct cells are
    written out once, and rows are numbered by their combination of values."""
    codes = np.full(len(table), -1, dtype=np.int64)
    if not table.segments or not len(table):
        return [], codes
    keys = list(table.segments)
    values: list[list[str | None]] = []  # per key: its values, by number
    combined = np.zeros(len(table), dtype=np.int64)
    radix = 1
    for k in keys:
        raw: dict[tuple[type, Any], int] = {}  # by type too: 1, True and 1.0 are equal keys
        cells = np.fromiter((raw.setdefault((v.__class__, v), len(raw))
                             for v in table.segments[k].tolist()), np.int64, len(table))
        number: dict[str | None, int] = {}
        of_raw = np.asarray([number.setdefault(_segment_value(v), len(number)) for _, v in raw],
                            dtype=np.int64)
        values.append(list(number))
        if radix > (1 << 62) // max(len(number), 1):  # combinations past 64 bits: row by row
            return _segment_codes_by_row(table)
        combined += of_raw[cells] * radix
        radix *= max(len(number), 1)
    combos, first, inverse = np.unique(combined, return_index=True, return_inverse=True)
    objects: list[dict[str, str]] = []
    number_of = np.full(len(combos), -1, dtype=np.int64)
    for c in np.argsort(first, kind="stable").tolist():
        code = int(combos[c])
        seg: dict[str, str] = {}
        for k, vals in zip(keys, values, strict=True):
            code, i = divmod(code, max(len(vals), 1))
            v = vals[i]
            if v is not None:
                seg[k] = v
        if seg:
            number_of[c] = len(objects)
            objects.append(seg)
    return objects, number_of[inverse.reshape(-1)]


def _segment_codes_by_row(table: Table) -> tuple[list[dict[str, str]], NDArray[np.int64]]:
    """:func:`segment_codes`, one row at a time."""
    codes = np.full(len(table), -1, dtype=np.int64)
    objects: list[dict[str, str]] = []
    seen: dict[tuple[tuple[str, str], ...], int] = {}
    for row in range(len(table)):
        seg = segment_of(table, row)
        if seg is not None:
            code = seen.setdefault(tuple(seg.items()), len(objects))
            if code == len(objects):
                objects.append(seg)
            codes[row] = code
    return objects, codes


def _seconds(text: str) -> float:
    """Epoch seconds written as a number, or an ISO-8601 time."""
    try:
        return float(text)
    except ValueError:
        return parse_iso_ts(text)


def _timestamps(path: str | Path, ts: NDArray[Any]) -> NDArray[np.float64]:
    """The ``ts`` column as epoch seconds: numbers as they are, ISO-8601 text parsed
    (naive times are UTC, as in events), datetimes converted; empty cells NaN."""
    if ts.dtype.kind == "M":
        out = ts.astype("datetime64[ns]").astype(np.int64) / 1e9
        return np.where(np.isnat(ts), np.nan, out)
    if ts.dtype.kind in "fiub":
        return np.asarray(ts, dtype=np.float64)
    out = np.full(ts.shape[0], np.nan)
    for i, v in enumerate(ts.tolist()):
        if v is None or v == "":
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[i] = v
            continue
        try:
            out[i] = _seconds(str(v))
        except ValueError as exc:
            raise InputError(f"{path}: ts row {i + 1}: {exc} (epoch seconds or ISO-8601)") from None
    return out


def read_table(path: str | Path) -> Table:
    """A data file split into features / prediction / segment_* / ts columns."""
    cols = read_columns(path)
    if not cols:
        raise InputError(f"{path}: no columns")
    pred = cols.pop(PREDICTION, None)
    ts = cols.pop(TIMESTAMP, None)
    segments = {k[len(SEGMENT_PREFIX):]: cols.pop(k) for k in list(cols) if k.startswith(SEGMENT_PREFIX)}
    if "" in segments:
        raise InputError(f"{path}: a column '{SEGMENT_PREFIX}' needs a key after it "
                         f"({SEGMENT_PREFIX}region, ...)")
    if not cols:
        raise InputError(f"{path}: no feature columns")
    shapes = {k: v.shape for k, v in (*cols.items(), *segments.items(),
                                      (PREDICTION, pred), (TIMESTAMP, ts)) if v is not None}
    if any(len(s) != 1 for s in shapes.values()):
        raise InputError(f"{path}: columns must be one-dimensional (got "
                         + ", ".join(f"{k} {s}" for k, s in shapes.items() if len(s) != 1) + ")")
    if len({s[0] for s in shapes.values()}) > 1:
        raise InputError(f"{path}: columns differ in length ("
                         + ", ".join(f"{k} {s[0]}" for k, s in shapes.items()) + ")")
    if next(iter(shapes.values()))[0] == 0:
        raise InputError(f"{path}: no rows")
    ts_arr = None if ts is None else _timestamps(path, ts)
    return Table(cols, pred, segments, ts_arr)


def to_batch(model: str, table: Table, start: int = 0, stop: int | None = None) -> EventBatch:
    """Rows ``start:stop`` of a table as an EventBatch (row numbers become offsets)."""
    stop = len(table) if stop is None else min(stop, len(table))
    n = max(stop - start, 0)
    names = tuple(table.features)
    numeric = np.full((n, len(names)), np.nan)
    text: NDArray[np.object_] | None = None
    for j, name in enumerate(names):
        col = table.features[name][start:stop]
        if col.dtype.kind in "fiu":
            numeric[:, j] = col
        else:
            if text is None:
                text = np.full((n, len(names)), None, dtype=object)
            text[:, j] = [None if v is None else ("true" if v is True else "false" if v is False
                                                  else str(v)) for v in col.tolist()]
    score = np.full(n, np.nan)
    label: NDArray[np.object_] | None = None
    if table.prediction is not None:
        p = table.prediction[start:stop]
        if p.dtype.kind in "fiu":
            score = p.astype(np.float64)
        else:
            label = np.asarray([None if v is None else str(v) for v in p.tolist()], dtype=object)
    seg = np.full(n, None, dtype=object)
    if table.segments:
        seg[:] = [segment_of(table, start + i) for i in range(n)]
    none = np.full(n, None, dtype=object)
    ts = table.ts[start:stop] if table.ts is not None else np.full(n, np.nan)
    return EventBatch(
        model=model,
        feature_names=names,
        numeric=numeric,
        text=text,
        ts=np.asarray(ts, dtype=np.float64),
        prediction_score=score,
        prediction_label=label,
        event_id=none,
        model_version=none.copy(),
        segment=seg,
        latency_ms=np.full(n, np.nan),
        partition=np.full(n, -1, dtype=np.int64),
        offset=np.arange(start, stop, dtype=np.int64),
    )
