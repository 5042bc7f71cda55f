"""Statistics over the pairs c < c' of C vectors (centred class means, classifier rows).

While C fits in one tile, :class:`Gram` forms the dense C × C Gram matrix (the numbers of
small C stay those of the dense formulas, bit for bit). Above, :class:`PairSweep` needs
memory O(C·p + tile²), never a C × C matrix, and gives the same statistics as
:class:`PairSums` (both have ``norms``, ``cos_std``, ``maxangle``, ``etf_distance``, ``cdnv``).

The pairs are swept in tiles: the tile × tile block G = X_I X_Jᵀ of the Gram matrix (float64
GEMM) of each pair of row blocks I ≤ J, then one pass over its pairs c < c' (the
``pair_tile`` kernel of :mod:`ncli.measure.kernels`) adds float64 partial sums: max-angle,
equiangularity, CDNV and GNC2's log inverse distances. Tiles are processed on worker threads
and their sums added in tile order, so the result does not depend on the thread count.

Spreads are two-pass-accurate without a second sweep: each tile sums (x − shift) and
(x − shift)², with the shift close to the mean, known before the sweep (the mean cosine in
closed form, Σ_{c<c'} cos = (‖Σ_c û_c‖² − C)/2; for GNC2, the mean over the C − 1 pairs
(c, c + 1)); then Σ(x − mean)² = S₂ − S₁²/P, which cancels only as much as the shift misses
the mean (relative to the spread), not as E[x²] − E[x]² does.

The ETF distance needs no pairs: with T = (I − 𝟙𝟙ᵀ/C)/√(C−1) (‖T‖_F = 1) and G = XXᵀ,
‖G/‖G‖_F − T‖²_F = 2 − 2 (tr G − ‖Xᵀ𝟙‖²/C) / (‖XᵀX‖_F √(C−1)) — p × p products only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from ncli.measure.blocks import ordered_map, single_threaded_blas
from ncli.measure.kernels import PAIR_SUMS, default_kernels

PAIR_TILE = 1024  # rows per tile: a tile's Gram block is PAIR_TILE² float64 (8 MiB)


@dataclass(frozen=True)
class PairSums:
    """What a sweep over the pairs c < c' of C vectors x_c gives (cos = cosine of a pair)."""

    num_classes: int
    norms: np.ndarray  # (C,) ‖x_c‖
    num_pairs: int
    cos_mean: float  # mean of cos over pairs
    cos_ss: float  # Σ (cos − cos_mean)²
    abs_offset_sum: float  # Σ |cos + 1/(C−1)|
    etf: float | None  # ‖G/‖G‖_F − (I − 𝟙𝟙ᵀ/C)/√(C−1)‖_F, None when G = 0
    cdnv_sum: float | None = None  # Σ (σ_c² + σ_c'²) / (2 ‖μ_c − μ_c'‖²) over pairs of distinct means
    cdnv_zero: int = 0  # pairs with identical means
    gnc2_mean: float | None = None  # mean of k = log(1/‖û_c − û_c'‖)
    gnc2_ss: float | None = None  # Σ (k − gnc2_mean)²
    identical: tuple[int, int] | None = None  # the first pair with û_c = û_c' up to rounding (k infinite)

    # the interface shared with the dense :class:`ncli.measure.metrics.Gram`

    def cos_std(self) -> float | None:
        """Sample std of the cosines (None with one pair)."""
        if self.num_pairs < 2:
            return None
        return math.sqrt(max(self.cos_ss, 0.0) / (self.num_pairs - 1))

    def maxangle(self) -> float:
        return self.abs_offset_sum / self.num_pairs

    def etf_distance(self) -> float | None:
        return self.etf

    def cdnv(self) -> float | None:
        if self.cdnv_sum is None or self.cdnv_zero:
            return None
        return self.cdnv_sum / self.num_pairs


