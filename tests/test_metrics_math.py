"""The metric functions (ncli.measure.metrics) and the accumulators (ncli.measure.statistics)
called on arrays directly, no file: each against a dense float64 computation written here,
and the engine fed with in-memory blocks against the dense reference of tests/reference.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ncli.errors import InputError
from ncli.measure import metrics, registry
from ncli.measure.blocks import array_blocks
from ncli.measure.engine import NumpyBackend
from ncli.measure.pairs import PairSweep
from ncli.measure.record import build_record
from ncli.measure.statistics import ClassStatistics, Model, SplitStatistics

try:
    from reference import assert_record_matches, reference_record
except ImportError:  # tests/ imported as a package
    from tests.reference import assert_record_matches, reference_record

REL = 1e-10


def _data(rng, C=5, p=7, n=400, spread=1.0):
    means = 4.0 * rng.standard_normal((C, p))
    y = np.arange(n) % C
    H = means[y] + spread * rng.standard_normal((n, p))
    return H, y


def _dense(H, y, C, kind="class"):
    """Class means, μ_G, Σ_W and Σ_B formed explicitly."""
    means = np.stack([H[y == c].mean(axis=0) for c in range(C)])
    mu_g = means.mean(axis=0) if kind == "class" else H.mean(axis=0)
    D = H - means[y]
    Sw = D.T @ D / len(y)
    M = means - mu_g
    Sb = M.T @ M / C
    return means, mu_g, Sw, Sb


def _sufficient(H, y, C, kind="class"):
    """What the passes accumulate, formed from the arrays in one go."""
    counts = np.bincount(y, minlength=C)
    sums = np.stack([H[y == c].sum(axis=0) for c in range(C)])
    means = metrics.class_means(counts, sums)
    mu_g = metrics.global_mean(means, counts, sums, kind)
    basis = metrics.between_basis(means - mu_g)
    D = H - means[y]
    ss_within = np.bincount(y, weights=np.einsum("ij,ij->i", D, D), minlength=C)
    proj_ss = ((D @ basis.U) ** 2).sum(axis=0)
    return counts, means, mu_g, basis, ss_within, proj_ss


def _simplex(C, p, rng):
    """C × p rows: a simplex ETF (unit norms, cosines −1/(C−1)) in a random embedding."""
    Q, _ = np.linalg.qr(rng.standard_normal((p, C)))
    return (Q @ (math.sqrt(C / (C - 1)) * (np.eye(C) - np.ones((C, C)) / C))).T


@pytest.mark.parametrize("kind", ["class", "sample"])
def test_nc1_and_trace_ratio_against_dense_scatter_matrices(rng, kind):
    C = 5
    H, y = _data(rng, C=C)
    y = y[: len(y) - 3]  # imbalanced: the two global means differ
    H = H[: len(y)]
    means, mu_g, Sw, Sb = _dense(H, y, C, kind)
    counts, got_means, got_mu, basis, ss_within, proj_ss = _sufficient(H, y, C, kind)
    np.testing.assert_allclose(got_means, means, rtol=1e-13)
    np.testing.assert_allclose(got_mu, mu_g, rtol=1e-13, atol=1e-14)
    assert basis.rank == C - 1
    want = np.trace(Sw @ np.linalg.pinv(Sb, rcond=1e-10, hermitian=True)) / C
    assert metrics.nc1(basis, proj_ss, float(len(y))) == pytest.approx(want, rel=REL)
    assert metrics.trace_ratio(ss_within, means - mu_g, float(len(y))) == pytest.approx(np.trace(Sw) / np.trace(Sb), rel=REL)


def test_between_basis_spans_the_centred_means_and_counts_their_rank(rng):
    C, p = 6, 9
    centred = rng.standard_normal((C, p))
    centred -= centred.mean(axis=0)
    basis = metrics.between_basis(centred)
    np.testing.assert_allclose(basis.U.T @ basis.U, np.eye(basis.U.shape[1]), atol=1e-13)
    np.testing.assert_allclose(basis.coords @ basis.U.T, centred, atol=1e-12)
    assert basis.rank == C - 1
    collinear = np.outer(np.arange(C) - (C - 1) / 2, rng.standard_normal(p))
    assert metrics.between_basis(collinear).rank == 1
    assert metrics.between_basis(np.zeros((C, p))).rank == 0
    assert metrics.nc1(metrics.between_basis(np.zeros((C, p))), np.ones(C), 10.0) is None


def test_cdnv_against_pairwise_definition(rng):
    C = 4
    H, y = _data(rng, C=C)
    counts, means, mu_g, _, ss_within, _ = _sufficient(H, y, C)
    sigma2 = [np.mean(np.sum((H[y == c] - means[c]) ** 2, axis=1)) for c in range(C)]
    pairs = [
        (sigma2[a] + sigma2[c]) / (2 * np.sum((means[a] - means[c]) ** 2)) for a in range(C) for c in range(a + 1, C)
    ]
    sigma2 = ss_within / counts
    gram = metrics.Gram.of(means - mu_g, sigma2=sigma2, points=means)
    assert metrics.cdnv(gram) == pytest.approx(np.mean(pairs), rel=REL)
    tiled = PairSweep(tile=3)(means - mu_g, sigma2=sigma2, points=means)
    assert metrics.cdnv(tiled) == pytest.approx(np.mean(pairs), rel=REL)
    means[1] = means[0]  # two classes with one mean: CDNV is undefined, reported as null
    assert metrics.cdnv(metrics.Gram.of(means - mu_g, sigma2=sigma2, points=means)) is None
    assert metrics.cdnv(PairSweep(tile=3)(means - mu_g, sigma2=sigma2, points=means)) is None


def test_nc2_against_norms_and_cosines(rng):
    C, p = 6, 8
    V = rng.standard_normal((C, p)) * rng.uniform(0.5, 2.0, size=(C, 1))
    norms = np.linalg.norm(V, axis=1)
    cos = [V[a] @ V[c] / (norms[a] * norms[c]) for a in range(C) for c in range(a + 1, C)]
    G = V @ V.T
    target = (np.eye(C) - np.ones((C, C)) / C) / math.sqrt(C - 1)
    for view in (metrics.Gram.of(V), PairSweep(tile=4)(V), PairSweep(tile=1)(V)):  # dense, tiled, 1 × 1 tiles
        assert metrics.equinorm(view) == pytest.approx(np.std(norms, ddof=1) / norms.mean(), rel=REL)
        assert metrics.equiangular(view) == pytest.approx(np.std(cos, ddof=1), rel=REL)
        assert metrics.maxangle(view) == pytest.approx(np.mean(np.abs(np.array(cos) + 1 / (C - 1))), rel=REL)
        assert metrics.etf_distance(view) == pytest.approx(np.linalg.norm(G / np.linalg.norm(G) - target), rel=REL)


@pytest.mark.parametrize("C", [2, 3, 7])
def test_simplex_etf_is_collapsed(rng, C):
    V = 2.5 * _simplex(C, C + 3, rng)
    for view in (metrics.Gram.of(V), PairSweep(tile=2)(V)):
        assert metrics.equinorm(view) == pytest.approx(0.0, abs=1e-12)
        assert metrics.maxangle(view) == pytest.approx(0.0, abs=1e-12)
        assert metrics.etf_distance(view) == pytest.approx(0.0, abs=1e-7)  # closed form: √(2 − 2x) near x = 1
        if C == 2:
            assert metrics.equiangular(view) is None  # one pair: no spread
        else:
            assert metrics.equiangular(view) == pytest.approx(0.0, abs=1e-12)
    assert metrics.etf_distance(metrics.Gram.of(V)) == pytest.approx(0.0, abs=1e-12)
    W = 0.3 * V  # classifier rows parallel to the centred means: self-dual
    assert metrics.self_duality(W, V) == pytest.approx(0.0, abs=1e-12)
    assert metrics.wh_etf_distance(W, V) == pytest.approx(0.0, abs=1e-12)


def test_nc3_against_definition(rng):
    C, p = 5, 6
    W = rng.standard_normal((C, p))
    M = rng.standard_normal((C, p))
    want = np.sum((W.T / np.linalg.norm(W) - M.T / np.linalg.norm(M)) ** 2)
    assert metrics.self_duality(W, M) == pytest.approx(want, rel=REL)
    WM = W @ M.T
    target = (np.eye(C) - np.ones((C, C)) / C) / math.sqrt(C - 1)
    assert metrics.wh_etf_distance(W, M) == pytest.approx(np.linalg.norm(WM / np.linalg.norm(WM) - target), rel=REL)
    assert metrics.wh_etf_distance(W, M, dense=False) == pytest.approx(
        np.linalg.norm(WM / np.linalg.norm(WM) - target), rel=REL
    )
    assert metrics.self_duality(np.zeros((C, p)), M) is None


def test_class_means_and_global_mean_errors():
    with pytest.raises(InputError, match=r"class 1 \('cat'\) and 1 more has no samples"):
        metrics.class_means(np.array([3, 0, 0]), np.zeros((3, 2)), ["dog", "cat", "cow"])
    with pytest.raises(InputError, match="at least 2 classes"):
        metrics.class_means(np.array([3]), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="'class' or 'sample'"):
        metrics.global_mean(np.zeros((2, 2)), np.ones(2), np.zeros((2, 2)), "median")


def test_registry_metrics_without_classifier_are_null(rng):
    C = 4
    H, y = _data(rng, C=C)
    counts, means, mu_g, basis, ss_within, proj_ss = _sufficient(H, y, C)
    stats = metrics.Statistics(
        counts=counts.astype(float), means=means, mu_g=mu_g, basis=basis, ss_within=ss_within, proj_ss=proj_ss,
        W=None, b=None,
    )
    headline = {number.key: None for number in registry.SPLIT_NUMBERS}
    values = registry.metric_values(stats, headline)
    assert tuple(values) == registry.METRIC_KEYS
    for key in registry.CLASSIFIER_METRICS:
        assert values[key] is None, key
    for key in registry.LAYER_METRICS:  # the by-layer view shows metrics that need no classifier
        assert values[key] is not None, key
    assert set(registry.CAPTIONS) == set(registry.METRIC_KEYS) and all(registry.CAPTIONS.values())


def _feed(backend, H, y, C, W=None, b=None, test=None, global_mean="class"):
    """The two passes over in-memory arrays, as a training loop would feed them."""
    class_stats = ClassStatistics(C, H.shape[1])
    backend.class_sums(array_blocks(H, y, C), class_stats)
    model = Model.fit(class_stats, global_mean=global_mean, W=W, b=b)
    results = {"train": SplitStatistics.for_model(model, within=True)}
    backend.evaluate(array_blocks(H, y, C), model, results["train"])
    if test is not None:
        results["test"] = SplitStatistics.for_model(model)
        backend.evaluate(array_blocks(*test, C), model, results["test"])
    return model, class_stats, results


@pytest.mark.parametrize("nc1_method", ["project", "scatter"])
@pytest.mark.parametrize("global_mean", ["class", "sample"])
def test_engine_fed_from_arrays_matches_the_dense_reference(rng, kernel_backend, nc1_method, global_mean):
    C, p = 6, 5
    H, y = _data(rng, C=C, p=p, n=5000, spread=2.0)  # several blocks
    Ht, yt = _data(rng, C=C, p=p, n=900, spread=2.0)
    W, b = rng.standard_normal((C, p)), rng.standard_normal(C)
    backend = NumpyBackend(kernels=kernel_backend, nc1_method=nc1_method, threads=2)
    model, class_stats, results = _feed(backend, H, y, C, W, b, test=(Ht, yt), global_mean=global_mean)
    rec = build_record({"file": "arrays"}, model, class_stats, results, train_split="train", per_class=True)
    ref = reference_record(H, y, C, W, b, {"test": (Ht, yt)}, global_mean=global_mean)
    assert_record_matches(rec, ref, per_class=True)


def test_accumulators_merge_shards(rng):
    """Pass 1 and pass 2 of two shards, merged: the statistics of the whole split."""
    C, p = 4, 6
    H, y = _data(rng, C=C, p=p, n=3000)
    W, b = rng.standard_normal((C, p)), rng.standard_normal(C)
    backend = NumpyBackend(threads=1)
    whole_model, whole_sums, whole = _feed(backend, H, y, C, W, b)
    halves = [ClassStatistics(C, p), ClassStatistics(C, p)]
    backend.class_sums(array_blocks(H[:1000], y[:1000], C), halves[0])
    backend.class_sums(array_blocks(H[1000:], y[1000:], C, start=1000), halves[1])
    halves[0].merge(halves[1])
    np.testing.assert_array_equal(halves[0].counts, whole_sums.counts)
    np.testing.assert_allclose(halves[0].sums, whole_sums.sums, rtol=1e-13)
    parts = [SplitStatistics.for_model(whole_model, within=True) for _ in range(2)]
    backend.evaluate(array_blocks(H[:1000], y[:1000], C), whole_model, parts[0])
    backend.evaluate(array_blocks(H[1000:], y[1000:], C, start=1000), whole_model, parts[1])
    parts[0].merge(parts[1])
    merged, train = parts[0], whole["train"]
    for name in ("num_samples", "net_correct", "ncc_correct", "disagree"):
        assert getattr(merged, name) == getattr(train, name), name
    np.testing.assert_array_equal(merged.disagree_per_class, train.disagree_per_class)
    np.testing.assert_allclose(merged.ss_within, train.ss_within, rtol=1e-13)
    np.testing.assert_allclose(
        merged.projected_within(whole_model.basis), train.projected_within(whole_model.basis), rtol=1e-12
    )
    with pytest.raises(ValueError, match="within-class"):
        merged.merge(SplitStatistics.for_model(whole_model))


def test_non_finite_rows_are_named_by_their_index(rng):
    C = 3
    H, y = _data(rng, C=C, p=4, n=5000)
    H[4321, 2] = np.nan
    with pytest.raises(InputError, match="row 4321: features contain NaN or Inf"):
        NumpyBackend(threads=2).class_sums(array_blocks(H, y, C), ClassStatistics(C, 4))


def test_torch_backend_fed_from_arrays_matches_the_dense_reference(rng):
    pytest.importorskip("torch")
    from ncli.measure.engine_torch import TorchBackend

    C, p = 5, 7
    H, y = _data(rng, C=C, p=p, n=3000, spread=2.0)
    W, b = rng.standard_normal((C, p)), rng.standard_normal(C)
    model, class_stats, results = _feed(TorchBackend("cpu"), H, y, C, W, b)
    rec = build_record({"file": "arrays"}, model, class_stats, results, train_split="train", per_class=True)
    assert_record_matches(rec, reference_record(H, y, C, W, b), per_class=True)


def test_bias_collapse_against_the_logits_of_the_global_mean(rng):
    C, p = 6, 4
    W, b, mu = rng.standard_normal((C, p)), rng.standard_normal(C), rng.standard_normal(p)
    want = math.sqrt(sum((sum(W[c, j] * mu[j] for j in range(p)) + b[c]) ** 2 for c in range(C)))
    assert metrics.bias_collapse(W, b, mu) == pytest.approx(want, rel=REL)
    assert metrics.bias_collapse(W, -W @ mu, mu) == 0.0  # the bias cancels the response to μ_G
