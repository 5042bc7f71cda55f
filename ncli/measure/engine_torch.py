"""The torch backend: the passes' per-block arithmetic on a torch device (``ncli measure
--device cuda``). torch is imported when a TorchBackend is made, so ``ncli measure`` on the CPU
never imports it.

Same statistics, same exact decisions as :class:`ncli.measure.engine.NumpyBackend`: every
product is float64 on the device; decisions whose best score has a rival within the float64
rounding bound are re-decided on the host by the spec's formula (:mod:`ncli.measure.decisions`).
Blocks are copied through pinned memory and processed on the device; sums stay there and only
the decisions and the few rows to re-decide come back per block. Sums on a GPU run in a
device-chosen order: results equal the numpy backend's to ~1e-12 relative, not bit for bit
(the numpy backend is the bit-reproducible one).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from ncli.console import install_hint
from ncli.errors import EnvironmentProblem
from ncli.features.reader import Chunk
from ncli.measure import decisions
from ncli.measure.blocks import NonFiniteFeatures
from ncli.measure.statistics import ClassStatistics, Model, SplitStatistics


def resolve_device(device: str):
    """A torch.device for ``device`` ('cuda', 'cuda:1', 'cpu', 'mps'); EnvironmentProblem when absent."""
    try:
        import torch
    except ImportError:  # torch is the [torch] extra
        raise EnvironmentProblem(
            f"--device {device} needs PyTorch, which is not installed: {install_hint('torch')}; or use --device cpu"
        ) from None
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise EnvironmentProblem(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise EnvironmentProblem(f"--device {device}: CUDA is not available here")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise EnvironmentProblem(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    elif resolved.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise EnvironmentProblem(f"--device {device}: MPS is not available here")
        raise EnvironmentProblem("--device mps: MPS has no float64 and ncli measures in float64")
    return resolved


class TorchBackend:
    """The passes on ``device`` ("cuda", "cuda:N"; "cpu" runs this code path on the CPU)."""

    def __init__(self, device: str = "cuda"):
        self.device = resolve_device(device)
        import torch

        self.torch = torch

    def _to_device(self, arr: np.ndarray):
        tensor = self.torch.from_numpy(np.ascontiguousarray(arr))
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def _decide(self, scores, tol, exact) -> np.ndarray:
        """argmax per row, on the device; rows whose runner-up is within ``tol`` are re-decided
        on the host by ``exact(rows)``. Only the decisions and those few rows cross to the
        host, never the (n, C) scores."""
        torch = self.torch
        best = torch.argmax(scores, dim=1).cpu().numpy()  # first maximum, like numpy
        if scores.shape[1] < 2:
            return best
        top2 = torch.topk(scores, 2, dim=1).values
        rows = torch.nonzero(top2[:, 0] - top2[:, 1] <= tol).flatten().cpu().numpy()
        decisions.settle_rows(best, rows, exact)
        return best

    def class_sums(self, blocks: Iterable[Chunk], stats: ClassStatistics) -> None:
        """Pass 1: add the per-class counts and float64 sums of all blocks to ``stats``."""
        torch = self.torch
        num_classes, p = stats.sums.shape
        sums = torch.zeros((num_classes, p), dtype=torch.float64, device=self.device)
        counts = torch.zeros(num_classes, dtype=torch.int64, device=self.device)
        for block in blocks:
            H = self._to_device(block.features).double()
            y = self._to_device(block.labels)
            if not bool(torch.isfinite(H).all()):
                raise NonFiniteFeatures(block.start, block.features)
            sums.index_add_(0, y, H)
            counts += torch.bincount(y, minlength=num_classes)
        stats.add(np.arange(num_classes), sums.cpu().numpy(), counts.cpu().numpy())

    def evaluate(self, blocks: Iterable[Chunk], model: Model, stats: SplitStatistics) -> None:
        """Pass 2: add the decisions of all blocks (and, with ``stats.within``, the
        within-class sums) to ``stats``."""
        torch = self.torch
        f64 = dict(dtype=torch.float64, device=self.device)
        means = torch.as_tensor(model.means, **f64)
        U = torch.as_tensor(model.basis.U, **f64)
        coords = torch.as_tensor(model.basis.coords, **f64)
        sq_norm_centred = (coords * coords).sum(1)
        max_norm_centred = model.max_norm_centred
        if model.has_classifier:
            W = torch.as_tensor(model.W, **f64)
            b = torch.as_tensor(model.b, **f64)
            max_norm_w, max_abs_b = model.max_norm_w, model.max_abs_b
        ss = torch.zeros(model.num_classes, **f64)
        proj = torch.zeros(U.shape[1], **f64)
        for block in blocks:
            H = self._to_device(block.features).double()
            y = self._to_device(block.labels)
            D = H - means[y]
            rn = (D * D).sum(1)
            if not bool(torch.isfinite(rn).all()):
                raise NonFiniteFeatures(block.start, block.features)
            Z = D @ U
            if stats.within:
                ss.index_add_(0, y, rn)
                proj += (Z * Z).sum(0)
            E = Z + coords[y]
            score = 2.0 * (E @ coords.T) - sq_norm_centred  # argmax = nearest centre
            tol = decisions.TIE_RTOL * (torch.linalg.vector_norm(E, dim=1) * max_norm_centred + max_norm_centred**2)
            rows_host = block.features
            y_ncc = self._decide(score, tol, lambda rows: decisions.ncc_scores(rows_host[rows], model.means))
            y_net = None
            if model.has_classifier:
                logits = H @ W.T + b
                tol = decisions.TIE_RTOL * (torch.linalg.vector_norm(H, dim=1) * max_norm_w + max_abs_b)
                y_net = self._decide(logits, tol, lambda rows: decisions.logits(rows_host[rows], model.W, model.b))
            stats.count(block.labels, y_ncc, y_net)
        if stats.within:
            stats.add_within(ss.cpu().numpy(), proj_ss=proj.cpu().numpy())
