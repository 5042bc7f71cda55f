"""TorchScript archives, loaded with ``torch.jit.load``. TorchScript cannot call Python, but
its operators include file writes (``torch.save``) and ``torch.jit.load`` already runs the
archive's ``__setstate__`` methods: without --trust-checkpoint the archive's whole source is
audited first (``script_audit``) and refused unless every operator it can reach is allowlisted."""

from __future__ import annotations

from ncli.errors import InputError, RefusedError, UsageError
from ncli.extract.forms.base import Checkpoint, Form, Probe, quiet
from ncli.extract.forms.script_audit import audit


class TorchScript(Form):
    name = "torchscript"

    def detect(self, probe: Probe) -> bool:
        tails = probe.zip_tails
        return "constants.pkl" in tails or any(t.startswith("code/__torch__") for t in tails)

    def load(self, path: str, digest: str, *, trust: bool, ema: bool) -> Checkpoint:
        import torch

        if ema:
            raise UsageError(f"{path}: --ema does not apply to a TorchScript archive")
        if not trust:
            finding = audit(path)
            if finding is not None:
                raise RefusedError(
                    f"{path}: is a TorchScript archive whose code {finding}; ncli loads TorchScript only when every "
                    "operator it can run is known to be harmless. Load it only if you trust its source: pass --trust-checkpoint"
                )
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
