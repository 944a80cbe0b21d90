"""Reference profiles: what a model was validated on, summarised for streaming comparison.

Numeric features keep quantile bin edges with reference counts, a missing count and a
bounded raw sample (for exact tests); categorical features keep their top-K categories
plus an "other" count. The prediction is profiled the same way, as a score or a label.
The ``multivariate`` part holds what the multivariate statistics need of the joint
distribution of the features (see :mod:`~driftline.detectors.multivariate`).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from driftline.detectors.errors import ProfileError
from driftline.detectors.multivariate import MultivariateModel
from driftline.detectors.mv_encode import CategoricalInput, ColumnInput, NumericInput
from driftline.detectors.serialization import within_depth

SCHEMA = "driftline.reference/v1"
PREDICTION = "prediction"


@dataclass(frozen=True)
class NumericProfile:
    """Quantile bins of one numeric column: ``len(edges) + 1`` value bins."""

    name: str
    edges: NDArray[np.float64]
    counts: NDArray[np.int64]
    missing: int
    sample: NDArray[np.float64]
    mean: float
    std: float
    min: float
    max: float

    @property
    def n_bins(self) -> int:
        return int(self.counts.size)


@dataclass(frozen=True)
class CategoricalProfile:
    """Top-K categories of one column; ``counts`` has K + 1 entries, the last is "other"."""

    name: str
    categories: tuple[str, ...]
    counts: NDArray[np.int64]
    missing: int
    #: share of new values expected outside ``categories``, estimated across two halves of
    #: the reference (each half's top K tested on the other): ``counts[-1]`` understates it,
    #: since the categories were chosen as the most frequent of the same rows. None:
    #: a profile written before the estimate (``counts[-1]`` is used).
    unseen_rate: float | None = None

    @property
    def n_bins(self) -> int:
        return int(self.counts.size)


ColumnProfile = NumericProfile | CategoricalProfile


@dataclass(frozen=True)
class ReferenceProfile:
    """ReferenceProfile v1 of one model and version."""

    model: str
    columns: tuple[ColumnProfile, ...]
    prediction: ColumnProfile | None
    size: int
    source: str = "arrays"
    model_version: str | None = None
    created_at: float = 0.0
    reference_id: str = ""
    multivariate: dict[str, Any] | None = field(default=None)
    #: True for the copy :meth:`without_samples` makes: it cannot be serialised.
    samples_dropped: bool = False

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def with_model_version(self, version: str) -> ReferenceProfile:
        """This profile for another model version, under a new ``reference_id`` (the id
        is the digest of the content, version included: a worker takes a reference whose
        id it already has as unchanged)."""
        body = replace(self, model_version=version, reference_id="")
        return replace(body, reference_id=_reference_id(self.model, body))

    def without_samples(self) -> ReferenceProfile:
        """This profile without the raw samples of its numeric feature columns.

        What a worker keeps in memory: detection uses the bins, counts and the
        multivariate part, and the prediction keeps its sample (the confidence check's
        baseline). The copy has the same ``reference_id`` and refuses :meth:`to_dict` and
        :meth:`to_json`, so it is never published or saved in place of the full profile.
        """
        if self.samples_dropped:
            return self
        cols = tuple(replace(c, sample=_NO_SAMPLE) if isinstance(c, NumericProfile) else c
                     for c in self.columns)
        return replace(self, columns=cols, samples_dropped=True)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (schemas/json/reference_profile.v1.schema.json)."""
        if self.samples_dropped:
            raise ProfileError(f"reference {self.reference_id or self.model!r} has no feature "
                               "samples (an in-memory copy): it cannot be serialised")
        pred: dict[str, Any] | None = None
        if self.prediction is not None:
            kind = "score" if isinstance(self.prediction, NumericProfile) else "label"
            pred = {"kind": kind, **_column_dict(self.prediction)}
        return {
            "schema": SCHEMA,
            "reference_id": self.reference_id,
            "model": self.model,
            "model_version": self.model_version,
            "created_at": self.created_at,
            "source": self.source,
            "size": self.size,
            "feature_order": list(self.feature_names),
            "numeric": [_column_dict(c) for c in self.columns if isinstance(c, NumericProfile)],
            "categorical": [
                _column_dict(c) for c in self.columns if isinstance(c, CategoricalProfile)
            ],
            "prediction": pred,
            "multivariate": self.multivariate,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReferenceProfile:
        """Inverse of :meth:`to_dict`; raises ProfileError on malformed input."""
        try:
            if d.get("schema") != SCHEMA:
                raise ProfileError(f"not a {SCHEMA} document")
            cols: list[ColumnProfile] = [_numeric_from(c) for c in d["numeric"]]
            cols += [_categorical_from(c) for c in d["categorical"]]
            order = {name: i for i, name in enumerate(d.get("feature_order") or [])}
            cols.sort(key=lambda c: order.get(c.name, len(order)))
            pred: ColumnProfile | None = None
            p = d.get("prediction")
            if p is not None:
                if p["kind"] not in ("score", "label"):
                    raise ProfileError(f"prediction kind {_brief(p['kind'])} is not score or label")
                pred = _numeric_from(p) if p["kind"] == "score" else _categorical_from(p)
            if not cols:
                raise ProfileError("a reference needs at least one feature column")
            names = [c.name for c in cols]
            if len(set(names)) != len(names):
                raise ProfileError("duplicate column names")
            mv = d.get("multivariate")
            if mv is not None and not isinstance(mv, dict):
                raise ProfileError("multivariate must be an object or null")
            if mv is not None and not within_depth(mv, _MAX_MV_DEPTH):  # it is kept verbatim
                raise ProfileError(f"multivariate nested deeper than {_MAX_MV_DEPTH} levels")
            return cls(
                model=_str(d["model"], "model", min_length=1),
                columns=tuple(cols),
                prediction=pred,
                size=_int(d["size"], "size"),
                source=_str(d.get("source", ""), "source"),
                model_version=None if d.get("model_version") is None
                else _str(d["model_version"], "model_version"),
                created_at=_finite(d.get("created_at", 0.0), "created_at"),
                reference_id=_str(d.get("reference_id", ""), "reference_id"),
                multivariate=mv,
            )
        except ProfileError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError,
                RecursionError) as exc:
            raise ProfileError(f"malformed reference profile: {type(exc).__name__}: "
                               f"{str(exc)[:200]}") from None

    @classmethod
    def from_json(cls, data: bytes | str) -> ReferenceProfile:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ProfileError(f"reference is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ProfileError("reference must be a JSON object")
        return cls.from_dict(obj)


#: The sample of a column in a profile :meth:`~ReferenceProfile.without_samples` (read-only).
_NO_SAMPLE: NDArray[np.float64] = np.zeros(0)
_NO_SAMPLE.setflags(write=False)


def _column_dict(c: ColumnProfile) -> dict[str, Any]:
    if isinstance(c, NumericProfile):
        return {
            "name": c.name,
            "edges": c.edges.tolist(),
            "counts": c.counts.tolist(),
            "missing": c.missing,
            "sample": c.sample.tolist(),
            "mean": c.mean,
            "std": c.std,
            "min": c.min,
            "max": c.max,
        }
    out = {
        "name": c.name,
        "categories": list(c.categories),
        "counts": c.counts.tolist(),
        "missing": c.missing,
    }
    if c.unseen_rate is not None:
        out["unseen_rate"] = c.unseen_rate
    return out


#: Counts and sizes stay exact in float64 and their sums in int64.
_MAX_COUNT = 2**53
#: The multivariate part nests 5 levels; deeper JSON is hostile (and to_json() could not
#: write it back: orjson writes at most 254 levels).
_MAX_MV_DEPTH = 16


def _brief(v: object) -> str:
    return repr(v)[:64] if isinstance(v, str | int | float | bool | None) else type(v).__name__


def _str(v: object, what: str, min_length: int = 0) -> str:
    if not isinstance(v, str) or len(v) < min_length:
        raise ProfileError(f"{what} must be a{' non-empty' if min_length else ''} string, "
                           f"not {_brief(v)}")
    return v


def _int(v: object, what: str) -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < _MAX_COUNT:
        raise ProfileError(f"{what} must be an integer in [0, 2**53), not {_brief(v)}")
    return v


def _finite(v: object, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ProfileError(f"{what} must be a finite number, not {_brief(v)}")
    return float(v)


#: Types whose lists :func:`_finites` converts in one numpy call (exact types: anything
#: else, subclasses included, takes the per-value path).
_NUMBER_TYPES = frozenset((int, float))


def _finites(raw: object, what: str) -> NDArray[np.float64]:
    """``[_finite(x, what) for x in raw]`` as float64: one numpy conversion for a list of
    plain numbers (a reference carries ~10^5 of them), the per-value checks otherwise,
    so a bad value is named the same way."""
    if type(raw) is list and _NUMBER_TYPES.issuperset(map(type, raw)):
        try:
            arr = np.asarray(raw, dtype=np.float64)
        except OverflowError:  # an int beyond float64: the loop finds the first bad value
            pass
        else:
            if arr.ndim == 1 and np.isfinite(arr).all():
                return arr
    return np.asarray([_finite(x, what) for x in raw], dtype=np.float64)  # type: ignore[attr-defined]


def _counts(c: Mapping[str, Any], name: str) -> NDArray[np.int64]:
    raw = c["counts"]
    if not isinstance(raw, list):
        raise ProfileError(f"column {name!r}: counts must be an array")
    what = f"column {name!r} count"
    counts = np.asarray([_int(x, what) for x in raw], dtype=np.int64)
    if counts.sum(dtype=np.float64) >= _MAX_COUNT:
        raise ProfileError(f"column {name!r}: counts sum to 2**53 or more")
    return counts


def _numeric_from(c: Mapping[str, Any]) -> NumericProfile:
    name = _str(c["name"], "column name", min_length=1)
    edges = _finites(c["edges"], f"column {name!r} edge")
    counts = _counts(c, name)
    if counts.size != edges.size + 1 or np.any(np.diff(edges) <= 0):
        raise ProfileError(f"numeric profile {name!r}: edges/counts inconsistent")
    return NumericProfile(
        name=name,
        edges=edges,
        counts=counts,
        missing=_int(c["missing"], f"column {name!r} missing"),
        sample=_finites(c["sample"], f"column {name!r} sample"),
        mean=_finite(c["mean"], f"column {name!r} mean"),
        std=_finite(c["std"], f"column {name!r} std"),
        min=_finite(c["min"], f"column {name!r} min"),
        max=_finite(c["max"], f"column {name!r} max"),
    )


def _categorical_from(c: Mapping[str, Any]) -> CategoricalProfile:
    name = _str(c["name"], "column name", min_length=1)
    cats = tuple(_str(x, f"column {name!r} category") for x in c["categories"])
    counts = _counts(c, name)
    if counts.size != len(cats) + 1 or len(set(cats)) != len(cats):
        raise ProfileError(f"categorical profile {name!r}: categories/counts inconsistent")
    unseen = c.get("unseen_rate")
    if unseen is not None:
        unseen = _finite(unseen, f"column {name!r} unseen_rate")
        if not 0.0 <= unseen <= 1.0:
            raise ProfileError(f"categorical profile {name!r}: unseen_rate outside [0, 1]")
    return CategoricalProfile(
        name=name, categories=cats, counts=counts,
        missing=_int(c["missing"], f"column {name!r} missing"), unseen_rate=unseen,
    )


def _is_numeric(values: NDArray[Any]) -> bool:
    if values.dtype.kind in "fiu":
        return True
    if values.dtype.kind == "b":
        return False
    present = [v for v in values.tolist() if v is not None]
    return bool(present) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in present
    )


def profile_numeric(
    name: str, values: NDArray[Any], *, bins: int = 16, sample_size: int = 5000, seed: int = 0
) -> NumericProfile:
    """Quantile-bin one numeric column (NaN/None count as missing)."""
    x = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(x)
    v = x[finite]
    missing = int(x.size - v.size)
    if v.size == 0:
        edges = np.zeros(0)
        counts = np.zeros(1, dtype=np.int64)
        return NumericProfile(name, edges, counts, missing, np.zeros(0), 0.0, 0.0, 0.0, 0.0)
    qs = np.quantile(v, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    edges = np.unique(qs)
    # a value holding several quantiles (a point mass: a binary feature's 0, a count's
    # mode) gets a bin of its own, [v, next float): else it shares one with every larger
    # value up to the next edge, and a feature that is 0 for 98% of the rows would have
    # a single bin, which no drift moves
    masses = edges[(np.searchsorted(qs, edges, side="right") - np.searchsorted(qs, edges)) > 1]
    if masses.size:
        edges = np.union1d(edges, np.nextafter(masses, np.inf))
    # searchsorted(side="right"): bin k holds edges[k-1] <= x < edges[k]
    idx = np.searchsorted(edges, v, side="right")
    counts = np.bincount(idx, minlength=edges.size + 1).astype(np.int64)
    rng = np.random.default_rng(seed)
    sample = v if v.size <= sample_size else rng.choice(v, size=sample_size, replace=False)
    mean, std = _moments(v)
    return NumericProfile(
        name=name,
        edges=edges,
        counts=counts,
        missing=missing,
        sample=np.sort(sample),
        mean=mean,
        std=std,
        min=float(v.min()),
        max=float(v.max()),
    )


#: A column with more than ``top_k`` categories chooses them on every ``SELECT_EVERY``-th
#: row and counts them (and ``other`` and missing values) on the other rows.
SELECT_EVERY = 8


def profile_categorical(name: str, values: Sequence[Any], *, top_k: int = 32) -> CategoricalProfile:
    """Top-K categories of one column (None/NaN count as missing, bools as "true"/"false").

    With more than ``top_k`` categories, the K kept are the most frequent on every
    ``SELECT_EVERY``-th row, and the counts come from the other rows: counted on the rows
    that chose them, the kept categories are overstated and ``other`` understated (the
    sample's favourites win), a bias that outgrows the noise of large windows (a
    40-category column: 3x the false alarms at 1e-3 in 5,000-event windows). Those
    columns' counts then total fewer rows than the reference holds."""
    tokens = [_category_token(v) for v in values]
    counter = Counter(t for t in tokens if t is not None)
    if len(counter) > top_k:
        chosen = Counter(t for t in tokens[::SELECT_EVERY] if t is not None)
        tokens = [t for i, t in enumerate(tokens) if i % SELECT_EVERY]
        top = chosen.most_common(top_k)
        counter = Counter(t for t in tokens if t is not None)
    else:
        top = counter.most_common(top_k)
    missing = sum(1 for t in tokens if t is None)
    cats = tuple(sorted(c for c, _ in top))
    counts = [counter[c] for c in cats]
    other = sum(counter.values()) - sum(counts)
    return CategoricalProfile(name, cats, np.asarray([*counts, other], dtype=np.int64), missing,
                              _held_out_unseen_rate([t for t in tokens if t is not None], top_k))


def _held_out_unseen_rate(tokens: list[str], top_k: int) -> float | None:
    """Mean share of one half's values (even / odd rows) outside the other half's top K.

    The reference's own ``other`` share is biased low, most where many categories have
    about the rank K frequency: the kept ones are those the sample happened to favour.
    On rows that did not choose them, the share is what new data will show (slightly
    more, with half the rows choosing: a conservative estimate). None under 2 values."""
    halves = tokens[0::2], tokens[1::2]
    if not halves[1]:
        return None
    kept = [{c for c, _ in Counter(h).most_common(top_k)} for h in halves]
    rates = [sum(1 for t in h if t not in k) / len(h) for h, k in zip(halves, kept[::-1], strict=True)]
    return float(sum(rates) / 2)


def _category_token(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool) or isinstance(v, np.bool_):
        return "true" if v else "false"
    if isinstance(v, float) and math.isnan(v):
        return None
    return str(v)


def _moments(v: NDArray[np.float64]) -> tuple[float, float]:
    """Mean and standard deviation of finite values, finite however large they are (sums
    of values near the float limit overflow: then they are taken of ``v / max|v|``)."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = float(v.mean()), float(v.std())
    if not (math.isfinite(mean) and math.isfinite(std)):
        s = float(np.max(np.abs(v)))
        w = v / s
        mean, std = float(w.mean()) * s, float(w.std()) * s
    return mean, std


def build_profile(
    model: str,
    columns: Mapping[str, Sequence[Any] | NDArray[Any]],
    *,
    prediction: Sequence[Any] | NDArray[Any] | None = None,
    model_version: str | None = None,
    source: str = "arrays",
    bins: int = 16,
    top_k: int = 32,
    sample_size: int = 5000,
    categorical: Sequence[str] = (),
    seed: int = 0,
    created_at: float | None = None,
    multivariate: bool = True,
) -> ReferenceProfile:
    """Profile reference columns (name -> values). Types are inferred; force with ``categorical``.

    With ``multivariate`` (the default), the profile also gets the reference side of the
    multivariate statistics (fitted on the feature rows; the prediction is left out), unless
    the reference is too small or has fewer than two usable features.
    """
    if not columns:
        raise ProfileError("a reference needs at least one feature column")
    sizes = {len(v) for v in columns.values()}
    if len(sizes) != 1:
        raise ProfileError(f"reference columns differ in length: {sorted(sizes)}")
    size = sizes.pop()
    if size == 0:
        raise ProfileError("reference columns are empty")
    profiles: list[ColumnProfile] = []
    inputs: list[ColumnInput] = []
    for name, raw in columns.items():
        arr = np.asarray(raw) if not isinstance(raw, np.ndarray) else raw
        if name not in categorical and _is_numeric(arr):
            profiles.append(profile_numeric(name, arr, bins=bins, sample_size=sample_size, seed=seed))
            inputs.append(NumericInput(name, np.asarray(arr, dtype=np.float64)))  # None -> NaN
        else:
            values = list(arr.tolist())
            cat = profile_categorical(name, values, top_k=top_k)
            profiles.append(cat)
            inputs.append(_codes(cat, values))
    pred: ColumnProfile | None = None
    if prediction is not None:
        parr = np.asarray(prediction) if not isinstance(prediction, np.ndarray) else prediction
        if len(parr) != size:
            raise ProfileError("prediction column length differs from the features")
        if _is_numeric(parr):
            pred = profile_numeric(PREDICTION, parr, bins=bins, sample_size=sample_size, seed=seed)
        else:
            pred = profile_categorical(PREDICTION, list(parr.tolist()), top_k=top_k)
    created = time.time() if created_at is None else created_at
    mv = MultivariateModel.fit(inputs, seed=seed) if multivariate else None
    body = ReferenceProfile(
        model=model,
        columns=tuple(profiles),
        prediction=pred,
        size=size,
        source=source,
        model_version=model_version,
        created_at=created,
        multivariate=None if mv is None else mv.to_dict(),
    )
    return ReferenceProfile(
        model=model,
        columns=body.columns,
        prediction=pred,
        size=size,
        source=source,
        model_version=model_version,
        created_at=created,
        reference_id=_reference_id(model, body),
        multivariate=body.multivariate,
    )


def _reference_id(model: str, body: ReferenceProfile) -> str:
    """``model@digest`` of a profile's content (``body`` has no id of its own yet)."""
    return f"{model}@{hashlib.sha1(orjson.dumps(body.to_dict())).hexdigest()[:12]}"


def _codes(profile: CategoricalProfile, values: Sequence[Any]) -> CategoricalInput:
    """A categorical column as indices into the profile's categories (other = K, missing = -1)."""
    lookup = {c: i for i, c in enumerate(profile.categories)}
    other = len(profile.categories)
    codes = [-1 if t is None else lookup.get(t, other) for t in map(_category_token, values)]
    return CategoricalInput(profile.name, np.asarray(codes, dtype=np.int64), profile.categories)
