"""``--device`` and ``--amp``: which torch device runs the model, and under which autocast."""

from __future__ import annotations

from contextlib import nullcontext

from ncli.console import note
from ncli.errors import EnvironmentProblem, UsageError


def resolve_device(spec: str):
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise EnvironmentProblem(
                f"--device {spec}: CUDA is not available (torch {torch.__version__}, built with CUDA "
                f"{torch.version.cuda or 'none: a CPU-only build'}); use --device cpu, or --device auto to use the best device there is"
            )
        if ":" in spec:
            try:
                index = int(spec.split(":", 1)[1])
            except ValueError:
                raise UsageError(f"--device {spec}: expected cuda or cuda:INDEX") from None
            if not 0 <= index < torch.cuda.device_count():
                raise EnvironmentProblem(f"--device {spec}: there are {torch.cuda.device_count()} CUDA devices")
        return torch.device(spec)
    if spec == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise EnvironmentProblem("--device mps: Apple MPS is not available here; use --device cpu or --device auto")
        return torch.device("mps")
    raise UsageError(f"--device {spec}: expected auto, cpu, cuda, cuda:INDEX or mps")


def autocast(device, amp: bool):
    """-> (context manager for the forward passes, the autocast dtype's name or None)."""
    import torch

    if not amp:
        return nullcontext(), None
    dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype), str(dtype).replace("torch.", "")


def device_note(spec: str | None, device) -> None:
    """Say which device ``--device auto`` picked (stderr)."""
    if (spec or "auto").strip().lower() == "auto":
        why = "" if device.type != "cpu" else " (no CUDA or MPS device found)"
        note(f"--device auto: using {device}{why}")
