"""Invariances of ``ncli measure``'s math (hypothesis), and exact σ_c² for a collapsed class.

Row order, chunk size, a rotation of features and classifier together, and a global
translation with the bias compensated leave every NC metric unchanged (relative 1e-9) and
every decision unchanged (accuracy / NCC fractions exactly equal). The data are well separated
(class means ~10 apart, unit noise, W close to the centred means) so no decision is near a tie.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ncli.features import write_features
from ncli.measure.engine import NumpyBackend

try:
    from reference import assert_record_matches, close, reference_record
except ImportError:  # tests/ imported as a package
    from tests.reference import assert_record_matches, close, reference_record

measure = pytest.importorskip("ncli.measure.record")

PROP = settings(max_examples=25, deadline=None)  # repeatable unless explored (tests/conftest.py)


@st.composite
def datasets(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    C = draw(st.integers(2, 6))
    p = draw(st.integers(1, 7))
    counts = draw(st.lists(st.integers(1, 15), min_size=C, max_size=C))
    test_counts = draw(st.one_of(st.none(), st.lists(st.integers(1, 6), min_size=C, max_size=C)))
    classifier = draw(st.booleans())
    bias = draw(st.booleans())
    global_mean = draw(st.sampled_from(["class", "sample"]))
    rng = np.random.default_rng(seed)
    means = 10.0 * rng.normal(size=(C, p))
    mix = rng.normal(size=(p, p)) / np.sqrt(p) + 0.5 * np.eye(p)

    def rows(cnts):
        H = np.concatenate([means[c] + rng.normal(size=(n, p)) @ mix for c, n in enumerate(cnts)])
        y = np.concatenate([np.full(n, c, dtype=np.int64) for c, n in enumerate(cnts)])
        perm = rng.permutation(len(y))
        return H[perm], y[perm]

    splits = {"train": rows(counts)}
    if test_counts is not None:
        splits["test"] = rows(test_counts)
    W = b = None
    if classifier:
        W = (means - means.mean(axis=0)) + 0.3 * rng.normal(size=(C, p))
        b = rng.normal(size=C) if bias else None
    return dict(C=C, p=p, splits=splits, W=W, b=b, global_mean=global_mean, seed=seed)


def _write(dirpath, name, d, splits=None, W="same", b="same"):
    splits = d["splits"] if splits is None else splits
    W = d["W"] if isinstance(W, str) else W
    b = d["b"] if isinstance(b, str) else b
    path = dirpath / name
    write_features(
        path,
        {k: {"features": H, "labels": y} for k, (H, y) in splits.items()},
        num_classes=d["C"],
        weight=W,
        bias=b,
    )
    return str(path)


def _measure(path, d, **kw):
    return measure.measure_file(path, global_mean=d["global_mean"], per_class=True, **kw)


def assert_same(rec, base):
    """NC metrics within relative 1e-9; decisions (the split fractions) exactly equal."""
    assert_record_matches(rec, base, per_class=True)
    for name, st_ in base["splits"].items():
        for k in ("accuracy", "ncc_accuracy", "ncc_disagreement"):
            assert rec["splits"][name][k] == st_[k], (name, k, rec["splits"][name][k], st_[k])
    for a, b in zip(rec["per_class"], base["per_class"]):
        assert a["ncc_disagreement"] == b["ncc_disagreement"], (a["class"], a["ncc_disagreement"], b["ncc_disagreement"])


@PROP
@given(d=datasets(), perm_seed=st.integers(0, 2**32 - 1))
def test_invariant_to_row_order(tmp_path_factory, d, perm_seed):
    tmp = tmp_path_factory.mktemp("perm")
    base = _measure(_write(tmp, "a.h5", d), d)
    rng = np.random.default_rng(perm_seed)
    shuffled = {}
    for k, (H, y) in d["splits"].items():
        perm = rng.permutation(len(y))
        shuffled[k] = (H[perm], y[perm])
    rec = _measure(_write(tmp, "b.h5", d, splits=shuffled), d)
    assert_same(rec, base)


@PROP
@given(d=datasets(), rows=st.integers(1, 40))
def test_invariant_to_chunk_rows(tmp_path_factory, d, rows):
    tmp = tmp_path_factory.mktemp("chunk")
    path = _write(tmp, "a.h5", d)
    base = _measure(path, d)
    rec = _measure(path, d, chunk_rows=rows)
    assert_same(rec, base)


@PROP
@given(d=datasets(), q_seed=st.integers(0, 2**32 - 1))
def test_invariant_to_rotation(tmp_path_factory, d, q_seed):
    """H -> HQ, W -> WQ with Q orthogonal: distances, inner products, logits unchanged."""
    tmp = tmp_path_factory.mktemp("rot")
    base = _measure(_write(tmp, "a.h5", d), d)
    Q, _ = np.linalg.qr(np.random.default_rng(q_seed).normal(size=(d["p"], d["p"])))
    rotated = {k: (H @ Q, y) for k, (H, y) in d["splits"].items()}
    W = None if d["W"] is None else d["W"] @ Q
    rec = _measure(_write(tmp, "b.h5", d, splits=rotated, W=W), d)
    assert_same(rec, base)


@PROP
@given(d=datasets(), t_seed=st.integers(0, 2**32 - 1))
def test_invariant_to_translation(tmp_path_factory, d, t_seed):
    """H -> H + t, b -> b − W t: centred quantities and logits (hence decisions) unchanged."""
    tmp = tmp_path_factory.mktemp("shift")
    base = _measure(_write(tmp, "a.h5", d), d)
    t = 5.0 * np.random.default_rng(t_seed).normal(size=d["p"])
    shifted = {k: (H + t, y) for k, (H, y) in d["splits"].items()}
    b = None
    if d["W"] is not None:
        b0 = np.zeros(d["C"]) if d["b"] is None else d["b"]
        b = b0 - d["W"] @ t
    rec = _measure(_write(tmp, "b.h5", d, splits=shifted, b=b), d)
    assert_same(rec, base)


# ---------------------------------------------------------------------------------------
# collapsed class: σ_c² exact, no catastrophic cancellation
# ---------------------------------------------------------------------------------------


def _two_pass_sigma2(H32: np.ndarray) -> float:
    X = H32.astype(np.float64)
    mu = X.mean(axis=0)
    D = X - mu
    return float(np.sum(D * D)) / X.shape[0]


@pytest.mark.parametrize("chunk_rows", [None, 4093])
def test_collapsed_class_sigma2_exact(tmp_path, chunk_rows, kernel_backend, nc1_method):
    """Class 0: 50,000 float32 rows at 10 (every coordinate) with spread 1e-3; class 1 alike at
    −10. σ_c² ≈ p·1e-6 against E‖h‖² ≈ p·100: a one-pass E[h²] − μ² loses ~8 digits even in
    float64. "Exact" = the float64 two-pass value of the stored float32 rows, to relative 1e-9."""
    rng = np.random.default_rng(2024)
    p = 8
    H0 = (10.0 + 1e-3 * rng.normal(size=(50_000, p))).astype(np.float32)
    H1 = (-10.0 + 1e-3 * rng.normal(size=(3_000, p))).astype(np.float32)
    H = np.concatenate([H0, H1])
    y = np.concatenate([np.zeros(len(H0), np.int64), np.ones(len(H1), np.int64)])
    perm = rng.permutation(len(y))
    H, y = H[perm], y[perm]
    path = tmp_path / "collapsed.h5"
    write_features(path, {"train": {"features": H, "labels": y}}, num_classes=2)
    backend = NumpyBackend(kernels=kernel_backend, nc1_method=nc1_method)
    rec = measure.measure_file(str(path), per_class=True, chunk_rows=chunk_rows, backend=backend)
    for c in (0, 1):
        want = _two_pass_sigma2(H[y == c])
        got = rec["per_class"][c]["sigma2"]
        assert abs(got - want) <= 1e-9 * want, (c, got, want, abs(got - want) / want)
    # Σ_W comes only from these collapsed classes: nc1, trace ratio and CDNV must be exact too
    ref = reference_record(H, y, 2)
    for k in ("nc1", "nc1_trace_ratio", "cdnv"):
        got, want = rec["metrics"][k], ref["metrics"][k]
        assert abs(got - want) <= 1e-9 * abs(want), (k, got, want, abs(got - want) / abs(want))


# ---------------------------------------------------------------------------------------
# class permutation and scaling (the later measures included; tiled pair sweeps too)
# ---------------------------------------------------------------------------------------


@PROP
@given(d=datasets(), perm_seed=st.integers(0, 2**32 - 1), tile=st.sampled_from([2, 3, 1024]))
def test_invariant_to_class_permutation(tmp_path_factory, d, perm_seed, tile):
    """Renaming the classes (labels, classifier rows and biases alike) changes no metric and no
    decision; the per-class rows follow their classes. ``tile`` < C runs the tiled sweeps."""
    tmp = tmp_path_factory.mktemp("classperm")
    base = _measure(_write(tmp, "a.h5", d), d)
    perm = np.random.default_rng(perm_seed).permutation(d["C"])  # class c is called perm[c]
    relabelled = {k: (H, perm[y]) for k, (H, y) in d["splits"].items()}
    W = b = None
    if d["W"] is not None:
        W = np.empty_like(d["W"])
        W[perm] = d["W"]
        if d["b"] is not None:
            b = np.empty_like(d["b"])
            b[perm] = d["b"]
    rec = _measure(_write(tmp, "b.h5", d, splits=relabelled, W=W, b=b), d, backend=NumpyBackend(pair_tile=tile))
    for key, value in base["metrics"].items():
        assert close(rec["metrics"][key], value), (key, rec["metrics"][key], value)
    assert rec["splits"] == base["splits"]
    for c, row in enumerate(base["per_class"]):
        moved = rec["per_class"][perm[c]]
        for key in ("num_samples", "sigma2", "mean_dist", "classifier_norm", "cos_classifier_mean"):
            assert close(moved[key], row[key]), (c, key, moved[key], row[key])
        assert moved["ncc_disagreement"] == row["ncc_disagreement"]


@PROP
@given(
    d=datasets(), scale=st.floats(1e-3, 1e3), w_scale=st.floats(1e-3, 1e3), q_seed=st.integers(0, 2**32 - 1),
    tile=st.sampled_from([2, 1024]),
)
def test_invariant_to_scaling_and_rotation_with_an_ood_split(tmp_path_factory, d, scale, w_scale, q_seed, tile):
    """H -> s H Q (the OOD split too), W -> t W Q, b -> s t b: logits scale by s t, so every
    decision stays; every metric is scale-free except bias_collapse, which scales by s t. NC5
    (uncentred cosines with the OOD mean) is rotation- and scale-invariant as well."""
    tmp = tmp_path_factory.mktemp("scale")
    rng = np.random.default_rng(q_seed)
    Q, _ = np.linalg.qr(rng.normal(size=(d["p"], d["p"])))
    ood = rng.normal(size=(7, d["p"])) + 3.0
    with_ood = {**d["splits"], "ood": (ood, np.zeros(7, dtype=np.int64))}
    base = _measure(_write(tmp, "a.h5", d, splits=with_ood), d, ood="ood")
    scaled = {k: (scale * H @ Q, y) for k, (H, y) in with_ood.items()}
    W = None if d["W"] is None else w_scale * d["W"] @ Q
    b = None if d["b"] is None else scale * w_scale * d["b"]
    rec = _measure(
        _write(tmp, "b.h5", d, splits=scaled, W=W, b=b), d, ood="ood", backend=NumpyBackend(pair_tile=tile)
    )
    assert rec["metrics"]["nc5_orthodev"] is not None
    for key, value in base["metrics"].items():
        want = value * scale * w_scale if key == "bias_collapse" and value is not None else value
        assert close(rec["metrics"][key], want, rtol=1e-8), (key, rec["metrics"][key], want)
    assert rec["splits"] == base["splits"]
