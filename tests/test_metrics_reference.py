"""``ncli.measure.measure_file`` against the dense float64 reference (tests/reference.py).

Random data, many shapes: every metric, every split stat and every per-class entry must agree
with the reference to a relative error of 1e-9 (an absolute 1e-12 only where the reference
value is itself ~0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from ncli.features import write_features
from ncli.measure.engine import NumpyBackend

try:
    from reference import assert_record_matches, reference_record
except ImportError:  # tests/ imported as a package
    from tests.reference import assert_record_matches, reference_record

measure = pytest.importorskip("ncli.measure.record")


def make_split(rng, means, counts, *, noise=1.0, mix=None, dtype=np.float64):
    """Rows around the given class means with (optionally anisotropic) Gaussian noise, shuffled."""
    C, p = means.shape
    mix = np.eye(p) if mix is None else mix
    H = np.concatenate([means[c] + noise * rng.normal(size=(counts[c], p)) @ mix for c in range(C)])
    y = np.concatenate([np.full(counts[c], c, dtype=np.int64) for c in range(C)])
    perm = rng.permutation(len(y))
    return H[perm].astype(dtype), y[perm]


@dataclass
class Case:
    id: str
    C: int
    p: int
    counts: list
    dtype: type = np.float64
    classifier: bool = True
    bias: bool = True
    global_mean: str = "class"
    test_counts: list | None = None
    extra_splits: dict = field(default_factory=dict)  # name -> counts
    chunk_rows: int | None = None
    offset: float = 0.0
    train_name: str = "train"
    class_names: bool = False
    expected_rank: int | None = None
    seed: int = 0


CASES = [
    Case("balanced", 4, 6, [30] * 4, test_counts=[10] * 4, expected_rank=3, seed=1),
    Case("balanced-sample", 4, 6, [30] * 4, test_counts=[10] * 4, global_mean="sample", expected_rank=3, seed=2),
    Case("imbalanced", 5, 7, [2, 60, 17, 8, 1], test_counts=[5, 9, 3, 4, 2], expected_rank=4, seed=3),
    Case("imbalanced-sample", 5, 7, [2, 60, 17, 8, 1], test_counts=[5, 9, 3, 4, 2], global_mean="sample",
         expected_rank=4, seed=4),
    Case("imbalanced-sample-f32-chunked", 4, 10, [40, 7, 19, 3], test_counts=[6, 6, 6, 6], global_mean="sample",
         dtype=np.float32, chunk_rows=7, expected_rank=3, seed=5),
    Case("C2", 2, 3, [25, 15], test_counts=[8, 12], expected_rank=1, seed=6),
    Case("C2-p1-sample", 2, 1, [25, 15], test_counts=[8, 12], global_mean="sample", expected_rank=1, seed=7),
    Case("C2-noclassifier", 2, 4, [20, 20], classifier=False, test_counts=[5, 5], expected_rank=1, seed=8),
    Case("C-gt-p", 12, 5, [9, 12, 7, 15, 8, 10, 11, 6, 14, 9, 13, 10], test_counts=[3] * 12, expected_rank=5,
         seed=9),
    Case("C-gt-p-f32-chunked-sample", 12, 5, [9, 12, 7, 15, 8, 10, 11, 6, 14, 9, 13, 10], dtype=np.float32,
         chunk_rows=7, global_mean="sample", test_counts=[3] * 12, expected_rank=5, seed=10),
    Case("C-minus-1-eq-p", 3, 2, [20, 30, 25], test_counts=[4, 4, 4], expected_rank=2, seed=11),
    Case("f32-nobias-chunked", 6, 8, [20, 25, 15, 30, 22, 18], dtype=np.float32, bias=False, chunk_rows=7,
         test_counts=[4] * 6, expected_rank=5, seed=12),
    Case("f64-nobias-notest", 3, 4, [20, 25, 15], bias=False, expected_rank=2, seed=13),
    Case("noclassifier", 5, 6, [20, 25, 15, 30, 10], classifier=False, test_counts=[4] * 5, chunk_rows=7,
         expected_rank=4, seed=14),
    Case("noclassifier-sample-notest", 5, 6, [20, 25, 15, 30, 10], classifier=False, global_mean="sample",
         expected_rank=4, seed=15),
    Case("offset-f32", 4, 6, [30, 20, 25, 35], dtype=np.float32, offset=20.0, test_counts=[5] * 4,
         chunk_rows=7, expected_rank=3, seed=16),
    Case("three-splits", 4, 5, [20, 25, 30, 15], test_counts=[6] * 4, extra_splits={"val": [5, 4, 6, 7]},
         class_names=True, expected_rank=3, seed=17),
    Case("named-split-val", 3, 5, [20, 25, 30], train_name="val", test_counts=[4] * 3,
         extra_splits={"ood": [3, 3, 3]}, expected_rank=2, seed=18),
]


def build(case: Case, path):
    rng = np.random.default_rng(case.seed)
    means = rng.normal(size=(case.C, case.p)) * 3.0 + case.offset
    mix = rng.normal(size=(case.p, case.p)) / np.sqrt(case.p) + 0.5 * np.eye(case.p)
    H, y = make_split(rng, means, case.counts, mix=mix, dtype=case.dtype)
    splits = {case.train_name: {"features": H, "labels": y}}
    others = {}
    if case.test_counts is not None:
        Ht, yt = make_split(rng, means, case.test_counts, mix=mix, dtype=case.dtype)
        splits["test"] = {"features": Ht, "labels": yt}
        others["test"] = (Ht, yt)
    for name, cnt in case.extra_splits.items():
        He, ye = make_split(rng, means, cnt, mix=mix, dtype=case.dtype)
        splits[name] = {"features": He, "labels": ye}
        others[name] = (He, ye)
    W = b = None
    if case.classifier:
        W = ((means - means.mean(axis=0)) + 0.7 * rng.normal(size=(case.C, case.p))).astype(case.dtype)
        if case.bias:
            b = rng.normal(size=case.C).astype(case.dtype)
    names = [f"class-{c}" for c in range(case.C)] if case.class_names else None
    write_features(path, splits, num_classes=case.C, weight=W, bias=b, class_names=names)
    ref = reference_record(
        H, y, case.C, W, b, others, global_mean=case.global_mean, train_name=case.train_name, class_names=names
    )
    return ref


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_reference(case, tmp_path, kernel_backend, nc1_method):
    path = tmp_path / "f.h5"
    ref = build(case, path)
    rec = measure.measure_file(
        str(path), split=case.train_name, global_mean=case.global_mean, per_class=True, chunk_rows=case.chunk_rows,
        backend=NumpyBackend(kernels=kernel_backend, nc1_method=nc1_method),
    )
    assert_record_matches(rec, ref, per_class=True)
    if case.expected_rank is not None:
        assert rec["metrics"]["nc1_rank"] == case.expected_rank
        assert ref["metrics"]["nc1_rank"] == case.expected_rank  # the reference agrees with the hand count
    if not case.classifier:
        for k in ("equinorm_classifiers", "equiangular_classifiers", "maxangle_classifiers",
                  "etf_distance_classifiers", "self_duality", "wh_etf_distance", "ncc_disagreement"):
            assert rec["metrics"][k] is None, k
        for name, st in rec["splits"].items():
            assert st["accuracy"] is None, name
            assert st["ncc_accuracy"] is not None, name
        for pc in rec["per_class"]:
            assert pc["classifier_norm"] is None and pc["cos_classifier_mean"] is None
    if case.C == 2:
        assert rec["metrics"]["equiangular_means"] is None
        assert rec["metrics"]["equiangular_classifiers"] is None


def test_record_shape(tmp_path):
    """Top-level keys of the JSON record (metrics.md, "JSON output")."""
    case = CASES[0]
    path = tmp_path / "shape.h5"
    build(case, path)
    rec = measure.measure_file(str(path))
    assert rec["schema"] == "ncli.measure/1"
    assert rec["file"] == str(path)
    for k in ("epoch", "step", "layer", "num_classes", "feature_dim", "splits", "metrics", "global_mean"):
        assert k in rec, k
    assert rec["global_mean"] == "class"  # the default
    assert rec["num_classes"] == case.C and rec["feature_dim"] == case.p
    assert set(rec["splits"]) == {"train", "test"}


def test_chunked_equals_unchunked(tmp_path, kernel_backend):
    """chunk_rows only changes how rows are read: chunk sizes 1, 7, 64, whole split agree."""
    case = Case("chunks", 5, 4, [31, 17, 40, 9, 23], dtype=np.float32, test_counts=[7] * 5, seed=21)
    path = tmp_path / "c.h5"
    ref = build(case, path)
    for rows in (1, 7, 64, None):
        rec = measure.measure_file(str(path), per_class=True, chunk_rows=rows, backend=NumpyBackend(kernels=kernel_backend))
        assert_record_matches(rec, ref, per_class=True)


def test_nc1_rank_collinear_means(tmp_path):
    """Class means on one line (exactly: symmetric noise, dyadic values) -> Σ_B has rank 1;
    eigenvalues beyond the first are <= 1e-12 λ_max and dropped -> nc1_rank = 1, and nc1
    uses only the top eigenpair."""
    C, p = 5, 6
    v = np.array([1.0, -0.5, 0.25, 2.0, 0.0, 0.75])
    rows, labels = [], []
    coef = [-6.0, -2.0, 1.0, 2.0, 5.0]  # sum 0: no class mean sits at the global mean
    for c in range(C):
        mu = coef[c] * v
        for k in range(p):
            e = np.zeros(p)
            e[k] = 0.5 + 0.125 * c
            rows += [mu + e, mu - e]
            labels += [c, c]
    H = np.array(rows)
    y = np.array(labels, dtype=np.int64)
    W = np.random.default_rng(3).normal(size=(C, p))
    path = tmp_path / "rank1.h5"
    write_features(path, {"train": {"features": H, "labels": y}}, num_classes=C, weight=W)
    ref = reference_record(H, y, C, W, None)
    assert ref["metrics"]["nc1_rank"] == 1
    # Collinear means share two directions: GNC2's log inverse distance of unit means is
    # infinite for classes 0 and 1 (both along −v): null, and a note names them
    rec = measure.measure_file(str(path), chunk_rows=3, per_class=True)
    assert rec["metrics"]["nc1_rank"] == 1
    assert_record_matches(rec, ref, per_class=True)
    assert rec["metrics"]["gnc2_log_mean"] is None and rec["metrics"]["gnc2_log_var"] is None
    assert rec["notes"] == [
        "gnc2_log_mean and gnc2_log_var are null: class 0 and class 1 have the same direction of μ_c − μ_G "
        "(their log inverse distance is infinite)"
    ]


@pytest.mark.parametrize("gap", [1e-2, 1e-3])
def test_near_duplicate_class_means(tmp_path, gap):
    """Two classes whose means are `gap` apart while all means are ~10 from μ_G (e.g. a class
    duplicated under two labels). CDNV is dominated by that pair and uses ‖μ_c − μ_c'‖²
    (metrics.md): formed from the difference of the means it is accurate (the float64
    reference agrees with a long-double evaluation to ~5e-12 at gap 1e-3); a Gram expansion
    ‖a‖² + ‖b‖² − 2⟨a,b⟩ loses ~eps·‖μ − μ_G‖²/gap² of it.
    Only CDNV and per-class stats are compared: nc1 is ill-conditioned here (Σ_B has an
    eigenvalue ~gap²), so the eigh-based reference itself is not accurate to 1e-9 for it."""
    rng = np.random.default_rng(31)
    C, p = 4, 6
    means = 10.0 * rng.normal(size=(C, p))
    means[1] = means[0] + gap * rng.normal(size=p) / np.sqrt(p)
    noise = rng.normal(size=(C, 40, p))
    noise[1] = noise[0]  # same noise: the empirical means stay `gap` apart
    H = (means[:, None, :] + noise).reshape(-1, p)
    y = np.repeat(np.arange(C, dtype=np.int64), 40)
    path = tmp_path / "dup.h5"
    write_features(path, {"train": {"features": H, "labels": y}}, num_classes=C)
    ref = reference_record(H, y, C)
    rec = measure.measure_file(str(path), per_class=True)
    got, want = rec["metrics"]["cdnv"], ref["metrics"]["cdnv"]
    assert abs(got - want) <= 1e-9 * want, f"cdnv: got {got!r}, want {want!r} (rel err {abs(got - want) / want:.3g})"
    for pc, pr in zip(rec["per_class"], ref["per_class"]):
        for k in ("sigma2", "mean_dist"):
            assert abs(pc[k] - pr[k]) <= 1e-9 * pr[k], (pc["class"], k, pc[k], pr[k])
