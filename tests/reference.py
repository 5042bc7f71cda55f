"""A dense, float64, deliberately naive transcription of docs/metrics.md (the metric contract).

Written from the spec alone (not from ncli's code), to check ``ncli.measure`` against.
Everything is formed explicitly: Σ_W and Σ_B as p×p matrices, Σ_B^† from ``np.linalg.eigh``,
pairwise quantities by double loops, NCC by explicit distances. Ties break to the smallest
class index (``np.argmax`` / ``np.argmin`` return the first occurrence).

Also holds the comparison helpers used by the metric tests (``assert_record_matches``).
"""

from __future__ import annotations

import math

import numpy as np

EIG_REL_TOL = 1e-12  # eigenvalues of Σ_B that are <= EIG_REL_TOL * λ_max are dropped

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
    "bias_collapse",
    "gnc2_log_mean",
    "gnc2_log_var",
    "duality_cos_mean",
    "duality_cos_std",
    "nc5_orthodev",
    "ncc_disagreement",
)
SPLIT_KEYS = ("num_samples", "accuracy", "ncc_accuracy", "ncc_disagreement")
PER_CLASS_KEYS = ("class", "name", "num_samples", "sigma2", "mean_dist", "classifier_norm", "cos_classifier_mean")


# ---------------------------------------------------------------------------------------
# the reference
# ---------------------------------------------------------------------------------------


def _sample_std(values) -> float:
    """Sample standard deviation (divide by count - 1), as torch.std."""
    v = np.asarray(values, dtype=np.float64)
    return float(np.std(v, ddof=1))


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))


def _etf_target(C: int) -> np.ndarray:
    return (np.eye(C) - np.ones((C, C)) / C) / math.sqrt(C - 1)


def _etf_distance(G: np.ndarray) -> float:
    C = G.shape[0]
    return float(np.linalg.norm(G / np.linalg.norm(G, "fro") - _etf_target(C), "fro"))


