"""What a model is fed: one tensor, or a mapping of named tensors (``input_ids``,
``attention_mask``, ...) passed as keyword arguments. Everything that moves, measures or
feeds a batch goes through these helpers, so a new input kind is one data source and one
model spec, not an edit in every module."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Union

if TYPE_CHECKING:
    import torch

ModelInputs = Union["torch.Tensor", Mapping[str, "torch.Tensor"]]


def map_tensors(inputs: ModelInputs, fn: Callable) -> ModelInputs:
    """``fn`` applied to the tensor, or to every tensor of the mapping (keys and order kept)."""
    if isinstance(inputs, Mapping):
        return {name: fn(t) for name, t in inputs.items()}
    return fn(inputs)


def _moved(t, device, float_dtype):
    import torch

    if t.is_floating_point():
        return t.to(device=device, dtype=float_dtype, non_blocking=True)
    if t.dtype == torch.bool:  # a mask stays a mask
        return t.to(device=device, non_blocking=True)
    return t.to(device=device, dtype=torch.long, non_blocking=True)  # token ids, class indices


def to_device(inputs: ModelInputs, device, float_dtype) -> ModelInputs:
    """Inputs on ``device``: floating tensors in the model's dtype, integers as int64."""
    return map_tensors(inputs, lambda t: _moved(t, device, float_dtype))


def pin_memory(inputs: ModelInputs) -> ModelInputs:
    """Page-locked copies (so the host-to-device copy is asynchronous); pinned ones are kept."""
    return map_tensors(inputs, lambda t: t if t.is_pinned() else t.pin_memory())


def batch_len(inputs: ModelInputs) -> int:
    """Samples in the batch: the first dimension (of the first named tensor)."""
    if isinstance(inputs, Mapping):
        if not inputs:
            raise ValueError("a batch of named inputs holds no tensor")
        inputs = next(iter(inputs.values()))
    return int(inputs.shape[0])


def attention_mask(inputs: ModelInputs):
    """The ``attention_mask`` of named inputs (None for a tensor, or without one)."""
    return inputs.get("attention_mask") if isinstance(inputs, Mapping) else None


def call_model(model: Callable, inputs: ModelInputs) -> Any:
    """``model(**inputs)`` for named inputs, ``model(inputs)`` for a tensor."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)


def describe(inputs: ModelInputs) -> str:
    """'inputs of shape (8, 64), float32' or 'inputs input_ids (8, 16) int64, attention_mask (8, 16) int64'."""

    def dtype(t) -> str:
        return str(t.dtype).replace("torch.", "")

    if isinstance(inputs, Mapping):
        return "inputs " + ", ".join(f"{name} {tuple(t.shape)} {dtype(t)}" for name, t in inputs.items())
    return f"inputs of shape {tuple(inputs.shape)}, {dtype(inputs)}"
