"""Same input -> bit-identical JSON, across runs, read sizes and BLAS thread counts."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import ncli.measure.blocks
from ncli.features import write_features
from ncli.measure.record import measure_file


@pytest.fixture
def multi_block_file(tmp_path, rng):
    C, p, n = 7, 24, 20_000  # several 4096-row blocks, an uneven tail
    means = rng.standard_normal((C, p)) * 2
    y = rng.integers(0, C, n)
    H = (means[y] + rng.standard_normal((n, p))).astype(np.float32)
    yt = rng.integers(0, C, 3000)
    Ht = (means[yt] + rng.standard_normal((3000, p))).astype(np.float32)
    return write_features(
        tmp_path / "f.h5",
        {"train": {"features": H, "labels": y}, "test": {"features": Ht, "labels": yt}},
        num_classes=C,
        weight=means + 0.1 * rng.standard_normal((C, p)),
        bias=rng.standard_normal(C),
    )


def _run(path, threads, *extra):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run(
        [sys.executable, "-m", "ncli", "measure", str(path), "--json", "--per-class", *extra],
        capture_output=True,
        env=env,
        check=True,
    )
    return proc.stdout


def test_bit_identical_across_runs_read_sizes_and_threads(multi_block_file):
    outs = {
        _run(multi_block_file, 1),
        _run(multi_block_file, 1),
        _run(multi_block_file, 2),
        _run(multi_block_file, 1, "--chunk-rows", "1"),
        _run(multi_block_file, 2, "--chunk-rows", "12288"),
        _run(multi_block_file, 1, "--chunk-rows", "100000"),
        _run(multi_block_file, 1, "--threads", "2"),  # pipelined second pass
        _run(multi_block_file, 2, "--threads", "4"),
    }
    assert len(outs) == 1


def test_block_size_changes_only_rounding(multi_block_file, monkeypatch):
    ref = measure_file(multi_block_file)
    monkeypatch.setattr(ncli.measure.blocks, "BLOCK_ROWS", 13)
    small = measure_file(multi_block_file, chunk_rows=50)
    assert small["splits"] == ref["splits"]  # decisions are exact
    for key, v in ref["metrics"].items():
        if isinstance(v, float):
            assert small["metrics"][key] == pytest.approx(v, rel=1e-10), key
