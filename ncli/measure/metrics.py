"""Neural Collapse metrics from sufficient statistics — pure numpy, no files, no CLI.

The definitions are the contract in ``shared/spec/metrics.md`` (Papyan, Han & Donoho 2020).
Everything here works on small arrays (C × p, C × C, k × k); the streaming over samples that
produces them lives in :mod:`ncli.stream`.

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

import numpy as np

from ncli.errors import InputError

RANK_RTOL = 1e-12  # eigenvalues of Σ_B at or below RANK_RTOL · λ_max are dropped (spec)

CLASSIFIER_METRICS = (
    "equinorm_classifiers",
    "equiangular_classifiers",
    "maxangle_classifiers",
    "etf_distance_classifiers",
    "self_duality",
    "wh_etf_distance",
)
METRIC_KEYS = (
    "nc1",
    "nc1_rank",
    "nc1_trace_ratio",
    "cdnv",
    "equinorm_means",
    "equinorm_classifiers",
    "equiangular_means",
    "equiangular_classifiers",
    "maxangle_means",
    "maxangle_classifiers",
    "etf_distance_means",
    "etf_distance_classifiers",
    "self_duality",
    "wh_etf_distance",
    "ncc_disagreement",
)


def class_means(counts: np.ndarray, sums: np.ndarray, class_names=None) -> np.ndarray:
    """μ_c = sums_c / N_c; a class without samples is an error naming it."""
    counts = np.asarray(counts)
    C = counts.shape[0]
    if C < 2:
        raise InputError(f"num_classes is {C}; Neural Collapse metrics need at least 2 classes")
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        c = int(empty[0])
        label = f"class {c}" + (f" ({class_names[c]!r})" if class_names else "")
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


def between_basis(Mc: np.ndarray) -> BetweenBasis:
    """``Mc`` is C × p: rows μ_c − μ_G."""
    C, p = Mc.shape
    # SVD of Mᵀ... via the C × p matrix: Mc = V S Uᵀ.
    V, s, Ut = np.linalg.svd(Mc, full_matrices=False)  # V (C,k), s (k,), Ut (k,p)
    U = np.ascontiguousarray(Ut.T)
    coords = V * s  # (C, k)
    eig = s * s / C
    r_max = min(C - 1, p)
    lam_max = float(eig[0]) if eig.size else 0.0
    keep = eig[:r_max] > RANK_RTOL * lam_max if lam_max > 0 else np.zeros(0, bool)
    rank = int(np.count_nonzero(keep))
    return BetweenBasis(U=U, s=s, coords=coords, eig=eig, rank=rank)


def _std(x: np.ndarray) -> float | None:
    """Sample standard deviation (ddof = 1), None when fewer than 2 values."""
    if x.size < 2:
        return None
    return float(np.std(x, ddof=1))


def _pairs(C: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(C, k=1)


def _cosines(G: np.ndarray) -> np.ndarray:
    """Cosines over unordered pairs from a Gram matrix (values of the upper triangle)."""
    d = np.sqrt(np.clip(np.diag(G), 0.0, None))
    i, j = _pairs(G.shape[0])
    denom = d[i] * d[j]
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = G[i, j] / denom
    return cos


def _etf_distance(G: np.ndarray) -> float | None:
    C = G.shape[0]
    nrm = np.linalg.norm(G)
    if nrm == 0:
        return None
    target = (np.eye(C) - np.full((C, C), 1.0 / C)) / math.sqrt(C - 1)
    return float(np.linalg.norm(G / nrm - target))


def _finite_or_none(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _nc2(G: np.ndarray, which: str) -> dict:
    """Equinorm, equiangularity, max-angle and ETF distance of vectors with Gram matrix G
    (``which`` = "means" or "classifiers" names the keys)."""
    C = G.shape[0]
    norms = np.sqrt(np.clip(np.diag(G), 0.0, None))
    cos = _cosines(G)
    return {
        f"equinorm_{which}": _finite_or_none(_std(norms) / norms.mean()) if norms.mean() > 0 else None,
        f"equiangular_{which}": _finite_or_none(_std(cos)) if C > 2 else None,  # one pair: no spread
        f"maxangle_{which}": _finite_or_none(np.mean(np.abs(cos + 1.0 / (C - 1)))),
        f"etf_distance_{which}": _etf_distance(G),
    }


def collapse_metrics(
    *,
    counts: np.ndarray,
    means: np.ndarray,
    mu_g: np.ndarray,
    basis: BetweenBasis,
    ss_within: np.ndarray,
    proj_ss: np.ndarray,
    W: np.ndarray | None,
) -> dict:
    """NC1, NC2, NC3 from the train statistics. Returns the spec's metric keys (NC4 aside).

    ``proj_ss[j]`` = Σ_i (u_jᵀ (h_i − μ_{y_i}))², so u_jᵀ Σ_W u_j = proj_ss[j] / N and
    Tr(Σ_W Σ_B^†) = Σ_{j < rank} proj_ss[j] / (N λ_j).
    """
    counts = np.asarray(counts, dtype=np.float64)
    C = counts.shape[0]
    N = float(counts.sum())
    Mc = means - mu_g  # (C, p) rows μ_c − μ_G
    r = basis.rank

    out: dict = {}
    # --- NC1
    if r > 0:
        out["nc1"] = float(np.sum(proj_ss[:r] / (N * basis.eig[:r])) / C)
    else:
        out["nc1"] = None
    out["nc1_rank"] = r
    tr_w = float(ss_within.sum() / N)
    tr_b = float(np.sum(Mc * Mc) / C)
    out["nc1_trace_ratio"] = _finite_or_none(tr_w / tr_b) if tr_b > 0 else None

    # CDNV: mean over pairs of (σ_c² + σ_c'²) / (2 ‖μ_c − μ_c'‖²); distances from the Gram
    # of the centred means (centring keeps the cancellation mild).
    sigma2 = ss_within / counts
    Gm = Mc @ Mc.T
    i, j = _pairs(C)
    sq = np.diag(Gm)
    dist2 = sq[i] + sq[j] - 2.0 * Gm[i, j]
    # The Gram expansion cancels when two means nearly coincide: recompute those pairs as
    # ‖μ_c − μ_c'‖² directly (C × p work per pair, only where needed).
    close = np.flatnonzero(dist2 < 1e-3 * (sq[i] + sq[j]))
    for q in close.tolist():
        d = means[i[q]] - means[j[q]]
        dist2[q] = float(d @ d)
    # Two classes with identical means (e.g. dead features at initialisation) make CDNV
    # undefined: reported as null, never as inf/NaN.
    out["cdnv"] = float(np.mean((sigma2[i] + sigma2[j]) / (2.0 * dist2))) if np.all(dist2 > 0) else None

    # --- NC2 (means)
    out.update(_nc2(Gm, "means"))

    # --- NC2 (classifier) and NC3
    if W is None:
        for k in CLASSIFIER_METRICS:
            out[k] = None
        return out
    out.update(_nc2(W @ W.T, "classifiers"))
    # self-duality: ‖ Wᵀ/‖W‖_F − M/‖M‖_F ‖_F²  with M = [μ_c − μ_G] as columns (p × C)
    nW = np.linalg.norm(W)
    nM = np.linalg.norm(Mc)
    out["self_duality"] = float(np.sum((W / nW - Mc / nM) ** 2)) if nW > 0 and nM > 0 else None
    WM = W @ Mc.T  # (C, C) = W M
    out["wh_etf_distance"] = _etf_distance(WM) if np.linalg.norm(WM) > 0 else None
    return out


def per_class_table(
    *, counts: np.ndarray, means: np.ndarray, mu_g: np.ndarray, ss_within: np.ndarray, W: np.ndarray | None
) -> list[dict]:
    """Per-class N_c, σ_c², ‖μ_c − μ_G‖, ‖w_c‖ and cos(w_c, μ_c − μ_G)."""
    Mc = means - mu_g
    dist = np.linalg.norm(Mc, axis=1)
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
            wn = float(np.linalg.norm(W[c]))
            row["classifier_norm"] = wn
            denom = wn * float(dist[c])
            row["cos_classifier_mean"] = float(W[c] @ Mc[c] / denom) if denom > 0 else None
        rows.append(row)
    return rows
