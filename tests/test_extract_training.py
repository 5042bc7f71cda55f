"""Issue 12: checkpoints as training frameworks write them, built here without the frameworks
(Lightning's own files are in test_extract_lightning.py): the EMAWeightAveraging layout and
other EMA keys, the ``model.module.`` prefix, PyTorch distributed-checkpoint folders, and folders
that are no checkpoint. Each extraction is checked against the model's own forward pass."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from extract_util import arch, check_against, invoke, make_data, model, ok


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path)


def _prefixed(state_dict, prefix):
    return {prefix + k: v for k, v in state_dict.items()}


def test_lightning_ema_layout(tmp_path, data):
    """EMAWeightAveraging: averaged weights in state_dict, raw ones in current_model_state:
    --ema reads the averaged ones (as for every other layout), the default the raw ones."""
    raw, averaged = model("Net", seed=1), model("Net", seed=2)
    ck = tmp_path / "last.ckpt"
    torch.save({
        "epoch": 4, "global_step": 40, "state_dict": _prefixed(averaged.state_dict(), "model."),
        "current_model_state": _prefixed(raw.state_dict(), "model."), "averaging_state": {"n_averaged": torch.tensor(40)},
    }, ck)
    out = tmp_path / "raw.h5"
    r = ok(invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", out))
    assert "also holds EMA weights" in r.stderr and "raw ones, from current_model_state; --ema" in r.stderr
    d = check_against(raw, out, data)
    assert d["attrs"]["checkpoint_key"] == "current_model_state" and "EMAWeightAveraging" in d["attrs"]["ema_weights"]
    ok(invoke("extract", ck, "--arch", arch("Net"), "--ema", "--data", data, "-o", tmp_path / "ema.h5", "-q"))
    d = check_against(averaged, tmp_path / "ema.h5", data)
    assert d["attrs"]["checkpoint_key"] == "state_dict" and d["attrs"]["ema"] and d["attrs"]["epoch"] == 4
    shown = json.loads(ok(invoke("inspect", ck, "--json")).stdout)
    assert "averaged in state_dict (--ema), raw in current_model_state" in shown["ema_weights"]
    assert "EMA weights" in ok(invoke("inspect", ck)).stdout


def test_ema_keys_are_named_by_inspect(tmp_path, data):
    raw, averaged = model("Net", seed=1), model("Net", seed=2)
    ck = tmp_path / "timm.pth"
    torch.save({"state_dict": raw.state_dict(), "state_dict_ema": averaged.state_dict()}, ck)
    assert json.loads(ok(invoke("inspect", ck, "--json")).stdout)["ema_weights"] == "state_dict_ema (--ema)"
    ok(invoke("extract", ck, "--arch", arch("Net"), "--ema", "--data", data, "-o", tmp_path / "o.h5", "-q"))
    check_against(averaged, tmp_path / "o.h5", data)
    plain = tmp_path / "plain.pt"
    torch.save(raw.state_dict(), plain)
    assert "ema_weights" not in json.loads(ok(invoke("inspect", plain, "--json")).stdout)


def test_model_module_prefix(tmp_path, data):
    """A DataParallel model inside a Lightning module: keys model.module.*; a loss buffer beside."""
    m = model("Net")
    ck = tmp_path / "dp.ckpt"
    torch.save({"state_dict": {**_prefixed(m.state_dict(), "model.module."), "criterion.weight": torch.ones(4)}}, ck)
    ok(invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", tmp_path / "o.h5", "-q"))
    d = check_against(m, tmp_path / "o.h5", data)
    assert d["attrs"]["stripped_prefixes"] == "model.module." and d["attrs"]["dropped_keys"] == 1


def _dcp_folder(tmp_path, m):
    import torch.distributed.checkpoint as dcp

    folder = tmp_path / "dcp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is ... uninitialized, assuming ... a single process"
        dcp.save({"model": m.state_dict(), "step": 12}, checkpoint_id=str(folder))
    return folder


def test_distributed_checkpoint_folder(tmp_path, data):
    """Its .metadata is a pickle torch reads with pickle.load: refused without the flag (with
    how to convert it), read with it; one .distcp file is named as a piece of the folder."""
    m = model("Net")
    folder = _dcp_folder(tmp_path, m)
    out = tmp_path / "o.h5"
    r = invoke("extract", folder, "--arch", arch("Net"), "--data", data, "-o", out)
    assert r.exit_code == 4 and r.stderr.count("\n") == 1, r.stderr
    assert "distributed checkpoint (DCP)" in r.stderr and "dcp_to_torch" in r.stderr and "--trust-checkpoint" in r.stderr
    ok(invoke("extract", folder, "--arch", arch("Net"), "--trust-checkpoint", "--data", data, "-o", out, "-q"))
    d = check_against(m, out, data)
    assert d["attrs"]["checkpoint_form"] == "distributed checkpoint" and d["attrs"]["checkpoint_key"] == "model"
    piece = next(folder.glob("*.distcp"))
    r = invoke("extract", piece, "--arch", arch("Net"), "--data", data, "-o", tmp_path / "p.h5")
    assert r.exit_code == 3 and "one file of a PyTorch distributed checkpoint" in r.stderr and str(folder) in r.stderr


def test_a_folder_that_is_no_checkpoint(tmp_path, data):
    folder = tmp_path / "runs"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    r = invoke("extract", folder, "--arch", arch("Net"), "--data", data, "-o", tmp_path / "o.h5")
    assert r.exit_code == 3 and "is a directory" in r.stderr and "config.json" in r.stderr


def test_hugging_face_folder_without_transformers(tmp_path, data, monkeypatch):
    import sys

    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"]}))
    (folder / "model.safetensors").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "transformers", None)  # an import of it fails
    r = invoke("extract", folder, "--data", data, "-o", tmp_path / "o.h5")
    assert r.exit_code == 5 and "pip install 'neural-collapse-cli[hf]'" in r.stderr, r.stderr
    (folder / "model.safetensors").unlink()
    r = invoke("extract", folder, "--data", data, "-o", tmp_path / "o.h5")
    assert r.exit_code == 3 and "no weights" in r.stderr

