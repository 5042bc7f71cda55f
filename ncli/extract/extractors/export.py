"""torch.export (``.pt2``).

The program's graph is read: the ``aten.linear`` (or ``addmm``/``mm`` of a transposed weight)
node that produces the returned value is the classifier (its ``nn_module_stack`` names the
module); a copy of the graph returns that node's input and output (and the outputs of --layer
modules) besides. Programs exported with a fixed batch size get their last batch padded and
the padding dropped.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ncli.errors import RefusedError, UsageError
from ncli.extract.extractors.base import (
    TOKEN_POOLS, Extractor, LinearRow, check_reconstruction, describe_pool, first_forward, is_token_layout, pool_layer,
)
from ncli.extract.inputs import ModelInputs


def _fx_get_attr(gm, target: str):
    obj = gm
    for p in target.split("."):
        obj = getattr(obj, p)
    return obj


def _module_path(node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    return list(stack.values())[-1][0]


def _in_module(node, path: str) -> bool:
    stack = node.meta.get("nn_module_stack") or {}
    return any(v[0] == path for v in stack.values())


def _linear_parts(node):
    """(input node, weight get_attr node, bias get_attr node | None) for a linear-like node."""
    aten = torch.ops.aten
    if node.op != "call_function":
        return None
    if node.target is aten.linear.default:
        inp, w = node.args[0], node.args[1]
        b = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        if getattr(w, "op", None) == "get_attr":
            return inp, w, b if getattr(b, "op", None) == "get_attr" else None
        return None

    def transposed_weight(n):
        if getattr(n, "op", None) == "call_function" and n.target in (aten.t.default, aten.permute.default):
            w = n.args[0]
            if n.target is aten.permute.default and list(n.args[1]) != [1, 0]:
                return None
            return w if getattr(w, "op", None) == "get_attr" else None
        return None

    if node.target is aten.addmm.default and len(node.args) >= 3 and not node.kwargs:
        w = transposed_weight(node.args[2])
        b = node.args[0]
        if w is not None and getattr(b, "op", None) == "get_attr":
            return node.args[1], w, b
    if node.target is aten.mm.default:
        w = transposed_weight(node.args[1])
        if w is not None:
            return node.args[0], w, None
    return None


def _flat(args):
    if isinstance(args, (tuple, list)):
        for v in args:
            yield from _flat(v)
    elif isinstance(args, dict):
        for v in args.values():
            yield from _flat(v)
    else:
        yield args


class ExportExtractor(Extractor):
    kind = "torch.export"
    found_statically = True

    def __init__(self, ep, classifier: str | None = None, layers=(), pool: str = "none", amp: bool = False, path: str = ""):
        self.program = ep
        self.path = path
        self.amp = amp
        self.pool = pool
        with torch.no_grad():
            gm = ep.module()
        graph = gm.graph
        nodes = list(graph.nodes)
        placeholders = [n for n in nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise RefusedError(f"{path}: the exported program takes {len(placeholders)} inputs; ncli feeds it one tensor")
        val = placeholders[0].meta.get("val")
        self.dtype = getattr(val, "dtype", torch.float32)
        first_dim = val.shape[0] if val is not None and len(val.shape) else None
        self.fixed_batch = int(first_dim) if isinstance(first_dim, int) else None
        out_node = [n for n in nodes if n.op == "output"][0]
        outs = [a for a in _flat(out_node.args) if isinstance(a, torch.fx.Node)]
        first = outs[0] if outs else None
        self.linears: list[tuple[str, Any, tuple]] = []
        for n in nodes:
            parts = _linear_parts(n)
            if parts is not None:
                module_path = _module_path(n) or parts[1].target.rsplit(".", 1)[0]
                self.linears.append((module_path, n, parts))
        self.rows = []
        for module_path, n, (inp, w, b) in self.linears:
            W = _fx_get_attr(gm, w.target)
            self.rows.append(LinearRow(module_path, int(W.shape[1]), int(W.shape[0]), b is not None, 1, n is first))
        if classifier is not None:
            candidates = [t for t in self.linears if t[0] == classifier]
            if not candidates:
                raise UsageError(
                    f"{path}: --classifier {classifier}: no linear layer of that name in the exported graph "
                    f"(linear layers: {', '.join(t[0] for t in self.linears) or 'none'})"
                )
            if len(candidates) > 1:
                raise RefusedError(f"{path}: --classifier {classifier} is applied {len(candidates)} times in the graph")
            chosen = candidates[0]
            self.found_by = "--classifier " + classifier
        else:
            candidates = [t for t in self.linears if t[1] is first]
            if not candidates:
                raise RefusedError(
                    f"{path}: the exported program's output is produced by "
                    f"{getattr(first, 'target', 'nothing')}, not by a linear layer: its head is not linear"
                )
            chosen = candidates[0]
            self.found_by = f"torch.export graph: the {chosen[1].target} node producing the program's first output"
        module_path, logits_node, (features_node, weight_node, bias_node) = chosen
        self.classifier = module_path
        self.weight = _fx_get_attr(gm, weight_node.target).detach()
        self.bias = None if bias_node is None else _fx_get_attr(gm, bias_node.target).detach()

        self.layer_names = list(layers)
        layer_nodes = []
        for lname in self.layer_names:
            inside = [n for n in nodes if n.op == "call_function" and _in_module(n, lname)]
            if not inside:
                raise UsageError(f"{path}: --layer {lname}: no such module in the exported graph")
            members = set(inside)
            exits = [n for n in inside if any(u not in members for u in n.users)]
            if len(exits) != 1:
                raise RefusedError(f"{path}: --layer {lname}: the module's output is not a single node in the exported graph")
            layer_nodes.append(exits[0])
        position = {n: i for i, n in enumerate(nodes)}
        ranked = sorted(range(len(layer_nodes)), key=lambda i: position[layer_nodes[i]])
        self._layer_tokens: dict[str, bool] = {}
        self.layer_attrs: dict[str, dict] = {}
        for i, (lname, node) in enumerate(zip(self.layer_names, layer_nodes)):
            shape = tuple(getattr(node.meta.get("val"), "shape", ()) or ())
            tokens = is_token_layout(shape, pool, False, int(self.weight.shape[1]))
            if pool in TOKEN_POOLS and len(shape) > 2 and not tokens:
                raise UsageError(f"{path}: --layer {lname}: --pool {pool} pools tokens (N, L, D), the output is {shape}")
            self._layer_tokens[lname] = tokens
            self.layer_attrs[lname] = {"depth": ranked.index(i), "pooled": describe_pool(shape, pool, tokens, False)}
        g = torch.fx.Graph()
        env: dict = {}
        g.graph_copy(graph, env)
        g.output((env[features_node], env[logits_node], *[env[n] for n in layer_nodes]))
        self.capture = torch.fx.GraphModule(gm, g)

    def to(self, device) -> "ExportExtractor":
        self.capture.to(device)
        self.weight = self.weight.to(device)
        if self.bias is not None:
            self.bias = self.bias.to(device)
        return self

    def sample_input(self):
        example = getattr(self.program, "example_inputs", None)
        if example and example[0] and isinstance(example[0][0], torch.Tensor):
            return example[0][0], "the program's example input"
        return None, None

    def discover(self, inputs: ModelInputs) -> None:
        if isinstance(inputs, Mapping):
            raise RefusedError(
                f"{self.path}: the exported program takes one tensor, the data gives named inputs "
                f"({', '.join(inputs)}); pass --arch to run the Python model"
            )
        h, z, _ = first_forward(self, inputs)
        if h.ndim != 2 or h.shape[0] != inputs.shape[0]:
            raise RefusedError(f"{self.path}: classifier {self.classifier!r} receives input of shape {tuple(h.shape)}; ncli needs (N, p)")
        self.first_batch_error = check_reconstruction(self.classifier, h, z, self.weight, self.bias, self.amp)

    def __call__(self, x: torch.Tensor):
        n = x.shape[0]
        if self.fixed_batch is not None and n != self.fixed_batch:
            if n > self.fixed_batch:
                raise RuntimeError("batch larger than the program's fixed batch size")
            pad = x[-1:].expand(self.fixed_batch - n, *x.shape[1:])
            x = torch.cat([x, pad], 0)
        h, z, *outs = self.capture(x)
        layers = {name: pool_layer(t, self.pool, tokens=self._layer_tokens[name])[:n] for name, t in zip(self.layer_names, outs)}
        return h[:n], z[:n], layers
