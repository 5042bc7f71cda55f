"""The torch backend: the passes' per-block arithmetic on a torch device (``ncli measure
--device cuda``). torch is imported when a TorchBackend is made, so ``ncli measure`` on the CPU
never imports it.

Same statistics, same exact decisions as :class:`ncli.measure.engine.NumpyBackend`: every
product is float64 on the device; decisions whose best score has a rival within the float64
rounding bound are re-decided on the host by the spec's formula (:mod:`ncli.measure.decisions`).
Blocks are copied through pinned memory and processed on the device; sums stay there and only
the decisions and the few rows to re-decide come back per block. The sweeps over pairs of
classes (vocabulary-sized C) run there too (:class:`TorchPairSweep`). Sums on a GPU run in a
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
from ncli.measure.kernels import PAIR_SUMS
from ncli.measure.pairs import PAIR_TILE, PairSweep
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
    """The passes on ``device`` ("cuda", "cuda:N"; "cpu" runs this code path on the CPU).
    Blocks may hold numpy arrays (copied to the device) or torch tensors (used where they
    are when already on the device: only statistics and decisions come back). The sums of a
    pass stay on the device in a :class:`DeviceClassSums` / :class:`DeviceEvaluation`, which
    the accumulator API (:mod:`ncli.measure.accumulator`) keeps across calls.
    ``pair_tile``: rows per tile of the pair sweeps (default :data:`ncli.measure.pairs.PAIR_TILE`)."""

    def __init__(self, device: str = "cuda", *, pair_tile: int = PAIR_TILE):
        self.device = resolve_device(device)
        import torch

        self.torch = torch
        self.pair_sweep = TorchPairSweep(self.device, tile=pair_tile)

    def _to_device(self, arr):
        torch = self.torch
        if isinstance(arr, torch.Tensor):
            return arr.detach().to(self.device, non_blocking=True)
        tensor = torch.from_numpy(np.ascontiguousarray(arr))
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def _decide(self, scores, tol, exact) -> np.ndarray:
        """argmax per row, on the device; rows whose runner-up is within ``tol`` (or with a
        score that is not finite) are re-decided on the host by ``exact(row, classes)`` among
        their candidate classes (:mod:`ncli.measure.decisions`). Only the decisions and the
        (row, class) candidate pairs cross to the host, never the (n, C) scores."""
        torch = self.torch
        best = torch.argmax(scores, dim=1).cpu().numpy()  # first maximum, like numpy
        if scores.shape[1] < 2:
            return best
        top2 = torch.topk(scores, 2, dim=1).values
        finite = torch.isfinite(scores).all(dim=1)
        rows = torch.nonzero((top2[:, 0] - top2[:, 1] <= tol) | ~finite).flatten()
        if rows.numel() == 0:
            return best
        candidate = scores[rows] >= (top2[rows, 0] - tol[rows])[:, None]
        candidate[~finite[rows]] = True  # every class where a score is not finite
        pairs = torch.nonzero(candidate).cpu().numpy()  # (row, class), rows then classes in order
        bounds = np.searchsorted(pairs[:, 0], np.arange(rows.numel() + 1))
        for i, row in enumerate(rows.cpu().numpy().tolist()):
            classes = pairs[bounds[i] : bounds[i + 1], 1]
            best[row] = decisions.pick(exact(row, classes), classes)
        return best

    def class_sums(self, blocks: Iterable[Chunk], stats: ClassStatistics) -> None:
        """Pass 1: add the per-class counts and float64 sums of all blocks to ``stats``."""
        sums = DeviceClassSums(self, *stats.sums.shape)
        for block in blocks:
            sums.add(block)
        sums.into(stats)

    def evaluate(self, blocks: Iterable[Chunk], model: Model, stats: SplitStatistics) -> None:
        """Pass 2: add the decisions of all blocks (and, with ``stats.within``, the
        within-class sums) to ``stats``; rows of classes left out of the model count nowhere."""
        evaluation = DeviceEvaluation(self, model, stats.within)
        for block in blocks:
            evaluation.add(block, stats)
        evaluation.into(stats)


def host_rows(features, rows=None) -> np.ndarray:
    """Rows of a block's features (all when ``rows`` is None) as a host numpy array."""
    if isinstance(features, np.ndarray):
        return features if rows is None else features[rows]
    import torch

    features = features.detach()
    if rows is not None:
        features = features[torch.as_tensor(rows, device=features.device)]
    if features.dtype not in (torch.float32, torch.float64):
        features = features.float()  # float16/bfloat16 values are exact in float32
    return features.cpu().numpy()


