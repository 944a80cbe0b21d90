"""Detector interfaces: river's shape (``update()`` returning self, ``drift_detected``), batched."""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray

from driftline.detectors.errors import InputError


class Detector(abc.ABC):
    """What every driftline detector offers: update, drift flag, reset, exact snapshot."""

    #: Short stable name used in alerts and metrics (``adwin``, ``pane_chi2`` ...).
    name: ClassVar[str] = "detector"

    @abc.abstractmethod
    def _reset(self) -> None:
        """Forget all running state; the constructor calls it."""

    @abc.abstractmethod
    def update(self, x: Any) -> Self:
        """Feed a batch of observations; return self."""

    @property
    @abc.abstractmethod
    def drift_detected(self) -> bool:
        """Whether drift was detected during the last ``update``."""

    @abc.abstractmethod
    def snapshot(self) -> bytes:
        """The running state as plain bytes (``driftline.detectors.serialization``)."""

    @abc.abstractmethod
    def restore(self, data: bytes) -> None:
        """Load state written by :meth:`snapshot`; the next outputs equal the original's."""


class ScalarDetector(Detector):
    """A detector over one scalar stream (prediction score, error indicator, ...).

    ``update(values)`` takes a 1-D batch; ``drift_indices`` lists the positions in that
    batch where drift was flagged, ``n_seen`` counts every value ever fed.
    """

    def _reset(self) -> None:
        self.n_seen = 0
        self.drift_indices: list[int] = []

    @staticmethod
    def _as_values(x: ArrayLike) -> NDArray[np.float64]:
        try:
            arr = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"values must be numbers: {exc}") from None
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim != 1:
            raise InputError(f"expected a 1-D batch of values, got shape {arr.shape}")
        return arr

    @property
    def drift_detected(self) -> bool:
        return bool(self.drift_indices)
