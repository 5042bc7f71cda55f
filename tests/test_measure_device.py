"""`measure --device`: the torch path (run here on the CPU as "torch:cpu"; on a GPU the same
code runs with device "cuda") equals the numpy path and the dense reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ncli.cli import app
from ncli.features import write_features
from ncli.measure.record import measure_file

try:
    from reference import assert_record_matches, reference_record
except ImportError:  # pragma: no cover
    from tests.reference import assert_record_matches, reference_record

pytest.importorskip("torch")

from ncli.measure.engine_torch import TorchBackend  # noqa: E402


@pytest.mark.parametrize("C, p, classifier", [(4, 9, True), (12, 5, True), (2, 3, False), (6, 16, True)])
def test_torch_path_matches_numpy_and_reference(tmp_path, rng, C, p, classifier):
    n = 5000  # several blocks
    means = rng.standard_normal((C, p)) * 2
    y = rng.integers(0, C, n)
    y[:C] = np.arange(C)
    H = (means[y] + rng.standard_normal((n, p))).astype(np.float32)
    yt = rng.integers(0, C, 700)
    Ht = (means[yt] + rng.standard_normal((700, p))).astype(np.float32)
    W = rng.standard_normal((C, p)) if classifier else None
    b = rng.standard_normal(C) if classifier else None
    path = write_features(
        tmp_path / "f.h5",
        {"train": {"features": H, "labels": y}, "test": {"features": Ht, "labels": yt}},
        num_classes=C,
        weight=W,
        bias=b,
    )
    cpu = measure_file(path, per_class=True)
    on_torch = measure_file(path, per_class=True, backend=TorchBackend("cpu"))
    assert on_torch["splits"] == cpu["splits"]  # decisions are exact on both paths
    ref = reference_record(H, y, C, W, b, {"test": (Ht, yt)})
    assert_record_matches(on_torch, ref, per_class=True)
    for key, v in cpu["metrics"].items():
        if isinstance(v, float):
            assert on_torch["metrics"][key] == pytest.approx(v, rel=1e-9, abs=1e-15), key


def test_cuda_absent_falls_back_with_a_warning(tmp_path, rng):
    import torch

    if torch.cuda.is_available():  # pragma: no cover - GPU machines
        pytest.skip("CUDA is available here")
    H = rng.standard_normal((30, 4)).astype(np.float32)
    y = np.arange(30) % 3
    path = write_features(tmp_path / "f.h5", {"train": {"features": H, "labels": y}}, num_classes=3)
    res = CliRunner().invoke(app, ["measure", str(path), "--json", "--device", "cuda"])
    assert res.exit_code == 0
    assert "CUDA is not available" in res.stderr and "CPU" in res.stderr
    assert json.loads(res.stdout) == json.loads(json.dumps(measure_file(path)))
