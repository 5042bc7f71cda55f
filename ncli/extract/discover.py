"""Finding the classifier and capturing its input, for each kind of model.

Eager ``nn.Module`` (state_dict + --arch, pickled modules):
  one batch runs with a forward hook on every ``nn.Linear``; the classifier is the one whose
  output *is* the tensor the model returns (or a view of it; for a tuple/list output the first
  tensor, for a dict or an object with ``logits``, that). Its input, captured by the hook, is
  the penultimate feature. ``--classifier NAME`` overrides. The chosen module must be an
  ``nn.Linear`` whose input is (N, p), and features·Wᵀ + b must reproduce its output.

TorchScript (``RecursiveScriptModule``):
  Python hooks do not run inside TorchScript, so the classifier is found statically: in the
  module's inlined graph, the value returned is produced by an ``aten::linear`` whose weight
  is a ``prim::GetAttr`` chain from ``self`` (e.g. ``self.fc.weight``), which names the
  module. Its input is then captured exactly by running the archive with that layer's weight
  replaced by the p×p identity and its bias by zeros: the model then returns x·Iᵀ + 0 = x,
  the features, bit for bit. Logits are computed from them with the original W, b (the same
  ``aten::linear``); on the first batch the unmodified model is run as well and must agree.
  --layer is not available this way; with --arch the archive's weights are loaded into the
  Python model instead and everything works as for eager models.

torch.export (``.pt2``):
  the program's graph is read: the ``aten.linear`` (or ``addmm``/``mm`` of a transposed
  weight) node that produces the returned value is the classifier (its ``nn_module_stack``
  names the module); a copy of the graph returns that node's input and output (and the
  outputs of --layer modules) besides. Programs exported with a fixed batch size get their
  last batch padded and the padding dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ncli.errors import InputError, NcliError, RefusedError, UsageError

POOLS = ("none", "avg", "max")


@dataclass
class LinearRow:
    name: str
    in_features: int | None
    out_features: int | None
    bias: bool
    calls: int = 0
    is_output: bool = False
    note: str = ""


def output_tensor(out) -> tuple[torch.Tensor | None, str]:
    """The logits among what a model returns, and how they were picked."""
    if isinstance(out, torch.Tensor):
        return out, "the tensor the model returns"
    lg = getattr(out, "logits", None)
    if isinstance(lg, torch.Tensor):
        return lg, "the .logits of the model's output"
    if isinstance(out, Mapping):
        for k in ("logits", "out", "output"):
            if isinstance(out.get(k), torch.Tensor):
                return out[k], f"the {k!r} entry of the dict the model returns"
        return None, f"the model returns a dict without a 'logits' tensor (keys: {', '.join(map(str, out))})"
    if isinstance(out, (tuple, list)):
        for i, v in enumerate(out):
            if isinstance(v, torch.Tensor):
                return v, f"the first tensor (element {i}) of the {type(out).__name__} the model returns"
    return None, f"the model returns a {type(out).__name__}, not a tensor"


def pool_layer(t: torch.Tensor, pool: str) -> torch.Tensor:
    if t.ndim > 2 and pool == "avg":
        t = t.mean(dim=tuple(range(2, t.ndim)))
    elif t.ndim > 2 and pool == "max":
        t = t.amax(dim=tuple(range(2, t.ndim)))
    return t.reshape(t.shape[0], -1)


def _first_tensor(obj):
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        for v in obj:
            if isinstance(v, torch.Tensor):
                return v
    return None


def reconstruction_bound(h: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> float:
    bound = (h.detach().double().abs() @ W.detach().double().abs().T).max().item()
    if b is not None:
        bound += b.detach().double().abs().max().item()
    return bound


class ForwardFailed(InputError):
    """The model raised on the first batch (the inputs do not fit it, or it is broken)."""

    def __init__(self, message: str, cause: str):
        super().__init__(message)
        self.cause = cause


def first_forward(fn, x: torch.Tensor):
    """Run the model on the first batch; its failure (inputs that do not fit the model, or a
    model that raises) is the user's input problem, reported in one line, not an ncli bug."""
    try:
        return fn(x)
    except (NcliError, MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as exc:
        cause = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
        raise ForwardFailed(
            f"the model fails on the first batch (inputs of shape {tuple(x.shape)}, "
            f"{str(x.dtype).replace('torch.', '')}): {cause}",
            cause,
        ) from None


def check_reconstruction(name: str, h, z, W, b, amp: bool) -> float:
    """max |h·Wᵀ + b − z| over the batch's finite feature rows; refuse when it is beyond
    floating point rounding. Rows with NaN/Inf features (NaN inputs, or a model that makes
    them) are not a sign of a non-linear head: extract records them, and measure refuses them."""
    if isinstance(h, torch.Tensor) and isinstance(z, torch.Tensor) and h.ndim == 2 and z.ndim >= 1 and h.shape[0] == z.shape[0]:
        finite = torch.isfinite(h.detach()).all(dim=1)
        if not bool(finite.all()):
            if not bool(finite.any()):
                raise InputError(
                    f"classifier {name!r}: every feature row of the first batch is NaN or Inf (NaN or Inf in the inputs?); "
                    "cannot check that features·Wᵀ + b gives the model's output"
                )
            h, z = h[finite], z[finite]
    rec = F.linear(h.detach().double(), W.detach().double(), None if b is None else b.detach().double())
    err = (rec - z.detach().double()).abs().max().item() if z.numel() else 0.0
    bound = reconstruction_bound(h, W, b)
    tol = (2e-2 if amp or h.dtype in (torch.float16, torch.bfloat16) else 1e-4) * max(bound, 1e-6)
    if not err <= tol:  # also catches NaN
        raise RefusedError(
            f"classifier {name!r}: features·Wᵀ + b does not reproduce its output (max error {err:.3g}, "
            f"scale {bound:.3g}); a head that is not a plain linear layer is not supported"
        )
    return err


def _model_dtype(module) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    for bf in module.buffers():
        if bf.is_floating_point():
            return bf.dtype
    return torch.float32


class Extractor:
    """Common interface: discover(x) once, then __call__(x) -> (features, logits, layers)."""

    kind = "?"
    classifier: str = ""
    found_by: str = ""
    weight: torch.Tensor
    bias: torch.Tensor | None
    fixed_batch: int | None = None
    first_batch_error: float | None = None

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.weight.shape[1])


