"""``.safetensors`` weights, read with ``safetensors.torch.load_file`` ([safetensors] extra).
A JSON header behind its 8-byte little-endian length, then raw tensors. Needs --arch."""

from __future__ import annotations

from ncli.console import install_hint
from ncli.errors import EnvironmentProblem, InputError, UsageError
from ncli.extract.forms.base import EPOCH_KEYS, STEP_KEYS, Checkpoint, Form, Probe, position


class Safetensors(Form):
    name = "safetensors"
    weights_without_model = True

    def detect(self, probe: Probe) -> bool:
        head = probe.head
        if probe.is_zip or len(head) < 9:
            return False
        header_len = int.from_bytes(head[:8], "little")
        return 2 <= header_len < (100 << 20) and head[8:9] == b"{"

    def load(self, path: str, digest: str, *, trust: bool, ema: bool) -> Checkpoint:
        try:
            from safetensors import safe_open
            from safetensors.torch import load_file
        except ImportError:
            raise EnvironmentProblem(
                f"{path}: is a .safetensors file; reading it needs the safetensors package: {install_hint('safetensors')}"
            ) from None
        if ema:
            raise UsageError(f"{path}: --ema does not apply to a .safetensors file (it holds one flat set of weights)")
        try:
            state_dict = load_file(path, device="cpu")
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as exc:
            raise InputError(f"{path}: cannot read the safetensors file ({type(exc).__name__}: {exc})") from None
        if not state_dict:
            raise InputError(f"{path}: the safetensors file holds no tensors")
        return Checkpoint(
            path, self, digest, dict(state_dict), None, None, position(meta, EPOCH_KEYS, path), position(meta, STEP_KEYS, path)
        )


SAFETENSORS = Safetensors()
