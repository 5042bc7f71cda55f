"""Issue 12: image arrays in .npz/.h5 files (uint8, NHWC, one channel) get the steps image
folders get — scaled to [0, 1], channels first, --channels, --normalize — checked against the
model's own forward pass on arrays prepared by hand; the image options are refused, not
ignored, for arrays that are not images. (Resizing, and image folders, need torchvision:
test_extract_vision.py.)"""

from __future__ import annotations

import h5py
import numpy as np
import torch
import torch.nn as nn

import extract_models as em
from extract_util import arch, assert_close, invoke, make_data, model, ok, read

C = 3


def checkpoint(tmp_path, channels: int = 3):
    torch.manual_seed(channels)
    m = em.TinyCNN(channels).eval()
    path = tmp_path / f"cnn{channels}.pt"
    torch.save(m.state_dict(), path)
    return m, path


def own_forward(m: nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    got = {}
    handle = m.fc.register_forward_pre_hook(lambda _m, a: got.__setitem__("h", a[0].detach().clone()))
    try:
        with torch.no_grad():
            logits = m(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    finally:
        handle.remove()
    return got["h"].numpy(), logits.numpy()


def pixels(n: int, shape: tuple, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def test_uint8_nhwc_arrays_become_float_nchw(tmp_path):
    """CIFAR-style uint8 (N, H, W, 3): /255, channels first; with --normalize cifar10."""
    m, ck = checkpoint(tmp_path)
    x = pixels(14, (8, 8, 3))
    y = np.arange(14) % C
    data = tmp_path / "cifar.npz"
    np.savez(data, x=x, y=y)
    reference = x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    out = tmp_path / "a.h5"
    ok(invoke("extract", ck, "--arch", arch("TinyCNN"), "--data", data, "-o", out, "-b", "5", "-q"))
    h, logits = own_forward(m, reference)
    d = read(out)
    assert_close(d["features"], h)
    assert_close(d["logits"], logits)
    assert "uint8 NHWC /255" in d["attrs"]["data_sources"]
    mean, std = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2470, 0.2435, 0.2616])
    normalized = ((reference - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)
    ok(invoke("extract", ck, "--arch", arch("TinyCNN"), "--data", data, "--normalize", "cifar10", "-o", out, "--force", "-q"))
    h, logits = own_forward(m, normalized)
    d = read(out)
    assert_close(d["features"], h, rel=1e-5)
    assert_close(d["logits"], logits, rel=1e-5)
    assert "normalize=" in d["attrs"]["data_sources"]


def test_gray_arrays_and_channels(tmp_path):
    """(N, H, W) uint8 images get one channel; --channels 3 repeats it for an RGB model, and
    --channels 1 turns RGB arrays into gray (ITU-R 601 weights) for a gray model."""
    m, ck = checkpoint(tmp_path, channels=3)
    gray = pixels(9, (6, 6), seed=1)
    data = tmp_path / "gray.h5"
    with h5py.File(data, "w") as f:
        f["x"], f["y"] = gray, np.arange(9) % C
    out = tmp_path / "g.h5"
    ok(invoke("extract", ck, "--arch", arch("TinyCNN"), "--data", data, "--channels", "3", "-o", out, "-q"))
    reference = np.repeat(gray[:, None].astype(np.float32) / 255.0, 3, axis=1)
    assert_close(read(out)["features"], own_forward(m, reference)[0])

    m1, ck1 = checkpoint(tmp_path, channels=1)
    rgb = pixels(9, (3, 6, 6), seed=2)  # NCHW already
    data = tmp_path / "rgb.npz"
    np.savez(data, x=rgb, y=np.arange(9) % C)
    ok(invoke("extract", ck1, "--arch", arch("TinyCNN"), "--arch-arg", "channels=1", "--data", data, "--channels", "1", "-o", out, "--force", "-q"))
    weights = np.array([0.2989, 0.587, 0.114])
    reference = (rgb.astype(np.float64) / 255.0 * weights[None, :, None, None]).sum(1, keepdims=True).astype(np.float32)
    assert_close(read(out)["features"], own_forward(m1, reference)[0], rel=1e-5)


def test_ambiguous_layout_needs_layout(tmp_path):
    m, ck = checkpoint(tmp_path)
    x = pixels(6, (3, 5, 3))  # (N, 3, 5, 3): channels first or last?
    data = tmp_path / "amb.npz"
    np.savez(data, x=x, y=np.arange(6) % C)
    r = invoke("extract", ck, "--arch", arch("TinyCNN"), "--data", data, "-o", tmp_path / "o.h5")
    assert r.exit_code == 2 and "--layout nchw or --layout nhwc" in r.stderr
    ok(invoke("extract", ck, "--arch", arch("TinyCNN"), "--data", data, "--layout", "nhwc", "-o", tmp_path / "o.h5", "-q"))
    reference = x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    assert_close(read(tmp_path / "o.h5")["features"], own_forward(m, reference)[0])


def test_image_options_are_refused_for_other_arrays(tmp_path):
    """--normalize on (N, p) float arrays was silently ignored; now it is an error."""
    data = make_data(tmp_path)
    ck = tmp_path / "net.pt"
    torch.save(model("Net").state_dict(), ck)
    for option in (["--normalize", "imagenet"], ["--image-size", "32"], ["--channels", "3"]):
        r = invoke("extract", ck, "--arch", arch("Net"), "--data", data, *option, "-o", tmp_path / "o.h5")
        assert r.exit_code == 2 and "apply to images" in r.stderr and f"(14, {em.IN}) float32" not in r.stderr, r.stderr
        assert option[0] in r.stderr
