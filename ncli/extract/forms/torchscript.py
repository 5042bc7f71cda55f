"""TorchScript archives, loaded with ``torch.jit.load``: TorchScript code is run by the
TorchScript interpreter, not by Python's unpickler, so no --trust-checkpoint is needed."""

from __future__ import annotations

from ncli.errors import InputError, UsageError
from ncli.extract.forms.base import Checkpoint, Form, Probe, quiet


class TorchScript(Form):
    name = "torchscript"

    def detect(self, probe: Probe) -> bool:
        tails = probe.zip_tails
        return "constants.pkl" in tails or any(t.startswith("code/__torch__") for t in tails)

    def load(self, path: str, digest: str, *, trust: bool, ema: bool) -> Checkpoint:
        import torch

        if ema:
            raise UsageError(f"{path}: --ema does not apply to a TorchScript archive")
        try:
            with quiet():
                module = torch.jit.load(path, map_location="cpu")
        except Exception as exc:
            raise InputError(f"{path}: cannot load the TorchScript archive ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
        return Checkpoint(path, self, digest, None, module.eval(), None)

    def make_extractor(self, ckpt: Checkpoint, options):
        from ncli.extract.extractors.torchscript import ScriptExtractor

        return ScriptExtractor(ckpt.module, options.classifier, options.layers, options.pool, options.amp, ckpt.path)


TORCHSCRIPT = TorchScript()
