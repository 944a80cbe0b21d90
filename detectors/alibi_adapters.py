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


def _like(current: Any, arr: np.ndarray) -> Any:
    """``arr`` as the same kind of object as ``current`` (NumPy array, torch or TF tensor)."""
    module = type(current).__module__.split(".")[0]
    if module == "torch":
        torch = sys.modules["torch"]
        return torch.as_tensor(arr, dtype=current.dtype, device=current.device)
    if module == "tensorflow":
        return sys.modules["tensorflow"].convert_to_tensor(arr, dtype=current.dtype)
    if isinstance(current, (int, np.integer)) and arr.ndim == 0:
        return int(arr)
    return arr


# The ignores are for ``mypy detectors``, which sees the driftline.* base classes as Any.
class _AlibiOnline(Detector):  # type: ignore[misc, unused-ignore]
    """Shared machinery of the front classes: per-instance loop, bounded history, snapshots."""

    alibi_class: ClassVar[str] = ""
    window_param: ClassVar[str] = "window_size"

    def __init__(self, x_ref: ArrayLike, ert: float, window: Any, seed: int, **kwargs: Any):
        cd = _alibi_cd()
        self.x_ref = np.asarray(x_ref)
        self.ert, self.seed, self.kwargs = ert, seed, kwargs
        with _seeded(seed):
            self._alibi: Any = getattr(cd, self.alibi_class)(
                self.x_ref, ert=ert, **{self.window_param: window}, **kwargs
            )
        self._fingerprint = self._config_fingerprint()
        self._reset()

    def _reset(self) -> None:
        self.n_seen = 0
        self.drift_indices: list[int] = []
        self.last_test_stat: Any = None
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

    def update(self, x: ArrayLike) -> Self:
        """Feed a batch of instances; ``drift_indices`` lists the positions alibi flagged."""
        rows = self._instances(x)
        drifts: list[int] = []
        stat = self.last_test_stat
        for i, row in enumerate(rows):
            data = self._alibi.predict(row, return_test_stat=True)["data"]
            stat = data.get("test_stat")
            if data["is_drift"]:
                drifts.append(i)
            self._trim()
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
        meta = {
            "fingerprint": self._fingerprint,
            "n_seen": self.n_seen,
            "drift_indices": self.drift_indices,
        }
        data: bytes = pack(self.snapshot_kind(), meta, arrays, key=key)
        return data

    def restore(self, data: bytes, *, key: bytes | None = None) -> None:
        """Load a snapshot of a detector on the same reference, parameters and seed."""
        meta, arrays, _ = unpack(data, self.snapshot_kind(), key=key)
        online = self._online
        try:
            if meta["fingerprint"] != self._fingerprint:
                raise SnapshotError("snapshot is of a detector with another reference or seed")
            values = {}
            for k in self._state_keys():
                current, arr = getattr(online, k), arrays[k]
                if arr.ndim != np.ndim(_to_numpy(current)):
                    raise ValueError(f"{k} has {arr.ndim} dimensions")
                values[k] = _like(current, arr)
            n_seen = int(meta["n_seen"])
            drifts = [int(i) for i in meta["drift_indices"]]
        except SnapshotError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"malformed {self.alibi_class} snapshot: {exc!r}") from None
        for k, v in values.items():
            setattr(online, k, v)
        self.n_seen, self.drift_indices = n_seen, drifts


class _Univariate(_AlibiOnline, ScalarDetector):  # type: ignore[misc, unused-ignore]
    window_param = "window_sizes"

    def _instances(self, x: ArrayLike) -> NDArray[Any]:
        values: NDArray[np.float64] = self._as_values(x)
        if not np.isfinite(values).all():
            raise InputError("values must be finite (no NaN or infinity)")
        return values.reshape(-1, 1)


class _Multivariate(_AlibiOnline):
    def _instances(self, x: ArrayLike) -> NDArray[Any]:
        rows: NDArray[np.float64] = np.asarray(x, dtype=np.float64)
        width = self.x_ref.shape[1] if self.x_ref.ndim == 2 else 1
        if rows.ndim != 2 or rows.shape[1] != width or not np.isfinite(rows).all():
            raise InputError(f"expected a finite (n, {width}) batch")
        return rows


class CVMDriftOnlineAdapter(_Univariate):
    """Online Cramér-von Mises on a scalar stream (alibi ``CVMDriftOnline``)."""

    name = "alibi_cvm"
    alibi_class = "CVMDriftOnline"

    def __init__(self, x_ref: ArrayLike, ert: float, window_sizes: list[int], seed: int = 0,
                 **kwargs: Any) -> None:
        self.window_sizes = window_sizes
        super().__init__(x_ref, ert, window_sizes, seed, **{"verbose": False, **kwargs})


class FETDriftOnlineAdapter(_Univariate):
    """Online Fisher exact test on a 0/1 stream (alibi ``FETDriftOnline``)."""

    name = "alibi_fet"
    alibi_class = "FETDriftOnline"

    def __init__(self, x_ref: ArrayLike, ert: float, window_sizes: list[int], seed: int = 0,
                 **kwargs: Any) -> None:
        self.window_sizes = window_sizes
        super().__init__(x_ref, ert, window_sizes, seed, **{"verbose": False, **kwargs})

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
                 **kwargs: Any) -> None:
        self.window_size = window_size
        super().__init__(x_ref, ert, window_size, seed, **{"verbose": False, **kwargs})


class LSDDDriftOnlineAdapter(_Multivariate):
    """Online least-squares density difference (alibi ``LSDDDriftOnline``)."""

    name = "alibi_lsdd"
    alibi_class = "LSDDDriftOnline"

    def __init__(self, x_ref: ArrayLike, ert: float, window_size: int, seed: int = 0,
                 **kwargs: Any) -> None:
        self.window_size = window_size
        super().__init__(x_ref, ert, window_size, seed, **{"verbose": False, **kwargs})


ALIBI_DETECTORS: dict[str, type[_AlibiOnline]] = {
    cls.name: cls
    for cls in (
        CVMDriftOnlineAdapter, FETDriftOnlineAdapter, MMDDriftOnlineAdapter,
        LSDDDriftOnlineAdapter,
    )
}
