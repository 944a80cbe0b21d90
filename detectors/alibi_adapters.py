"""alibi-detect's online detectors behind driftline's detector interface (optional extra).

alibi-detect is not a dependency (it pins numpy<2 and is BSL-licensed from 0.11.5):
``pip install 'driftline[alibi]'``. It is imported inside the constructors, so importing
this module is free; a missing install raises :class:`MissingExtra`.

Each front class feeds a batch one instance at a time to alibi's ``predict`` and records
the positions flagged in ``drift_indices`` (river's shape, like the scalar detectors).

State. alibi names the attributes of its online state (``online_state_keys``: the time
step, the test window(s), the kernel columns ...); :meth:`snapshot` writes exactly those,
as numeric arrays, and :meth:`restore` sets them back, converting to the backend's tensor
type. The rest of alibi's state is configured once at construction, partly at random
(bootstrapped thresholds, the reference / initial-window split), so the constructor runs
under ``seed`` and the snapshot carries a fingerprint of the reference and thresholds:
restore refuses a snapshot taken on a different configuration instead of silently
continuing with other thresholds. Two caveats, both alibi's: FET breaks exact ties with
the global NumPy RNG, and alibi keeps every past test statistic (and CVM/FET every past
instance) in growing arrays; the adapters trim those to what the next step reads.

alibi keeps flagging every step while a window stays drifted and expects the caller to
``reset_state()``; with ``reset_on_drift`` (default) the adapters do that after each flag,
like river's detectors, so ``drift_indices`` marks alarms rather than drifted steps.
"""

from __future__ import annotations

import hashlib
import importlib
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray

from driftline.detectors.base import Detector, ScalarDetector
from driftline.detectors.errors import DriftlineError, InputError, SnapshotError
from driftline.detectors.serialization import pack, unpack

_HINT = "pip install 'driftline[alibi]'"


class MissingExtra(DriftlineError, ImportError):  # type: ignore[misc, unused-ignore]
    """An optional dependency is not installed."""


def available() -> bool:
    """Whether alibi-detect can be imported."""
    try:
        importlib.import_module("alibi_detect.cd")
    except ImportError:
        return False
    return True