class DeviceClassSums:
    """Pass 1 on the device: per-class float64 sums and counts kept there across blocks;
    :meth:`into` adds them to a host :class:`ClassStatistics` and starts again from zero.

    ``check``: each block's features are checked finite at once (a synchronisation per
    block). With ``check=False`` the caller checks (the accumulator API collects device-side
    flags and raises later, so that a training step never waits on the GPU)."""

    def __init__(self, backend: TorchBackend, num_classes: int, dim: int, check: bool = True):
        torch = backend.torch
        self.backend, self.check = backend, check
        self.sums = torch.zeros((num_classes, dim), dtype=torch.float64, device=backend.device)
        self.counts = torch.zeros(num_classes, dtype=torch.int64, device=backend.device)

    def add(self, block: Chunk) -> None:
        torch = self.backend.torch
        H = self.backend._to_device(block.features).double()
        y = self.backend._to_device(block.labels)
        if self.check and not bool(torch.isfinite(H).all()):
            raise NonFiniteFeatures(block.start, host_rows(block.features))
        self.sums.index_add_(0, y, H)
        self.counts.index_add_(0, y, torch.ones_like(y))  # (bincount would wait for the device: it reads max(y))

    def into(self, stats: ClassStatistics) -> None:
        stats.add(np.arange(self.counts.shape[0]), self.sums.cpu().numpy(), self.counts.cpu().numpy())
        self.sums.zero_()
        self.counts.zero_()


class DeviceEvaluation:
    """Pass 2 on the device against a model: each block's decisions are counted into the
    host ``stats`` as it comes (they cross to the host anyway, for the exact tie rule); with
    ``within``, Σ‖h − μ_y‖² per class and Σ_W on span(M) (``method`` "project": Σ (dᵀU)²
    along the basis, "scatter": the p × p Σ ddᵀ) stay on the device until :meth:`into`."""

    def __init__(self, backend: TorchBackend, model: Model, within: bool, method: str = "project"):
        torch = backend.torch
        self.backend, self.model, self.within, self.method = backend, model, within, method
        f64 = dict(dtype=torch.float64, device=backend.device)
        self.means = torch.as_tensor(model.means, **f64)
        self.U = torch.as_tensor(model.basis.U, **f64)
        self.coords = torch.as_tensor(model.basis.coords, **f64)
        self.sq_norm_centred = (self.coords * self.coords).sum(1)
        if model.has_classifier:
            self.W = torch.as_tensor(model.W, **f64)
            self.b = torch.as_tensor(model.b, **f64)
        self.ss = torch.zeros(model.num_classes, **f64)
        p, k = self.U.shape
        self.within_sum = torch.zeros((p, p) if method == "scatter" else k, **f64)

    def add(self, block: Chunk, stats: SplitStatistics) -> None:
        torch, backend, model = self.backend.torch, self.backend, self.model
        block, positions = model.select(block)
        if block.labels.shape[0] == 0:
            return
        H = backend._to_device(block.features).double()
        y = backend._to_device(block.labels)
        D = H - self.means[y]
        rn = (D * D).sum(1)
        if not bool(torch.isfinite(rn).all()):
            raise NonFiniteFeatures(block.start, host_rows(block.features), positions)
        Z = D @ self.U
        if self.within:
            self.ss.index_add_(0, y, rn)
            if self.method == "scatter":
                self.within_sum += D.T @ D
            else:
                self.within_sum += (Z * Z).sum(0)
        E = Z + self.coords[y]
        score = 2.0 * (E @ self.coords.T) - self.sq_norm_centred  # argmax = nearest centre
        max_norm_centred = model.max_norm_centred
        tol = decisions.TIE_RTOL * (torch.linalg.vector_norm(E, dim=1) * max_norm_centred + max_norm_centred**2)
        features = block.features

        def one_row(row: int) -> np.ndarray:
            return host_rows(features, [row])[0]

        y_ncc = backend._decide(score, tol, lambda row, classes: decisions.ncc_scores(one_row(row), model.means, classes))
        del score
        y_net = None
        if model.has_classifier:
            logits = H @ self.W.T + self.b
            tol = decisions.TIE_RTOL * (torch.linalg.vector_norm(H, dim=1) * model.max_norm_w + model.max_abs_b)
            y_net = backend._decide(
                logits, tol, lambda row, classes: decisions.logits(one_row(row), model.W, model.b, classes)
            )
            del logits
        labels = block.labels if isinstance(block.labels, np.ndarray) else block.labels.cpu().numpy()
        stats.count(labels, y_ncc, y_net)

    def into(self, stats: SplitStatistics) -> None:
        if self.within:
            within = self.within_sum.cpu().numpy()
            if self.method == "scatter":
                stats.add_within(self.ss.cpu().numpy(), scatter=within)
            else:
                stats.add_within(self.ss.cpu().numpy(), proj_ss=within)
            self.ss.zero_()
            self.within_sum.zero_()


