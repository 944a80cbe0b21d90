"""river's drift detectors as batched :class:`ScalarDetector`\\ s with exact, plain snapshots.

Each adapter keeps river's shape (constructor parameters stored verbatim as public
attributes, ``_reset()`` called by the constructor, ``update()`` returning self) and feeds a
whole batch to one river detector, recording in ``drift_indices`` the positions where river
flagged drift. Works with river 0.23 (Cython ADWIN, ``HDDM_A``/``HDDM_W``) and 0.26 (Rust
ADWIN, ``HDDMA``/``HDDMW``).

Snapshots never pickle. Every river attribute that makes up a detector's running state is
written out by name (numbers into numeric arrays, flags and counts into the JSON header),
and restore rebuilds the river object from them, so the round trip is exact. ADWIN's
bucket structure lives in compiled code; it is read and written through the helper's own
state hooks (Cython's ``__reduce_cython__``/``__setstate_cython__`` on 0.23, the bincode
``__getstate__``/``__setstate__`` on the Rust helper), decoded to named arrays and
validated before any byte reaches the compiled side. The format does not depend on the
river version: a snapshot from 0.23 restores under 0.26 and back (ADWIN continues
bit-identically; HDDM_W follows the restoring version's EWMean, and river 0.23's treats a
leading 0.0 as "no value yet"). :meth:`snapshot` refuses (``SnapshotError``) when the
installed river carries state attributes this module does not know, rather than write a
lossy snapshot.
"""

from __future__ import annotations

import importlib
import math
import random
import struct
from collections import deque
from typing import Any, ClassVar, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray

from driftline.detectors.base import ScalarDetector
from driftline.detectors.errors import InputError, SnapshotError
from driftline.detectors.serialization import pack, unpack

Arrays = dict[str, np.ndarray]
_I32 = 2**31 - 1
_SNAPSHOT_ERRORS = (KeyError, TypeError, ValueError, IndexError, OverflowError, struct.error)


def _river_class(*paths: str) -> Any:
    """The first of ``river.<module>.<Class>`` paths that exists (names moved between versions)."""
    for path in paths:
        module, _, cls = path.rpartition(".")
        found = getattr(importlib.import_module(f"river.{module}"), cls, None)
        if found is not None:
            return found
    raise ImportError(f"none of {paths} in the installed river")


def preload(*detectors: type[RiverDetector]) -> None:
    """Import these detectors' river classes now (river itself: ~0.15-0.7 s, once per
    process) rather than inside the first batch that builds one."""
    for cls in detectors:
        _river_class(*cls.river_paths)


def _expect_attrs(obj: Any, names: set[str]) -> None:
    got = set(vars(obj))
    if got != names:
        raise SnapshotError(
            f"{type(obj).__name__} of the installed river has state {sorted(got ^ names)} "
            "that this adapter does not serialise; refusing a lossy snapshot"
        )


def _number(value: Any, name: str, low: float, high: float, *, integer: bool = False) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} in [{low}, {high}], got {value!r}")


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected a boolean, got {value!r}")
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a count, got {value!r}")
    return value


