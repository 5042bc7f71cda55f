"""The writer sink runs in a thread when torch leaves a core free and inline when torch uses
every core; both give the same file."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ncli.extract.api import extract  # noqa: E402

FIX = Path(__file__).resolve().parent.parent / "fixtures"


def _datasets(path):
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda name, obj: out.__setitem__(name, obj[...]) if isinstance(obj, h5py.Dataset) else None)
        return out


@pytest.mark.skipif(not (FIX / "digits.npz").exists(), reason="fixtures not built")
def test_threaded_and_inline_sink_write_the_same_file(tmp_path):
    before = torch.get_num_threads()
    files = []
    try:
        for threads in (1, max(1, os.cpu_count() or 1)):  # 1: threaded sink (a core to spare)
            torch.set_num_threads(threads)
            out = tmp_path / f"t{threads}.h5"
            extract(
                FIX / "checkpoints" / "mlp_epoch0030.pt",
                out,
                [f"{FIX / 'digits.npz'}"],
                arch=f"{FIX / 'models.py'}:MLP",
                batch_size=100,
                device="cpu",
                progress=False,
            )
            files.append(out)
    finally:
        torch.set_num_threads(before)
    a, b = (_datasets(f) for f in files)
    assert a.keys() == b.keys() and "train/features" in a
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-6)
