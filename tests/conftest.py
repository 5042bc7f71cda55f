from __future__ import annotations

import os

# Keep BLAS single-threaded in tests: determinism, and 2-thread regions are slow on small CI
# machines. (Benchmarks set their own thread counts.) Set before numpy loads OpenBLAS.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(params=["compiled", "numpy"])
def kernel_backend(request, monkeypatch):
    """Run a test with the compiled per-block kernels and with their numpy implementation."""
    import ncli.measure.kernels as K

    if request.param == "compiled":
        if K.compiled_kernels is None:
            pytest.skip(f"compiled kernels not available: {K.why_not_compiled}")
        monkeypatch.setattr(K, "active", K.compiled_kernels)
    else:
        monkeypatch.setattr(K, "active", K.numpy_kernels)
    return request.param


@pytest.fixture(params=["project", "scatter"])
def nc1_method(request, monkeypatch):
    """Run a test with both ways pass 2 projects Σ_W (ncli.measure.engine.nc1_method)."""
    import ncli.measure.engine

    monkeypatch.setattr(ncli.measure.engine, "NC1_METHOD", request.param)
    return request.param
