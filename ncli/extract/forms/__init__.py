"""Checkpoint forms, detected by content (never by extension), and how each is loaded.

  base         Checkpoint (what loading gives), Form (detect, load, make_extractor, weights), Probe
  torch_save   state_dict (torch.save, zip or legacy, weights-only) and pickled module (--trust-checkpoint)
  safetensors  .safetensors weights
  torchscript  TorchScript archives
  script_audit proving a TorchScript archive's code harmless before it is loaded (operator allowlist)
  export       torch.export programs (.pt2)
  huggingface  Hugging Face save_pretrained folders (config.json + weights), built by transformers
  distributed_checkpoint  PyTorch distributed-checkpoint (DCP) folders (--trust-checkpoint)
  sandbox      loading what may hold code without running it (pickle scans, weights-only forcing,
               the shape-formula guard)
  align        a state_dict's keys renamed to an --arch model's, and loaded strictly

A new form: a module with a ``Form`` subclass, and its instance in ``FORMS`` below.
"""

from __future__ import annotations

import os

from ncli.errors import InputError
from ncli.extract.archives import zip_problem
from ncli.extract.forms.base import Checkpoint, Form, Probe
from ncli.extract.forms.distributed_checkpoint import DISTRIBUTED_CHECKPOINT
from ncli.extract.forms.export import TORCH_EXPORT
from ncli.extract.forms.huggingface import HUGGINGFACE
from ncli.extract.forms.safetensors import SAFETENSORS
from ncli.extract.forms.torch_save import PICKLED_MODULE, STATE_DICT
from ncli.extract.forms.torchscript import TORCHSCRIPT
from ncli.features.storage import check_regular_file
from ncli.features.schema import HDF5_SIGNATURE

# In the order they are tried: the folders first (a .distcp file inside a DCP folder is also a
# torch.save zip); a TorchScript archive also holds data.pkl, so it goes before state_dict.
FORMS: tuple[Form, ...] = (HUGGINGFACE, DISTRIBUTED_CHECKPOINT, TORCHSCRIPT, TORCH_EXPORT, SAFETENSORS, STATE_DICT)

FORMS_THAT_WORK = (
    "a state_dict file (torch.save(model.state_dict())) or .safetensors with --arch; "
    "a TorchScript archive; a torch.export .pt2 program; a Hugging Face save_pretrained folder; "
    "a pickled module with --trust-checkpoint"
)

__all__ = ["FORMS", "Checkpoint", "Form", "PICKLED_MODULE", "detect_form", "load_checkpoint"]


def _not_a_checkpoint(probe: Probe) -> str | None:
    """Why a file that is data, not a checkpoint, is refused (None: it may be a checkpoint)."""
    path = probe.path
    if probe.head.startswith(HDF5_SIGNATURE):
        return f"{path}: is an HDF5 file (a feature file or data?), not a checkpoint; expected {FORMS_THAT_WORK}"
    if probe.head.startswith(b"\x93NUMPY"):
        return f"{path}: is a numpy array file, not a checkpoint (data goes to --data SPLIT=FILE)"
    return None


def detect_form(path: str | os.PathLike) -> Form:
    """The form of the checkpoint at ``path``, from its content; InputError when it is none."""
    if os.path.isdir(path):
        probe = Probe(str(path), b"")
    else:
        with open(path, "rb") as f:
            probe = Probe(str(path), f.read(16))
    why = _not_a_checkpoint(probe)
    if why is not None:
        raise InputError(why)
    for form in FORMS:
        if form.detect(probe):
            return form
    if probe.is_dir:
        raise InputError(
            f"{path}: is a directory, not a checkpoint ncli recognises (a Hugging Face model folder holds config.json "
            f"and its weights; a distributed checkpoint .metadata and .distcp files); expected {FORMS_THAT_WORK}"
        )
    names = probe.zip_names
    if names and all(n.endswith(".npy") for n in names):
        raise InputError(f"{path}: is a numpy array file, not a checkpoint (data goes to --data SPLIT=FILE)")
    raise InputError(f"{path}: not a checkpoint ncli recognises; expected {FORMS_THAT_WORK}")


def load_checkpoint(path: str | os.PathLike, *, trust: bool = False, ema: bool = False) -> Checkpoint:
    path = str(path)
    is_folder = os.path.isdir(path)  # Hugging Face and distributed-checkpoint folders
    if not is_folder:
        check_regular_file(path, "a checkpoint file")
    try:
        form = detect_form(path)
        digest = form.digest(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    problem = None if is_folder else zip_problem(path)  # before torch decompresses anything
    if problem is not None:
        raise InputError(f"{path}: not a zip archive ncli reads: {problem}")
    return form.load(path, digest, trust=trust, ema=ema)