def _alibi_cd() -> Any:
    try:
        return importlib.import_module("alibi_detect.cd")
    except ImportError as exc:
        raise MissingExtra(f"alibi-detect is not installed ({exc}); {_HINT}") from None


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed Python, NumPy, torch (forked) and TensorFlow; restore Python's and NumPy's after."""
    py_state, np_state = random.getstate(), np.random.get_state()
    torch: Any = sys.modules.get("torch")
    tf: Any = sys.modules.get("tensorflow")
    forked = torch.random.fork_rng() if torch is not None else None
    try:
        if forked is not None:
            forked.__enter__()
            torch.manual_seed(seed)
        if tf is not None:
            tf.random.set_seed(seed)  # TensorFlow's global seed cannot be put back
        random.seed(seed)
        np.random.seed(seed)
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        if forked is not None:
            forked.__exit__(None, None, None)


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, (list, tuple)):  # e.g. the torch MMD's thresholds
        return np.asarray([_to_numpy(v) for v in value])
    if hasattr(value, "detach"):  # torch
        value = value.detach().cpu().numpy()
    elif hasattr(value, "numpy") and not isinstance(value, np.ndarray):  # tensorflow
        value = value.numpy()
    return np.asarray(value)


def _like(template: Any, arr: np.ndarray) -> Any:
    """``arr`` as the kind of object ``template`` is (number, NumPy array, torch/TF tensor)."""
    module = type(template).__module__.split(".")[0]
    if module == "torch":
        torch = sys.modules["torch"]
        return torch.as_tensor(arr, dtype=template.dtype, device=template.device)
    if module == "tensorflow":
        return sys.modules["tensorflow"].convert_to_tensor(arr, dtype=template.dtype)
    if np.ndim(template) == 0:
        if arr.ndim != 0:
            raise ValueError("expected a scalar")
        return int(arr) if isinstance(template, (int, np.integer)) else float(arr)
    if arr.ndim == 0:
        raise ValueError("expected an array")
    return arr.copy()


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**62:
        raise ValueError(f"expected a count, got {value!r}")
    return value


# The ignores are for ``mypy detectors``, which sees the driftline.* base classes as Any.
class _AlibiOnline(Detector):  # type: ignore[misc, unused-ignore]
    """Shared machinery of the front classes: per-instance loop, bounded history, snapshots."""

    alibi_class: ClassVar[str] = ""
    window_param: ClassVar[str] = "window_size"

    def __init__(
        self, x_ref: ArrayLike, ert: float, window: Any, seed: int, reset_on_drift: bool,
        **kwargs: Any,
    ) -> None:
        cd = _alibi_cd()
        self.x_ref = np.asarray(x_ref)
        self.ert, self.seed, self.reset_on_drift, self.kwargs = ert, seed, reset_on_drift, kwargs
        with _seeded(seed):
            self._alibi: Any = getattr(cd, self.alibi_class)(
                self.x_ref, ert=ert, **{self.window_param: window}, **kwargs
            )
        self._fingerprint = self._config_fingerprint()
        self._reset()
        # What each state attribute is (number, array, tensor) right after a reset.
        self._template = {k: getattr(self._online, k) for k in self._state_keys()}

    def _reset(self) -> None:
        self.n_seen = 0
        self.drift_indices: list[int] = []
        self.last_test_stat: Any = None
        # alibi draws from NumPy's global RNG while predicting (FET breaks exact ties with
        # it): each detector gets its own stream, swapped in for its updates and snapshotted.
        self._np_rng: Any = np.random.RandomState(self.seed).get_state()
        self._restart()

    def _restart(self) -> None:
        """alibi's own reset: back to t=0, thresholds kept."""
        reset = getattr(self._alibi, "reset_state", None) or self._alibi.reset  # alibi < 0.11
        with _seeded(self.seed):
            reset()

    @property
    def alibi(self) -> Any:
        """The wrapped alibi-detect detector (read it; mutating voids the snapshot guarantee)."""
        return self._alibi

    @property
    def _online(self) -> Any:
        """The object holding the online state (MMD/LSDD wrap a backend detector)."""
        return getattr(self._alibi, "_detector", self._alibi)

    @property
    def drift_detected(self) -> bool:
        return bool(self.drift_indices)

    def _instances(self, x: ArrayLike) -> NDArray[Any]:
        raise NotImplementedError

    def _probe_row(self) -> NDArray[Any]:
        """One valid instance (the first reference row), for restore's trial step."""
        raise NotImplementedError

    def update(self, x: ArrayLike) -> Self:
        """Feed a batch of instances; ``drift_indices`` lists the positions alibi flagged."""
        rows = self._instances(x)
        drifts: list[int] = []
        stat = self.last_test_stat
        global_rng = np.random.get_state()
        np.random.set_state(self._np_rng)
        try:
            for i, row in enumerate(rows):
                data = self._alibi.predict(row, return_test_stat=True)["data"]
                stat = data.get("test_stat")
                if data["is_drift"]:
                    drifts.append(i)
                    if self.reset_on_drift:  # like river: alarm, then monitor afresh
                        self._restart()
                        continue
                self._trim()
        finally:
            self._np_rng = np.random.get_state()
            np.random.set_state(global_rng)
        self.n_seen += len(rows)
        self.drift_indices, self.last_test_stat = drifts, stat
        return self

    def _trim(self) -> None:
        """Keep alibi's ever-growing arrays to what its next step reads."""
        online = self._online
        for name in ("test_stats", "drift_preds"):
            value = getattr(online, name, None)
            if value is not None and len(value) > 1:
                setattr(online, name, value[-1:])
        xs, max_ws = getattr(online, "xs", None), getattr(online, "max_ws", None)
        if xs is not None and max_ws is not None and len(xs) > int(max_ws):
            online.xs = xs[-int(max_ws) :]

    # -- state -------------------------------------------------------------------------
    def _config_fingerprint(self) -> str:
        h = hashlib.sha1(self.alibi_class.encode())
        h.update(np.ascontiguousarray(self.x_ref).tobytes())
        h.update(np.ascontiguousarray(_to_numpy(self._online.thresholds), np.float64).tobytes())
        return h.hexdigest()

    def _state_keys(self) -> tuple[str, ...]:
        return tuple(self._online.online_state_keys)

    @classmethod
    def snapshot_kind(cls) -> str:
        return f"driftline.alibi.{cls.alibi_class}"

    def snapshot(self, *, key: bytes | None = None) -> bytes:
        online = self._online
        arrays = {k: _to_numpy(getattr(online, k)) for k in self._state_keys()}
        scalars = sorted(k for k, a in arrays.items() if a.ndim == 0)
        arrays.update({k: arrays[k].reshape(1) for k in scalars})  # pack stores >= 1-D
        _, words, pos, has_gauss, gauss = self._np_rng
        arrays["np_rng"] = np.asarray(words, dtype=np.uint32)
        meta = {
            "fingerprint": self._fingerprint,
            "np_rng": [int(pos), int(has_gauss), float(gauss)],
            "scalars": scalars,
            "n_seen": self.n_seen,
            "drift_indices": self.drift_indices,
        }
        data: bytes = pack(self.snapshot_kind(), meta, arrays, key=key)
        return data

    def restore(self, data: bytes, *, key: bytes | None = None) -> None:
        """Load a snapshot of a detector on the same reference, parameters and seed."""
        meta, arrays, _ = unpack(data, self.snapshot_kind(), key=key)
        online = self._online
        keys = self._state_keys()
        try:
            if meta["fingerprint"] != self._fingerprint:
                raise SnapshotError("snapshot is of a detector with another reference or seed")
            scalars = {k for k in keys if np.ndim(self._template[k]) == 0}
            if meta["scalars"] != sorted(scalars):
                raise ValueError(f"scalars must be {sorted(scalars)}")
            loaded = {k: arrays[k].reshape(()) if k in scalars else arrays[k] for k in keys}
            n_seen = _count(meta["n_seen"])
            drifts = [_count(i) for i in meta["drift_indices"]]
            words, (pos, has_gauss, gauss) = arrays["np_rng"], meta["np_rng"]
            if words.dtype != np.uint32 or words.shape != (624,):
                raise ValueError("np_rng must be 624 uint32 words")
            np_rng = ("MT19937", words, _count(pos), _count(has_gauss), float(gauss))
            np.random.RandomState().set_state(np_rng)  # validates
        except SnapshotError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"malformed {self.alibi_class} snapshot: {exc!r}") from None
        current = {k: getattr(online, k) for k in keys}
        # alibi's state has no schema to check shapes against: take one trial step on the
        # loaded state, then load it again (alibi replaces, never mutates, these arrays).
        try:
            for k in keys:
                setattr(online, k, _like(self._template[k], loaded[k]))
            with _seeded(self.seed):
                self._alibi.predict(self._probe_row(), return_test_stat=True)
            for k in keys:
                setattr(online, k, _like(self._template[k], loaded[k]))
        except Exception as exc:
            for k, v in current.items():
                setattr(online, k, v)
            raise SnapshotError(f"{self.alibi_class} snapshot does not load: {exc!r}") from None
        self.n_seen, self.drift_indices, self._np_rng = n_seen, drifts, np_rng


