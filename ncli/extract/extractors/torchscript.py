"""TorchScript (``RecursiveScriptModule``).

Python hooks do not run inside TorchScript, so the classifier is found statically: in the
module's inlined graph, the value returned is produced by an ``aten::linear`` whose weight is
a ``prim::GetAttr`` chain from ``self`` (e.g. ``self.fc.weight``), which names the module. Its
input is then captured exactly by running the archive with that layer's weight replaced by the
p×p identity and its bias by zeros: the model then returns x·Iᵀ + 0 = x, the features, bit for
bit. Logits are computed from them with the original W, b (the same ``aten::linear``); on the
first batch the unmodified model is run as well and must agree. --layer is not available this
way; with --arch the archive's weights are loaded into the Python model instead and everything
works as for eager models.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ncli.errors import RefusedError, UsageError
from ncli.extract.extractors.base import (
    Extractor, LinearRow, check_reconstruction, first_forward, guessed_input, model_dtype, output_tensor,
)
from ncli.extract.inputs import ModelInputs, batch_len, call_model


def _attr_path(value) -> list[str] | None:
    """``self.a.b.weight`` -> ['a', 'b', 'weight'] for a chain of prim::GetAttr from self."""
    parts: list[str] = []
    node = value.node()
    while node.kind() == "prim::GetAttr":
        parts.append(node.s("name"))
        value = node.inputsAt(0)
        node = value.node()
    if node.kind() == "prim::Param":
        return list(reversed(parts))
    return None


def _submodule(root, path: list[str]):
    obj = root
    for p in path:
        obj = getattr(obj, p)
    return obj


class ScriptExtractor(Extractor):
    kind = "torchscript"
    found_statically = True
    inspect_note = (
        "TorchScript: hooks do not run; features are captured by running the archive with the "
        "classifier's weight set to the identity (exact); --layer needs --arch"
    )

    def __init__(self, sm, classifier: str | None = None, layers=(), pool: str = "none", amp: bool = False, path: str = ""):
        if layers:
            raise UsageError(
                f"{path}: --layer is not available for a TorchScript archive (forward hooks do not run in "
                "TorchScript); pass --arch to load the archive's weights into the Python model"
            )
        self.sm = sm.eval()
        self.amp = amp
        self.path = path
        graph = sm.inlined_graph
        self.linear_nodes: list[tuple[str, Any]] = []
        for node in graph.nodes():
            if node.kind() == "aten::linear":
                weight_path = _attr_path(node.inputsAt(1))
                self.linear_nodes.append((".".join(weight_path[:-1]) if weight_path else "?", node))
        ret = graph.return_node().inputsAt(0)
        how = "the tensor the model returns"
        node = ret.node()
        if node.kind() in ("prim::TupleConstruct", "prim::ListConstruct"):
            node = node.inputsAt(0).node()
            how = "the first element of the tuple the model returns"
        self.rows: list[LinearRow] = []
        for name, m in sm.named_modules():
            if getattr(m, "original_name", "") == "Linear" or (name and hasattr(m, "weight") and any(n == name for n, _ in self.linear_nodes)):
                w = getattr(m, "weight", None)
                b = getattr(m, "bias", None)
                shape = tuple(w.shape) if isinstance(w, torch.Tensor) and w.ndim == 2 else (None, None)
                calls = sum(1 for n, _ in self.linear_nodes if n == name)
                self.rows.append(LinearRow(name, shape[1], shape[0], isinstance(b, torch.Tensor), calls))
        out_path = None
        if node.kind() == "aten::linear":
            weight_path = _attr_path(node.inputsAt(1))
            if weight_path and weight_path[-1] == "weight":
                out_path = ".".join(weight_path[:-1])
        for row in self.rows:
            row.is_output = row.name == out_path
        name = classifier if classifier is not None else out_path
        if classifier is not None and classifier != out_path:
            raise RefusedError(
                f"{path}: --classifier {classifier}: in a TorchScript archive ncli can only capture the layer that "
                f"produces the model's output ({out_path or 'none'}); pass --arch to use another layer"
            )
        if name is None:
            produced = node.kind()
            raise RefusedError(
                f"{path}: the TorchScript model's output is produced by {produced}, not by a linear layer with "
                "its own weight attribute (a non-linear head, or a frozen archive); pass --arch to load its "
                f"weights into the Python model. Forms that work: state_dict/.safetensors with --arch, "
                "TorchScript with a linear output layer, torch.export .pt2, pickled modules with --trust-checkpoint"
            )
        uses = sum(1 for n, _ in self.linear_nodes if n == name)
        if uses != 1:
            raise RefusedError(
                f"{path}: classifier {name!r} is used {uses} times in the TorchScript graph; pass --arch to "
                "load the archive's weights into the Python model"
            )
        self.classifier = name
        self.owner = _submodule(sm, name.split(".")) if name else sm
        self.found_by = f"TorchScript graph: the aten::linear producing {how} uses self.{name}.weight"
        self.dtype = model_dtype(sm)
        self._swapped = False

    def to(self, device) -> "ScriptExtractor":
        self.sm.to(device)
        return self

    def num_parameters(self) -> int:
        return int(sum(p.numel() for p in self.sm.parameters()))

    def sample_input(self):
        return guessed_input(self.sm)

    def extra_attrs(self) -> dict:
        return {"first_batch_model_output_error": float(self.first_batch_error or 0.0)}

    def _set(self, weight, bias) -> None:
        self.owner.weight = nn.Parameter(weight, requires_grad=False)
        if bias is not None:
            self.owner.bias = nn.Parameter(bias, requires_grad=False)

    def discover(self, inputs: ModelInputs) -> None:
        W = self.owner.weight.detach().clone()
        b = self.owner.bias.detach().clone() if isinstance(getattr(self.owner, "bias", None), torch.Tensor) else None
        if W.ndim != 2:
            raise RefusedError(f"{self.path}: classifier {self.classifier!r} has a weight of shape {tuple(W.shape)}")
        self.weight, self.bias = W, b
        reference, how = output_tensor(first_forward(lambda batch: call_model(self.sm, batch), inputs))
        if reference is None:
            raise RefusedError(f"{self.path}: cannot find the logits: {how}")
        p = W.shape[1]
        eye = torch.eye(p, dtype=W.dtype, device=W.device)
        self._set(eye, None if b is None else torch.zeros(p, dtype=b.dtype, device=b.device))
        self._swapped = True
        h, z, _ = self(inputs)
        if h.ndim != 2 or h.shape != (batch_len(inputs), p):
            raise RefusedError(
                f"{self.path}: capturing the input of {self.classifier!r} failed (got shape {tuple(h.shape)}); "
                "pass --arch to load the archive's weights into the Python model"
            )
        self.first_batch_error = float((z.double() - reference.double()).abs().max().item()) if reference.numel() else 0.0
        check_reconstruction(self.classifier, h, reference, W, b, self.amp)

    def __call__(self, inputs: ModelInputs):
        h, _ = output_tensor(call_model(self.sm, inputs))
        z = F.linear(h, self.weight.to(h.dtype), None if self.bias is None else self.bias.to(h.dtype))
        return h, z, {}

    def close(self) -> None:
        if self._swapped:
            self._set(self.weight, self.bias)
            self._swapped = False
