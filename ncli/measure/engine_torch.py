"""The two streamed passes of :mod:`ncli.stream` with the per-block arithmetic on a torch
device (``ncli measure --device cuda``). Imported only when a device is asked for, so
``ncli measure`` on the CPU never imports torch.

Same statistics, same exact decisions: every product is float64 on the device; decisions
whose best score has a rival within the float64 rounding bound are re-decided on the host by
the spec's formula (:func:`ncli.stream._settle`). Blocks are read on the host
(h5py, prefetched), copied through pinned memory and processed on the device; only small
per-block results come back. Sums on a GPU run in a device-chosen order: results equal the
CPU path to ~1e-12 relative, not bit for bit (the CPU path is the bit-reproducible one).
"""

from __future__ import annotations

import numpy as np

from ncli.errors import EnvironmentProblem
from ncli.features.reader import FeatureFile
from ncli.measure.metrics import BetweenBasis
from ncli.measure.engine import TIE_RTOL, SplitResult, _nonfinite_error, _sq_distances, blocks


def resolve_device(device: str):
    """A torch.device for ``device`` ('cuda', 'cuda:1', 'cpu', 'mps'); EnvironmentProblem when absent."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        raise EnvironmentProblem("--device needs PyTorch; install torch or use --device cpu") from None
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise EnvironmentProblem(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise EnvironmentProblem(f"--device {device}: CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise EnvironmentProblem(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise EnvironmentProblem(f"--device {device}: MPS is not available here")
        raise EnvironmentProblem("--device mps: MPS has no float64 and ncli measures in float64")
    return dev


def _to_device(torch, arr: np.ndarray, dev):
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if dev.type == "cuda":
        t = t.pin_memory().to(dev, non_blocking=True)
    else:
        t = t.to(dev)
    return t


def _decide(torch, scores, tol, exact) -> np.ndarray:
    """argmax per row, on the device; rows whose runner-up is within ``tol`` are re-decided
    on the host by ``exact(rows)`` (the spec's formula). Only the decisions and those few
    rows cross to the host, never the (n, C) scores. Same rule as
    :func:`ncli.stream._settle`."""
    best = torch.argmax(scores, dim=1).cpu().numpy()  # first maximum, like numpy
    if scores.shape[1] < 2:
        return best
    top2 = torch.topk(scores, 2, dim=1).values
    rows = torch.nonzero(top2[:, 0] - top2[:, 1] <= tol).flatten().cpu().numpy()
    if rows.size:
        best[rows] = np.argmax(exact(rows), axis=1)
    return best


def class_sums(ff: FeatureFile, split: str, *, device, chunk_rows=None, layer=None):
    """Pass 1 on ``device``: (counts (C,) int64, sums (C, p) float64), as numpy arrays."""
    import torch

    C = ff.num_classes
    p = ff.feature_dim if layer is None else ff.layer_info(split, layer)[1]
    sums = torch.zeros((C, p), dtype=torch.float64, device=device)
    counts = torch.zeros(C, dtype=torch.int64, device=device)
    for ch in blocks(ff, split, chunk_rows, layer):
        H = _to_device(torch, ch.features, device).double()
        y = _to_device(torch, ch.labels, device)
        if not bool(torch.isfinite(H).all()):
            raise _nonfinite_error(ff, split, ch.start, ch.features)
        sums.index_add_(0, y, H)
        counts += torch.bincount(y, minlength=C)
    return counts.cpu().numpy(), sums.cpu().numpy()


def evaluate_split(
    ff: FeatureFile,
    split: str,
    *,
    device,
    means: np.ndarray,
    basis: BetweenBasis,
    W: np.ndarray | None,
    b: np.ndarray | None,
    accumulate: bool,
    chunk_rows: int | None = None,
    layer: str | None = None,
) -> SplitResult:
    """Pass 2 on ``device`` (see :func:`ncli.stream.evaluate_split`)."""
    import torch

    C, _ = means.shape
    k = basis.U.shape[1]
    f64 = dict(dtype=torch.float64, device=device)
    mu = torch.as_tensor(means, **f64)
    U = torch.as_tensor(basis.U, **f64)
    coords = torch.as_tensor(basis.coords, **f64)
    sq_norm_m = (coords * coords).sum(1)
    max_norm_m = float(sq_norm_m.max().sqrt())
    have_w = W is not None
    if have_w:
        Wt = torch.as_tensor(W, **f64)
        bt = torch.as_tensor(b, **f64)
        max_norm_w = float(torch.linalg.vector_norm(Wt, dim=1).max())
        max_b = float(bt.abs().max())
    res = SplitResult(
        class_counts=np.zeros(C, dtype=np.int64), disagree_per_class=np.zeros(C, dtype=np.int64), has_classifier=have_w
    )
    ss = torch.zeros(C, **f64)
    proj = torch.zeros(k, **f64)
    for ch in blocks(ff, split, chunk_rows, layer):
        H = _to_device(torch, ch.features, device).double()
        y = _to_device(torch, ch.labels, device)
        D = H - mu[y]
        rn = (D * D).sum(1)
        if not bool(torch.isfinite(rn).all()):
            raise _nonfinite_error(ff, split, ch.start, ch.features)
        Z = D @ U
        if accumulate:
            ss.index_add_(0, y, rn)
            proj += (Z * Z).sum(0)
        E = Z + coords[y]
        score = 2.0 * (E @ coords.T) - sq_norm_m  # argmax = nearest centre
        tol = TIE_RTOL * (torch.linalg.vector_norm(E, dim=1) * max_norm_m + max_norm_m**2)
        Hh = ch.features
        y_ncc = _decide(torch, score, tol, lambda rows: -_sq_distances(Hh[rows], means))
        y_net = None
        if have_w:
            logits = H @ Wt.T + bt
            tol = TIE_RTOL * (torch.linalg.vector_norm(H, dim=1) * max_norm_w + max_b)
            y_net = _decide(torch, logits, tol, lambda rows: Hh[rows].astype(np.float64) @ W.T + b)
        res.count(ch.labels, y_ncc, y_net)
    if accumulate:
        res.ss_within = ss.cpu().numpy()
        res.proj_ss = proj.cpu().numpy()
    return res