def _within(value: float, name: str, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` if ``low <= value <= high`` (so never NaN), else ValueError."""
    if not low <= value <= high:
        raise ValueError(f"{name} = {value!r} is outside [{low}, {high}]")
    return value


def _floats(arrays: Arrays, name: str, n: int) -> list[float]:
    arr = arrays[name]
    if arr.dtype != np.float64 or arr.shape != (n,):
        raise ValueError(f"array {name!r} must be float64 of shape ({n},)")
    return [float(v) for v in arr]


# The ignore is for ``mypy detectors``, which cannot follow the editable ``driftline.*``
# import hook and so sees ScalarDetector as Any; resolved runs use no ignore at all.
class RiverDetector(ScalarDetector):  # type: ignore[misc, unused-ignore]
    """Shared machinery: batch loop, input checks, snapshot framing. Subclasses add state codecs."""

    #: ``river.<module>.<Class>`` candidates, newest name first.
    river_paths: ClassVar[tuple[str, ...]] = ()
    #: Names of the constructor parameters (also the public attributes).
    param_names: ClassVar[tuple[str, ...]] = ()
    #: Binary detectors take 0/1 error indicators and report warnings.
    binary: ClassVar[bool] = False
    #: River attributes (besides parameters and flags) that make up the running state.
    _STATE_ATTRS: ClassVar[set[str]] = set()

    # -- river's shape ---------------------------------------------------------------
    def _reset(self) -> None:
        super()._reset()
        self.warning_indices: list[int] = []
        self._river: Any = self._new_river(self._params())

    @property
    def river(self) -> Any:
        """The wrapped river detector (read it; mutating it voids the snapshot guarantees)."""
        return self._river

    @property
    def warning_detected(self) -> bool:
        """Whether river's warning zone was entered during the last update (binary detectors)."""
        return bool(self.warning_indices)

    def update(self, x: ArrayLike) -> Self:
        """Feed a 1-D batch; ``drift_indices`` gets the positions where river flagged drift."""
        values = self._checked(x).tolist()
        det = self._river
        step = det.update
        drifts: list[int] = []
        warnings: list[int] = []
        if self.binary:
            for i, v in enumerate(values):
                step(v)
                if det._drift_detected:
                    drifts.append(i)
                elif det._warning_detected:
                    warnings.append(i)
        else:
            for i, v in enumerate(values):
                step(v)
                if det._drift_detected:
                    drifts.append(i)
        self.n_seen += len(values)
        self.drift_indices = drifts
        self.warning_indices = warnings
        return self

    def _checked(self, x: ArrayLike) -> NDArray[np.float64]:
        values: NDArray[np.float64] = self._as_values(x)
        if not np.isfinite(values).all():
            raise InputError("values must be finite (no NaN or infinity)")
        if self.binary and not np.isin(values, (0.0, 1.0)).all():
            raise InputError(f"{self.name} takes 0/1 error indicators only")
        return values

    # -- parameters ------------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        return {p: getattr(self, p) for p in self.param_names}

    @classmethod
    def _check_params(cls, params: dict[str, Any]) -> None:
        """Raise ValueError when the parameters would make river misbehave."""

    @classmethod
    def _new_river(cls, params: dict[str, Any]) -> Any:
        cls._check_params(params)
        return _river_class(*cls.river_paths)(**params)

    # -- state -----------------------------------------------------------------------
    @classmethod
    def snapshot_kind(cls) -> str:
        return f"driftline.river.{cls.name}"

    def _state(self) -> tuple[dict[str, Any], Arrays]:
        """The river object's running state as (JSON-able meta, numeric arrays)."""
        raise NotImplementedError

    @classmethod
    def _river_from_state(
        cls, params: dict[str, Any], state: dict[str, Any], arrays: Arrays
    ) -> Any:
        """A river object in exactly the state :meth:`_state` described (validated)."""
        raise NotImplementedError

    def snapshot(self, *, key: bytes | None = None) -> bytes:
        det = self._river
        _expect_attrs(det, set(self.param_names) | self._river_attrs())
        state, arrays = self._state()
        state["drift"] = bool(det._drift_detected)
        if self.binary:
            state["warning"] = bool(det._warning_detected)
        meta = {
            "params": self._params(),
            "n_seen": self.n_seen,
            "drift_indices": self.drift_indices,
            "warning_indices": self.warning_indices,
            "state": state,
        }
        data: bytes = pack(self.snapshot_kind(), meta, arrays, key=key)
        return data

    def restore(self, data: bytes, *, key: bytes | None = None) -> None:
        """Load a snapshot of the same detector class; parameters come from the snapshot.

        Atomic: on any error (``SnapshotError``) this detector is left as it was.
        """
        meta, arrays, version = unpack(data, self.snapshot_kind(), key=key)
        if version != 1:
            raise SnapshotError(f"unsupported {self.name} snapshot version {version}")
        try:
            params = meta["params"]
            if not isinstance(params, dict) or set(params) != set(self.param_names):
                raise ValueError(f"parameters must be exactly {sorted(self.param_names)}")
            self._check_params(params)
            state = meta["state"]
            if not isinstance(state, dict):
                raise TypeError("state must be an object")
            det = self._river_from_state(params, state, arrays)
            det._drift_detected = _flag(state["drift"])
            if self.binary:
                det._warning_detected = _flag(state["warning"])
            n_seen = _count(meta["n_seen"])
            drifts = [_count(i) for i in meta["drift_indices"]]
            warnings = [_count(i) for i in meta["warning_indices"]]
        except SnapshotError:
            raise
        except _SNAPSHOT_ERRORS as exc:
            raise SnapshotError(f"malformed {self.name} snapshot: {exc!r}") from None
        for name, value in params.items():
            setattr(self, name, value)
        self._river = det
        self.n_seen, self.drift_indices, self.warning_indices = n_seen, drifts, warnings

    def _river_attrs(self) -> set[str]:
        """River attributes besides the parameters that :meth:`_state` covers."""
        base = {"_drift_detected", "_warning_detected"} if self.binary else {"_drift_detected"}
        return base | self._STATE_ATTRS


# -- river.stats helpers ------------------------------------------------------------------
def _mean_state(m: Any) -> list[float]:
    _expect_attrs(m, {"n", "_mean"})
    return [float(m.n), float(m._mean)]


def _mean_from(n: float, mean: float, low: float = -math.inf, high: float = math.inf) -> Any:
    """A ``river.stats.Mean`` with weight ``n`` (finite, >= 0) and mean in [low, high]."""
    m = _river_class("stats.Mean")()
    m.n = _within(n, "mean weight", 0.0, 1e300)
    m._mean = _within(mean, "mean", low, high) if n else _within(mean, "empty mean", 0.0, 0.0)
    return m


# -- ADWIN ----------------------------------------------------------------------------------
_ADWIN_FLOATS = ("total", "variance", "width", "total_width")
_ADWIN_INTS = ("n_buckets", "max_n_buckets", "tick", "n_detections")
# Cython's auto-generated state tuple lists cdef attributes alphabetically, then __dict__.
_CY_FIELDS = (
    "clock", "delta", "detect", "detect_twice", "grace_period", "max_buckets",
    "max_n_buckets", "min_window_length", "n_buckets", "n_detections", "tick", "total",
    "total_width", "variance", "width",
)
_RS_HEAD = struct.Struct("<diQdddddd4iQ")  # AdaptiveWindowing up to the bucket list length
_RS_TAIL = struct.Struct("<diQii")  # the pyo3 wrapper's copy of the parameters
_U64 = struct.Struct("<Q")


class ADWIN(RiverDetector):
    """ADaptive WINdowing (river ``drift.ADWIN``): mean change in a real-valued stream."""

    name = "adwin"
    river_paths = ("drift.ADWIN",)
    param_names = ("delta", "clock", "max_buckets", "min_window_length", "grace_period")
    _STATE_ATTRS: ClassVar[set[str]] = {"_helper"}

    def __init__(
        self,
        delta: float = 0.002,
        clock: int = 32,
        max_buckets: int = 5,
        min_window_length: int = 5,
        grace_period: int = 10,
    ) -> None:
        self.delta, self.clock, self.max_buckets = delta, clock, max_buckets
        self.min_window_length, self.grace_period = min_window_length, grace_period
        self._reset()

    @classmethod
    def _check_params(cls, params: dict[str, Any]) -> None:
        _number(params["delta"], "delta", 1e-300, 1.0 - 1e-12)
        _number(params["clock"], "clock", 1, _I32, integer=True)
        _number(params["max_buckets"], "max_buckets", 1, _I32, integer=True)
        _number(params["min_window_length"], "min_window_length", 1, _I32, integer=True)
        _number(params["grace_period"], "grace_period", 0, _I32, integer=True)

    def _state(self) -> tuple[dict[str, Any], Arrays]:
        helper = self._river._helper
        if hasattr(helper, "__reduce_cython__"):
            scalars, counts, totals, variances = _adwin_read_cython(helper)
        else:
            scalars, counts, totals, variances = _adwin_read_rust(helper, self.max_buckets)
        if any(scalars[k] != v for k, v in self._params().items()):
            raise SnapshotError("unknown ADWIN helper layout in the installed river")
        ints = {k: int(scalars[k]) for k in _ADWIN_INTS}
        arrays = {
            "scalars": np.array([scalars[k] for k in _ADWIN_FLOATS], dtype=np.float64),
            "bucket_count": np.asarray(counts, dtype=np.int64),
            "bucket_total": np.asarray(totals, dtype=np.float64),
            "bucket_variance": np.asarray(variances, dtype=np.float64),
        }
        return {"ints": ints}, arrays

    @classmethod
    def _river_from_state(
        cls, params: dict[str, Any], state: dict[str, Any], arrays: Arrays
    ) -> Any:
        mb = params["max_buckets"]
        counts, totals, variances = (
            arrays["bucket_count"], arrays["bucket_total"], arrays["bucket_variance"]
        )
        rows = counts.shape[0] if counts.ndim == 1 else 0
        if not 1 <= rows <= 62 or counts.dtype != np.int64:
            raise ValueError("bucket_count must be int64 with 1..62 rows")
        for arr in (totals, variances):
            if arr.dtype != np.float64 or arr.shape != (rows, mb + 1):
                raise ValueError(f"bucket arrays must be float64 of shape ({rows}, {mb + 1})")
        if (counts < 0).any() or (counts > mb).any() or (rows > 1 and counts[-1] == 0):
            raise ValueError("bucket counts out of range")
        floats = dict(zip(_ADWIN_FLOATS, _floats(arrays, "scalars", 4), strict=True))
        if floats["width"] != float(np.sum(counts * (2.0 ** np.arange(rows)))):
            raise ValueError("ADWIN width does not match its buckets")
        ints = state["ints"]
        if not isinstance(ints, dict) or set(ints) != set(_ADWIN_INTS):
            raise ValueError("ADWIN counters missing")
        for k in _ADWIN_INTS:
            _number(ints[k], k, -_I32 - 1, _I32, integer=True)
        det = cls._new_river(params)
        scalars: dict[str, Any] = {**floats, **ints}
        if hasattr(det._helper, "__reduce_cython__"):
            _adwin_write_cython(det._helper, params, scalars, counts, totals, variances)
        else:
            _adwin_write_rust(det._helper, params, scalars, counts, totals, variances)
        if det._helper.get_width() != floats["width"]:
            raise SnapshotError("ADWIN state did not load")
        return det


def _adwin_read_cython(helper: Any) -> tuple[dict[str, Any], Any, Any, Any]:
    state = helper.__reduce_cython__()[2]
    if len(state) != len(_CY_FIELDS) + 1 or set(state[-1]) != {"bucket_deque"}:
        raise SnapshotError("unknown Cython ADWIN layout in the installed river")
    scalars = dict(zip(_CY_FIELDS, state[:-1], strict=True))
    counts, totals, variances = [], [], []
    for bucket in state[-1]["bucket_deque"]:
        idx, _size, tot, var = bucket.__reduce_cython__()[2]
        counts.append(idx)
        totals.append(np.asarray(tot, dtype=np.float64))
        variances.append(np.asarray(var, dtype=np.float64))
    return scalars, counts, np.stack(totals), np.stack(variances)


def _adwin_write_cython(
    helper: Any, params: dict[str, Any], scalars: dict[str, Any], counts: Any, totals: Any,
    variances: Any,
) -> None:
    bucket_type = type(helper.bucket_deque[0])
    buckets: deque[Any] = deque()
    for idx, tot, var in zip(counts.tolist(), totals, variances, strict=True):
        bucket = bucket_type(params["max_buckets"])
        bucket.__setstate_cython__((idx, params["max_buckets"], tot.copy(), var.copy()))
        buckets.append(bucket)
    values = {**scalars, **params, "detect": 0, "detect_twice": 0}
    helper.__setstate_cython__(
        (*(values[k] for k in _CY_FIELDS), {"bucket_deque": buckets})
    )


def _adwin_read_rust(helper: Any, max_buckets: int) -> tuple[dict[str, Any], Any, Any, Any]:
    raw = helper.__getstate__()
    head = _RS_HEAD.unpack_from(raw, 0)
    names = ("delta", "clock", "max_buckets", "min_window_length", "grace_period",
             *_ADWIN_FLOATS, *_ADWIN_INTS, "rows")
    scalars = dict(zip(names, head, strict=True))
    off, cap = _RS_HEAD.size, max_buckets + 1
    bucket = struct.Struct(f"<QQQ{cap}dQ{cap}d")
    counts, totals, variances = [], [], []
    for _ in range(scalars["rows"]):
        size, idx, n_tot, *rest = bucket.unpack_from(raw, off)
        if size != max_buckets or n_tot != cap or rest[cap] != cap:
            raise SnapshotError("unknown Rust ADWIN layout in the installed river")
        counts.append(idx)
        totals.append(rest[:cap])
        variances.append(rest[cap + 1 :])
        off += bucket.size
    if off + _RS_TAIL.size != len(raw) or scalars["max_buckets"] != max_buckets:
        raise SnapshotError("unknown Rust ADWIN layout in the installed river")
    return scalars, counts, np.array(totals), np.array(variances)


def _adwin_write_rust(
    helper: Any, params: dict[str, Any], s: dict[str, Any], counts: Any, totals: Any,
    variances: Any,
) -> None:
    p = params
    cap = p["max_buckets"] + 1
    parts = [_RS_HEAD.pack(
        p["delta"], p["clock"], p["max_buckets"], float(p["min_window_length"]),
        float(p["grace_period"]), *(s[k] for k in _ADWIN_FLOATS),
        *(s[k] for k in _ADWIN_INTS), len(counts),
    )]
    bucket = struct.Struct(f"<QQQ{cap}dQ{cap}d")
    for idx, tot, var in zip(counts.tolist(), totals.tolist(), variances.tolist(), strict=True):
        parts.append(bucket.pack(p["max_buckets"], idx, cap, *tot, cap, *var))
    parts.append(_RS_TAIL.pack(
        p["delta"], p["clock"], p["max_buckets"], p["min_window_length"], p["grace_period"]
    ))
    helper.__setstate__(b"".join(parts))


# -- KSWIN ----------------------------------------------------------------------------------
class KSWIN(RiverDetector):
    """Kolmogorov-Smirnov windowing (river ``drift.KSWIN``), with its random sampler's state."""

    name = "kswin"
    river_paths = ("drift.KSWIN",)
    param_names = ("alpha", "window_size", "stat_size", "seed")
    _STATE_ATTRS: ClassVar[set[str]] = {"p_value", "n", "window", "_rng"}

    def __init__(
        self,
        alpha: float = 0.005,
        window_size: int = 100,
        stat_size: int = 30,
        seed: int | None = None,
    ) -> None:
        self.alpha, self.window_size, self.stat_size, self.seed = (
            alpha, window_size, stat_size, seed
        )
        self._reset()

    @classmethod
    def _check_params(cls, params: dict[str, Any]) -> None:
        _number(params["alpha"], "alpha", 0.0, 1.0)
        _number(params["stat_size"], "stat_size", 1, 2**24, integer=True)
        # river samples stat_size values from the older window_size - stat_size ones.
        _number(params["window_size"], "window_size", 2 * params["stat_size"], 2**25,
                integer=True)
        if params["seed"] is not None:
            _number(params["seed"], "seed", -(2**63), 2**63 - 1, integer=True)

    def _state(self) -> tuple[dict[str, Any], Arrays]:
        det = self._river
        version, words, gauss = det._rng.getstate()
        arrays: Arrays = {
            "window": np.array(det.window, dtype=np.float64),
            "p_value": np.array([det.p_value], dtype=np.float64),
            "rng": np.array(words, dtype=np.uint32),
        }
        return {"n": det.n, "rng_version": version, "gauss_next": gauss}, arrays

    @classmethod
    def _river_from_state(
        cls, params: dict[str, Any], state: dict[str, Any], arrays: Arrays
    ) -> Any:
        window = arrays["window"]
        if window.dtype != np.float64 or window.ndim != 1 or len(window) > params["window_size"]:
            raise ValueError("KSWIN window must be float64 and at most window_size long")
        words, gauss = arrays["rng"], state["gauss_next"]
        if words.dtype != np.uint32 or words.shape != (625,):
            raise ValueError("rng state must be 625 uint32 words")
        if gauss is not None and not isinstance(gauss, float):
            raise TypeError("gauss_next must be a float or null")
        rng = random.Random()
        rng.setstate((state["rng_version"], tuple(int(w) for w in words), gauss))
        det = cls._new_river(params)
        if not np.isfinite(window).all():
            raise ValueError("KSWIN window values must be finite")
        det.window = deque(window.tolist(), maxlen=params["window_size"])
        (det.p_value,) = (_within(p, "p_value", 0.0, 1.0) for p in _floats(arrays, "p_value", 1))
        det.n = _count(state["n"])
        det._rng = rng
        return det


# -- Page-Hinkley ---------------------------------------------------------------------------
class PageHinkley(RiverDetector):
    """Page-Hinkley / CUSUM on a fading mean (river ``drift.PageHinkley``)."""

    name = "page_hinkley"
    river_paths = ("drift.PageHinkley",)
    param_names = ("min_instances", "delta", "threshold", "alpha", "mode")
    _STATE_ATTRS: ClassVar[set[str]] = {
        "_x_mean", "_sum_increase", "_sum_decrease", "_min_increase", "_max_decrease",
        "_test_drift",
    }
    _FLOATS = ("n", "mean", "sum_increase", "sum_decrease", "min_increase", "max_decrease")

    def __init__(
        self,
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 1 - 0.0001,
        mode: str = "both",
    ) -> None:
        self.min_instances, self.delta, self.threshold = min_instances, delta, threshold
        self.alpha, self.mode = alpha, mode
        self._reset()

    @classmethod
    def _check_params(cls, params: dict[str, Any]) -> None:
        _number(params["min_instances"], "min_instances", 0, 2**62, integer=True)
        _number(params["delta"], "delta", 0.0, math.inf)
        _number(params["threshold"], "threshold", 0.0, math.inf)
        _number(params["alpha"], "alpha", 0.0, 1.0)
        if params["mode"] not in ("up", "down", "both"):
            raise ValueError("mode must be 'up', 'down' or 'both'")

    def _state(self) -> tuple[dict[str, Any], Arrays]:
        det = self._river
        values = [*_mean_state(det._x_mean), det._sum_increase, det._sum_decrease,
                  det._min_increase, det._max_decrease]
        return {}, {"floats": np.array(values, dtype=np.float64)}

    @classmethod
    def _river_from_state(
        cls, params: dict[str, Any], state: dict[str, Any], arrays: Arrays
    ) -> Any:
        values = _floats(arrays, "floats", len(cls._FLOATS))
        for name, v in zip(cls._FLOATS, values, strict=True):
            _within(v, name)  # infinities are legal starting values, NaN is not
        n, mean, s_inc, s_dec, min_inc, max_dec = values
        det = cls._new_river(params)
        det._x_mean = _mean_from(n, mean)
        det._sum_increase, det._sum_decrease = s_inc, s_dec
        det._min_increase, det._max_decrease = min_inc, max_dec
        return det


# -- binary: DDM, EDDM, HDDM_A, HDDM_W -----------------------------------------------------
class DDM(RiverDetector):
    """Drift Detection Method on 0/1 errors (river ``drift.binary.DDM``)."""

    name = "ddm"
    binary = True
    river_paths = ("drift.binary.DDM",)
    param_names = ("warm_start", "warning_threshold", "drift_threshold")
    _STATE_ATTRS: ClassVar[set[str]] = {"_p", "_p_min", "_s_min", "_ps_min"}

    def __init__(
        self, warm_start: int = 30, warning_threshold: float = 2.0, drift_threshold: float = 3.0
    ) -> None:
        self.warm_start, self.warning_threshold, self.drift_threshold = (
            warm_start, warning_threshold, drift_threshold
        )
        self._reset()

    @classmethod
    def _check_params(cls, params: dict[str, Any]) -> None:
        _number(params["warm_start"], "warm_start", 0, 2**62, integer=True)
        _number(params["warning_threshold"], "warning_threshold", 0.0, math.inf)
        _number(params["drift_threshold"], "drift_threshold", 0.0, math.inf)

    def _state(self) -> tuple[dict[str, Any], Arrays]:
        det = self._river
        has_min = det._p_min is not None
        mins = [det._p_min, det._s_min] if has_min else [0.0, 0.0]
        values = [*_mean_state(det._p), *mins, det._ps_min]
        return {"has_min": has_min}, {"floats": np.array(values, dtype=np.float64)}

    @classmethod
    def _river_from_state(
        cls, params: dict[str, Any], state: dict[str, Any], arrays: Arrays
    ) -> Any:
        n, mean, p_min, s_min, ps_min = _floats(arrays, "floats", 5)
        det = cls._new_river(params)
        det._p = _mean_from(n, mean, 0.0, 1.0)
        if _flag(state["has_min"]):
            det._p_min, det._s_min = _within(p_min, "p_min", 0, 1), _within(s_min, "s_min", 0, 1)
            if ps_min != p_min + s_min:
                raise ValueError("DDM ps_min is not p_min + s_min")
        elif ps_min != math.inf:
            raise ValueError("DDM without a minimum must have ps_min = inf")
        det._ps_min = ps_min
        return det


class EDDM(RiverDetector):
    """Early Drift Detection Method on 0/1 errors (river ``drift.binary.EDDM``)."""

    name = "eddm"
    binary = True
    river_paths = ("drift.binary.EDDM",)
    param_names = ("warm_start", "alpha", "beta")
    _STATE_ATTRS: ClassVar[set[str]] = {
        "_error_distances", "_n", "_last_error", "_n_errors", "_p2s_prime_max"
    }

    def __init__(self, warm_start: int = 30, alpha: float = 0.95, beta: float = 0.9) -> None:
        self.warm_start, self.alpha, self.beta = warm_start, alpha, beta
        self._reset()

    @classmethod
    def _check_params(cls, params: dict[str, Any]) -> None:
        _number(params["warm_start"], "warm_start", 0, 2**62, integer=True)
        _number(params["beta"], "beta", 0.0, 1.0)
        _number(params["alpha"], "alpha", params["beta"], 1.0)

    def _state(self) -> tuple[dict[str, Any], Arrays]:
        det = self._river
        var = det._error_distances
        _expect_attrs(var, {"ddof", "mean", "_S"})
        values = [*_mean_state(var.mean), var._S, det._p2s_prime_max]
        counts = {"n": det._n, "last_error": det._last_error, "n_errors": det._n_errors}
        return counts, {"floats": np.array(values, dtype=np.float64)}

    @classmethod
    def _river_from_state(
        cls, params: dict[str, Any], state: dict[str, Any], arrays: Arrays
    ) -> Any:
        n, mean, s, p2s_max = _floats(arrays, "floats", 4)
        det = cls._new_river(params)
        det._error_distances.mean = _mean_from(n, mean, 0.0, 1e300)
        det._error_distances._S = _within(s, "S", 0.0, 1e300)
        det._p2s_prime_max = _within(p2s_max, "p2s_prime_max", -1.0, 1e300)
        det._n, det._last_error = _count(state["n"]), _count(state["last_error"])
        det._n_errors = _count(state["n_errors"])
        if det._last_error > det._n or det._n_errors > det._n:
            raise ValueError("EDDM counters are inconsistent")
        return det


class HDDM_A(RiverDetector):
    """Hoeffding's-bound drift detection, averages (river ``HDDMA`` / ``HDDM_A``)."""

    name = "hddm_a"
    binary = True
    river_paths = ("drift.binary.HDDMA", "drift.binary.HDDM_A")
    param_names = ("drift_confidence", "warning_confidence", "two_sided_test")
    _STATE_ATTRS: ClassVar[set[str]] = {"_x_min", "_x_max", "_z"}

    def __init__(
        self,
        drift_confidence: float = 0.001,
        warning_confidence: float = 0.005,
        two_sided_test: bool = False,
    ) -> None:
        self.drift_confidence, self.warning_confidence = drift_confidence, warning_confidence
        self.two_sided_test = two_sided_test
        self._reset()

    @classmethod
    def _check_params(cls, params: dict[str, Any]) -> None:
        _number(params["drift_confidence"], "drift_confidence", 1e-300, 1.0)
        _number(params["warning_confidence"], "warning_confidence", 1e-300, 1.0)
        _flag(params["two_sided_test"])

    def _state(self) -> tuple[dict[str, Any], Arrays]:
        det = self._river
        values = [*_mean_state(det._x_min), *_mean_state(det._x_max), *_mean_state(det._z)]
        return {}, {"floats": np.array(values, dtype=np.float64)}

    @classmethod
    def _river_from_state(
        cls, params: dict[str, Any], state: dict[str, Any], arrays: Arrays
    ) -> Any:
        v = _floats(arrays, "floats", 6)
        if not v[0] <= v[4] or not v[2] <= v[4]:
            raise ValueError("HDDM_A cut points cannot hold more than the global mean")
        det = cls._new_river(params)
        det._x_min, det._x_max, det._z = (
            _mean_from(v[0], v[1], 0, 1), _mean_from(v[2], v[3], 0, 1), _mean_from(v[4], v[5], 0, 1)
        )
        return det


_SAMPLES = ("_total", "_s1_decr", "_s1_incr", "_s2_decr", "_s2_incr")


class HDDM_W(RiverDetector):
    """Hoeffding's-bound drift detection, weighted averages (river ``HDDMW`` / ``HDDM_W``)."""

    name = "hddm_w"
    binary = True
    river_paths = ("drift.binary.HDDMW", "drift.binary.HDDM_W")
    param_names = ("drift_confidence", "warning_confidence", "lambda_val", "two_sided_test")
    _STATE_ATTRS: ClassVar[set[str]] = {*_SAMPLES, "_incr_cutpoint", "_decr_cutpoint"}

    def __init__(
        self,
        drift_confidence: float = 0.001,
        warning_confidence: float = 0.005,
        lambda_val: float = 0.05,
        two_sided_test: bool = False,
    ) -> None:
        self.drift_confidence, self.warning_confidence = drift_confidence, warning_confidence
        self.lambda_val, self.two_sided_test = lambda_val, two_sided_test
        self._reset()

    @classmethod
    def _check_params(cls, params: dict[str, Any]) -> None:
        HDDM_A._check_params({k: params[k] for k in HDDM_A.param_names})
        _number(params["lambda_val"], "lambda_val", 1e-12, 1.0)

    def _state(self) -> tuple[dict[str, Any], Arrays]:
        det = self._river
        ewma, ibc, init = [], [], []
        for name in _SAMPLES:
            s = getattr(det, name)
            _expect_attrs(s, {"_ewma", "_is_init", "_ibc", "_lambd_sq", "_c_lambd_sq"})
            _expect_attrs(s._ewma, {"fading_factor", "_ewmean"})
            if not s._is_init and s.ewma != 0.0:
                raise SnapshotError("HDDM_W sample has a mean but is not initialised")
            ewma.append(s.ewma)
            ibc.append(s._ibc)
            init.append(s._is_init)
        arrays = {
            "ewma": np.array(ewma, dtype=np.float64),
            "ibc": np.array(ibc, dtype=np.float64),
            "is_init": np.array(init, dtype=np.bool_),
            "cutpoints": np.array([det._incr_cutpoint, det._decr_cutpoint], dtype=np.float64),
        }
        return {}, arrays

    @classmethod
    def _river_from_state(
        cls, params: dict[str, Any], state: dict[str, Any], arrays: Arrays
    ) -> Any:
        k = len(_SAMPLES)
        ewma, ibc = _floats(arrays, "ewma", k), _floats(arrays, "ibc", k)
        init = arrays["is_init"]
        if init.dtype != np.bool_ or init.shape != (k,):
            raise ValueError(f"is_init must be {k} booleans")
        incr, decr = (_within(v, "cut point") for v in _floats(arrays, "cutpoints", 2))
        for mean, bound in zip(ewma, ibc, strict=True):
            _within(mean, "ewma", 0.0, 1.0)
            _within(bound, "ibc", 0.0, 1.0)
        det = cls._new_river(params)
        sample_type = type(det._total)
        for name, mean, bound, is_init in zip(_SAMPLES, ewma, ibc, init.tolist(), strict=True):
            s = sample_type(params["lambda_val"])
            if is_init:
                s._ewma.update(mean)  # the first value seeds the mean exactly
                s._is_init = True
            s._ibc = bound
            setattr(det, name, s)
        det._incr_cutpoint, det._decr_cutpoint = incr, decr
        return det


SCALAR_DETECTORS: dict[str, type[RiverDetector]] = {
    cls.name: cls for cls in (ADWIN, KSWIN, PageHinkley, DDM, EDDM, HDDM_A, HDDM_W)
}