class _Univariate(_AlibiOnline, ScalarDetector):  # type: ignore[misc, unused-ignore]
    window_param = "window_sizes"

    def _instances(self, x: ArrayLike) -> NDArray[Any]:
        values: NDArray[np.float64] = self._as_values(x)
        if not np.isfinite(values).all():
            raise InputError("values must be finite (no NaN or infinity)")
        return values.reshape(-1, 1)

    def _probe_row(self) -> NDArray[Any]:
        row: NDArray[Any] = self._instances(self.x_ref.ravel()[:1])[0]
        return row


class _Multivariate(_AlibiOnline):
    def _instances(self, x: ArrayLike) -> NDArray[Any]:
        rows: NDArray[np.float64] = np.asarray(x, dtype=np.float64)
        width = self.x_ref.shape[1] if self.x_ref.ndim == 2 else 1
        if rows.ndim != 2 or rows.shape[1] != width or not np.isfinite(rows).all():
            raise InputError(f"expected a finite (n, {width}) batch")
        return rows

    def _probe_row(self) -> NDArray[Any]:
        row: NDArray[Any] = self._instances(self.x_ref.reshape(len(self.x_ref), -1)[:1])[0]
        return row


class CVMDriftOnlineAdapter(_Univariate):
    """Online Cramér-von Mises on a scalar stream (alibi ``CVMDriftOnline``)."""

    name = "alibi_cvm"
    alibi_class = "CVMDriftOnline"

    def __init__(self, x_ref: ArrayLike, ert: float, window_sizes: list[int], seed: int = 0,
                 reset_on_drift: bool = True, **kwargs: Any) -> None:
        self.window_sizes = window_sizes
        super().__init__(x_ref, ert, window_sizes, seed, reset_on_drift,
                         **{"verbose": False, **kwargs})


