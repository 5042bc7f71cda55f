"""Issue 12, Lightning 2.6 checkpoints written by a real Trainer (skipped without lightning):
plain, with Hydra/OmegaConf hyper-parameters (read without --trust-checkpoint: the weights are
plain tensors, the DictConfig stays a placeholder), and with EMAWeightAveraging (--ema: the
averaged weights, the default: the raw ones). Each checked against the model's own forward
pass with a hook on its classifier, and measured."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import extract_models as em
from extract_util import arch, check_against, invoke, make_data, ok

pytestmark = pytest.mark.lightning
lightning = pytest.importorskip("lightning")


class Classifier(lightning.LightningModule):
    def __init__(self, cfg=None):
        super().__init__()
        if cfg is not None:
            self.save_hyperparameters(cfg)
        self.model = em.Net()
        self.loss = nn.CrossEntropyLoss(weight=torch.ones(em.C))  # a buffer beside the model's keys

    def training_step(self, batch, _index):
        x, y = batch
        return self.loss(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def train(tmp_path, data, *, cfg=None, callbacks=()):
    """Two epochs on CPU; the checkpoint saved during fit by ModelCheckpoint (last.ckpt)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    with np.load(data) as z:
        x, y = torch.from_numpy(z["x_train"]), torch.from_numpy(z["y_train"])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    torch.manual_seed(0)
    module = Classifier(cfg)
    trainer = lightning.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[*callbacks, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)], default_root_dir=tmp_path,
    )
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader)
    return module, tmp_path / "ckpt" / "last.ckpt"


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path)


def weights_of(checkpoint_entry) -> em.Net:
    net = em.Net().eval()
    net.load_state_dict({k[len("model."):]: v for k, v in checkpoint_entry.items() if k.startswith("model.")})
    return net


def test_plain_lightning_checkpoint(tmp_path, data):
    module, ck = train(tmp_path, data)
    out = tmp_path / "o.h5"
    ok(invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", out, "-q"))
    d = check_against(module.model.eval(), out, data)
    assert d["attrs"]["epoch"] == 1 and d["attrs"]["step"] == module.trainer.global_step == 10 and d["attrs"]["stripped_prefixes"] == "model."
    json.loads(ok(invoke("measure", out, "--json")).stdout)


def test_hydra_omegaconf_hyper_parameters(tmp_path, data):
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"model": {"width": 16, "classes": [0, 1, 2, 3]}, "optim": {"lr": 0.5}})
    module, ck = train(tmp_path, data, cfg=cfg)
    with pytest.raises(Exception):
        torch.load(ck, weights_only=True)  # what made ncli refuse it before
    out = tmp_path / "o.h5"
    ok(invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", out, "-q"))
    d = check_against(module.model.eval(), out, data)
    skipped = d["attrs"]["objects_not_loaded"]
    assert "omegaconf.dictconfig.DictConfig" in skipped and "builtins.dict" not in skipped and "typing.Any" not in skipped
    shown = json.loads(ok(invoke("inspect", ck, "--json")).stdout)
    assert "omegaconf" in shown["objects_not_loaded"] and shown["form"] == "state_dict"
    json.loads(ok(invoke("measure", out, "--json")).stdout)


def test_ema_weight_averaging(tmp_path, data):
    from lightning.pytorch.callbacks import EMAWeightAveraging

    _, ck = train(tmp_path, data, callbacks=[EMAWeightAveraging(decay=0.5)])
    saved = torch.load(ck, weights_only=True)
    averaged, raw = weights_of(saved["state_dict"]), weights_of(saved["current_model_state"])
    assert (averaged.fc.weight - raw.fc.weight).abs().max() > 1e-4  # two different sets of weights
    out = tmp_path / "ema.h5"
    ok(invoke("extract", ck, "--arch", arch("Net"), "--ema", "--data", data, "-o", out, "-q"))
    check_against(averaged, out, data)
    r = ok(invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", tmp_path / "raw.h5"))
    assert "also holds EMA weights" in r.stderr
    check_against(raw, tmp_path / "raw.h5", data)
    assert "EMAWeightAveraging" in json.loads(ok(invoke("inspect", ck, "--json")).stdout)["ema_weights"]
    json.loads(ok(invoke("measure", out, "--json")).stdout)
