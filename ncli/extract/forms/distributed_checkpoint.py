"""PyTorch distributed checkpoints (DCP, ``torch.distributed.checkpoint.save``): a folder of
``.metadata`` and ``__<rank>_<n>.distcp`` files.

torch reads ``.metadata`` with a plain ``pickle.load`` (and non-tensor entries with an
unrestricted ``torch.load``), so reading the folder runs code named by its files: only
with --trust-checkpoint, in this process, without torch.distributed set up. Without the flag the
refusal says how to convert it once into a torch.save file that is read weights-only. One
``.distcp`` file given alone is named as a piece of its folder, not as a damaged checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

from ncli.errors import InputError, RefusedError
from ncli.extract.forms.base import Checkpoint, Form, Probe, quiet, sha256_folder

METADATA = ".metadata"
CONVERT = "python -m torch.distributed.checkpoint.format_utils dcp_to_torch {folder} OUT.pt"


def _is_dcp_folder(names) -> bool:
    return METADATA in names and any(n.endswith(".distcp") for n in names)


class DistributedCheckpoint(Form):
    name = "distributed checkpoint"
    weights_without_model = True

    def detect(self, probe: Probe) -> bool:
        if probe.is_dir:
            return _is_dcp_folder(probe.dir_names)
        folder = Path(probe.path).resolve().parent
        try:
            return _is_dcp_folder(os.listdir(folder))
        except OSError:
            return False

    def digest(self, path: str) -> str:
        if not os.path.isdir(path):
            return ""
        return sha256_folder(path, [n for n in os.listdir(path) if n == METADATA or n.endswith(".distcp")])

    def load(self, path: str, digest: str, *, trust: bool, ema: bool) -> Checkpoint:
        from ncli.extract.forms.torch_save import interpret

        if not os.path.isdir(path):
            folder = Path(path).resolve().parent
            raise InputError(f"{path}: is one file of a PyTorch distributed checkpoint (DCP); give its folder {folder}")
        if not trust:
            raise RefusedError(
                f"{path}: is a PyTorch distributed checkpoint (DCP) folder; torch reads its {METADATA} with pickle, "
                "which runs code named by the file, so reading it needs --trust-checkpoint. Or convert it once where "
                f"you trust it: {CONVERT.format(folder=path)}, and give OUT.pt (read weights-only)"
            )
        obj = self._read(path)
        state_dict, module, key, epoch, step = interpret(obj, path, ema)
        return Checkpoint(path, self, digest, state_dict, module, key, epoch, step)

    @staticmethod
    def _read(path: str) -> dict:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

        state: dict = {}
        try:
            with quiet():  # only with --trust-checkpoint
                _load_state_dict(state, storage_reader=dcp.FileSystemReader(path), planner=_EmptyStateDictLoadPlanner(), no_dist=True)
        except Exception as exc:
            text = (str(exc).strip().splitlines() or [""])[0][:200]
            raise InputError(f"{path}: cannot read the distributed checkpoint ({type(exc).__name__}: {text})") from None
        return state


DISTRIBUTED_CHECKPOINT = DistributedCheckpoint()
