"""NC4 decisions are exact: fast float32/factored scores never change a decision that the
spec's formula, evaluated directly in float64, would make."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from ncli.features import write_features
from ncli.measure.engine import NumpyBackend
from ncli.measure.record import measure_file


DEVICES = ["cpu", pytest.param("torch:cpu", marks=pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="no torch"))]


def _backend(device, kernels, nc1_method="auto"):
    """The numpy backend with these kernels, or the torch backend's code on the CPU."""
    if device == "torch:cpu":
        from ncli.measure.engine_torch import TorchBackend

        return TorchBackend("cpu")
    return NumpyBackend(kernels=kernels, nc1_method=nc1_method)


@pytest.mark.parametrize("device", DEVICES)
def test_near_tied_logits_match_float64(tmp_path, rng, device, kernel_backend, nc1_method):
    # Two classifier rows differing by 1e-9 relative: float32 logits cannot tell them apart,
    # float64 can. ncli must reproduce the float64 decisions exactly.
    C, p, n = 3, 64, 4000
    means = rng.standard_normal((C, p)) * 3
    y = np.arange(n) % C
    H = (means[y] + rng.standard_normal((n, p))).astype(np.float32)
    W = rng.standard_normal((C, p))
    W[1] = W[0] + 1e-9 * rng.standard_normal(p)
    b = np.zeros(C)
    path = write_features(tmp_path / "f.h5", {"train": {"features": H, "labels": y}}, num_classes=C, weight=W, bias=b)
    rec = measure_file(path, per_class=True, chunk_rows=333, backend=_backend(device, kernel_backend, nc1_method))
    logits = H.astype(np.float64) @ W.T + b
    y_net = np.argmax(logits, axis=1)
    assert rec["splits"]["train"]["accuracy"] == np.count_nonzero(y_net == y) / n
    mus = np.stack([H[y == c].astype(np.float64).mean(0) for c in range(C)])
    d = ((H.astype(np.float64)[:, None, :] - mus[None]) ** 2).sum(-1)
    y_ncc = np.argmin(d, axis=1)
    assert rec["splits"]["train"]["ncc_disagreement"] == np.count_nonzero(y_net != y_ncc) / n
    # float32 alone would have decided differently on some rows (the test is not vacuous)
    l32 = (H @ W.astype(np.float32).T).astype(np.float64)
    assert np.any(np.argmax(l32, axis=1) != y_net)


@pytest.mark.parametrize("device", DEVICES)
def test_exact_logit_tie_breaks_to_smallest_index(tmp_path, device, kernel_backend):
    # w_0 == w_1 exactly: every sample ties between classes 0 and 1 -> class 0.
    H = np.array([[1.0, 0.0], [2.0, 0.5], [0.0, 3.0], [0.1, 2.5]], dtype=np.float32)
    y = np.array([0, 0, 1, 1])
    W = np.array([[1.0, 1.0], [1.0, 1.0]])
    path = write_features(tmp_path / "f.h5", {"train": {"features": H, "labels": y}}, num_classes=2, weight=W)
    rec = measure_file(path, backend=_backend(device, kernel_backend))
    assert rec["splits"]["train"]["accuracy"] == 0.5


@pytest.mark.parametrize("device", DEVICES)
def test_near_tied_class_centres_match_float64(tmp_path, rng, device, kernel_backend, nc1_method):
    # Classes 0 and 1 have means 1e-6 apart (relative): which centre is nearer is decided
    # by float64 distances; float32 scores alone would get some rows wrong.
    C, p, n = 3, 16, 6000
    base = rng.standard_normal(p) * 10
    means = np.stack([base, base + 1e-5 * rng.standard_normal(p), -base])
    y = np.arange(n) % C
    H = (means[y] + 1e-3 * rng.standard_normal((n, p))).astype(np.float32)
    W = rng.standard_normal((C, p))
    # the same rows again as a test split: evaluated only (NCC scores from the centred rows)
    path = write_features(tmp_path / "f.h5", {"train": {"features": H, "labels": y}, "test": {"features": H, "labels": y}},
                          num_classes=C, weight=W)
    rec = measure_file(path, chunk_rows=1000, backend=_backend(device, kernel_backend, nc1_method))
    H64 = H.astype(np.float64)
    mus = np.stack([H64[y == c].mean(0) for c in range(C)])
    d = ((H64[:, None, :] - mus[None]) ** 2).sum(-1)
    y_ncc = np.argmin(d, axis=1)
    y_net = np.argmax(H64 @ W.T, axis=1)
    for split in ("train", "test"):
        assert rec["splits"][split]["ncc_accuracy"] == np.count_nonzero(y_ncc == y) / n
        assert rec["splits"][split]["ncc_disagreement"] == np.count_nonzero(y_net != y_ncc) / n
    # not vacuous: float32 distances (expanded form, as a fast implementation would do) disagree
    H32, m32 = H.astype(np.float32), mus.astype(np.float32)
    d32 = (m32 * m32).sum(1)[None] - 2 * H32 @ m32.T
    assert np.any(np.argmin(d32, axis=1) != y_ncc)
