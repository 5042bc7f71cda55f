from __future__ import annotations

import os

# Keep BLAS single-threaded in tests: determinism, and 2-thread regions are slow on small CI
# machines. (Benchmarks set their own thread counts.) Set before numpy loads OpenBLAS.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property and fuzz tests draw the same examples on every run ("repeatable", the default: CI
# does not change its mind); NCLI_HYPOTHESIS_PROFILE=explore draws fresh ones (with
# NCLI_FUZZ_EXAMPLES=N for more), and what that finds becomes an @example.
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("NCLI_HYPOTHESIS_PROFILE", "repeatable"))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(params=["compiled", "numpy"])
def kernel_backend(request):
    """The compiled per-block kernels, then their numpy implementation: give them to a test's
    ``NumpyBackend(kernels=...)``."""
    from ncli.measure import kernels

    if request.param == "compiled":
        if kernels.compiled_kernels is None:
            pytest.skip(f"compiled kernels not available: {kernels.why_not_compiled}")
        return kernels.compiled_kernels
    return kernels.numpy_kernels


@pytest.fixture(params=["project", "scatter"])
def nc1_method(request):
    """Both ways pass 2 gets Σ_W on span(M): give them to a test's ``NumpyBackend(nc1_method=...)``."""
    return request.param
