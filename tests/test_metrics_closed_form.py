"""Closed-form checks of ``ncli measure``'s math: values known without any reference code.

* an exact simplex ETF (features = class means, W = Mᵀ) where every NC metric is 0;
* tiny class-separated data sets whose NC1, trace ratio, CDNV, … are derived by hand below;
* a hand-worked per-class breakdown, including both tie-breaking rules.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ncli.features import write_features

measure = pytest.importorskip("ncli.measure.record")

EXACT = 1e-14  # "equal": the hand values are dyadic; only summation order may differ


def approx(x):
    return pytest.approx(x, rel=EXACT, abs=1e-300)


# ---------------------------------------------------------------------------------------
# exact simplex ETF
# ---------------------------------------------------------------------------------------


def simplex_etf(C: int) -> np.ndarray:
    """C x C, column c = c-th vertex of the standard simplex ETF (unit norm, cos = -1/(C-1))."""
    return math.sqrt(C / (C - 1)) * (np.eye(C) - np.ones((C, C)) / C)


@pytest.mark.parametrize(
    "C,p,counts,offset,global_mean",
    [
        (2, 2, [3, 3], False, "class"),
        (3, 3, [4, 4, 4], False, "class"),
        (3, 7, [4, 4, 4], True, "sample"),  # balanced: sample mean = mean of class means
        (5, 8, [3, 7, 2, 5, 4], False, "class"),  # imbalanced: only the class-mean μ_G is the ETF centre
        (10, 16, [2, 5, 3, 4, 6, 2, 3, 5, 4, 3], True, "class"),
    ],
)
def test_exact_simplex_etf(tmp_path, C, p, counts, offset, global_mean):
    rng = np.random.default_rng(C * 100 + p)
    U, _ = np.linalg.qr(rng.normal(size=(p, C)))  # p x C, orthonormal columns: a random embedding
    M = U @ simplex_etf(C)  # p x C, the centred means
    t = rng.normal(size=p) * 5.0 if offset else np.zeros(p)  # global translation
    means = M.T + t  # C x p
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.int64)
    y = y[rng.permutation(len(y))]
    H = means[y]  # features = class means exactly, no noise
    yt = np.arange(C, dtype=np.int64).repeat(2)
    Ht = means[yt]
    W = M.T.copy()  # w_c = μ_c − μ_G
    b = -W @ t  # zero without offset
    path = tmp_path / "etf.h5"
    write_features(path, {"train": {"features": H, "labels": y}, "test": {"features": Ht, "labels": yt}},
                   num_classes=C, weight=W, bias=b)

    rec = measure.measure_file(str(path), global_mean=global_mean, per_class=True, chunk_rows=5)
    m = rec["metrics"]
    # Σ_W is 0 up to the rounding of a mean of identical rows: (1e-16)^2
    assert abs(m["nc1"]) < 1e-20
    assert abs(m["nc1_trace_ratio"]) < 1e-20
    assert abs(m["cdnv"]) < 1e-20
    assert m["nc1_rank"] == C - 1
    zero_keys = ["equinorm_means", "equinorm_classifiers", "maxangle_means", "maxangle_classifiers",
                 "etf_distance_means", "etf_distance_classifiers", "self_duality", "wh_etf_distance"]
    if C > 2:
        zero_keys += ["equiangular_means", "equiangular_classifiers"]
    else:
        assert m["equiangular_means"] is None and m["equiangular_classifiers"] is None
    for k in zero_keys:
        assert m[k] is not None and abs(m[k]) <= 1e-12, (k, m[k])
    assert m["ncc_disagreement"] == 0.0
    for name in ("train", "test"):
        st = rec["splits"][name]
        assert st["accuracy"] == 1.0 and st["ncc_accuracy"] == 1.0 and st["ncc_disagreement"] == 0.0, (name, st)
    assert rec["splits"]["train"]["num_samples"] == sum(counts)
    assert rec["splits"]["test"]["num_samples"] == 2 * C
    for c, pc in enumerate(rec["per_class"]):
        assert pc["class"] == c and pc["num_samples"] == counts[c]
        assert abs(pc["sigma2"]) < 1e-20
        # ETF vertices have unit norm, and w_c = μ_c − μ_G
        assert pc["mean_dist"] == pytest.approx(1.0, rel=1e-12)
        assert pc["classifier_norm"] == pytest.approx(1.0, rel=1e-12)
        assert pc["cos_classifier_mean"] == pytest.approx(1.0, rel=1e-12)
        assert pc["ncc_disagreement"] == {"train": 0.0, "test": 0.0}


# ---------------------------------------------------------------------------------------
# hand-computed NC1
# ---------------------------------------------------------------------------------------


def _write(path, H, y, C, W=None, b=None):
    write_features(path, {"train": {"features": np.asarray(H, dtype=np.float64), "labels": np.asarray(y)}},
                   num_classes=C, weight=W, bias=b)


@pytest.mark.parametrize("global_mean", ["class", "sample"])  # balanced: both give μ_G = 0
def test_nc1_two_classes_p1(tmp_path, global_mean):
    # means ±a with a = 2, rows mean ± s with s = 1/2:
    #   class 0: -2.5, -1.5    class 1: 1.5, 2.5      μ_0 = -2, μ_1 = 2, μ_G = 0
    #   Σ_W = (1/4)(4 s²) = s² = 1/4           Σ_B = (1/2)(a² + a²) = a² = 4,  Σ_B^† = 1/4 (rank 1)
    #   nc1 = Tr(Σ_W Σ_B^†)/C = (1/4)(1/4)/2 = 1/32
    #   nc1_trace_ratio = Tr Σ_W / Tr Σ_B = 1/16
    #   σ_c² = s² = 1/4; cdnv = (σ_0² + σ_1²) / (2 ‖μ_0 − μ_1‖²) = (1/2)/(2·16) = 1/64
    H = [[-2.5], [1.5], [-1.5], [2.5]]
    y = [0, 1, 0, 1]
    path = tmp_path / "p1.h5"
    _write(path, H, y, 2)
    rec = measure.measure_file(str(path), global_mean=global_mean, per_class=True)
    m = rec["metrics"]
    assert m["nc1"] == approx(1 / 32)
    assert m["nc1_rank"] == 1
    assert m["nc1_trace_ratio"] == approx(1 / 16)
    assert m["cdnv"] == approx(1 / 64)
    assert abs(m["equinorm_means"]) <= 1e-15  # both ‖μ_c − μ_G‖ = 2
    assert abs(m["maxangle_means"]) <= 1e-15  # cos = −1 = −1/(C−1)
    assert [pc["sigma2"] for pc in rec["per_class"]] == [approx(0.25), approx(0.25)]
    assert [pc["mean_dist"] for pc in rec["per_class"]] == [approx(2.0), approx(2.0)]
    # no classifier: classifier metrics and accuracy are null; NCC accuracy still computed
    for k in ("equinorm_classifiers", "maxangle_classifiers", "etf_distance_classifiers", "self_duality",
              "wh_etf_distance", "ncc_disagreement"):
        assert m[k] is None, k
    assert rec["splits"]["train"]["accuracy"] is None
    assert rec["splits"]["train"]["ncc_accuracy"] == 1.0


def test_nc1_two_classes_p2_ignores_orthogonal_noise(tmp_path):
    # a = 2, s = 1 (noise along e1, the between-class direction), t = 3 (noise along e2):
    #   class 0: (-1,0) (-3,0) (-2,3) (-2,-3)    class 1: (3,0) (1,0) (2,3) (2,-3)
    #   μ_0 = (-2,0), μ_1 = (2,0), μ_G = 0
    #   per class scatter = diag(2s², 2t²) = diag(2, 18);  Σ_W = diag(4, 36)/8 = diag(1/2, 9/2)
    #   Σ_B = diag(4, 0); rank min(C−1, p) = 1 → Σ_B^† = diag(1/4, 0)
    #   nc1 = (1/2 · 1/4)/2 = 1/16   (the e2 variance does not count)
    #   nc1_trace_ratio = (1/2 + 9/2)/4 = 5/4
    #   σ_c² = (1 + 1 + 9 + 9)/4 = 5;  cdnv = (5 + 5)/(2 · 16) = 5/16
    H = [[-1, 0], [-3, 0], [-2, 3], [-2, -3], [3, 0], [1, 0], [2, 3], [2, -3]]
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    path = tmp_path / "p2.h5"
    _write(path, H, y, 2)
    rec = measure.measure_file(str(path), per_class=True, chunk_rows=3)
    m = rec["metrics"]
    assert m["nc1"] == approx(1 / 16)
    assert m["nc1_rank"] == 1
    assert m["nc1_trace_ratio"] == approx(5 / 4)
    assert m["cdnv"] == approx(5 / 16)
    assert [pc["sigma2"] for pc in rec["per_class"]] == [approx(5.0), approx(5.0)]


def test_nc1_more_classes_than_dimensions(tmp_path):
    # C = 3 in p = 1 (C − 1 > p): means −3, 1, 2 (sum 0 → μ_G = 0), rows mean ± 1/2
    #   Σ_W = 1/4;  Σ_B = (9 + 1 + 4)/3 = 14/3;  rank min(2, 1) = 1, Σ_B^† = 3/14
    #   nc1 = (1/4)(3/14)/3 = 1/56;   nc1_trace_ratio = (1/4)/(14/3) = 3/56
    #   σ_c² = 1/4;  cdnv = mean of (1/2)/(2d²) over d = 4, 5, 1 = (1/64 + 1/100 + 1/4)/3
    #   ‖μ_c − μ_G‖ = 3, 1, 2: mean 2, sample std 1 → equinorm_means = 1/2
    #   cos over pairs (0,1) (0,2) (1,2) = −1, −1, +1:
    #     equiangular_means = sample std = sqrt(((2/3)² + (2/3)² + (4/3)²)/2) = sqrt(4/3)
    #     maxangle_means = mean |cos + 1/2| = (1/2 + 1/2 + 3/2)/3 = 5/6
    #   G = u uᵀ with u = (−3, 1, 2), ‖G‖_F = ‖u‖² = 14, 𝟙ᵀu = 0:
    #     ⟨G/‖G‖_F, (I − 𝟙𝟙ᵀ/3)/√2⟩ = (14 − 0)/14/√2 = 1/√2 → etf_distance_means = sqrt(2 − √2)
    H = [[-3.5], [-2.5], [0.5], [1.5], [1.5], [2.5]]
    y = [0, 0, 1, 1, 2, 2]
    path = tmp_path / "c3p1.h5"
    _write(path, H, y, 3)
    rec = measure.measure_file(str(path))
    m = rec["metrics"]
    assert m["nc1_rank"] == 1
    assert m["nc1"] == approx(1 / 56)
    assert m["nc1_trace_ratio"] == approx(3 / 56)
    assert m["cdnv"] == approx((1 / 64 + 1 / 100 + 1 / 4) / 3)
    assert m["equinorm_means"] == approx(0.5)
    assert m["equiangular_means"] == approx(math.sqrt(4 / 3))
    assert m["maxangle_means"] == approx(5 / 6)
    assert m["etf_distance_means"] == pytest.approx(math.sqrt(2 - math.sqrt(2)), rel=1e-12)


# ---------------------------------------------------------------------------------------
# per-class breakdown by hand, with both tie-breaking rules
# ---------------------------------------------------------------------------------------

# train: class 0 ("cat"): (0,0) (2,0)             μ_0 = (1,0), σ_0² = (1 + 1)/2 = 1
#        class 1 ("dog"): (0,4) (0,2) (0,6)       μ_1 = (0,4), σ_1² = (0 + 4 + 4)/3 = 8/3
# W = [[3,0],[0,4]], no bias: ‖w_0‖ = 3, ‖w_1‖ = 4
# train decisions: (0,0) logits (0,0) tie → 0 = label, NCC 0; all other rows agree and are right
#   → train accuracy 1, ncc_accuracy 1, disagreement 0 (accuracy 1 needs the tie to go to 0)
# test:  row  h         y   logits      net  d²(μ_0) d²(μ_1)  ncc
#        A   (1,1)      0   (3, 4)      1    1       10       0    disagree
#        B   (2,1)      0   (6, 4)      0    2       13       0
#        C   (4,3)      0   (12, 12)    0*   18      17       1    disagree  (* logits tie → 0)
#        D   (0,3)      1   (0, 12)     1    10      1        1
#        E   (0.5,2)    1   (1.5, 8)    1    4.25    4.25     0*   disagree  (* distance tie → 0)
#        F   (1,2.5)    1   (3, 10)     1    6.25    3.25     1
#   → test accuracy 5/6, ncc_accuracy 4/6, disagreement 3/6; per class 2/3 (class 0), 1/3 (class 1)
# μ_G = (1/2, 2) ("class"):   μ_0 − μ_G = (1/2, −2), μ_1 − μ_G = (−1/2, 2): both norms √4.25
#   cos(w_0, μ_0 − μ_G) = (3/2)/(3√4.25) = 0.5/√4.25;  cos(w_1, μ_1 − μ_G) = 8/(4√4.25) = 2/√4.25
# μ_G = (2/5, 12/5) ("sample"): μ_0 − μ_G = (0.6, −2.4), μ_1 − μ_G = (−0.4, 1.6)
#   norms √6.12, √2.72; cos = 0.6/√6.12 and 1.6/√2.72
HAND_TRAIN = ([[0, 0], [2, 0], [0, 4], [0, 2], [0, 6]], [0, 0, 1, 1, 1])
HAND_TEST = ([[1, 1], [2, 1], [4, 3], [0, 3], [0.5, 2], [1, 2.5]], [0, 0, 0, 1, 1, 1])
HAND_W = [[3.0, 0.0], [0.0, 4.0]]


@pytest.mark.parametrize(
    "global_mean,dists,coss",
    [
        ("class", (math.sqrt(4.25), math.sqrt(4.25)), (0.5 / math.sqrt(4.25), 2 / math.sqrt(4.25))),
        ("sample", (math.sqrt(6.12), math.sqrt(2.72)), (0.6 / math.sqrt(6.12), 1.6 / math.sqrt(2.72))),
    ],
)
def test_per_class_by_hand(tmp_path, global_mean, dists, coss):
    path = tmp_path / "hand.h5"
    write_features(
        path,
        {
            "train": {"features": np.array(HAND_TRAIN[0], dtype=np.float64), "labels": np.array(HAND_TRAIN[1])},
            "test": {"features": np.array(HAND_TEST[0], dtype=np.float64), "labels": np.array(HAND_TEST[1])},
        },
        num_classes=2,
        weight=np.array(HAND_W),
        class_names=["cat", "dog"],
    )
    rec = measure.measure_file(str(path), global_mean=global_mean, per_class=True, chunk_rows=2)
    tr, te = rec["splits"]["train"], rec["splits"]["test"]
    assert (tr["num_samples"], tr["accuracy"], tr["ncc_accuracy"], tr["ncc_disagreement"]) == (5, 1.0, 1.0, 0.0)
    assert te["num_samples"] == 6
    assert te["accuracy"] == approx(5 / 6)
    assert te["ncc_accuracy"] == approx(4 / 6)
    assert te["ncc_disagreement"] == approx(0.5)
    assert rec["metrics"]["ncc_disagreement"] == approx(0.5)  # headline = the test split's

    pc = rec["per_class"]
    assert [x["class"] for x in pc] == [0, 1]
    assert [x["name"] for x in pc] == ["cat", "dog"]
    assert [x["num_samples"] for x in pc] == [2, 3]
    assert pc[0]["sigma2"] == approx(1.0)
    assert pc[1]["sigma2"] == approx(8 / 3)
    assert pc[0]["mean_dist"] == approx(dists[0])
    assert pc[1]["mean_dist"] == approx(dists[1])
    assert pc[0]["classifier_norm"] == approx(3.0)
    assert pc[1]["classifier_norm"] == approx(4.0)
    assert pc[0]["cos_classifier_mean"] == approx(coss[0])
    assert pc[1]["cos_classifier_mean"] == approx(coss[1])
    assert pc[0]["ncc_disagreement"]["train"] == 0.0
    assert pc[1]["ncc_disagreement"]["train"] == 0.0
    assert pc[0]["ncc_disagreement"]["test"] == approx(2 / 3)
    assert pc[1]["ncc_disagreement"]["test"] == approx(1 / 3)


def test_per_class_names_absent(tmp_path):
    path = tmp_path / "noname.h5"
    _write(path, *HAND_TRAIN, 2)
    rec = measure.measure_file(str(path), per_class=True)
    assert [x["name"] for x in rec["per_class"]] == [None, None]
    assert [x["classifier_norm"] for x in rec["per_class"]] == [None, None]
    assert [x["cos_classifier_mean"] for x in rec["per_class"]] == [None, None]
