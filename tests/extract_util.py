"""Helpers for the extract tests: data files, CLI calls, an independent hooked forward pass."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch
from typer.testing import CliRunner

import extract_models as em
from ncli.cli import app

HERE = Path(__file__).resolve().parent
MODELS = HERE / "extract_models.py"
runner = CliRunner()
N_TRAIN, N_TEST = 37, 21  # not multiples of the batch sizes used


def arch(name: str) -> str:
    return f"{MODELS}:{name}"


def make_data(tmp_path: Path, n_classes: int = em.C, seed: int = 0, name: str = "data.npz") -> Path:
    rng = np.random.default_rng(seed)
    path = tmp_path / name
    np.savez(
        path,
        x_train=rng.normal(size=(N_TRAIN, em.IN)).astype(np.float32),
        y_train=(np.arange(N_TRAIN) % n_classes).astype(np.int64),
        x_test=rng.normal(size=(N_TEST, em.IN)).astype(np.float32),
        y_test=(np.arange(N_TEST) % n_classes).astype(np.int64),
    )
    return path


def model(name: str, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = getattr(em, name)(**kw).eval()
    # non-trivial batch-norm statistics, where there are any
    for mod in m.modules():
        if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    return m


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, (result.exit_code, result.output)
    return result


def hooked(m: torch.nn.Module, x: np.ndarray, name: str = "fc"):
    """An independent forward pass with a hand-placed pre-hook on module ``name``."""
    got = {}
    mod = dict(m.named_modules())[name]
    h = mod.register_forward_pre_hook(lambda _m, args: got.__setitem__("h", args[0].detach().clone()))
    try:
        with torch.no_grad():
            out = m(torch.from_numpy(np.asarray(x, dtype=np.float32)))
    finally:
        h.remove()
    if isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = out["logits"]
    return got["h"].numpy(), out.detach().numpy()


def read(path: Path, split: str = "train") -> dict:
    with h5py.File(path, "r") as f:
        d = {k: f[split][k][...] for k in ("features", "labels", "logits", "index") if k in f[split]}
        d["layers"] = {k: v[...] for k, v in f[split]["layers"].items()} if "layers" in f[split] else {}
        d["W"] = f["classifier/weight"][...]
        d["b"] = f["classifier/bias"][...] if "bias" in f["classifier"] else None
        d["attrs"] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    return d


def inputs(data: Path, split: str = "train") -> np.ndarray:
    with np.load(data) as z:
        return z[f"x_{split}"]


def assert_close(a: np.ndarray, ref: np.ndarray, rel: float = 1e-6) -> None:
    assert a.shape == ref.shape, (a.shape, ref.shape)
    scale = max(float(np.abs(ref).max()), 1e-12)
    err = float(np.abs(a.astype(np.float64) - ref.astype(np.float64)).max())
    assert err <= rel * scale, f"max error {err:.3g} > {rel:g} x {scale:.3g}"


def check_against(m: torch.nn.Module, out: Path, data: Path, name: str = "fc", splits=("train", "test")) -> dict:
    """Stored features/logits equal a hooked forward pass; stored classifier equals the module's."""
    mod = dict(m.named_modules())[name]
    for split in splits:
        d = read(out, split)
        h, z = hooked(m, inputs(data, split), name)
        assert d["features"].dtype == np.float32
        assert_close(d["features"], h)
        assert_close(d["logits"], z)
        np.testing.assert_array_equal(d["index"], np.arange(len(h)))
        with np.load(data) as zf:
            np.testing.assert_array_equal(d["labels"], zf[f"y_{split}"])
    np.testing.assert_array_equal(d["W"], mod.weight.detach().numpy())
    if mod.bias is None:
        assert d["b"] is None
    else:
        np.testing.assert_array_equal(d["b"], mod.bias.detach().numpy())
    assert d["attrs"]["feature_layer"] == name
    assert float(d["attrs"]["max_reconstruction_error"]) < 1e-4
    return d
