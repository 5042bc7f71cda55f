"""Eager ``nn.Module`` (state_dict + --arch, pickled modules, any model with --arch).

One batch runs with a forward hook on every ``nn.Linear``; the classifier is the one whose
output *is* the tensor the model returns (or a view of it; for a tuple/list output the first
tensor, for a dict or an object with ``logits``, that). Its input, captured by the hook, is the
penultimate feature. ``--classifier NAME`` overrides. The chosen module must be an
``nn.Linear`` whose input is (N, p), and features·Wᵀ + b must reproduce its output.

--layer modules are hooked on that batch too: the order their outputs appear in is their depth,
and their shapes say how they are pooled (channels first, or tokens: see ``base.pool_layer``).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn

from ncli.errors import RefusedError, UsageError
from ncli.extract.extractors.base import (
    TOKEN_POOLS, Extractor, LinearRow, check_reconstruction, describe_pool, first_forward, guessed_input,
    is_token_layout, model_dtype, output_tensor, pool_layer,
)
from ncli.extract.inputs import ModelInputs, attention_mask, batch_len, call_model


def checked_layer_names(modules: Mapping[str, nn.Module], layers) -> list[str]:
    """The ``--layer`` names, each a module of the model (the root's empty name is not one)."""
    for lname in layers:
        if lname not in modules or lname == "":
            raise UsageError(f"--layer {lname}: no such module (see `ncli inspect` for the module tree)")
    return list(layers)


def linear_rows(modules: Mapping[str, nn.Module], names) -> list[LinearRow]:
    """``ncli inspect``'s row of each named nn.Linear."""
    return [LinearRow(n, modules[n].in_features, modules[n].out_features, modules[n].bias is not None) for n in names]


def _first_tensor(obj):
    """A module's output tensor: the tensor, or the first one of a tuple, list or dict (a
    transformers ModelOutput is a dict: its first entry, e.g. last_hidden_state)."""
    if isinstance(obj, torch.Tensor):
        return obj
    values = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (tuple, list)) else ()
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
    return None


def is_transformers_model(model) -> bool:
    """A transformers PreTrainedModel (its layers' 3-D outputs are tokens), told without importing it."""
    return any(c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers") for c in type(model).__mro__)


class EagerExtractor(Extractor):
    kind = "eager"

    def __init__(
        self, model: nn.Module, classifier: str | None = None, layers=(), pool: str = "none", amp: bool = False,
        *, token_layout: bool | None = None, sample=None,
    ):
        """``token_layout``: the model's 3-D layer outputs are (N, L, D) tokens (None: a
        transformers model's are). ``sample``: (inputs, how) for ``ncli inspect`` without data."""
        self.model = model.eval()
        self.amp = amp
        self.pool = pool
        self.token_model = is_transformers_model(model) if token_layout is None else token_layout
        self.sample = sample
        self.layer_attrs: dict[str, dict] = {}
        self._layer_tokens: dict[str, bool] = {}
        self._mask = None
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
        self.layer_names = checked_layer_names(self.modules, layers)
        self.dtype = model_dtype(model)
        self._handles: list = []
        self._captured: tuple | None = None
        self._layer_out: dict[str, torch.Tensor] = {}
        self.rows: list[LinearRow] = linear_rows(self.modules, self.linear_names)

    def to(self, device) -> "EagerExtractor":
        self.model.to(device)
        return self

    def num_parameters(self) -> int:
        return int(sum(p.numel() for p in self.model.parameters()))

    def sample_input(self):
        return self.sample if self.sample is not None else guessed_input(self.model)

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

        seen: dict[str, tuple[int, tuple | None]] = {}  # --layer: (first call, output shape)

        def watch(name):
            def hook(mod, args, out):
                counter[0] += 1
                t = _first_tensor(out)
                seen.setdefault(name, (counter[0], tuple(t.shape) if isinstance(t, torch.Tensor) else None))

            return hook

        handles = [self.modules[n].register_forward_hook(make(n), with_kwargs=True) for n in self.linear_names]
        handles += [self.modules[n].register_forward_hook(watch(n)) for n in self.layer_names]
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
        self._describe_layers(seen, inputs)
        self._install(name)

    def _describe_layers(self, seen: dict, inputs: ModelInputs) -> None:
        """Depth (forward order) and pooling of each --layer, from the first batch."""
        for lname in self.layer_names:
            if lname not in seen:
                raise RefusedError(f"--layer {lname}: the module is not called in the model's forward pass")
        order = sorted(self.layer_names, key=lambda lname: seen[lname][0])
        masked = attention_mask(inputs) is not None
        for lname in self.layer_names:
            shape = seen[lname][1] or ()
            tokens = is_token_layout(shape, self.pool, self.token_model, self.feature_dim)
            if self.pool in TOKEN_POOLS and len(shape) > 2 and not tokens:
                raise UsageError(
                    f"--layer {lname}: --pool {self.pool} pools tokens (N, L, D), the module's output is {shape}; "
                    "use --pool avg or max for channels-first outputs"
                )
            self._layer_tokens[lname] = tokens
            self.layer_attrs[lname] = {"depth": order.index(lname), "pooled": describe_pool(shape, self.pool, tokens, masked)}

    def _install(self, name: str) -> None:
        def classifier_hook(mod, args, kwargs, out):
            self._captured = (args[0] if args else kwargs.get("input"), out)

        self._handles.append(self.modules[name].register_forward_hook(classifier_hook, with_kwargs=True))
        for lname in self.layer_names:
            def layer_hook(mod, args, out, _name=lname):
                # pooled (or copied) now: a later in-place op (ReLU(inplace=True)) must not change it
                t = _first_tensor(out)
                if isinstance(t, torch.Tensor) and t.ndim >= 1:
                    pooled = pool_layer(t, self.pool, tokens=self._layer_tokens.get(_name, False), mask=self._mask)
                    self._layer_out[_name] = pooled.clone() if pooled.data_ptr() == t.data_ptr() else pooled
                else:
                    self._layer_out[_name] = None

            self._handles.append(self.modules[lname].register_forward_hook(layer_hook))

    def __call__(self, inputs: ModelInputs):
        self._captured = None
        self._layer_out.clear()
        self._mask = attention_mask(inputs)
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
