"""Eager ``nn.Module`` (state_dict + --arch, pickled modules, any model with --arch).

One batch runs with a forward hook on every ``nn.Linear``; the classifier is the one whose
output *is* the tensor the model returns (or a view of it; for a tuple/list output the first
tensor, for a dict or an object with ``logits``, that). Its input, captured by the hook, is the
penultimate feature. ``--classifier NAME`` overrides. The chosen module must be an
``nn.Linear`` whose input is (N, p), and features·Wᵀ + b must reproduce its output.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ncli.errors import RefusedError, UsageError
from ncli.extract.extractors.base import (
    Extractor, LinearRow, check_reconstruction, first_forward, guessed_input, model_dtype, output_tensor, pool_layer,
)
from ncli.extract.inputs import ModelInputs, batch_len, call_model


def _first_tensor(obj):
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        for v in obj:
            if isinstance(v, torch.Tensor):
                return v
    return None


class EagerExtractor(Extractor):
    kind = "eager"

    def __init__(self, model: nn.Module, classifier: str | None = None, layers=(), pool: str = "none", amp: bool = False):
        self.model = model.eval()
        self.amp = amp
        self.pool = pool
        self.modules = dict(model.named_modules())
        self.linear_names = [n for n, m in self.modules.items() if isinstance(m, nn.Linear)]
        self.requested = classifier
        if classifier is not None:
            if classifier not in self.modules:
                raise UsageError(
                    f"--classifier {classifier}: no such module (linear layers: {', '.join(self.linear_names) or 'none'})"
                )
            if not isinstance(self.modules[classifier], nn.Linear):
                raise RefusedError(
                    f"--classifier {classifier} is a {type(self.modules[classifier]).__name__}, not an nn.Linear; "
                    "ncli needs a linear classifier (features·Wᵀ + b)"
                )
        for lname in layers:
            if lname not in self.modules or lname == "":
                raise UsageError(f"--layer {lname}: no such module (see `ncli inspect` for the module tree)")
        self.layer_names = list(layers)
        self.dtype = model_dtype(model)
        self._handles: list = []
        self._captured: tuple | None = None
        self._layer_out: dict[str, torch.Tensor] = {}
        self.rows: list[LinearRow] = [
            LinearRow(n, self.modules[n].in_features, self.modules[n].out_features, self.modules[n].bias is not None)
            for n in self.linear_names
        ]

    def to(self, device) -> "EagerExtractor":
        self.model.to(device)
        return self

    def num_parameters(self) -> int:
        return int(sum(p.numel() for p in self.model.parameters()))

    def sample_input(self):
        return guessed_input(self.model)

    def _forward(self, inputs: ModelInputs):
        return call_model(self.model, inputs)

    def discover(self, inputs: ModelInputs) -> None:
        calls: dict[str, list[tuple[int, Any, Any]]] = {n: [] for n in self.linear_names}
        counter = [0]

        def make(name):
            def hook(mod, args, kwargs, out):
                inp = args[0] if args else kwargs.get("input")
                counter[0] += 1
                calls[name].append((counter[0], inp, out))

            return hook

        handles = [self.modules[n].register_forward_hook(make(n), with_kwargs=True) for n in self.linear_names]
        try:
            out = first_forward(self._forward, inputs)
        finally:
            for h in handles:
                h.remove()
        z, how = output_tensor(out)
        for row in self.rows:
            row.calls = len(calls[row.name])

        def produces(o) -> bool:
            if z is None or not isinstance(o, torch.Tensor):
                return False
            if o is z:
                return True
            return (
                o.numel() == z.numel() and o.numel() > 0 and o.dtype == z.dtype and o.device == z.device
                and o.data_ptr() == z.data_ptr()
            )

        matches = [(n, k) for n in self.linear_names for k, (_, _, o) in enumerate(calls[n]) if produces(o)]
        for row in self.rows:
            row.is_output = any(n == row.name for n, _ in matches)

        if self.requested is not None:
            name = self.requested
            if not calls[name]:
                raise RefusedError(f"--classifier {name}: the module is not called in the model's forward pass")
            self.found_by = "--classifier " + name + (" (its output is " + how + ")" if any(n == name for n, _ in matches) else "")
        else:
            if not self.linear_names:
                raise RefusedError(
                    f"the model has no nn.Linear layer: its head is not linear, which ncli does not support ({how.split(',')[0]})"
                )
            if z is None:
                raise RefusedError(f"cannot find the logits: {how}")
            if not matches:
                raise RefusedError(
                    f"the model's output ({how}) is not produced by any nn.Linear, so its head is not linear "
                    f"(e.g. a conv, a normalised/cosine head or post-processing); if one of the linear layers "
                    f"is the classifier, name it with --classifier ({', '.join(self.linear_names)})"
                )
            name, k = matches[-1]
            if k != len(calls[name]) - 1:
                raise RefusedError(
                    f"classifier {name!r} is called {len(calls[name])} times and the output comes from call {k + 1}; "
                    "ncli captures the last call"
                )
            self.found_by = f"forward hooks on {len(self.linear_names)} nn.Linear: its output is {how}"
        _, h, logits = calls[name][-1]
        mod = self.modules[name]
        n = batch_len(inputs)
        if not isinstance(h, torch.Tensor) or h.ndim != 2 or h.shape[0] != n:
            shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
            raise RefusedError(
                f"classifier {name!r} receives input of shape {shape} for a batch of {n}; "
                "ncli needs one feature vector per sample, (N, p)"
            )
        self.classifier = name
        self.weight = mod.weight.detach()
        self.bias = None if mod.bias is None else mod.bias.detach()
        self.first_batch_error = check_reconstruction(name, h, logits, self.weight, self.bias, self.amp)
        self._install(name)

    def _install(self, name: str) -> None:
        def classifier_hook(mod, args, kwargs, out):
            self._captured = (args[0] if args else kwargs.get("input"), out)

        self._handles.append(self.modules[name].register_forward_hook(classifier_hook, with_kwargs=True))
        for lname in self.layer_names:
            def layer_hook(mod, args, out, _name=lname):
                # pooled (or copied) now: a later in-place op (ReLU(inplace=True)) must not change it
                t = _first_tensor(out)
                if isinstance(t, torch.Tensor) and t.ndim >= 1:
                    pooled = pool_layer(t, self.pool)
                    self._layer_out[_name] = pooled.clone() if pooled.data_ptr() == t.data_ptr() else pooled
                else:
                    self._layer_out[_name] = None

            self._handles.append(self.modules[lname].register_forward_hook(layer_hook))

    def __call__(self, inputs: ModelInputs):
        self._captured = None
        self._layer_out.clear()
        call_model(self.model, inputs)
        if self._captured is None:
            raise RuntimeError(f"the classifier {self.classifier!r} was not called for this batch")
        h, z = self._captured
        layers = {}
        if self.layer_names:
            n = batch_len(inputs)
            for lname in self.layer_names:
                t = self._layer_out.get(lname)
                if t is None or t.shape[0] != n:
                    raise RefusedError(f"--layer {lname}: the module's output is not a tensor with one row per sample")
                layers[lname] = t
        return h, z, layers

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