class TorchPairSweep(PairSweep):
    """:class:`ncli.measure.pairs.PairSweep` with the tiles on a torch device: each tile's
    Gram block and its pair sums are formed there in float64 (the same formulas as the
    ``pair_tile`` kernel); only the sums (and an identical pair) come back."""

    def __init__(self, device, *, tile: int = PAIR_TILE):
        super().__init__(tile=tile)
        import torch

        self.torch, self.device = torch, device

    def sweep(self, X, norms, *, offset, cos_shift, sigma2, points, unit, k_shift, zero_u2=0.0):
        torch = self.torch
        f64 = dict(dtype=torch.float64, device=self.device)
        X_dev, norm = torch.as_tensor(X, **f64), torch.as_tensor(norms, **f64)
        sq = norm * norm
        s2 = None if sigma2 is None else torch.as_tensor(sigma2, **f64)
        pts = None if points is None else torch.as_tensor(points, **f64)
        unit_dev = None if unit is None else torch.as_tensor(unit, **f64)
        num_classes, tile = X.shape[0], self.tile
        sums = torch.zeros(len(PAIR_SUMS), **f64)
        identical = None
        index = torch.arange(num_classes, device=self.device)
        for r0 in range(0, num_classes, tile):
            for c0 in range(r0, num_classes, tile):
                a, b = index[r0 : r0 + tile], index[c0 : c0 + tile]
                G = X_dev[r0 : r0 + tile] @ X_dev[c0 : c0 + tile].T
                valid = a[:, None] < b[None, :]
                ai, bj = torch.nonzero(valid, as_tuple=True)  # row-major
                pa, pb = a[ai], b[bj]
                g = G[ai, bj]
                cos = g / (norm[pa] * norm[pb])
                part = torch.zeros(len(PAIR_SUMS), **f64)
                part[PAIR_SUMS["abs"]] = (cos + offset).abs().sum()
                dc = cos - cos_shift
                part[PAIR_SUMS["cos1"]], part[PAIR_SUMS["cos2"]] = dc.sum(), (dc * dc).sum()
                part[PAIR_SUMS["count"]] = float(pa.numel())
                if s2 is not None:
                    d2 = sq[pa] + sq[pb] - 2.0 * g
                    close = torch.nonzero(d2 < 1e-3 * (sq[pa] + sq[pb])).flatten()
                    d2[close] = ((pts[pa[close]] - pts[pb[close]]) ** 2).sum(1)
                    positive = d2 > 0
                    part[PAIR_SUMS["cdnv"]] = ((s2[pa] + s2[pb])[positive] / (2.0 * d2[positive])).sum()
                    part[PAIR_SUMS["cdnv0"]] = float(pa.numel() - int(positive.sum()))
                if unit_dev is not None:
                    u2 = 2.0 - 2.0 * cos
                    close = torch.nonzero(u2 < 2e-3).flatten()
                    u2[close] = ((unit_dev[pa[close]] - unit_dev[pb[close]]) ** 2).sum(1)
                    zero = u2 <= zero_u2
                    first = torch.nonzero(zero).flatten()
                    if first.numel():
                        pair = (int(pa[first[0]]), int(pb[first[0]]))
                        identical = pair if identical is None or pair < identical else identical
                    dk = -0.5 * torch.log(u2[~zero]) - k_shift
                    part[PAIR_SUMS["k1"]], part[PAIR_SUMS["k2"]] = dk.sum(), (dk * dk).sum()
                sums += part
        return sums.cpu().numpy(), identical