def _pairs(num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(num_classes, k=1)


@dataclass
class Gram:
    """C vectors seen through their dense Gram matrix G (C × C): norms and the cosines over
    pairs c < c'. Used while C fits in one tile (:data:`ncli.measure.pairs.PAIR_TILE`); above,
    :class:`ncli.measure.pairs.PairSums` gives the same numbers (``cos_std``, ``maxangle``,
    ``etf_distance``, ``cdnv``) from a tiled sweep. ``sigma2`` (σ_c²) and ``points`` (the
    uncentred means) are given for the class means (CDNV)."""

    G: np.ndarray  # (C, C)
    sigma2: np.ndarray | None = None
    points: np.ndarray | None = None

    @classmethod
    def of(cls, vectors: np.ndarray, sigma2: np.ndarray | None = None, points: np.ndarray | None = None) -> Gram:
        return cls(vectors @ vectors.T, sigma2, points)

    @property
    def num_classes(self) -> int:
        return self.G.shape[0]

    @cached_property
    def norms(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.G), 0.0, None))

    @cached_property
    def cosines(self) -> np.ndarray:
        """Values of the upper triangle, divided by the two norms."""
        i, j = _pairs(self.G.shape[0])
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.G[i, j] / (self.norms[i] * self.norms[j])

    def cos_std(self) -> float | None:
        cosines = self.cosines
        return float(np.std(cosines, ddof=1)) if cosines.size >= 2 else None

    def maxangle(self) -> float:
        return np.mean(np.abs(self.cosines + 1.0 / (self.num_classes - 1)))

    def etf_distance(self) -> float | None:
        return dense_etf_distance(self.G)

    def cdnv(self) -> float | None:
        """Mean over pairs of (σ_c² + σ_c'²) / (2 ‖μ_c − μ_c'‖²); distances from the Gram of the
        centred means (centring keeps the cancellation mild). None when two means coincide."""
        sigma2, means, G = self.sigma2, self.points, self.G
        i, j = _pairs(G.shape[0])
        sq = np.diag(G)
        dist2 = sq[i] + sq[j] - 2.0 * G[i, j]
        # The Gram expansion cancels when two means nearly coincide: recompute those pairs as
        # ‖μ_c − μ_c'‖² directly (C × p work per pair, only where needed).
        close = np.flatnonzero(dist2 < 1e-3 * (sq[i] + sq[j]))
        for q in close.tolist():
            d = means[i[q]] - means[j[q]]
            dist2[q] = float(d @ d)
        # Identical means (e.g. dead features at initialisation) make CDNV undefined: null, never inf/NaN.
        return float(np.mean((sigma2[i] + sigma2[j]) / (2.0 * dist2))) if np.all(dist2 > 0) else None


def dense_etf_distance(G: np.ndarray) -> float | None:
    """‖G/‖G‖_F − (I − 11ᵀ/C)/√(C−1)‖_F of a C × C matrix; None when G is 0."""
    num_classes = G.shape[0]
    norm = np.linalg.norm(G)
    if norm == 0:
        return None
    target = (np.eye(num_classes) - np.full((num_classes, num_classes), 1.0 / num_classes)) / math.sqrt(num_classes - 1)
    return float(np.linalg.norm(G / norm - target))


def etf_distance_closed_form(X: np.ndarray) -> float | None:
    """‖G/‖G‖_F − (I − 𝟙𝟙ᵀ/C)/√(C−1)‖_F of G = XXᵀ from p × p products (module docstring)."""
    return _etf_from(np.sum(X * X), X.sum(axis=0) @ X.sum(axis=0), np.linalg.norm(X.T @ X), X.shape[0])


def cross_etf_distance_closed_form(W: np.ndarray, M: np.ndarray) -> float | None:
    """The same for G = W Mᵀ (C × C, not symmetric): ‖G‖²_F = ⟨WᵀW, MᵀM⟩_F, tr G = Σ_c ⟨w_c, m_c⟩,
    𝟙ᵀG𝟙 = ⟨Wᵀ𝟙, Mᵀ𝟙⟩."""
    sq = float(np.sum((W.T @ W) * (M.T @ M)))
    return _etf_from(np.sum(W * M), W.sum(axis=0) @ M.sum(axis=0), math.sqrt(sq) if sq > 0 else 0.0, W.shape[0])


def _etf_from(trace: float, total: float, norm: float, num_classes: int) -> float | None:
    if not norm > 0:
        return None
    inner = (float(trace) - float(total) / num_classes) / (float(norm) * math.sqrt(num_classes - 1))
    return math.sqrt(max(2.0 - 2.0 * inner, 0.0))


