"""Neural Collapse metrics from sufficient statistics — pure numpy, no files, no CLI.

The definitions are the contract in ``docs/metrics.md`` (Papyan, Han & Donoho 2020).
Everything here works on small arrays (C × p, C × C, k × k); the streaming over samples that
produces them lives in the engine (:mod:`ncli.measure.engine`). Which metrics exist, and under
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
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ncli.errors import InputError

RANK_RTOL = 1e-12  # eigenvalues of Σ_B at or below RANK_RTOL · λ_max are dropped (spec)


def class_means(counts: np.ndarray, sums: np.ndarray, class_names=None) -> np.ndarray:
    """μ_c = sums_c / N_c; a class without samples is an error naming it."""
    counts = np.asarray(counts)
    num_classes = counts.shape[0]
    if num_classes < 2:
        raise InputError(f"num_classes is {num_classes}; Neural Collapse metrics need at least 2 classes")
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        first = int(empty[0])
        label = f"class {first}" + (f" ({class_names[first]!r})" if class_names else "")
        more = f" and {empty.size - 1} more" if empty.size > 1 else ""
        raise InputError(f"{label}{more} has no samples in the train split; class means are undefined")
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


def _pairs(num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(num_classes, k=1)


@dataclass
class Gram:
    """C vectors seen through their Gram matrix G: norms and the cosines over pairs c < c'."""

    G: np.ndarray  # (C, C)

    @classmethod
    def of(cls, vectors: np.ndarray) -> Gram:
        return cls(vectors @ vectors.T)

    @cached_property
    def norms(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.G), 0.0, None))

    @cached_property
    def cosines(self) -> np.ndarray:
        """Values of the upper triangle, divided by the two norms."""
        i, j = _pairs(self.G.shape[0])
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.G[i, j] / (self.norms[i] * self.norms[j])


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


def cdnv(counts: np.ndarray, means: np.ndarray, ss_within: np.ndarray, means_gram: Gram) -> float | None:
    """Mean over pairs of (σ_c² + σ_c'²) / (2 ‖μ_c − μ_c'‖²); distances from the Gram of the
    centred means (centring keeps the cancellation mild). None when two means coincide."""
    sigma2 = ss_within / counts
    G = means_gram.G
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


# --- NC2, of the centred means or of the classifier rows -----------------------------------


def equinorm(gram: Gram) -> float | None:
    """std/mean of the norms."""
    norms = gram.norms
    return finite_or_none(_sample_std(norms) / norms.mean()) if norms.mean() > 0 else None


def equiangular(gram: Gram) -> float | None:
    """std of the cosines over pairs (None for C = 2: one pair, no spread)."""
    return finite_or_none(_sample_std(gram.cosines)) if gram.G.shape[0] > 2 else None


def maxangle(gram: Gram) -> float | None:
    """mean |cos + 1/(C−1)| over pairs."""
    num_classes = gram.G.shape[0]
    return finite_or_none(np.mean(np.abs(gram.cosines + 1.0 / (num_classes - 1))))


def etf_distance(G: np.ndarray) -> float | None:
    """‖G/‖G‖_F − (I − 11ᵀ/C)/√(C−1)‖_F; None when G is 0."""
    num_classes = G.shape[0]
    norm = np.linalg.norm(G)
    if norm == 0:
        return None
    target = (np.eye(num_classes) - np.full((num_classes, num_classes), 1.0 / num_classes)) / math.sqrt(num_classes - 1)
    return float(np.linalg.norm(G / norm - target))


# --- NC3 -----------------------------------------------------------------------------------


def self_duality(W: np.ndarray, centred: np.ndarray) -> float | None:
    """‖Wᵀ/‖W‖_F − M/‖M‖_F‖_F² with M = [μ_c − μ_G] as columns (p × C)."""
    norm_w = np.linalg.norm(W)
    norm_m = np.linalg.norm(centred)
    return float(np.sum((W / norm_w - centred / norm_m) ** 2)) if norm_w > 0 and norm_m > 0 else None


def wh_etf_distance(W: np.ndarray, centred: np.ndarray) -> float | None:
    """ETF distance of W M (C × C)."""
    WM = W @ centred.T
    return etf_distance(WM) if np.linalg.norm(WM) > 0 else None


def bias_collapse(W: np.ndarray, b: np.ndarray, mu_g: np.ndarray) -> float:
    """‖W μ_G + b‖₂: the logits of the global mean (Zhu et al. 2021); 0 when the bias
    cancels the classifier's response to μ_G."""
    return float(np.linalg.norm(W @ mu_g + b))


# --- per class -----------------------------------------------------------------------------


def per_class_table(
    *, counts: np.ndarray, means: np.ndarray, mu_g: np.ndarray, ss_within: np.ndarray, W: np.ndarray | None
) -> list[dict]:
    """Per-class N_c, σ_c², ‖μ_c − μ_G‖, ‖w_c‖ and cos(w_c, μ_c − μ_G)."""
    centred = means - mu_g
    dist = np.linalg.norm(centred, axis=1)
    rows = []
    for c in range(counts.shape[0]):
        row = {
            "class": c,
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


@dataclass(frozen=True)
class Statistics:
    """What the metrics are computed from: the class statistics of the split that defines
    them, the model built on them (means, μ_G, basis, classifier) and its within-class sums."""

    counts: np.ndarray  # (C,) float64
    means: np.ndarray  # (C, p)
    mu_g: np.ndarray  # (p,)
    basis: BetweenBasis
    ss_within: np.ndarray  # (C,)
    proj_ss: np.ndarray  # (k,)
    W: np.ndarray | None  # (C, p) or None without a classifier
    b: np.ndarray | None  # (C,) or None

    @cached_property
    def num_samples(self) -> float:
        return float(self.counts.sum())

    @cached_property
    def centred(self) -> np.ndarray:
        """(C, p) rows μ_c − μ_G."""
        return self.means - self.mu_g

    @cached_property
    def means_gram(self) -> Gram:
        return Gram.of(self.centred)

    @cached_property
    def classifiers_gram(self) -> Gram:
        return Gram.of(self.W)
