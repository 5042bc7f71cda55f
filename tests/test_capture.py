"""ncli.capture: the classifier's input and output in a training loop (the eager extractor's
discovery), and the README's training-loop example, run as written."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ncli
from extract_util import hooked
from ncli.cli import app
from ncli.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent


def _fixture_mlp():
    spec = importlib.util.spec_from_file_location("fixture_models", ROOT / "fixtures" / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    return module.MLP()  # batch norm: a stray forward pass in training mode would show


def test_capture_finds_the_classifier_and_leaves_the_model_as_it_was():
    net = _fixture_mlp().train()
    x = torch.rand(32, 64)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cap = ncli.capture(net)
    assert net.training
    with pytest.raises(UsageError, match="call the model first"):
        cap.weight  # noqa: B018
    out = net(x)  # discovery (eval, no_grad), then the real call
    assert net.training and out.requires_grad
    assert cap.classifier == "fc" and "its output is the tensor the model returns" in cap.found_by
    for key, value in net.state_dict().items():  # the training-mode call moved batch-norm statistics once
        if key.endswith("num_batches_tracked"):
            assert int(value) == int(before[key]) + 1, key
    net.eval()
    want_h, want_z = hooked(net, x.numpy(), "fc")
    with torch.no_grad():
        net(x)
    np.testing.assert_array_equal(cap.features.numpy(), want_h)
    np.testing.assert_array_equal(cap.logits.numpy(), want_z)
    assert torch.equal(cap.weight, net.fc.weight) and torch.equal(cap.bias, net.fc.bias)
    cap.close()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_capture_with_a_named_classifier_and_keyword_inputs():
    class Named(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = torch.nn.Linear(5, 7), torch.nn.Linear(7, 3)

        def forward(self, inputs):
            return self.head(torch.relu(self.body(inputs)))

    net = Named()
    cap = ncli.capture(net, classifier="body")
    x = torch.randn(4, 5)
    net(inputs=x)
    assert cap.classifier == "body" and torch.equal(cap.features, x)
    with pytest.raises(UsageError, match="one tensor or with keyword tensors only"):
        cap2 = ncli.capture(Named())
        cap2.model(x, extra=1)


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    loops = [b for b in blocks if "A complete loop" in text and "for epoch in range" in b]
    assert len(loops) == 1, "the README's training-loop example"
    return loops[0]


def test_the_readme_training_loop_runs_and_its_records_are_the_saved_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_example(), "README.md", "exec"), {"__name__": "readme"})
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["epoch"] for r in logged] == [1, 2, 3, 4, 5]
    assert logged[-1]["test_accuracy"] > 0.9  # four well separated classes
    result = CliRunner().invoke(app, ["compare", *sorted(str(p) for p in tmp_path.glob("epoch_*.stats.h5")), "--json"])
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)["runs"]
    assert [run["epoch"] for run in runs] == [1, 2, 3, 4, 5]
    assert [run["metrics"]["nc1"] for run in runs] == [r["nc1"] for r in logged]