# ---------------------------------------------------------------------------------------
# eager modules
# ---------------------------------------------------------------------------------------


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
        self.dtype = _model_dtype(model)
        self._handles: list = []
        self._cap: tuple | None = None
        self._layer_out: dict[str, torch.Tensor] = {}
        self.rows: list[LinearRow] = [
            LinearRow(n, self.modules[n].in_features, self.modules[n].out_features, self.modules[n].bias is not None)
            for n in self.linear_names
        ]

    def to(self, device) -> "EagerExtractor":
        self.model.to(device)
        return self

    def discover(self, x: torch.Tensor) -> None:
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
            out = first_forward(self.model, x)
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
        _, h, zz = calls[name][-1]
        mod = self.modules[name]
        if not isinstance(h, torch.Tensor) or h.ndim != 2 or h.shape[0] != x.shape[0]:
            shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
            raise RefusedError(
                f"classifier {name!r} receives input of shape {shape} for a batch of {x.shape[0]}; "
                "ncli needs one feature vector per sample, (N, p)"
            )
        self.classifier = name
        self.weight = mod.weight.detach()
        self.bias = None if mod.bias is None else mod.bias.detach()
        self.first_batch_error = check_reconstruction(name, h, zz, self.weight, self.bias, self.amp)
        self._install(name)

    def _install(self, name: str) -> None:
        def cls_hook(mod, args, kwargs, out):
            self._cap = (args[0] if args else kwargs.get("input"), out)

        self._handles.append(self.modules[name].register_forward_hook(cls_hook, with_kwargs=True))
        for lname in self.layer_names:
            def lhook(mod, args, out, _n=lname):
                # pooled (or copied) now: a later in-place op (ReLU(inplace=True)) must not change it
                t = _first_tensor(out)
                if isinstance(t, torch.Tensor) and t.ndim >= 1:
                    pooled = pool_layer(t, self.pool)
                    self._layer_out[_n] = pooled.clone() if pooled.data_ptr() == t.data_ptr() else pooled
                else:
                    self._layer_out[_n] = None

            self._handles.append(self.modules[lname].register_forward_hook(lhook))

    def __call__(self, x: torch.Tensor):
        self._cap = None
        self._layer_out.clear()
        self.model(x)
        if self._cap is None:
            raise RuntimeError(f"the classifier {self.classifier!r} was not called for this batch")
        h, z = self._cap
        layers = {}
        for lname in self.layer_names:
            t = self._layer_out.get(lname)
            if t is None or t.shape[0] != x.shape[0]:
                raise RefusedError(f"--layer {lname}: the module's output is not a tensor with one row per sample")
            layers[lname] = t
        return h, z, layers

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


