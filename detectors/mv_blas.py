"""Matrix products that stay on one BLAS thread.

OpenBLAS runs a GEMM on several threads once ``m·n·k`` exceeds 65536·4; on a busy host (a
stream worker shares its cores with the consumer, other workers, other processes) those
threads spin and wait for each other, and a product that takes 0.1 µs per row alone takes
5-50 µs per row. The multivariate statistics therefore feed BLAS blocks below that size:
rows in chunks on the hot path, tiles when fitting a reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

SINGLE_THREAD_MNK = 65536 * 4


def rows_per_block(width: int, *, low: int = 32, high: int = 1024) -> int:
    """Rows of an ``(rows, k) @ (k, m)`` product (``width = k·m``) that stay single-threaded."""
    return int(min(high, max(low, SINGLE_THREAD_MNK // max(width, 1))))


def matmul(a: NDArray[Any], b: NDArray[Any]) -> NDArray[np.float64]:
    """``a @ b`` in float64, computed in tiles that each stay on one thread."""
    m, k = a.shape
    n = b.shape[1]
    if m * n * k <= SINGLE_THREAD_MNK:
        return np.asarray(a @ b, dtype=np.float64)
    tm, tn = min(m, 64), min(n, 64)
    tk = max(64, SINGLE_THREAD_MNK // (tm * tn))
    out = np.zeros((m, n))
    for i in range(0, m, tm):
        for j in range(0, n, tn):
            block = out[i : i + tm, j : j + tn]
            for s in range(0, k, tk):
                block += a[i : i + tm, s : s + tk] @ b[s : s + tk, j : j + tn]
    return out


def gram(u: NDArray[Any]) -> NDArray[np.float64]:
    """``uᵀ u`` for a tall ``u``, single-threaded."""
    return matmul(np.ascontiguousarray(u.T), u)
