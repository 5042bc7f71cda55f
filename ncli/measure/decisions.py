"""The tie rule of NC4's decisions, in one place.

Both backends score decisions fast (float32 on the CPU, float64 on a device) and then
re-decide, directly in float64 by the spec's formula, every row whose best score has a rival
within the rounding bound of the fast scores (or a score that is not finite). So every
decision equals the spec's argmax/argmin, and exact ties break to the smallest class index.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

TIE_RTOL = 1e-11  # float64 device scores: rivals within this (relative) are re-decided directly


def logits(H: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The network's scores h·w_c + b_c of a few rows, in float64."""
    return H.astype(np.float64) @ W.T + b


def squared_distances(H: np.ndarray, means: np.ndarray) -> np.ndarray:
    """‖h − μ_c‖² for a few rows, directly (no expansion), in float64."""
    H = H.astype(np.float64)
    return np.stack([np.sum((means - h) ** 2, axis=1) for h in H]) if len(H) else np.zeros((0, len(means)))


def ncc_scores(H: np.ndarray, means: np.ndarray) -> np.ndarray:
    """−‖h − μ_c‖²: its argmax is the nearest class centre (first of equals)."""
    return -squared_distances(H, means)


def settle_rows(best: np.ndarray, rows: np.ndarray, exact: Callable[[np.ndarray], np.ndarray]) -> None:
    """Re-decide ``rows`` of ``best`` (in place) as the argmax of ``exact(rows)``, the spec's
    scores of those rows evaluated directly in float64."""
    if rows.size:
        best[rows] = np.argmax(exact(rows), axis=1)


def settle(best: np.ndarray, near: np.ndarray, exact: Callable[[np.ndarray], np.ndarray]) -> None:
    """:func:`settle_rows` for the rows where ``near`` (a boolean mask) is set."""
    settle_rows(best, np.flatnonzero(near), exact)