# ---------------------------------------------------------------------------------------
# TorchScript
# ---------------------------------------------------------------------------------------


def _ts_attr_path(value) -> list[str] | None:
    parts: list[str] = []
    node = value.node()
    while node.kind() == "prim::GetAttr":
        parts.append(node.s("name"))
        value = node.inputsAt(0)
        node = value.node()
    if node.kind() == "prim::Param":
        return list(reversed(parts))
    return None


def _ts_is_none(value) -> bool:
    n = value.node()
    return n.kind() == "prim::Constant" and str(value.type()) == "NoneType"


def _submodule(root, path: list[str]):
    obj = root
    for p in path:
        obj = getattr(obj, p)
    return obj


class ScriptExtractor(Extractor):
    kind = "torchscript"

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
                wp = _ts_attr_path(node.inputsAt(1))
                self.linear_nodes.append((".".join(wp[:-1]) if wp else "?", node))
        ret = graph.return_node().inputsAt(0)
        how = "the tensor the model returns"
        node = ret.node()
        if node.kind() in ("prim::TupleConstruct", "prim::ListConstruct"):
            node = node.inputsAt(0).node()
            how = "the first element of the tuple the model returns"
        self.out_node = node
        self.rows: list[LinearRow] = []
        seen = set()
        for name, m in sm.named_modules():
            if getattr(m, "original_name", "") == "Linear" or (name and hasattr(m, "weight") and any(n == name for n, _ in self.linear_nodes)):
                w = getattr(m, "weight", None)
                b = getattr(m, "bias", None)
                shape = tuple(w.shape) if isinstance(w, torch.Tensor) and w.ndim == 2 else (None, None)
                calls = sum(1 for n, _ in self.linear_nodes if n == name)
                self.rows.append(LinearRow(name, shape[1], shape[0], isinstance(b, torch.Tensor), calls))
                seen.add(name)
        out_path = None
        if node.kind() == "aten::linear":
            wp = _ts_attr_path(node.inputsAt(1))
            if wp and wp[-1] == "weight":
                out_path = ".".join(wp[:-1])
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
        self.dtype = _model_dtype(sm)
        self._swapped = False

    def to(self, device) -> "ScriptExtractor":
        self.sm.to(device)
        return self

    def _set(self, weight, bias) -> None:
        self.owner.weight = nn.Parameter(weight, requires_grad=False)
        if bias is not None:
            self.owner.bias = nn.Parameter(bias, requires_grad=False)

    def discover(self, x: torch.Tensor) -> None:
        W = self.owner.weight.detach().clone()
        b = self.owner.bias.detach().clone() if isinstance(getattr(self.owner, "bias", None), torch.Tensor) else None
        if W.ndim != 2:
            raise RefusedError(f"{self.path}: classifier {self.classifier!r} has a weight of shape {tuple(W.shape)}")
        self.weight, self.bias = W, b
        ref, how = output_tensor(first_forward(self.sm, x))
        if ref is None:
            raise RefusedError(f"{self.path}: cannot find the logits: {how}")
        p = W.shape[1]
        eye = torch.eye(p, dtype=W.dtype, device=W.device)
        self._set(eye, None if b is None else torch.zeros(p, dtype=b.dtype, device=b.device))
        self._swapped = True
        h, z, _ = self(x)
        if h.ndim != 2 or h.shape != (x.shape[0], p):
            raise RefusedError(
                f"{self.path}: capturing the input of {self.classifier!r} failed (got shape {tuple(h.shape)}); "
                "pass --arch to load the archive's weights into the Python model"
            )
        self.first_batch_error = float((z.double() - ref.double()).abs().max().item()) if ref.numel() else 0.0
        check_reconstruction(self.classifier, h, ref, W, b, self.amp)

    def __call__(self, x: torch.Tensor):
        h, _ = output_tensor(self.sm(x))
        z = F.linear(h, self.weight.to(h.dtype), None if self.bias is None else self.bias.to(h.dtype))
        return h, z, {}

    def close(self) -> None:
        if self._swapped:
            self._set(self.weight, self.bias)
            self._swapped = False


