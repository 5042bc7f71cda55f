"""What every checkpoint form shares: the loaded ``Checkpoint``, the ``Form`` interface, the
``Probe`` a form is detected from, and reading epoch/step entries."""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Mapping

from ncli.errors import InputError, UsageError

if TYPE_CHECKING:
    from ncli.extract.extractors.base import Extractor
    from ncli.extract.options import ExtractOptions

INT64 = 1 << 63  # an epoch or step is stored as an int64 attribute
EPOCH_KEYS = ("epoch", "epochs", "current_epoch")
STEP_KEYS = ("step", "global_step", "iteration", "iter", "steps")


@dataclass
class Checkpoint:
    path: str
    form: "Form"
    sha256: str
    state_dict: dict | None = None
    module: Any = None  # nn.Module, ScriptModule or ExportedProgram
    container_key: str | None = None  # where the weights were found, e.g. "state_dict"
    epoch: int | None = None
    step: int | None = None
    # what the form found out besides (recorded as file attributes, shown by ncli inspect), e.g.
    # {"hf_architecture": "GPT2LMHeadModel"} or {"ema_weights": ...}
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Probe:
    """The start of a file (and, for a zip archive, its member names), or a directory's entry
    names: what forms are detected from. Never the file name or extension."""

    path: str
    head: bytes  # empty for a directory

    @cached_property
    def is_dir(self) -> bool:
        return os.path.isdir(self.path)

    @cached_property
    def dir_names(self) -> frozenset[str]:
        """The names of a directory's entries (empty for a file)."""
        if not self.is_dir:
            return frozenset()
        try:
            return frozenset(os.listdir(self.path))
        except OSError:
            return frozenset()

    @property
    def is_zip(self) -> bool:
        return self.head[:4] == b"PK\x03\x04"

    @cached_property
    def zip_names(self) -> list[str] | None:
        """Member names of a zip archive; None when it is not one, or a damaged one."""
        if not self.is_zip:
            return None
        try:
            with zipfile.ZipFile(self.path) as z:
                return z.namelist()
        except (zipfile.BadZipFile, OSError):
            return None

    @cached_property
    def zip_tails(self) -> set[str]:
        """Member names below the archive's top folder (torch names that folder after the file)."""
        return {n.split("/", 1)[-1] for n in self.zip_names or ()}


class Form:
    """One checkpoint form: how it is recognised, loaded, and turned into an extractor."""

    name = "?"  # recorded as the feature file's checkpoint_form attribute
    weights_without_model = False  # True: tensors without the model (needs --arch)

    def detect(self, probe: Probe) -> bool:
        raise NotImplementedError

    def load(self, path: str, digest: str, *, trust: bool, ema: bool) -> Checkpoint:
        raise NotImplementedError

    def make_extractor(self, ckpt: Checkpoint, options: "ExtractOptions") -> "Extractor":
        raise UsageError(
            f"{ckpt.path}: a {self.name} file holds only weights; give the architecture with "
            "--arch path/to/file.py:Name (or pkg.module:Name, torchvision:NAME, timm:NAME)"
        )

    def digest(self, path: str) -> str:
        """The sha256 recorded as the file's ``source_checkpoint_sha256``."""
        return sha256_file(path)

    def weights(self, ckpt: Checkpoint) -> dict:
        """The checkpoint's tensors as a state_dict (what --arch loads into its model)."""
        if ckpt.state_dict is not None:
            return ckpt.state_dict
        return dict(ckpt.module.state_dict())

    def __repr__(self) -> str:
        return f"<checkpoint form {self.name}>"


def sha256_file(path: str | os.PathLike, bufsize: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(bufsize)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def sha256_folder(folder: str | os.PathLike, names) -> str:
    """One sha256 for the files ``names`` of a checkpoint folder: the sha256 of the lines
    ``<name> <sha256 of the file>``, in name order."""
    lines = "".join(f"{name} {sha256_file(os.path.join(folder, name))}\n" for name in sorted(names))
    return hashlib.sha256(lines.encode()).hexdigest()


@contextmanager
def quiet():
    """No warnings from torch's loaders (deprecations of torch.jit, weights_only notes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _as_int(v) -> int | None:
    try:
        import torch

        if isinstance(v, torch.Tensor):
            if v.numel() != 1 or v.dtype.is_floating_point and not float(v).is_integer():
                return None
            return int(v.item())
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    try:
        import numpy as np

        if isinstance(v, np.integer):
            return int(v)
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            return int(v)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        digits = v.strip()
        return int(digits) if len(digits) <= 4000 else 1 << 20000  # int() refuses more than 4300 digits
    return None


def position(entries: Mapping, keys, where: str = "the checkpoint") -> int | None:
    """The first of ``keys`` in ``entries`` that holds an integer (an epoch or a step);
    InputError when it is beyond int64 (what the feature file stores)."""
    for k in keys:
        if k in entries:
            v = _as_int(entries[k])
            if v is not None:
                if not -INT64 <= v < INT64:
                    text = str(v) if v.bit_length() < 13000 else None  # str() refuses more than 4300 digits
                    shown = ("a number of thousands of digits" if text is None else
                             text if len(text) <= 30 else f"{text[:20]}... ({len(text)} digits)")
                    flag = "--epoch" if k in EPOCH_KEYS else "--step"
                    raise InputError(f"{where}: {k!r} is {shown}, beyond the int64 range a feature file stores; give {flag}")
                return v
    return None