class PairSweep:
    """Sweeps the pairs of C vectors in tiles of ``tile`` rows on ``threads`` CPU threads, with
    the given per-block kernels (default: :data:`ncli.measure.kernels.default_kernels`)."""

    def __init__(self, *, tile: int = PAIR_TILE, threads: int = 1, kernels=None):
        if tile < 1:
            raise ValueError("tile must be at least 1")
        self.tile = int(tile)
        self.threads = max(1, int(threads))
        self.kernels = kernels if kernels is not None else default_kernels

    def __call__(
        self, vectors: np.ndarray, *, sigma2: np.ndarray | None = None, points: np.ndarray | None = None,
        gnc2: bool = False,
    ) -> PairSums:
        """Pair statistics of the rows of ``vectors`` (C × p, float64): cosines always; CDNV
        with ``sigma2`` (σ_c²) when the rows are centred means and ``points`` the means; GNC2
        of the unit rows with ``gnc2``."""
        X = np.ascontiguousarray(vectors, dtype=np.float64)
        num_classes = X.shape[0]
        num_pairs = num_classes * (num_classes - 1) // 2
        norms = np.sqrt(np.einsum("ij,ij->i", X, X))
        with np.errstate(invalid="ignore", divide="ignore"):
            unit = X / norms[:, None]
            total = unit.sum(axis=0)
            cos_shift = float((total @ total - num_classes) / 2.0 / num_pairs)
        k_shift = _gnc2_shift(unit) if gnc2 else 0.0
        sums, identical = self.sweep(
            X, norms, offset=1.0 / (num_classes - 1), cos_shift=cos_shift, sigma2=sigma2,
            points=None if points is None else np.ascontiguousarray(points, dtype=np.float64),
            unit=unit if gnc2 else None, k_shift=k_shift, zero_u2=identical_directions_u2(X.shape[1]),
        )
        count = sums[PAIR_SUMS["count"]]
        cos1, k1 = sums[PAIR_SUMS["cos1"]], sums[PAIR_SUMS["k1"]]
        return PairSums(
            num_classes=num_classes,
            norms=norms,
            num_pairs=num_pairs,
            cos_mean=cos_shift + cos1 / count,
            cos_ss=sums[PAIR_SUMS["cos2"]] - cos1 * cos1 / count,
            abs_offset_sum=float(sums[PAIR_SUMS["abs"]]),
            etf=etf_distance_closed_form(X),
            cdnv_sum=None if sigma2 is None else float(sums[PAIR_SUMS["cdnv"]]),
            cdnv_zero=int(sums[PAIR_SUMS["cdnv0"]]),
            gnc2_mean=(k_shift + k1 / count) if gnc2 else None,
            gnc2_ss=(sums[PAIR_SUMS["k2"]] - k1 * k1 / count) if gnc2 else None,
            identical=identical,
        )

    def sweep(self, X, norms, *, offset, cos_shift, sigma2, points, unit, k_shift, zero_u2=0.0):
        """(the kernel's sums added over all tiles in tile order, the first identical unit pair)."""
        num_classes, tile = X.shape[0], self.tile
        starts = range(0, num_classes, tile)
        tasks = [(r0, c0) for r0 in starts for c0 in starts if c0 >= r0]
        pair_tile = self.kernels.pair_tile

        def one_tile(task):
            r0, c0 = task
            G = X[r0 : r0 + tile] @ X[c0 : c0 + tile].T
            return pair_tile(G, r0, c0, norms, offset, cos_shift, sigma2, points, unit, k_shift, zero_u2)

        sums = np.zeros(len(PAIR_SUMS))
        identical = None
        with single_threaded_blas():
            for part, zero_pair in ordered_map(one_tile, tasks, self.threads):
                sums += part
                if zero_pair is not None and (identical is None or zero_pair < identical):
                    identical = zero_pair
        return sums, identical


def identical_directions_u2(dim: int) -> float:
    """‖û_c − û_c'‖² at or below which two unit means count as identical: unit vectors of
    exactly parallel vectors differ only by their rounding, ‖Δû‖ ≤ (p + 3) ε (the norm's
    relative error, up to p ε, and one rounding per coordinate); ×2 to spare."""
    return (2.0 * (dim + 3) * np.finfo(np.float64).eps) ** 2


def _gnc2_shift(unit: np.ndarray) -> float:
    """Mean of k = −log‖û_c − û_{c+1}‖ over the C − 1 consecutive pairs with a finite k (0 when
    none): a shift near the mean over all pairs, for the shifted sums of the sweep."""
    diff = unit[1:] - unit[:-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        k = -0.5 * np.log(np.einsum("ij,ij->i", diff, diff))
    k = k[np.isfinite(k)]
    return float(k.mean()) if k.size else 0.0
