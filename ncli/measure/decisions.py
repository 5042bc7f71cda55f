"""The tie rule of NC4's decisions, in one place.

Both backends score decisions fast (float32 on the CPU, float64 on a device) and then
re-decide, directly in float64 by the spec's formula, every row whose best score has a rival
within the rounding bound of the fast scores (or a score that is not finite). So every
decision equals the spec's argmax/argmin, and exact ties break to the smallest class index.

A row is re-decided among its *candidates* only: the classes whose fast score is within the
bound of the row's best fast score. With fast scores within δ of the exact ones and a bound
≥ 2δ, the exact argmax (and every class tied with it) is among them, so the re-decision costs
a few classes' p products instead of C (at a vocabulary's C, a full row is C·p float64 work).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

TIE_RTOL = 1e-11  # float64 device scores: rivals within this (relative) are re-decided directly


def logits(h: np.ndarray, W: np.ndarray, b: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
    """The network's scores ⟨w_c, h⟩ + b_c of one row for ``classes`` (None: all), in float64."""
    h = h.astype(np.float64)
    if classes is None:
        return W @ h + b
    return W[classes] @ h + b[classes]


def ncc_scores(h: np.ndarray, means: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
    """−‖h − μ_c‖² of one row for ``classes`` (None: all), directly (no expansion), in float64:
    its argmax is the nearest class centre (first of equals)."""
    h = h.astype(np.float64)
    diff = (means if classes is None else means[classes]) - h
    return -np.einsum("ij,ij->i", diff, diff)


def candidates(scores: np.ndarray, best: int, tol: float) -> np.ndarray | None:
    """The classes whose fast score is within ``tol`` of the row's best (``scores`` (C,));
    None (every class) when a fast score is not finite."""
    if not np.isfinite(scores).all():
        return None
    return np.flatnonzero(scores >= float(scores[best]) - tol)


def pick(exact: np.ndarray, classes: np.ndarray | None) -> int:
    """The first class with the largest exact score among ``classes`` (None: all, in order)."""
    j = int(np.argmax(exact))
    return j if classes is None else int(classes[j])


def settle(
    best: np.ndarray, near: np.ndarray, scores: np.ndarray, tol: np.ndarray,
    exact: Callable[[int, np.ndarray | None], np.ndarray],
) -> None:
    """Re-decide (in place) the rows of ``best`` where ``near`` is set, from their fast
    ``scores`` (n, C) and bounds ``tol`` (n,): each as the argmax of ``exact(row, classes)``,
    the spec's scores of that row for its candidate classes, evaluated directly in float64."""
    for row in np.flatnonzero(near).tolist():
        classes = candidates(scores[row], int(best[row]), float(tol[row]))
        best[row] = pick(exact(row, classes), classes)
