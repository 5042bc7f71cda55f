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
