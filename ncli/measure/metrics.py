"""Neural Collapse metrics from sufficient statistics — pure numpy, no files, no CLI.

The definitions are the contract in ``docs/metrics.md`` (Papyan, Han & Donoho 2020).
Everything here works on arrays of C × p, k × k or p × p numbers (C × C only while C fits in
one tile of pairs; above, :mod:`ncli.measure.pairs` sweeps the pairs in tiles); the streaming
over samples that produces them lives in the engine (:mod:`ncli.measure.engine`). Which metrics exist, and under
which keys, is the registry's business (:mod:`ncli.measure.registry`).

Sufficient statistics of the train split:
  counts  N_c                          (C,)
  sums    Σ_{i∈c} h_i                  (C, p)     float64
  ss_within  Σ_{i∈c} ‖h_i − μ_c‖²      (C,)       float64   (second pass, centred)
  proj_ss    Σ_i (u_jᵀ (h_i − μ_{y_i}))²   (k,)   float64   along the basis ``between_basis``

NC1 needs Tr(Σ_W Σ_B^†) only: Σ_B^† lives in the span of the centred means, at most
min(C, p)-dimensional, so Σ_W is only ever needed projected onto that span — N·p·k work, no
p × p matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ncli.errors import InputError
from ncli.measure.pairs import Gram, PairSums, PairSweep, cross_etf_distance_closed_form, dense_etf_distance

RANK_RTOL = 1e-12  # eigenvalues of Σ_B at or below RANK_RTOL · λ_max are dropped (spec)


def class_means(counts: np.ndarray, sums: np.ndarray, class_names=None, hint: str = "") -> np.ndarray:
    """μ_c = sums_c / N_c; a class without samples is an error naming it (and ``hint``)."""
    counts = np.asarray(counts)
    num_classes = counts.shape[0]
    if num_classes < 2:
        raise InputError(f"num_classes is {num_classes}; Neural Collapse metrics need at least 2 classes")
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        first = int(empty[0])
        label = f"class {first}" + (f" ({class_names[first]!r})" if class_names else "")
        more = f" and {empty.size - 1} more" if empty.size > 1 else ""
        hint = f" ({hint})" if hint else ""
        raise InputError(f"{label}{more} has no samples in the train split; class means are undefined{hint}")
    return sums / counts[:, None].astype(np.float64)


def global_mean(means: np.ndarray, counts: np.ndarray, sums: np.ndarray, kind: str = "class") -> np.ndarray:
    """μ_G: mean of the class means ('class', the paper's code) or of all samples ('sample')."""
    if kind == "class":
        return means.mean(axis=0)
    if kind == "sample":
        return sums.sum(axis=0) / float(np.sum(counts))
    raise ValueError(f"global mean must be 'class' or 'sample', not {kind!r}")


@dataclass
class BetweenBasis:
    """Thin SVD of the centred means M = U S Vᵀ (M is p × C).

    ``U`` (p × k, k = min(p, C)) is an orthonormal basis containing span(M) exactly, so
    dot products with any centred mean can be formed in these k coordinates. Σ_B = M Mᵀ / C
    has eigenpairs (s_j² / C, u_j); ``rank`` of them are used for Σ_B^† (spec: the
    min(C−1, p) largest, dropping those ≤ 1e-12 λ_max).
    """

    U: np.ndarray  # (p, k)
    s: np.ndarray  # (k,) descending
    coords: np.ndarray  # (C, k): row c = coordinates of μ_c − μ_G in U, i.e. V S
    eig: np.ndarray  # (k,) eigenvalues of Σ_B, s² / C
    rank: int


def between_basis(centred: np.ndarray) -> BetweenBasis:
    """``centred`` is C × p: rows μ_c − μ_G."""
    num_classes, p = centred.shape
    # SVD of Mᵀ via the C × p matrix: centred = V S Uᵀ.
    V, s, Ut = np.linalg.svd(centred, full_matrices=False)  # V (C,k), s (k,), Ut (k,p)
    U = np.ascontiguousarray(Ut.T)
    coords = V * s  # (C, k)
    eig = s * s / num_classes
    rank_max = min(num_classes - 1, p)
    lam_max = float(eig[0]) if eig.size else 0.0
    keep = eig[:rank_max] > RANK_RTOL * lam_max if lam_max > 0 else np.zeros(0, bool)
    rank = int(np.count_nonzero(keep))
    return BetweenBasis(U=U, s=s, coords=coords, eig=eig, rank=rank)


def finite_or_none(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _sample_std(x: np.ndarray) -> float | None:
    """Sample standard deviation (ddof = 1), None when fewer than 2 values."""
    if x.size < 2:
        return None
    return float(np.std(x, ddof=1))


# --- NC1 -----------------------------------------------------------------------------------


def nc1(basis: BetweenBasis, proj_ss: np.ndarray, num_samples: float) -> float | None:
    """Tr(Σ_W Σ_B^†)/C = Σ_{j < rank} proj_ss[j] / (N λ_j) / C, with u_jᵀ Σ_W u_j = proj_ss[j] / N.
    None when Σ_B is 0 (rank 0)."""
    rank = basis.rank
    if rank == 0:
        return None
    num_classes = basis.coords.shape[0]
    return float(np.sum(proj_ss[:rank] / (num_samples * basis.eig[:rank])) / num_classes)


def trace_ratio(ss_within: np.ndarray, centred: np.ndarray, num_samples: float) -> float | None:
    """Tr(Σ_W)/Tr(Σ_B); None when Tr(Σ_B) is 0."""
    tr_w = float(ss_within.sum() / num_samples)
    tr_b = float(np.sum(centred * centred) / centred.shape[0])
    return finite_or_none(tr_w / tr_b) if tr_b > 0 else None


def cdnv(means_view: Gram | PairSums) -> float | None:
    """Mean over pairs of (σ_c² + σ_c'²) / (2 ‖μ_c − μ_c'‖²), from the pair view of the centred
    means; None when two means coincide."""
    return means_view.cdnv()


# --- NC2, of the centred means or of the classifier rows -----------------------------------


def equinorm(view: Gram | PairSums) -> float | None:
    """std/mean of the norms."""
    norms = view.norms
    return finite_or_none(_sample_std(norms) / norms.mean()) if norms.mean() > 0 else None


def equiangular(view: Gram | PairSums) -> float | None:
    """std of the cosines over pairs (None for C = 2: one pair, no spread)."""
    return finite_or_none(view.cos_std()) if view.num_classes > 2 else None


def maxangle(view: Gram | PairSums) -> float | None:
    """mean |cos + 1/(C−1)| over pairs."""
    return finite_or_none(view.maxangle())


def etf_distance(view: Gram | PairSums) -> float | None:
    """‖G/‖G‖_F − (I − 11ᵀ/C)/√(C−1)‖_F; None when G is 0."""
    return view.etf_distance()


# --- GNC2: hyperspherical uniformity -------------------------------------------------------


def gnc2_log_mean(sums: PairSums) -> float | None:
    """Mean over pairs of log(1/‖û_c − û_c'‖) (Liu et al. 2023; Wu & Papyan 2024); None when
    two unit means coincide (the log is infinite: :meth:`Statistics.notes` names them)."""
    return None if sums.identical is not None else finite_or_none(sums.gnc2_mean)


def gnc2_log_var(sums: PairSums) -> float | None:
    """Population variance over pairs of log(1/‖û_c − û_c'‖); None as the mean."""
    if sums.identical is not None:
        return None
    return finite_or_none(max(sums.gnc2_ss, 0.0) / sums.num_pairs)


# --- NC3 -----------------------------------------------------------------------------------


def self_duality(W: np.ndarray, centred: np.ndarray) -> float | None:
    """‖Wᵀ/‖W‖_F − M/‖M‖_F‖_F² with M = [μ_c − μ_G] as columns (p × C)."""
    norm_w = np.linalg.norm(W)
    norm_m = np.linalg.norm(centred)
    return float(np.sum((W / norm_w - centred / norm_m) ** 2)) if norm_w > 0 and norm_m > 0 else None


def wh_etf_distance(W: np.ndarray, centred: np.ndarray, dense: bool = True) -> float | None:
    """ETF distance of W M (C × C): formed densely, or (``dense=False``, large C) from p × p
    products (:func:`ncli.measure.pairs.cross_etf_distance_closed_form`)."""
    if not dense:
        return cross_etf_distance_closed_form(W, centred)
    WM = W @ centred.T
    return dense_etf_distance(WM) if np.linalg.norm(WM) > 0 else None


def bias_collapse(W: np.ndarray, b: np.ndarray, mu_g: np.ndarray) -> float:
    """‖W μ_G + b‖₂: the logits of the global mean (Zhu et al. 2021); 0 when the bias
    cancels the classifier's response to μ_G."""
    return float(np.linalg.norm(W @ mu_g + b))


def duality_cosines(W: np.ndarray, centred: np.ndarray) -> np.ndarray:
    """(C,) cos(w_c, μ_c − μ_G); NaN where a norm is 0."""
    denom = np.linalg.norm(W, axis=1) * np.linalg.norm(centred, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.einsum("ij,ij->i", W, centred) / denom


def duality_cos_mean(W: np.ndarray, centred: np.ndarray) -> float | None:
    """Uniform duality (UNC3, Wu & Papyan 2024): mean over classes of cos(w_c, μ_c − μ_G)."""
    return finite_or_none(np.mean(duality_cosines(W, centred)))


def duality_cos_std(W: np.ndarray, centred: np.ndarray) -> float | None:
    """Sample std (ddof 1) over classes of cos(w_c, μ_c − μ_G)."""
    return finite_or_none(_sample_std(duality_cosines(W, centred)))


# --- NC5: ID/OOD orthogonality -------------------------------------------------------------


def nc5_orthodev(means: np.ndarray, ood_mean: np.ndarray | None) -> float | None:
    """Mean over classes of |⟨μ_c, μ_G^OOD⟩| / (‖μ_c‖ ‖μ_G^OOD‖), uncentred (Ammar et al. 2024,
    NECO); None without an OOD split or where a norm is 0."""
    if ood_mean is None:
        return None
    denom = np.linalg.norm(means, axis=1) * np.linalg.norm(ood_mean)
    with np.errstate(invalid="ignore", divide="ignore"):
        return finite_or_none(np.mean(np.abs(means @ ood_mean) / denom))


# --- per class -----------------------------------------------------------------------------


def per_class_table(
    *, counts: np.ndarray, means: np.ndarray, mu_g: np.ndarray, ss_within: np.ndarray, W: np.ndarray | None,
    classes: np.ndarray | None = None,
) -> list[dict]:
    """Per-class N_c, σ_c², ‖μ_c − μ_G‖, ‖w_c‖ and cos(w_c, μ_c − μ_G); ``classes`` are the
    classes' indices in the file (default 0..C−1) when only some were measured."""
    centred = means - mu_g
    dist = np.linalg.norm(centred, axis=1)
    rows = []
    for c in range(counts.shape[0]):
        row = {
            "class": c if classes is None else int(classes[c]),
            "num_samples": int(counts[c]),
            "sigma2": float(ss_within[c] / counts[c]),
            "mean_dist": float(dist[c]),
            "classifier_norm": None,
            "cos_classifier_mean": None,
        }
        if W is not None:
            norm_w = float(np.linalg.norm(W[c]))
            row["classifier_norm"] = norm_w
            denom = norm_w * float(dist[c])
            row["cos_classifier_mean"] = float(W[c] @ centred[c] / denom) if denom > 0 else None
        rows.append(row)
    return rows


def class_cosines(centred: np.ndarray, W: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """cos(μ_c − μ_G, μ_c' − μ_G) of every pair of classes (C × C), and cos(w_c, μ_c' − μ_G)
    (rows: classifiers, columns: means; None without a classifier). NaN where a norm is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        means = centred / np.linalg.norm(centred, axis=1, keepdims=True)
        if W is None:
            return means @ means.T, None
        classifiers = W / np.linalg.norm(W, axis=1, keepdims=True)
        return means @ means.T, classifiers @ means.T


@dataclass(frozen=True)
class Statistics:
    """What the metrics are computed from: the class statistics of the split that defines
    them, the model built on them (means, μ_G, basis, classifier) and its within-class sums;
    the OOD split's sample mean when one was named; how to sweep pairs of classes (dense
    while C fits in one tile of ``pair_sweep``, tiled above) and how to name a class."""

    counts: np.ndarray  # (C,) float64
    means: np.ndarray  # (C, p)
    mu_g: np.ndarray  # (p,)
    basis: BetweenBasis
    ss_within: np.ndarray  # (C,)
    proj_ss: np.ndarray  # (k,)
    W: np.ndarray | None  # (C, p) or None without a classifier
    b: np.ndarray | None  # (C,) or None
    ood_mean: np.ndarray | None = None  # (p,) μ_G^OOD, or None without an OOD split
    pair_sweep: PairSweep = field(default_factory=PairSweep)
    classes: np.ndarray | None = None  # (C,) the classes' indices in the file (None: 0..C−1)
    class_names: list[str] | None = None  # the file's names, by file index

    @cached_property
    def num_samples(self) -> float:
        return float(self.counts.sum())

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    @property
    def dense(self) -> bool:
        """All pairs fit in one tile: pair statistics from dense C × C Gram matrices."""
        return self.num_classes <= self.pair_sweep.tile

    @cached_property
    def centred(self) -> np.ndarray:
        """(C, p) rows μ_c − μ_G."""
        return self.means - self.mu_g

    @cached_property
    def sigma2(self) -> np.ndarray:
        """(C,) σ_c²."""
        return self.ss_within / self.counts

    @cached_property
    def means_sweep(self) -> PairSums:
        """The tiled sweep over pairs of centred means (GNC2 always; CDNV when not dense)."""
        dense = self.dense
        return self.pair_sweep(
            self.centred, sigma2=None if dense else self.sigma2, points=None if dense else self.means, gnc2=True
        )

    @cached_property
    def means_view(self) -> Gram | PairSums:
        if self.dense:
            return Gram.of(self.centred, sigma2=self.sigma2, points=self.means)
        return self.means_sweep

    @cached_property
    def classifiers_view(self) -> Gram | PairSums:
        return Gram.of(self.W) if self.dense else self.pair_sweep(self.W)

    def class_label(self, c: int) -> str:
        """How a message names measured class ``c``: its index in the file, and its name."""
        index = c if self.classes is None else int(self.classes[c])
        name = f" ({self.class_names[index]!r})" if self.class_names else ""
        return f"class {index}{name}"

    def notes(self) -> list[str]:
        """Why metrics that could be expected are null (besides a missing classifier)."""
        out = []
        if self.means_sweep.identical is not None:
            first, second = (self.class_label(c) for c in self.means_sweep.identical)
            out.append(
                f"gnc2_log_mean and gnc2_log_var are null: {first} and {second} have the same direction of "
                "μ_c − μ_G (their log inverse distance is infinite)"
            )
        return out
