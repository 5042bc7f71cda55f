"""Builds the optional compiled kernels of `ncli measure` (ncli/measure/_kernels.c).

Everything else about the package is in pyproject.toml. The extension is optional: without a
C compiler, pip installs ncli anyway and `ncli measure` uses the numpy implementation of the
same kernels (ncli/measure/kernels.py), about 1.3-2x slower per block.
"""

import sys

from setuptools import Extension, setup

if sys.platform == "win32":
    flags = ["/O2", "/fp:precise"]
else:
    # -ffp-contract=off: no FMA contraction, so every CPU computes the same float64 sums
    flags = ["-O3", "-ffp-contract=off", "-std=c99"]

setup(
    ext_modules=[
        Extension("ncli.measure._kernels", sources=["ncli/measure/_kernels.c"], extra_compile_args=flags, optional=True),
    ]
)
