"""Causal language models: one row per predicted token.

The classifier is the model's output layer (``get_output_embeddings()``, ``lm_head``; C = the
vocabulary size; tied to the input embeddings or not; no bias = zero bias), or --classifier.
A forward hook on it catches its input (N, L, D) and output (N, L, V); the rows are the
positions ``data.tokens.next_token_positions`` picks, in (sequence, position) order, and the
data source wrapper ``data.tokens.NextTokenSource`` gives the same rows their labels (the next
token) and indices. --layer outputs (N, L, D) are taken at the same positions.

Logits over a vocabulary (V floats per token) are not stored: the writer checks
features·Wᵀ + b against the first ``CHECK_ROWS`` rows of each batch, and ``ncli measure``
decides from the features and W, b.
"""

from __future__ import annotations

import inspect
from typing import Mapping

import torch
import torch.nn as nn

from ncli.errors import RefusedError, UsageError
from ncli.extract.data.tokens import next_token_positions, token_ids
from ncli.extract.extractors.base import Extractor, check_reconstruction, first_forward, model_dtype
from ncli.extract.extractors.eager import _first_tensor, checked_layer_names, linear_rows
from ncli.extract.inputs import ModelInputs

CHECK_ROWS = 64


class CausalLMExtractor(Extractor):
    kind = "causal-lm"
    stores_logits = False
    token_rows = True
    inspect_note = (
        "causal language model: one row per predicted token (the output layer's input at position t, "
        "labelled with the token at t + 1); logits over the vocabulary are not stored"
    )

    def __init__(self, model: nn.Module, classifier: str | None = None, layers=(), pool: str = "none", amp: bool = False):
        self.model = model.eval()
        self.amp = amp
        self.modules = dict(model.named_modules())
        linear_names = [n for n, m in self.modules.items() if isinstance(m, nn.Linear)]
        if classifier is not None:
            if classifier not in self.modules:
                raise UsageError(f"--classifier {classifier}: no such module (linear layers: {', '.join(linear_names) or 'none'})")
            head, self.found_by = self.modules[classifier], "--classifier " + classifier
        else:
            get = getattr(model, "get_output_embeddings", None)
            head = get() if callable(get) else None
            self.found_by = "the causal language model's output layer (get_output_embeddings): one row per predicted token"
        if not isinstance(head, nn.Linear):
            raise RefusedError(
                f"the language model's output layer is a {type(head).__name__}, not an nn.Linear; ncli needs a linear "
                "classifier (features·Wᵀ + b)"
            )
        self.classifier = next(n for n, m in self.modules.items() if m is head)
        self.head = head
        if pool != "none" and layers:
            raise UsageError(
                f"--pool {pool}: a causal language model's --layer outputs are stored per predicted token, like its "
                "features; leave --pool at none"
            )
        self.layer_names = checked_layer_names(self.modules, layers)
        self.layer_attrs: dict[str, dict] = {}
        self.dtype = model_dtype(model)
        self.rows = linear_rows(self.modules, linear_names)
        self._order: list[str] = []
        forward = getattr(model, "forward", None)
        try:
            self._no_cache = "use_cache" in inspect.signature(forward).parameters
        except (TypeError, ValueError):
            self._no_cache = False

    @property
    def weight(self) -> torch.Tensor:
        return self.head.weight.detach()

    @property
    def bias(self) -> torch.Tensor | None:
        return None if self.head.bias is None else self.head.bias.detach()

    def to(self, device) -> "CausalLMExtractor":
        self.model.to(device)
        return self

    def num_parameters(self) -> int:
        return int(sum(p.numel() for p in self.model.parameters()))

    def sample_input(self):
        vocab = int(self.head.out_features)
        ids = torch.randint(0, vocab, (2, 8), generator=torch.Generator().manual_seed(0))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, "random token ids (2, 8)"

    def _run(self, inputs: ModelInputs, watch_linears: bool = False):
        """(features, logits, layers) at the predicted positions; the hooks live for one call."""
        ids, mask = token_ids(inputs)
        caught: dict = {}
        order: list[str] = []

        def head_hook(mod, args, out):
            caught["head"] = (args[0], out)

        def layer_hook(name):
            def hook(mod, args, out):
                order.append(name)
                caught.setdefault(name, _first_tensor(out))

            return hook

        def count(row):
            def hook(mod, args, out):
                row.calls += 1

            return hook

        handles = [self.head.register_forward_hook(head_hook)]
        handles += [self.modules[n].register_forward_hook(layer_hook(n)) for n in self.layer_names]
        if watch_linears:
            for row in self.rows:
                row.calls = 0
                handles.append(self.modules[row.name].register_forward_hook(count(row)))
        kwargs = {"use_cache": False} if self._no_cache else {}
        try:
            if isinstance(inputs, Mapping):
                self.model(**inputs, **kwargs)
            else:
                self.model(input_ids=inputs, **kwargs)
        finally:
            for h in handles:
                h.remove()
        if "head" not in caught:
            raise RuntimeError(f"the output layer {self.classifier!r} was not called")
        h_all, z_all = caught["head"]
        if h_all.ndim != 3 or tuple(h_all.shape[:2]) != tuple(ids.shape):
            raise RefusedError(
                f"the output layer {self.classifier!r} receives input of shape {tuple(h_all.shape)} for token ids of shape "
                f"{tuple(ids.shape)}; ncli needs (sequences, length, hidden)"
            )
        seq, pos = next_token_positions(ids.to(h_all.device), None if mask is None else mask.to(h_all.device))
        layers = {}
        for name in self.layer_names:
            t = caught.get(name)
            if not isinstance(t, torch.Tensor) or t.ndim != 3 or tuple(t.shape[:2]) != tuple(ids.shape):
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else None
                raise RefusedError(f"--layer {name}: the module's output {shape} is not (sequences, length, hidden)")
            layers[name] = t[seq, pos]
        self._order = order
        return h_all[seq, pos], z_all[seq, pos], layers

    def discover(self, inputs: ModelInputs) -> None:
        h, z, _ = first_forward(lambda batch: self._run(batch, watch_linears=True), inputs)
        for row in self.rows:
            row.is_output = row.name == self.classifier
        if h.shape[0] == 0:
            raise RefusedError("the first batch has no predicted position (sequences of one token, or all masked)")
        self.first_batch_error = check_reconstruction(self.classifier, h, z, self.weight, self.bias, self.amp)
        first_seen = {name: self._order.index(name) for name in self.layer_names}
        ranked = sorted(self.layer_names, key=first_seen.__getitem__)
        for name in self.layer_names:
            self.layer_attrs[name] = {"depth": ranked.index(name), "pooled": "one row per predicted token"}

    def __call__(self, inputs: ModelInputs):
        h, z, layers = self._run(inputs)
        return h, z[:CHECK_ROWS], layers
