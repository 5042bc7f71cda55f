"""Every checkpoint form: stored features equal an independent forward pass with a hand-placed
hook (≤ 1e-6 relative), and the stored classifier equals the module's (issue 3)."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest
import torch

from extract_util import arch, check_against, hooked, inputs, invoke, make_data, model, ok, read


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_plain_state_dict(tmp_path, data):
    m = model("Net")
    ck = tmp_path / "plain.pt"
    torch.save(m.state_dict(), ck)
    out = tmp_path / "out.h5"
    ok(invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", out, "-b", "8", "-q"))
    d = check_against(m, out, data)
    a = d["attrs"]
    assert a["checkpoint_form"] == "state_dict" and a["source_checkpoint_sha256"] == _sha(ck)
    assert a["source_checkpoint"] == str(ck) and "epoch" not in a
    assert "its output is the tensor the model returns" in a["classifier_found_by"]
    for k in ("torch_version", "device", "dtype", "amp", "data_sources", "arch"):
        assert k in a, k


def test_nested_dict_epoch_step_and_flags(tmp_path, data):
    m = model("Net")
    ck = tmp_path / "nested.pt"
    torch.save({"epoch": np.int64(7), "global_step": 91, "optimizer": {"lr": 0.1}, "state_dict": m.state_dict()}, ck)
    out = tmp_path / "out.h5"
    ok(invoke("extract", ck, "--arch", arch("Net"), "--data", f"train={data}", "-o", out, "-q"))
    d = check_against(m, out, data, splits=("train",))
    assert d["attrs"]["epoch"] == 7 and d["attrs"]["step"] == 91 and d["attrs"]["checkpoint_key"] == "state_dict"
    out2 = tmp_path / "out2.h5"
    ok(invoke("extract", ck, "--arch", arch("Net"), "--data", f"train={data}", "-o", out2, "--epoch", "8", "--step", "100", "-q"))
    assert read(out2)["attrs"]["epoch"] == 8 and read(out2)["attrs"]["step"] == 100


def test_legacy_serialization(tmp_path, data):
    m = model("Net")
    ck = tmp_path / "legacy.pth"
    torch.save({"model": m.state_dict(), "epoch": 2}, ck, _use_new_zipfile_serialization=False)
    out = tmp_path / "out.h5"
    ok(invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", out, "-q"))
    assert check_against(m, out, data)["attrs"]["epoch"] == 2


def test_safetensors(tmp_path, data):
    st = pytest.importorskip("safetensors.torch")
    m = model("Net")
    ck = tmp_path / "w.bin"  # detected by content, not extension
    st.save_file(m.state_dict(), str(ck), metadata={"epoch": "12"})
    out = tmp_path / "out.h5"
    ok(invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", out, "-q"))
    d = check_against(m, out, data)
    assert d["attrs"]["checkpoint_form"] == "safetensors" and d["attrs"]["epoch"] == 12


def _script(m, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(m).save(str(path))


def test_torchscript_without_arch(tmp_path, data):
    m = model("Net")
    ck = tmp_path / "scripted.pt"
    _script(m, ck)
    out = tmp_path / "out.h5"
    ok(invoke("extract", ck, "--data", data, "-o", out, "-b", "8", "-q"))
    d = check_against(m, out, data)
    assert d["attrs"]["checkpoint_form"] == "torchscript" and d["attrs"]["extractor"] == "torchscript"
    assert "TorchScript graph" in d["attrs"]["classifier_found_by"]
    assert float(d["attrs"]["first_batch_model_output_error"]) < 1e-5


def test_torchscript_projection_no_bias_tuple(tmp_path, data):
    for name, cls in (("Projection", "fc"), ("NoBias", "fc"), ("AuxTuple", "fc")):
        m = model(name)
        ck = tmp_path / f"{name}.pt"
        _script(m, ck)
        out = tmp_path / f"{name}.h5"
        ok(invoke("extract", ck, "--data", data, "-o", out, "-q"))
        check_against(m, out, data, cls)


def test_torchscript_traced(tmp_path, data):
    m = model("Net")
    ck = tmp_path / "traced.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(m, torch.randn(3, 12)).save(str(ck))
    out = tmp_path / "out.h5"
    ok(invoke("extract", ck, "--data", data, "-o", out, "-q"))
    check_against(m, out, data)


def test_torchscript_with_arch_allows_layers(tmp_path, data):
    m = model("Net")
    ck = tmp_path / "scripted.pt"
    _script(m, ck)
    out = tmp_path / "out.h5"
    r = invoke("extract", ck, "--data", data, "-o", out, "--layer", "body.1", "-q")
    assert r.exit_code == 2 and "--arch" in r.output and not out.exists()
    ok(invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", out, "--layer", "body.1", "-q"))
    d = check_against(m, out, data)
    assert d["attrs"]["extractor"] == "eager" and read(out)["layers"]["body.1"].shape == (37, 16)


def test_torchscript_nonlinear_head_refused(tmp_path, data):
    ck = tmp_path / "conv.pt"
    _script(model("ConvHead"), ck)
    out = tmp_path / "out.h5"
    r = invoke("extract", ck, "--data", data, "-o", out)
    assert r.exit_code == 4 and "not by a linear layer" in r.output and not out.exists()


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_export_pt2(tmp_path, data, dynamic):
    m = model("Net")
    ck = tmp_path / "prog.pt2"
    kw = {"dynamic_shapes": ({0: torch.export.Dim("batch", min=1, max=1024)},)} if dynamic else {}
    ep = torch.export.export(m, (torch.randn(5, 12),), **kw)
    torch.export.save(ep, str(ck))
    out = tmp_path / "out.h5"
    r = ok(invoke("extract", ck, "--data", data, "-o", out, "-b", "16", "--layer", "body.1"))
    d = check_against(m, out, data)
    assert d["attrs"]["checkpoint_form"] == "torch.export"
    assert ("exactly 5" in r.output) == (not dynamic)  # a fixed-batch program: padded batches
    # the layer output equals the module's output
    got = {}
    hnd = m.body[1].register_forward_hook(lambda _m, a, o: got.__setitem__("o", o.detach().clone()))
    with torch.no_grad(), np.load(data) as z:
        m(torch.from_numpy(z["x_train"]))
    hnd.remove()
    np.testing.assert_allclose(read(out)["layers"]["body.1"], got["o"].numpy(), rtol=0, atol=1e-6)


def test_pickled_module_with_trust(tmp_path, data):
    m = model("Projection")
    ck = tmp_path / "whole.pt"
    torch.save(m, ck)
    out = tmp_path / "out.h5"
    ok(invoke("extract", ck, "--trust-checkpoint", "--data", data, "-o", out, "-q"))
    d = check_against(m, out, data)
    assert d["attrs"]["checkpoint_form"] == "pickled module"
    # a dict holding a whole module under 'model'
    ck2 = tmp_path / "dict_module.pt"
    torch.save({"model": m, "epoch": 4}, ck2)
    out2 = tmp_path / "out2.h5"
    ok(invoke("extract", ck2, "--trust-checkpoint", "--data", data, "-o", out2, "-q"))
    assert check_against(m, out2, data)["attrs"]["epoch"] == 4


def test_amp_on_cpu_is_recorded(tmp_path, data):
    m = model("Net")
    ck = tmp_path / "plain.pt"
    torch.save(m.state_dict(), ck)
    out = tmp_path / "out.h5"
    ok(invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", out, "--amp", "--device", "cpu", "-q"))
    d = read(out)
    assert d["attrs"]["amp"] == "bfloat16" and d["features"].dtype == np.float32
    h, _ = hooked(m, inputs(data))
    np.testing.assert_allclose(d["features"], h, atol=0.1 * np.abs(h).max())


def test_torch_export_with_arch_and_module_arch(tmp_path, data):
    m = model("Net")
    ck = tmp_path / "prog.pt2"
    torch.export.save(torch.export.export(m, (torch.randn(5, 12),)), str(ck))
    out = tmp_path / "out.h5"
    # the program's weights loaded into the Python class, named as pkg.module:Name
    ok(invoke("extract", ck, "--arch", "extract_models:Net", "--data", data, "-o", out, "-q"))
    d = check_against(m, out, data)
    assert d["attrs"]["extractor"] == "eager" and d["attrs"]["checkpoint_form"] == "torch.export"
