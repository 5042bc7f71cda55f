"""What every extractor shares: the interface, the row of ``ncli inspect``'s layer table,
picking the logits out of a model's output, the first forward pass, the check that
features·Wᵀ + b reproduces the logits, and pooling of --layer outputs."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ncli.errors import InputError, NcliError, RefusedError
from ncli.extract.inputs import ModelInputs, describe

# none: flatten. avg/max: over the dims after (N, C) of a channels-first output (N, C, H, W),
# or over the tokens of a token layout (N, L, D). mean/cls/last: token layouts only: the mean
# over the attention mask, the first token, the last token the mask keeps.
POOLS = ("none", "avg", "max", "mean", "cls", "last")
TOKEN_POOLS = ("mean", "cls", "last")


@dataclass
class LinearRow:
    """One linear layer of the model, as ``ncli inspect`` lists it."""

    name: str
    in_features: int | None
    out_features: int | None
    bias: bool
    calls: int = 0
    is_output: bool = False


class Extractor:
    """Common interface: ``discover(inputs)`` once, then ``extractor(inputs)`` -> (features,
    logits, {layer: output}) for each batch; ``close()`` undoes what it changed in the model."""

    kind = "?"  # recorded as the file's ``extractor`` attribute
    classifier: str = ""
    found_by: str = ""
    weight: torch.Tensor
    bias: torch.Tensor | None
    dtype: torch.dtype = torch.float32
    fixed_batch: int | None = None  # programs exported for one batch size only
    first_batch_error: float | None = None
    rows: list[LinearRow]
    # per --layer: {"depth": position of its output in the forward pass among the stored layers,
    # "pooled": how its rows were made}; written as attributes of /<split>/layers/<name>
    layer_attrs: Mapping[str, dict] = MappingProxyType({})  # each extractor sets its own
    stores_logits = True  # False: the logits are used for the check but not stored
    token_rows = False  # True: one row per predicted token (causal LMs; data.tokens makes the labels)
    # True when the classifier is found without running the model (a graph is read), so the
    # layer table's calls/output columns are known before any forward pass
    found_statically = False
    inspect_note: str | None = None  # what ``ncli inspect`` says about this kind of model

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.weight.shape[1])

    def to(self, device) -> "Extractor":
        raise NotImplementedError

    def discover(self, inputs: ModelInputs) -> None:
        raise NotImplementedError

    def __call__(self, inputs: ModelInputs):
        raise NotImplementedError

    def close(self) -> None:
        pass

    def extra_attrs(self) -> dict:
        """Provenance attributes of the feature file particular to this kind of model."""
        return {}

    def num_parameters(self) -> int | None:
        return None

    def sample_input(self) -> tuple[ModelInputs | None, str | None]:
        """An input to find the classifier with when ``ncli inspect`` is given no data."""
        return None, None


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


def is_token_layout(shape, pool: str, token_model: bool, feature_dim: int | None) -> bool:
    """Whether a 3-D --layer output (N, A, B) holds tokens (N, L, D), not channels first
    (N, C, L): the model is known to work on tokens (a transformers model), a token pool was
    asked for, or its last dim is the classifier's input size p and its middle one is not."""
    if len(shape) != 3:
        return False
    if token_model or pool in TOKEN_POOLS:
        return True
    return feature_dim is not None and shape[-1] == feature_dim and shape[1] != feature_dim


def describe_pool(shape, pool: str, tokens: bool, masked: bool) -> str:
    """How a layer's rows were made (the file's per-layer ``pooled`` attribute)."""
    if pool == "none" or len(shape) <= 2:
        return "flattened" if len(shape) > 2 else "as is"
    if tokens:
        over = {"avg": "mean", "mean": "mean"}.get(pool, pool)
        return f"tokens: {over}" + (" over the attention mask" if masked and pool != "cls" else "")
    return f"{pool} over dims 2..{len(shape) - 1}"


def pool_layer(t: torch.Tensor, pool: str, *, tokens: bool = False, mask: torch.Tensor | None = None) -> torch.Tensor:
    """A --layer output as one row per sample. Channels first (N, C, ...): avg or max over the
    dims after C. Tokens (N, L, D): mean (avg), max, cls or last over L, the padding left out
    where an attention mask (N, L) is given. Then flattened."""
    if pool != "none" and tokens and t.ndim == 3:
        keep = mask.to(device=t.device, dtype=torch.bool) if mask is not None and tuple(mask.shape) == tuple(t.shape[:2]) else None
        if pool == "cls":
            t = t[:, 0]
        elif pool == "last":
            last = (keep.long() * torch.arange(t.shape[1], device=t.device)).argmax(1) if keep is not None else None
            t = t[:, -1] if last is None else t[torch.arange(t.shape[0], device=t.device), last]
        elif pool == "max":
            t = t.amax(1) if keep is None else t.masked_fill(~keep[..., None], float("-inf")).amax(1)
        elif keep is None:
            t = t.mean(1)
        else:
            weights = keep[..., None].to(t.dtype)
            t = (t * weights).sum(1) / weights.sum(1).clamp(min=1)
    elif t.ndim > 2 and pool in ("avg", "mean"):
        t = t.mean(dim=tuple(range(2, t.ndim)))
    elif t.ndim > 2 and pool == "max":
        t = t.amax(dim=tuple(range(2, t.ndim)))
    return t.reshape(t.shape[0], -1)


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


def first_forward(run, inputs: ModelInputs):
    """``run(inputs)`` on the first batch; its failure (inputs that do not fit the model, or a
    model that raises) is the user's input problem, reported in one line, not an ncli bug."""
    try:
        return run(inputs)
    except (NcliError, MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as exc:
        cause = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
        raise ForwardFailed(f"the model fails on the first batch ({describe(inputs)}): {cause}", cause) from None


def check_reconstruction(name: str, h, z, W, b, amp: bool) -> float:
    """max |h·Wᵀ + b − z| over the batch's finite feature rows; refuse when it is beyond
    floating point rounding. Rows with NaN/Inf features (NaN inputs, or a model that makes
    them) are not a sign of a non-linear head: extract records them, and measure refuses them."""
    for what, tensor in (("weight", W), ("bias", b)):
        if tensor is not None and not bool(torch.isfinite(tensor.detach()).all()):
            raise InputError(f"classifier {name!r}: its {what} holds NaN or Inf (a diverged or damaged checkpoint)")
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


def model_dtype(module) -> torch.dtype:
    """The dtype floating inputs are cast to: the model's first floating parameter (or buffer)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    for bf in module.buffers():
        if bf.is_floating_point():
            return bf.dtype
    return torch.float32


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


def guessed_input(model) -> tuple[torch.Tensor | None, str | None]:
    x = guess_input(model)
    if x is None:
        return None, None
    return x, f"random input of shape {tuple(x.shape)} guessed from the first layer"
