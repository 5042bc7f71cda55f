"""The per-block kernels (ncli/measure/kernels.py): compiled C and numpy, each against a plain
float64 transcription of its contract, and against each other."""

from __future__ import annotations

import numpy as np
import pytest

from ncli.measure import kernels
from ncli.measure.engine import NumpyBackend, cheaper_nc1_method


def _backends():
    out = [pytest.param(kernels.numpy_kernels, id="numpy")]
    skip = pytest.mark.skipif(
        kernels.compiled_kernels is None, reason=f"compiled kernels not available: {kernels.why_not_compiled}"
    )
    out.append(pytest.param(kernels.compiled_kernels, id="compiled", marks=skip))
    return out


BACKENDS = _backends()


@pytest.mark.parametrize("kern", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("n,p,C", [(0, 5, 3), (1, 1, 2), (37, 13, 4), (300, 64, 10), (64, 17, 70)])
def test_center_rows(kern, dtype, n, p, C, rng):
    H = (rng.standard_normal((n, p)) * 3 + 10).astype(dtype)
    y = rng.integers(0, C, n).astype(np.int64)
    means = rng.standard_normal((C, p)) + 10
    D = np.full((n, p), np.nan)
    rn = kern.center_rows(H, y, means, D)
    want = H.astype(np.float64) - means[y]
    np.testing.assert_array_equal(D, want)  # one exact float64 subtraction per element
    np.testing.assert_allclose(rn, (want**2).sum(axis=1), rtol=1e-14, atol=0)


@pytest.mark.parametrize("kern", BACKENDS)
def test_center_rows_collapsed_class_is_exact(kern):
    """Mean 10, spread 1e-3 in float32: centring before squaring keeps every digit."""
    rng = np.random.default_rng(7)
    H = (10 + 1e-3 * rng.standard_normal((2000, 33))).astype(np.float32)
    y = np.zeros(2000, dtype=np.int64)
    mu = H.astype(np.float64).mean(axis=0, keepdims=True)
    D = np.empty(H.shape)
    rn = kern.center_rows(H, y, mu, D)
    exact = ((H.astype(np.longdouble) - mu.astype(np.longdouble)) ** 2).sum(axis=1)
    np.testing.assert_allclose(rn, exact.astype(np.float64), rtol=1e-13)


@pytest.mark.parametrize("kern", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_segment_sums(kern, dtype, rng):
    n, p, C = 500, 19, 9
    H = rng.standard_normal((n, p)).astype(dtype)
    y = rng.integers(0, C, n)
    order = np.argsort(y, kind="stable")
    ys = y[order]
    starts = np.flatnonzero(np.r_[True, ys[1:] != ys[:-1]])
    part = kern.segment_sums(H, order, starts)
    classes = ys[starts]
    want = np.stack([H[y == c].astype(np.float64).sum(axis=0) for c in classes])
    np.testing.assert_allclose(part, want, rtol=1e-13, atol=1e-13)


def _decide_reference(S, scale, offset, tol):
    v = (np.float32(scale) * S.astype(np.float32) + offset.astype(np.float32)).astype(np.float32)
    best, near = [], []
    for row, t in zip(v, tol):
        if not np.isfinite(row).all():
            best.append(None)
            near.append(True)
            continue
        b = int(np.argmax(row))  # first of the maxima
        rest = np.delete(row, b)
        best.append(b)
        near.append(bool(np.float32(row[b] - rest.max()) <= t))
    return best, np.array(near)


@pytest.mark.parametrize("kern", BACKENDS)
@pytest.mark.parametrize("C", [2, 3, 8, 9, 16, 17, 23, 100, 1000])
def test_decide(kern, C, rng):
    n = 400
    S = rng.standard_normal((n, C)).astype(np.float32)
    S[::7, 0] = S[::7, C - 1] = 10.0  # exact ties at the top: first index wins, the row is near
    S[3::7, 1] = S[3::7, 0] + 1e-4  # near ties (in v when offsets 0 and 1 agree)
    S[5, 1] = np.inf
    S[6, 0] = np.nan
    offset = rng.standard_normal(C).astype(np.float32)
    offset[C - 1] = offset[1] = offset[0]
    tol = np.full(n, 1e-3)
    for scale in (1.0, 2.0):
        want_best, want_near = _decide_reference(S, scale, offset, tol)
        best, near = kern.decide(S.copy(), scale, offset, tol)
        np.testing.assert_array_equal(near, want_near)
        for i, b in enumerate(want_best):
            if b is not None:
                assert best[i] == b, i
        assert near[::7].all() and near[5] and near[6]
        assert (best[::7][1:] == 0).all()
        assert not near.all()


@pytest.mark.parametrize("kern", BACKENDS)
@pytest.mark.parametrize("with_proj", [True, False])
def test_ncc_coords(kern, with_proj, rng):
    n, k, C = 300, 11, 12
    Z = rng.standard_normal((n, k))
    coords = rng.standard_normal((C, k)) * 3
    y = rng.integers(0, C, n).astype(np.int64)
    proj = np.full(k, 0.5) if with_proj else None
    E32, en = kern.ncc_coords(Z, coords, y, proj)
    E = Z + coords[y]
    np.testing.assert_array_equal(E32, E.astype(np.float32))
    np.testing.assert_allclose(en, (E**2).sum(axis=1), rtol=1e-14)
    if with_proj:
        np.testing.assert_allclose(proj, 0.5 + (Z**2).sum(axis=0), rtol=1e-14)


@pytest.mark.skipif(kernels.compiled_kernels is None, reason="compiled kernels not available")
def test_compiled_and_numpy_measure_agree(tmp_path, rng):
    """A whole measurement: same decisions, float64 results equal to rounding."""
    from ncli.features import write_features
    from ncli.measure.record import measure_file

    C, p, n = 13, 40, 9000
    means = rng.standard_normal((C, p)) * 2
    y = rng.integers(0, C, n)
    H = (means[y] + rng.standard_normal((n, p))).astype(np.float32)
    yt = rng.integers(0, C, 2000)
    Ht = (means[yt] + rng.standard_normal((2000, p))).astype(np.float32)
    path = write_features(
        tmp_path / "f.h5",
        {"train": {"features": H, "labels": y}, "test": {"features": Ht, "labels": yt}},
        num_classes=C,
        weight=means + rng.standard_normal((C, p)),
        bias=rng.standard_normal(C),
    )
    recs = {}
    for name, kern in (("numpy", kernels.numpy_kernels), ("compiled", kernels.compiled_kernels)):
        recs[name] = measure_file(path, per_class=True, backend=NumpyBackend(kernels=kern, threads=2))
    a, b = recs["numpy"], recs["compiled"]
    assert a["splits"] == b["splits"]  # decisions (accuracies, disagreement) are identical
    for key, va in a["metrics"].items():
        vb = b["metrics"][key]
        if isinstance(va, float):
            assert vb == pytest.approx(va, rel=1e-12, abs=1e-300), key
        else:
            assert va == vb, key


def test_backend_is_reported():
    assert kernels.default_kernels.name in ("compiled", "numpy")
    assert kernels.default_kernels is kernels.compiled_kernels or kernels.default_kernels is kernels.numpy_kernels


@pytest.mark.parametrize("kern", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_center_rows_float32_output(kern, dtype, rng):
    """float32 D holds the rounded float64 differences; rn is from the float64 ones."""
    n, p, C = 200, 21, 5
    H = (rng.standard_normal((n, p)) + 10).astype(dtype)
    y = rng.integers(0, C, n).astype(np.int64)
    means = rng.standard_normal((C, p)) + 10
    D = np.empty((n, p), dtype=np.float32)
    rn = kern.center_rows(H, y, means, D)
    want = H.astype(np.float64) - means[y]
    np.testing.assert_array_equal(D, want.astype(np.float32))
    np.testing.assert_allclose(rn, (want**2).sum(axis=1), rtol=1e-14)


@pytest.mark.parametrize("kern", BACKENDS)
def test_decide_with_row_table(kern, rng):
    """v[i] = scale·S[i] + T[rows[i]]: a per-label offset row."""
    n, C = 300, 7
    S = rng.standard_normal((n, C)).astype(np.float32)
    T = rng.standard_normal((C, C)).astype(np.float32)
    rows = rng.integers(0, C, n).astype(np.int64)
    tol = np.full(n, 1e-2)
    best, near = kern.decide(S.copy(), 2.0, T, tol, rows)
    v = (np.float32(2.0) * S + T[rows]).astype(np.float32)
    np.testing.assert_array_equal(best, np.argmax(v, axis=1))
    top = np.sort(v, axis=1)
    np.testing.assert_array_equal(near, (top[:, -1] - top[:, -2]).astype(np.float32) <= tol)


def test_nc1_method_cost_model():
    assert cheaper_nc1_method(512, 100, 100) == "project"  # C << p: project on the k = C directions
    assert cheaper_nc1_method(2048, 999, 1000) == "project"
    assert cheaper_nc1_method(512, 512, 1000) == "scatter"  # k = p (ImageNet, p = 512): p x p scatter
    assert cheaper_nc1_method(5, 5, 12) == "scatter"


def test_scatter_is_reproducible(tmp_path, rng):
    """Per-block p x p partial sums added in file order: bit-identical across threads and reads."""
    from ncli.features import write_features
    from ncli.measure.record import measure_file

    C, p, n = 30, 12, 9000
    means = rng.standard_normal((C, p)) * 2
    y = rng.integers(0, C, n)
    H = (means[y] + rng.standard_normal((n, p))).astype(np.float32)
    path = write_features(tmp_path / "s.h5", {"train": {"features": H, "labels": y}}, num_classes=C,
                          weight=rng.standard_normal((C, p)))
    def scatter(threads):
        return NumpyBackend(nc1_method="scatter", threads=threads)

    first = measure_file(path, per_class=True, backend=scatter(1))
    assert measure_file(path, per_class=True, backend=scatter(2)) == first
    assert measure_file(path, per_class=True, backend=scatter(2), chunk_rows=1000) == first
