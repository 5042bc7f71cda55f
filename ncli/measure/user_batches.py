"""Batches handed to the accumulator API (numpy arrays or torch tensors of any float dtype,
on any device), checked and put in the form the backends take; every refusal names the batch.

torch is never imported here: a tensor is recognised through ``sys.modules`` (if torch is not
loaded, nothing can be a tensor).
"""

from __future__ import annotations

import sys

import numpy as np

from ncli.errors import InputError


class BatchError(InputError):
    """A batch the accumulator refused: ``reason``, and where: ``split``, ``batch`` (numbered
    from 0 per split and per method, in call order) and ``row`` (in the batch, or None)."""

    def __init__(self, reason: str, *, where: str, split: str, batch: int, row: int | None = None):
        super().__init__(f"{where}: {reason}" if row is None else f"{where}: row {row}: {reason}")
        self.reason, self.split, self.batch, self.row = reason, split, batch, row


def where(method: str, split: str, batch: int) -> str:
    """'update(): batch 17 of split 'train'' — the prefix of a batch's errors."""
    return f"{method}(): batch {batch} of split {split!r}"


def torch_of(value):
    """The torch module when ``value`` is a torch tensor, else None."""
    if isinstance(value, np.ndarray):  # (isinstance against torch.Tensor is slow: a metaclass check)
        return None
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return torch
    return None


def as_array(value):
    """A torch tensor or numpy array as it is; anything else (a list, ...) through numpy."""
    return value if isinstance(value, np.ndarray) or torch_of(value) is not None else np.asarray(value)


def device_of(value) -> str | None:
    """'cuda:0', 'cpu', ... for a tensor; None for anything else."""
    return str(value.device) if torch_of(value) is not None else None


class Checker:
    """Checks one batch's arrays; ``fail`` raises a :class:`BatchError` naming it."""

    def __init__(self, method: str, split: str, batch: int, num_classes: int, dim: int | None):
        self.method, self.split, self.batch = method, split, batch
        self.num_classes, self.dim = num_classes, dim

    def fail(self, reason: str, row: int | None = None) -> BatchError:
        return BatchError(reason, where=where(self.method, self.split, self.batch), split=self.split, batch=self.batch, row=row)

    # -- shapes and dtypes (no data is read: no device synchronisation) --------------------

    def features_shape(self, features) -> int:
        """n, after checking (n, p), a real dtype, and p against the first batch's."""
        shape = tuple(features.shape)
        if len(shape) != 2:
            raise self.fail(f"features must be a (batch, p) array, not of shape {shape}")
        kind = _dtype_kind(features)
        if kind not in "fiu":
            raise self.fail(f"features must be real numbers, not {features.dtype}")
        if self.dim is not None and shape[1] != self.dim:
            raise self.fail(f"features have p = {shape[1]} columns, but earlier batches had p = {self.dim}")
        return shape[0]

    def labels_shape(self, labels, n: int) -> None:
        if tuple(labels.shape) != (n,):
            raise self.fail(f"labels must be a ({n},) array, one per row of features, not of shape {tuple(labels.shape)}")
        if _dtype_kind(labels) not in "iu":
            raise self.fail(f"labels must be integers, not {labels.dtype}")

    def logits_shape(self, logits, n: int) -> None:
        if tuple(logits.shape) != (n, self.num_classes):
            raise self.fail(f"logits must be ({n}, {self.num_classes}), not of shape {tuple(logits.shape)}")
        if _dtype_kind(logits) != "f":
            raise self.fail(f"logits must be floats, not {logits.dtype}")

    # -- values, on the host ----------------------------------------------------------------

    def host_labels(self, labels: np.ndarray) -> np.ndarray:
        y = labels.astype(np.int64, copy=False)
        bad = (y < 0) | (y >= self.num_classes)
        if bad.any():
            row = int(np.argmax(bad))
            raise self.fail(f"label {int(y[row])} outside [0, {self.num_classes})", row)
        return y

    def host_finite(self, values: np.ndarray, what: str) -> None:
        finite = np.isfinite(values)
        if not finite.all():
            row = int(np.argmax(~finite.reshape(values.shape[0], -1).all(axis=1)))
            raise self.fail(f"{what} contain NaN or Inf", row)


def _dtype_kind(array) -> str:
    torch = torch_of(array)
    if torch is None:
        return np.dtype(array.dtype).kind
    if array.dtype == torch.bool:
        return "b"
    if array.is_complex():
        return "c"
    return "f" if array.is_floating_point() else "i"


def to_host(array, kind: str) -> np.ndarray:
    """A numpy view or copy on the host: features/logits ("f") as float16/32/64 (bfloat16 and
    long double become float32/float64; integers float64), labels ("i") as they are."""
    torch = torch_of(array)
    if torch is not None:
        array = array.detach()
        if kind == "f" and array.dtype not in (torch.float16, torch.float32, torch.float64):
            array = array.float() if array.is_floating_point() else array.double()
        return array.cpu().numpy()
    array = np.asarray(array)
    if kind == "f" and (array.dtype.kind != "f" or array.dtype.itemsize > 8):
        array = array.astype(np.float64)
    return array


def host_decisions(logits: np.ndarray) -> np.ndarray:
    """argmax per row, ties to the smallest class index (numpy's first maximum)."""
    return np.argmax(logits, axis=1).astype(np.int64)
