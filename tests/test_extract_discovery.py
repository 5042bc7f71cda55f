"""Classifier discovery and key alignment (issue 3): auxiliary head after the classifier, a
projection before it, bias=False, DataParallel / torch.compile prefixes, Lightning-style dicts,
--classifier, heads that are not linear."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import extract_models as em
from extract_util import arch, check_against, invoke, make_data, model, ok, read
from ncli.extract.forms.align import align_state_dict


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path)


def _extract(tmp_path, data, obj, name, *extra, out="out.h5"):
    ck = tmp_path / f"{name}.pt"
    torch.save(obj, ck)
    out = tmp_path / out
    r = invoke("extract", ck, "--arch", arch(name), "--data", data, "-o", out, "-q", *extra)
    return r, out


@pytest.mark.parametrize("name", ["AuxAfter", "AuxTuple", "Projection", "NoBias", "ViewOut", "DictOut"])
def test_discovery_picks_the_output_layer(tmp_path, data, name):
    m = model(name)
    r, out = _extract(tmp_path, data, m.state_dict(), name)
    ok(r)
    d = check_against(m, out, data, "fc")
    if name == "NoBias":
        assert d["b"] is None
    if name == "Projection":  # features are the projection's output (p = 8), not its input
        assert d["features"].shape[1] == em.P


def test_dataparallel_prefix(tmp_path, data):
    m = model("Net")
    sd = torch.nn.DataParallel(m).state_dict()
    assert all(k.startswith("module.") for k in sd)
    r, out = _extract(tmp_path, data, sd, "Net")
    ok(r)
    d = check_against(m, out, data)
    assert d["attrs"]["stripped_prefixes"] == "module."


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile touches torch.jit
def test_compiled_prefix(tmp_path, data):
    m = model("Net")
    sd = torch.compile(m).state_dict()  # not run: no compilation happens
    assert all(k.startswith("_orig_mod.") for k in sd)
    r, out = _extract(tmp_path, data, {"model_state_dict": sd, "epoch": 3}, "Net")
    ok(r)
    assert check_against(m, out, data)["attrs"]["epoch"] == 3


def test_compiled_inside_dataparallel(tmp_path, data):
    m = model("Net")
    sd = {"module._orig_mod." + k: v for k, v in m.state_dict().items()}
    r, out = _extract(tmp_path, data, sd, "Net")
    ok(r)
    check_against(m, out, data)


def test_lightning_style_dict(tmp_path, data):
    m = model("Net")
    sd = {"model." + k: v for k, v in m.state_dict().items()}
    sd["criterion.weight"] = torch.ones(4)  # a LightningModule's own buffer
    ckpt = {"epoch": 9, "global_step": 450, "pytorch-lightning_version": "2.4.0", "state_dict": sd,
            "optimizer_states": [], "lr_schedulers": [], "hyper_parameters": {"lr": 0.1}}
    r, out = _extract(tmp_path, data, ckpt, "Net")
    ok(r)
    d = check_against(m, out, data)
    assert (d["attrs"]["epoch"], d["attrs"]["step"]) == (9, 450)
    assert d["attrs"]["stripped_prefixes"] == "model." and d["attrs"]["dropped_keys"] == 1


def test_model_prefix_that_belongs_to_the_model_is_kept(tmp_path, data):
    m = model("Wrapper")
    r, out = _extract(tmp_path, data, m.state_dict(), "Wrapper")
    ok(r)
    check_against(m, out, data, "model.fc")
    # ... and a DataParallel-wrapped Wrapper loses only 'module.'
    sd = {"module." + k: v for k, v in m.state_dict().items()}
    aligned, steps, dropped = align_state_dict(sd, m.state_dict().keys())
    assert set(aligned) == set(m.state_dict()) and steps == ["module."] and not dropped


def test_ema_only_when_asked(tmp_path, data):
    m, ema = model("Net", seed=0), model("Net", seed=1)
    ckpt = {"state_dict": m.state_dict(), "ema": {"module." + k: v for k, v in ema.state_dict().items()}}
    r, out = _extract(tmp_path, data, ckpt, "Net")
    ok(r)
    check_against(m, out, data)
    r, out2 = _extract(tmp_path, data, ckpt, "Net", "--ema", out="ema.h5")
    ok(r)
    assert read(out2)["attrs"]["ema"]
    check_against(ema, out2, data)
    r, out3 = _extract(tmp_path, data, {"state_dict": m.state_dict()}, "Net", "--ema", out="none.h5")
    assert r.exit_code == 3 and "no EMA weights" in r.output and not out3.exists()


def test_classifier_override(tmp_path, data):
    m = model("AuxAfter")
    data = make_data(tmp_path, n_classes=3, name="d3.npz")  # the aux head has 3 outputs
    r, out = _extract(tmp_path, data, m.state_dict(), "AuxAfter", "--classifier", "aux")
    ok(r)
    d = read(out)
    assert d["attrs"]["feature_layer"] == "aux" and d["attrs"]["classifier_found_by"].startswith("--classifier")
    assert d["W"].shape == (3, em.P)
    np.testing.assert_array_equal(d["W"], m.aux.weight.detach().numpy())
    # the stored logits are the aux head's output (consistent with W, b)
    x = torch.from_numpy(np.load(data)["x_train"])
    with torch.no_grad():
        ref = m.aux(m.body(x)).numpy()
    np.testing.assert_allclose(d["logits"], ref, rtol=0, atol=1e-6)


def test_classifier_override_errors(tmp_path, data):
    m = model("Net")
    r, out = _extract(tmp_path, data, m.state_dict(), "Net", "--classifier", "nope")
    assert r.exit_code == 2 and "body.0" in r.output and not out.exists()
    r, out = _extract(tmp_path, data, m.state_dict(), "Net", "--classifier", "body.1")
    assert r.exit_code == 4 and "not an nn.Linear" in r.output and not out.exists()


@pytest.mark.parametrize("name,needle", [("ConvHead", "not produced by any nn.Linear"), ("CosineHead", "not produced by any nn.Linear")])
def test_nonlinear_head_refused(tmp_path, data, name, needle):
    m = model(name)
    r, out = _extract(tmp_path, data, m.state_dict(), name)
    assert r.exit_code == 4, r.output
    assert needle in r.output and "--classifier" in r.output and not out.exists()


def test_cosine_head_with_override_fails_reconstruction(tmp_path, data):
    m = model("CosineHead")
    # fc is never called in CosineHead's forward (only its weight is used)
    r, out = _extract(tmp_path, data, m.state_dict(), "CosineHead", "--classifier", "fc")
    assert r.exit_code == 4 and "not called" in r.output and not out.exists()


def test_arch_args_factory(tmp_path, data):
    m = em.make_net(hidden=5, num_classes=6).eval()
    ck = tmp_path / "f.pt"
    torch.save(m.state_dict(), ck)
    d6 = make_data(tmp_path, n_classes=6, name="d6.npz")
    out = tmp_path / "out.h5"
    ok(invoke("extract", ck, "--arch", arch("make_net"), "--arch-arg", "hidden=5", "--arch-arg", "num_classes=6",
              "--data", d6, "-o", out, "-q"))
    assert read(out)["W"].shape == (6, em.P)
    check_against(m, out, d6)