def net_decisions(H: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmax_c <w_c, h> + b_c, ties to the smallest index."""
    logits = H @ W.T + b[None, :]
    return np.argmax(logits, axis=1)


def ncc_decisions(H: np.ndarray, means: np.ndarray) -> np.ndarray:
    """argmin_c ||h - mu_c||, by explicit (squared) distances; ties to the smallest index.
    Exact while ‖h‖ is moderate: at ‖h‖ ≈ 1e36 the distances (≈ 1e73) round to equal values
    although ⟨h, μ_c⟩ still separates the classes, which ncli's decisions resolve."""
    C = means.shape[0]
    d2 = np.empty((H.shape[0], C))
    for c in range(C):
        diff = H - means[c][None, :]
        d2[:, c] = np.sum(diff * diff, axis=1)
    return np.argmin(d2, axis=1)


def reference_record(
    H_train,
    y_train,
    C: int,
    W=None,
    b=None,
    other_splits=None,
    *,
    global_mean: str = "class",
    train_name: str = "train",
    class_names=None,
    min_per_class: int | None = None,
    ood=None,
) -> dict:
    """The metric record of metrics.md for these arrays.

    H_train (N, p) as stored (cast here to float64), y_train (N,), W (C, p) or None,
    b (C,) or None (zeros), other_splits {name: (H, y)} evaluated against the train class
    statistics. ``min_per_class``: measure only the classes with at least that many train
    samples (the others' rows are dropped from every split, their classifier rows too).
    ``ood``: the features of an out-of-distribution split (for nc5_orthodev). Returns
    {"num_classes", "classes_measured", "feature_dim", "global_mean", "splits", "metrics",
    "per_class"} with the keys of the JSON record.
    """
    H = np.asarray(H_train, dtype=np.float64)
    y = np.asarray(y_train).astype(np.int64)
    N, p = H.shape
    assert C >= 2 and y.shape == (N,)
    has_w = W is not None
    if has_w:
        W = np.asarray(W, dtype=np.float64)
        b = np.zeros(C) if b is None else np.asarray(b, dtype=np.float64)
        assert W.shape == (C, p) and b.shape == (C,)
    file_classes = C
    kept = list(range(C))
    other_splits = dict(other_splits or {})
    if min_per_class is not None:
        # keep the classes with enough train samples; relabel them 0..C'-1 in order; drop the
        # rows of the others from every split
        kept = [c for c in range(C) if int(np.sum(y == c)) >= min_per_class]
        new_label = {c: i for i, c in enumerate(kept)}

        def restrict(Hs, ys):
            Hs, ys = np.asarray(Hs), np.asarray(ys).astype(np.int64)
            rows = [i for i in range(len(ys)) if int(ys[i]) in new_label]
            return Hs[rows], np.array([new_label[int(ys[i])] for i in rows], dtype=np.int64)

        H, y = restrict(H, y)
        N = H.shape[0]
        other_splits = {name: restrict(*split) for name, split in other_splits.items()}
        if has_w:
            W, b = W[kept], b[kept]
        C = len(kept)

    # class means, counts, sigma_c^2 (two passes: mean first, then centred squares)
    counts = np.array([int(np.sum(y == c)) for c in range(C)])
    assert (counts > 0).all()
    means = np.zeros((C, p))
    for c in range(C):
        means[c] = H[y == c].mean(axis=0)
    sigma2 = np.zeros(C)
    for c in range(C):
        D = H[y == c] - means[c][None, :]
        sigma2[c] = float(np.sum(D * D)) / counts[c]

    if global_mean == "class":
        mu_G = means.mean(axis=0)
    elif global_mean == "sample":
        mu_G = H.mean(axis=0)
    else:
        raise ValueError(global_mean)
    M = (means - mu_G[None, :]).T  # p x C, column c = mu_c - mu_G

    # Sigma_W, Sigma_B as explicit p x p matrices
    Sw = np.zeros((p, p))
    for c in range(C):
        D = H[y == c] - means[c][None, :]
        Sw += D.T @ D
    Sw /= N
    Sb = np.zeros((p, p))
    for c in range(C):
        m = M[:, c]
        Sb += np.outer(m, m)
    Sb /= C

    # pseudo-inverse of Sigma_B: the min(C-1, p) largest eigenpairs, eigenvalue > 1e-12 * lmax
    evals, evecs = np.linalg.eigh(Sb)
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    lmax = evals[0]
    r_max = min(C - 1, p)
    Sb_pinv = np.zeros((p, p))
    rank = 0
    for k in range(r_max):
        if evals[k] > EIG_REL_TOL * lmax:
            v = evecs[:, k]
            Sb_pinv += np.outer(v, v) / evals[k]
            rank += 1

    metrics: dict = {}
    metrics["nc1"] = float(np.trace(Sw @ Sb_pinv)) / C
    metrics["nc1_rank"] = rank
    metrics["nc1_trace_ratio"] = float(np.trace(Sw) / np.trace(Sb))

    pairs = [(c, d) for c in range(C) for d in range(c + 1, C)]
    cd = []
    for c, d in pairs:
        dist2 = float(np.sum((means[c] - means[d]) ** 2))
        cd.append((sigma2[c] + sigma2[d]) / (2.0 * dist2))
    metrics["cdnv"] = float(np.mean(cd))

    mean_norms = np.array([np.linalg.norm(M[:, c]) for c in range(C)])
    metrics["equinorm_means"] = _sample_std(mean_norms) / float(np.mean(mean_norms))
    cos_mu = [_cos(M[:, c], M[:, d]) for c, d in pairs]
    metrics["equiangular_means"] = _sample_std(cos_mu) if C > 2 else None
    metrics["maxangle_means"] = float(np.mean([abs(x + 1.0 / (C - 1)) for x in cos_mu]))
    metrics["etf_distance_means"] = _etf_distance(M.T @ M)

    if has_w:
        w_norms = np.array([np.linalg.norm(W[c]) for c in range(C)])
        metrics["equinorm_classifiers"] = _sample_std(w_norms) / float(np.mean(w_norms))
        cos_w = [_cos(W[c], W[d]) for c, d in pairs]
        metrics["equiangular_classifiers"] = _sample_std(cos_w) if C > 2 else None
        metrics["maxangle_classifiers"] = float(np.mean([abs(x + 1.0 / (C - 1)) for x in cos_w]))
        metrics["etf_distance_classifiers"] = _etf_distance(W @ W.T)
        diff = W.T / np.linalg.norm(W, "fro") - M / np.linalg.norm(M, "fro")
        metrics["self_duality"] = float(np.sum(diff * diff))
        WM = W @ M
        metrics["wh_etf_distance"] = float(
            np.linalg.norm(WM / np.linalg.norm(WM, "fro") - _etf_target(C), "fro")
        )
        metrics["bias_collapse"] = math.sqrt(sum((float(W[c] @ mu_G) + b[c]) ** 2 for c in range(C)))
        duality = [_cos(W[c], M[:, c]) for c in range(C)]
        metrics["duality_cos_mean"] = float(np.mean(duality))
        metrics["duality_cos_std"] = _sample_std(duality)
    else:
        w_norms = None
        for k in (
            "equinorm_classifiers",
            "equiangular_classifiers",
            "maxangle_classifiers",
            "etf_distance_classifiers",
            "self_duality",
            "wh_etf_distance",
            "bias_collapse",
            "duality_cos_mean",
            "duality_cos_std",
        ):
            metrics[k] = None

    # GNC2: log inverse distances of the unit centred means, over pairs; population variance
    # (identical directions, up to rounding, make it infinite: ncli raises an error; None here)
    unit = [M[:, c] / np.linalg.norm(M[:, c]) for c in range(C)]
    dist = [float(np.linalg.norm(unit[c] - unit[d])) for c, d in pairs]
    gnc2_min_distance = min(dist)
    if min(dist) > 1e-12:
        log_inv = [math.log(1.0 / x) for x in dist]
        metrics["gnc2_log_mean"] = float(np.mean(log_inv))
        metrics["gnc2_log_var"] = float(np.mean((np.array(log_inv) - np.mean(log_inv)) ** 2))
    else:
        metrics["gnc2_log_mean"] = metrics["gnc2_log_var"] = None

    # NC5: |cos| of the uncentred class means with the OOD split's sample mean
    if ood is None:
        metrics["nc5_orthodev"] = None
    else:
        mu_ood = np.asarray(ood, dtype=np.float64).mean(axis=0)
        metrics["nc5_orthodev"] = float(np.mean([abs(_cos(means[c], mu_ood)) for c in range(C)]))

    # NC4 on every split
    all_splits = {train_name: (H, y)}
    for name, (Hs, ys) in (other_splits or {}).items():
        all_splits[name] = (np.asarray(Hs, dtype=np.float64), np.asarray(ys).astype(np.int64))
    splits: dict = {}
    per_class_disagree: dict = {c: {} for c in range(C)}
    for name, (Hs, ys) in all_splits.items():
        ncc = ncc_decisions(Hs, means)
        st = {"num_samples": int(Hs.shape[0]), "ncc_accuracy": float(np.mean(ncc == ys))}
        if has_w:
            net = net_decisions(Hs, W, b)
            st["accuracy"] = float(np.mean(net == ys))
            st["ncc_disagreement"] = float(np.mean(net != ncc))
            for c in range(C):
                sel = ys == c
                per_class_disagree[c][name] = float(np.mean(net[sel] != ncc[sel])) if sel.any() else None
        else:
            st["accuracy"] = None
            st["ncc_disagreement"] = None
            for c in range(C):
                per_class_disagree[c][name] = None
        splits[name] = st
    headline = "test" if "test" in splits else train_name
    metrics["ncc_disagreement"] = splits[headline]["ncc_disagreement"]

    per_class = []
    for c in range(C):
        per_class.append(
            {
                "class": kept[c],
                "name": None if class_names is None else str(class_names[kept[c]]),
                "num_samples": int(counts[c]),
                "sigma2": float(sigma2[c]),
                "mean_dist": float(mean_norms[c]),
                "classifier_norm": float(w_norms[c]) if has_w else None,
                "cos_classifier_mean": _cos(W[c], M[:, c]) if has_w else None,
                "ncc_disagreement": per_class_disagree[c],
            }
        )

    return {
        "num_classes": file_classes,
        "classes_measured": C,
        "feature_dim": p,
        "global_mean": global_mean,
        "splits": splits,
        "metrics": metrics,
        "per_class": per_class,
        "gnc2_min_distance": gnc2_min_distance,
    }


# ---------------------------------------------------------------------------------------
# comparison helpers
# ---------------------------------------------------------------------------------------

RTOL = 1e-9
# absolute slack used only where the reference value is itself ~0 (e.g. equinorm with C = 2,
# where both norms are equal and the value is pure rounding noise)
TINY = 1e-10
ATOL_TINY = 1e-12


def close(got, want, rtol: float = RTOL, tiny: float = TINY, atol_tiny: float = ATOL_TINY) -> bool:
    if want is None or got is None:
        return got is None and want is None
    if isinstance(want, (bool, np.bool_)) or isinstance(got, (bool, np.bool_)):
        return got == want
    got, want = float(got), float(want)
    if not (math.isfinite(got) and math.isfinite(want)):
        return False
    if abs(want) <= tiny:
        return abs(got - want) <= atol_tiny
    return abs(got - want) <= rtol * abs(want)


def _fmt(got, want) -> str:
    if got is None or want is None:
        return f"got {got!r}, want {want!r}"
    try:
        rel = abs(float(got) - float(want)) / max(abs(float(want)), 1e-300)
    except (TypeError, ValueError):
        rel = float("nan")
    return f"got {got!r}, want {want!r} (rel err {rel:.3g})"


def assert_record_matches(rec: dict, ref: dict, *, rtol: float = RTOL, per_class: bool = False, ncc: bool = True) -> None:
    """Every metric, every split stat (and optionally per-class entry) within rtol of ref.
    ``ncc=False``: leave out the nearest-class-centre numbers, for data where this reference's
    float64 distances ‖h − μ_c‖² cannot tell the classes apart (see :func:`ncc_decisions`)."""
    errors = []
    assert rec["num_classes"] == ref["num_classes"], (rec["num_classes"], ref["num_classes"])
    if "classes_measured" in rec:
        assert rec["classes_measured"] == ref["classes_measured"], (rec["classes_measured"], ref["classes_measured"])
    assert rec["feature_dim"] == ref["feature_dim"], (rec["feature_dim"], ref["feature_dim"])
    assert rec["global_mean"] == ref["global_mean"]
    m = rec["metrics"]
    assert set(METRIC_KEYS) <= set(m), f"missing metric keys: {set(METRIC_KEYS) - set(m)}"
    # GNC2's log 1/‖û_c − û_c'‖ is ill-conditioned when two unit means nearly coincide: an
    # error of a few ε in the unit vectors moves it by ε/d, and where "coincide" ends (ncli:
    # 2(p + 3)ε; here 1e-12) is a matter of rounding. There, either answer is accepted.
    gnc2_ill_conditioned = ref.get("gnc2_min_distance", 1.0) < 1e-9
    for k in METRIC_KEYS:
        if k == "nc1_rank":
            if m[k] != ref["metrics"][k]:
                errors.append(f"metrics.nc1_rank: got {m[k]!r}, want {ref['metrics'][k]!r}")
            continue
        if "ncc" in k and not ncc:
            continue
        if k.startswith("gnc2_") and gnc2_ill_conditioned:
            if not (m[k] is None or math.isfinite(m[k])):
                errors.append(f"metrics.{k}: got {m[k]!r}, want null or a number (unit means {ref['gnc2_min_distance']:.1e} apart)")
            continue
        if not close(m[k], ref["metrics"][k], rtol):
            errors.append(f"metrics.{k}: {_fmt(m[k], ref['metrics'][k])}")
    assert set(rec["splits"]) == set(ref["splits"]), (sorted(rec["splits"]), sorted(ref["splits"]))
    for name, st in ref["splits"].items():
        got = rec["splits"][name]
        for k in SPLIT_KEYS:
            if "ncc" in k and not ncc:
                continue
            if k not in got:
                errors.append(f"splits.{name}.{k}: missing")
            elif k == "num_samples":
                if got[k] != st[k]:
                    errors.append(f"splits.{name}.num_samples: got {got[k]!r}, want {st[k]!r}")
            elif not close(got[k], st[k], rtol):
                errors.append(f"splits.{name}.{k}: {_fmt(got[k], st[k])}")
    if per_class:
        pcs = rec.get("per_class")
        assert isinstance(pcs, list) and len(pcs) == ref["classes_measured"], "per_class missing or wrong length"
        for got, want in zip(pcs, ref["per_class"]):
            c = want["class"]
            for k in PER_CLASS_KEYS:
                if k not in got:
                    errors.append(f"per_class[{c}].{k}: missing")
                elif k in ("class", "name", "num_samples"):
                    if got[k] != want[k]:
                        errors.append(f"per_class[{c}].{k}: got {got[k]!r}, want {want[k]!r}")
                elif not close(got[k], want[k], rtol):
                    errors.append(f"per_class[{c}].{k}: {_fmt(got[k], want[k])}")
            gd = got.get("ncc_disagreement")
            wd = want["ncc_disagreement"]
            if all(v is None for v in wd.values()):
                # no classifier: accept null, or a dict of nulls
                if gd is not None and not all(v is None for v in dict(gd).values()):
                    errors.append(f"per_class[{c}].ncc_disagreement: got {gd!r}, want null(s)")
                continue
            if not isinstance(gd, dict):
                errors.append(f"per_class[{c}].ncc_disagreement: got {gd!r}, want {wd!r}")
                continue
            for sname, v in wd.items():
                if v is None:
                    continue  # class absent from that split: the spec does not fix the value
                if sname not in gd or not close(gd[sname], v, rtol):
                    errors.append(f"per_class[{c}].ncc_disagreement[{sname}]: {_fmt(gd.get(sname), v)}")
    assert not errors, "record differs from the reference:\n  " + "\n  ".join(errors)