class FETDriftOnlineAdapter(_Univariate):
    """Online Fisher exact test on a 0/1 stream (alibi ``FETDriftOnline``)."""

    name = "alibi_fet"
    alibi_class = "FETDriftOnline"

    def __init__(self, x_ref: ArrayLike, ert: float, window_sizes: list[int], seed: int = 0,
                 reset_on_drift: bool = True, **kwargs: Any) -> None:
        self.window_sizes = window_sizes
        super().__init__(x_ref, ert, window_sizes, seed, reset_on_drift,
                         **{"verbose": False, **kwargs})

    def _instances(self, x: ArrayLike) -> NDArray[Any]:
        values = super()._instances(x)
        if not np.isin(values, (0.0, 1.0)).all():
            raise InputError("FETDriftOnline takes 0/1 values only")
        return values.astype(np.int64)


class MMDDriftOnlineAdapter(_Multivariate):
    """Online kernel MMD on feature vectors (alibi ``MMDDriftOnline``, TF or torch backend)."""

    name = "alibi_mmd"
    alibi_class = "MMDDriftOnline"

    def __init__(self, x_ref: ArrayLike, ert: float, window_size: int, seed: int = 0,
                 reset_on_drift: bool = True, **kwargs: Any) -> None:
        self.window_size = window_size
        super().__init__(x_ref, ert, window_size, seed, reset_on_drift,
                         **{"verbose": False, **kwargs})


class LSDDDriftOnlineAdapter(_Multivariate):
    """Online least-squares density difference (alibi ``LSDDDriftOnline``)."""

    name = "alibi_lsdd"
    alibi_class = "LSDDDriftOnline"

    def __init__(self, x_ref: ArrayLike, ert: float, window_size: int, seed: int = 0,
                 reset_on_drift: bool = True, **kwargs: Any) -> None:
        self.window_size = window_size
        super().__init__(x_ref, ert, window_size, seed, reset_on_drift,
                         **{"verbose": False, **kwargs})


ALIBI_DETECTORS: dict[str, type[_AlibiOnline]] = {
    cls.name: cls
    for cls in (
        CVMDriftOnlineAdapter, FETDriftOnlineAdapter, MMDDriftOnlineAdapter,
        LSDDDriftOnlineAdapter,
    )
}