# ---------------------------------------------------------------------------------------
# torch.export
# ---------------------------------------------------------------------------------------


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


class ExportExtractor(Extractor):
    kind = "torch.export"

    def __init__(self, ep, classifier: str | None = None, layers=(), pool: str = "none", amp: bool = False, path: str = ""):
        self.path = path
        self.amp = amp
        self.pool = pool
        with torch.no_grad():
            gm = ep.module()
        self.gm = gm
        graph = gm.graph
        nodes = list(graph.nodes)
        placeholders = [n for n in nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise RefusedError(f"{path}: the exported program takes {len(placeholders)} inputs; ncli feeds it one tensor")
        val = placeholders[0].meta.get("val")
        self.dtype = getattr(val, "dtype", torch.float32)
        b0 = val.shape[0] if val is not None and len(val.shape) else None
        self.fixed_batch = int(b0) if isinstance(b0, int) else None
        out_node = [n for n in nodes if n.op == "output"][0]

        def flat(a):
            if isinstance(a, (tuple, list)):
                for v in a:
                    yield from flat(v)
            elif isinstance(a, dict):
                for v in a.values():
                    yield from flat(v)
            else:
                yield a

        outs = [a for a in flat(out_node.args) if isinstance(a, torch.fx.Node)]
        first = outs[0] if outs else None
        self.linears: list[tuple[str, Any, tuple]] = []
        for n in nodes:
            parts = _linear_parts(n)
            if parts is not None:
                mp = _module_path(n) or parts[1].target.rsplit(".", 1)[0]
                self.linears.append((mp, n, parts))
        self.rows = []
        for mp, n, (inp, w, b) in self.linears:
            W = _fx_get_attr(gm, w.target)
            self.rows.append(LinearRow(mp, int(W.shape[1]), int(W.shape[0]), b is not None, 1, n is first))
        if classifier is not None:
            cands = [t for t in self.linears if t[0] == classifier]
            if not cands:
                raise UsageError(
                    f"{path}: --classifier {classifier}: no linear layer of that name in the exported graph "
                    f"(linear layers: {', '.join(t[0] for t in self.linears) or 'none'})"
                )
            if len(cands) > 1:
                raise RefusedError(f"{path}: --classifier {classifier} is applied {len(cands)} times in the graph")
            chosen = cands[0]
            self.found_by = "--classifier " + classifier
        else:
            cands = [t for t in self.linears if t[1] is first]
            if not cands:
                raise RefusedError(
                    f"{path}: the exported program's output is produced by "
                    f"{getattr(first, 'target', 'nothing')}, not by a linear layer: its head is not linear"
                )
            chosen = cands[0]
            self.found_by = f"torch.export graph: the {chosen[1].target} node producing the program's first output"
        mp, znode, (hnode, wnode, bnode) = chosen
        self.classifier = mp
        self.weight = _fx_get_attr(gm, wnode.target).detach()
        self.bias = None if bnode is None else _fx_get_attr(gm, bnode.target).detach()

        self.layer_names = list(layers)
        layer_nodes = []
        for lname in self.layer_names:
            inside = [n for n in nodes if n.op == "call_function" and _in_module(n, lname)]
            if not inside:
                raise UsageError(f"{path}: --layer {lname}: no such module in the exported graph")
            ins = set(inside)
            exits = [n for n in inside if any(u not in ins for u in n.users)]
            if len(exits) != 1:
                raise RefusedError(f"{path}: --layer {lname}: the module's output is not a single node in the exported graph")
            layer_nodes.append(exits[0])
        g = torch.fx.Graph()
        env: dict = {}
        g.graph_copy(graph, env)
        g.output((env[hnode], env[znode], *[env[n] for n in layer_nodes]))
        self.cap = torch.fx.GraphModule(gm, g)

    def to(self, device) -> "ExportExtractor":
        self.cap.to(device)
        self.weight = self.weight.to(device)
        if self.bias is not None:
            self.bias = self.bias.to(device)
        return self

    def discover(self, x: torch.Tensor) -> None:
        h, z, _ = first_forward(self, x)
        if h.ndim != 2 or h.shape[0] != x.shape[0]:
            raise RefusedError(f"{self.path}: classifier {self.classifier!r} receives input of shape {tuple(h.shape)}; ncli needs (N, p)")
        self.first_batch_error = check_reconstruction(self.classifier, h, z, self.weight, self.bias, self.amp)

    def __call__(self, x: torch.Tensor):
        n = x.shape[0]
        if self.fixed_batch is not None and n != self.fixed_batch:
            if n > self.fixed_batch:
                raise RuntimeError("batch larger than the program's fixed batch size")
            pad = x[-1:].expand(self.fixed_batch - n, *x.shape[1:])
            x = torch.cat([x, pad], 0)
        h, z, *ls = self.cap(x)
        layers = {name: pool_layer(t, self.pool)[:n] for name, t in zip(self.layer_names, ls)}
        return h[:n], z[:n], layers

    def close(self) -> None:
        pass


def make_extractor(ckpt, model=None, *, classifier=None, layers=(), pool="none", amp=False) -> Extractor:
    """The extractor for a loaded checkpoint (``model``: an --arch model with the weights in)."""
    if pool not in POOLS:
        raise UsageError(f"--pool {pool}: expected one of {', '.join(POOLS)}")
    if model is not None:
        return EagerExtractor(model, classifier, layers, pool, amp)
    if ckpt.form == "torchscript":
        return ScriptExtractor(ckpt.module, classifier, layers, pool, amp, ckpt.path)
    if ckpt.form == "torch.export":
        return ExportExtractor(ckpt.module, classifier, layers, pool, amp, ckpt.path)
    if ckpt.form == "pickled module":
        return EagerExtractor(ckpt.module, classifier, layers, pool, amp)
    raise UsageError(
        f"{ckpt.path}: a {ckpt.form} file holds only weights; give the architecture with "
        "--arch path/to/file.py:Name (or pkg.module:Name, torchvision:NAME, timm:NAME)"
    )


def static_linear_guess(sd: Mapping) -> list[tuple[str, tuple, bool]]:
    """(module, weight shape, has bias) for tensors that look like linear layers in a state_dict."""
    out = []
    for k, v in sd.items():
        if k.endswith(".weight") and isinstance(v, torch.Tensor) and v.ndim == 2:
            mod = k[: -len(".weight")]
            b = sd.get(mod + ".bias")
            out.append((mod, tuple(v.shape), isinstance(b, torch.Tensor) and b.shape == (v.shape[0],)))
    return out


def guess_input(model) -> torch.Tensor | None:
    """A plausible input batch (2 samples) from the model's first layer, for inspect without data."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            return torch.randn(2, m.in_features)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            dims = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[type(m)]
            return torch.randn(2, m.in_channels, *([32] * dims))
        if isinstance(m, nn.Embedding):
            return torch.zeros(2, 8, dtype=torch.long)
    return None
