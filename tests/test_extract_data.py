"""Data sources, stored layers, workers, and ``ncli inspect`` (issue 3)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

import extract_models as em
from extract_util import arch, assert_close, check_against, hooked, invoke, make_data, model, ok, read


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path)


@pytest.fixture
def net_ckpt(tmp_path):
    m = model("Net")
    ck = tmp_path / "net.pt"
    torch.save({"epoch": 5, "state_dict": m.state_dict()}, ck)
    return m, ck


def test_h5_source_with_keys_and_placeholders(tmp_path, data, net_ckpt):
    m, ck = net_ckpt
    src = tmp_path / "src.h5"
    with np.load(data) as z, h5py.File(src, "w") as f:
        f["inputs_train"], f["targets_train"] = z["x_train"], z["y_train"].astype(np.int32)
        f["inputs_test"], f["targets_test"] = z["x_test"], z["y_test"].astype(np.uint8)
    out = tmp_path / "out.h5"
    ok(invoke("extract", ck, "--arch", arch("Net"), "--data", f"train={src}", "--data", f"test={src}",
              "--x-key", "inputs_{split}", "--y-key", "targets_{split}", "-o", out, "-b", "10", "-q"))
    check_against(m, out, data)
    assert "inputs_train" in json.loads(read(out)["attrs"]["data_sources"])["train"]


def test_bare_file_takes_every_split_and_plain_xy_is_train(tmp_path, data, net_ckpt):
    m, ck = net_ckpt
    out = tmp_path / "out.h5"
    ok(invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", out, "-q"))
    with h5py.File(out, "r") as f:
        assert {"train", "test"} <= set(f)
    xy = tmp_path / "xy.npz"
    with np.load(data) as z:
        np.savez_compressed(xy, x=z["x_test"], y=z["y_test"])  # compressed: read into memory
    out2 = tmp_path / "out2.h5"
    ok(invoke("extract", ck, "--arch", arch("Net"), "--data", xy, "-o", out2, "-q"))
    d = read(out2, "train")
    h, _ = hooked(m, np.load(xy)["x"])
    assert_close(d["features"], h)
    # a split name of one's choosing, e.g. an OOD set, from the x/y pair
    out3 = tmp_path / "out3.h5"
    ok(invoke("extract", ck, "--arch", arch("Net"), "--data", f"train={data}", "--data", f"ood={xy}", "-o", out3, "-q"))
    assert read(out3, "ood")["features"].shape == (len(np.load(xy)["y"]), em.P)


def test_workers_give_the_same_file(tmp_path, data, net_ckpt):
    m, ck = net_ckpt
    src = tmp_path / "src.h5"
    with np.load(data) as z, h5py.File(src, "w") as f:
        f["x"], f["y"] = z["x_train"], z["y_train"]
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    ok(invoke("extract", ck, "--arch", arch("Net"), "--data", src, "-o", a, "-b", "5", "-q"))
    ok(invoke("extract", ck, "--arch", arch("Net"), "--data", src, "-o", b, "-b", "5", "--num-workers", "1",
              "--compression", "gzip", "-q"))
    da, db = read(a), read(b)
    for k in ("features", "labels", "logits", "index"):
        np.testing.assert_array_equal(da[k], db[k])


def test_integer_inputs_are_token_ids(tmp_path):
    torch.manual_seed(0)
    m = em.Tokens().eval()
    ck = tmp_path / "tok.pt"
    torch.save(m.state_dict(), ck)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 10, size=(30, 5)).astype(np.int32)
    src = tmp_path / "tok.npz"
    np.savez(src, x=x, y=np.arange(30) % em.C)
    out = tmp_path / "out.h5"
    ok(invoke("extract", ck, "--arch", arch("Tokens"), "--data", src, "-o", out, "-q"))
    with torch.no_grad():
        ref = m.emb(torch.from_numpy(x).long()).mean(1).numpy()
    assert_close(read(out)["features"], ref)


@pytest.mark.parametrize("pool", ["avg", "max", "none"])
def test_layers_with_pooling(tmp_path, data, pool):
    m = model("SmallConv")
    ck = tmp_path / "conv.pt"
    torch.save(m.state_dict(), ck)
    out = tmp_path / "out.h5"
    ok(invoke("extract", ck, "--arch", arch("SmallConv"), "--data", data, "-o", out, "--layer", "conv",
              "--layer", "conv.0", "--pool", pool, "-b", "8", "-q"))
    d = check_against(m, out, data)
    got = {}
    hs = [m.conv.register_forward_hook(lambda _m, a, o: got.__setitem__("conv", o.detach().clone())),
          m.conv[0].register_forward_hook(lambda _m, a, o: got.__setitem__("conv.0", o.detach().clone()))]
    with torch.no_grad():
        m(torch.from_numpy(np.load(data)["x_test"]))
    for h in hs:
        h.remove()
    for name, t in got.items():
        ref = {"avg": t.mean((2, 3)), "max": t.amax((2, 3)), "none": t.flatten(1)}[pool].numpy()
        assert_close(d["layers"][name], ref)
    assert read(out)["attrs"]["layer_pool"] == pool


def test_unknown_layer(tmp_path, data, net_ckpt):
    _, ck = net_ckpt
    r = invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", tmp_path / "o.h5", "--layer", "nope")
    assert r.exit_code == 2 and "--layer nope" in r.output


# --- inspect ---------------------------------------------------------------------------


def test_inspect_eager_with_data(tmp_path, data):
    m = model("AuxAfter")
    ck = tmp_path / "aux.pt"
    torch.save(m.state_dict(), ck)
    r = ok(invoke("inspect", ck, "--arch", arch("AuxAfter"), "--data", data))
    out = r.stdout
    assert "body.0" in out and "aux" in out and "<- classifier" in out
    assert "classifier: fc" in out and "its output is the tensor the model returns" in out
    rec = json.loads(ok(invoke("inspect", ck, "--arch", arch("AuxAfter"), "--data", data, "--json")).stdout)
    assert rec["chosen"] == "fc" and rec["num_classes"] == em.C and rec["feature_dim"] == em.P
    rows = {row["name"]: row for row in rec["linear_layers"]}
    assert rows["fc"]["is_output"] and not rows["aux"]["is_output"] and rows["aux"]["calls"] == 1


def test_inspect_guesses_an_input(tmp_path):
    m = model("Projection")
    ck = tmp_path / "p.pt"
    torch.save(m.state_dict(), ck)
    rec = json.loads(ok(invoke("inspect", ck, "--arch", arch("Projection"), "--json")).stdout)
    assert rec["chosen"] == "fc" and "guessed" in rec["ran_on"]


def test_inspect_torchscript_and_state_dict_without_arch(tmp_path):
    import warnings

    m = model("Net")
    ts = tmp_path / "ts.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(m).save(str(ts))
    out = ok(invoke("inspect", ts)).stdout
    assert "torchscript" in out and "classifier: fc" in out and "identity" in out
    sd = tmp_path / "sd.pt"
    torch.save({"epoch": 3, "state_dict": m.state_dict()}, sd)
    rec = json.loads(ok(invoke("inspect", sd, "--json")).stdout)
    assert rec["form"] == "state_dict" and rec["epoch"] == 3 and rec["chosen"] is None and "--arch" in rec["why"]
    assert [row["name"] for row in rec["linear_layers"]] == ["body.0", "body.2", "fc"]


def test_inspect_pickle_needs_trust(tmp_path):
    ck = tmp_path / "whole.pt"
    torch.save(model("Net"), ck)
    r = invoke("inspect", ck)
    assert r.exit_code == 4 and "--trust-checkpoint" in r.output
    assert "classifier: fc" in ok(invoke("inspect", ck, "--trust-checkpoint")).stdout


# --- vision extra (skipped unless torchvision is installed) ------------------------------


@pytest.mark.vision
def test_image_folder_and_torchvision_arch(tmp_path):
    tv = pytest.importorskip("torchvision")
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    torch.manual_seed(0)
    m = tv.models.resnet18(num_classes=2).eval()
    ck = tmp_path / "r18.pt"
    torch.save(m.state_dict(), ck)
    out = tmp_path / "out.h5"
    ok(invoke("extract", ck, "--arch", "torchvision:resnet18", "--arch-arg", "num_classes=2",
              "--data", f"train={root}", "--image-size", "32", "-o", out, "-q"))
    with h5py.File(out, "r") as f:
        assert f["train/features"].shape == (6, 512)
        assert [s.decode() if isinstance(s, bytes) else s for s in f["class_names"][...]] == ["cat", "dog"]
        np.testing.assert_array_equal(f["classifier/weight"][...], m.fc.weight.detach().numpy())
    ds = tv.datasets.ImageFolder(str(root), transform=tv.transforms.Compose(
        [tv.transforms.Resize(32), tv.transforms.CenterCrop(32), tv.transforms.ToTensor()]))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    got = {}
    m.fc.register_forward_pre_hook(lambda _m, a: got.__setitem__("h", a[0]))
    with torch.no_grad():
        m(x)
    assert_close(read(out)["features"], got["h"].numpy())


@pytest.mark.vision
def test_torchvision_dataset_never_downloads(tmp_path, data, net_ckpt):
    pytest.importorskip("torchvision")
    _, ck = net_ckpt
    r = invoke("extract", ck, "--arch", arch("Net"), "--data", f"train=torchvision:MNIST:{tmp_path}", "-o", tmp_path / "o.h5")
    assert r.exit_code == 3 and "never downloads" in r.output


def test_layer_output_is_taken_before_later_inplace_ops(tmp_path, data):
    m = model("InplaceAfter")
    ck = tmp_path / "m.pt"
    torch.save(m.state_dict(), ck)
    out = tmp_path / "out.h5"
    ok(invoke("extract", ck, "--arch", arch("InplaceAfter"), "--data", data, "-o", out, "--layer", "body.0", "-q"))
    x = torch.from_numpy(np.load(data)["x_train"])
    with torch.no_grad():
        ref = m.body[0](x).numpy()
    assert (ref < 0).any()
    assert_close(read(out)["layers"]["body.0"], ref)
