"""Streaming accumulation of the sufficient statistics over a feature file (two passes).

Pass 1 (train split): per-class counts and float64 sums          → class means μ_c.
Pass 2 (every split): d = h − μ_y formed in float64 for every row, and
  - train only: Σ‖d‖² per class (σ_c², Tr Σ_W) and Σ_W projected on span(M) (U: orthonormal
    basis of the span of the centred means, k = min(p, C) columns), either as Σ (dᵀU)² from
    one float64 GEMM Z = D·U per block, or, where cheaper (k near p), from the p × p
    scatter Σ DᵀD projected once at the end (:func:`nc1_method`);
  - all splits: the NCC decision argmin ‖h − μ_c‖ and the network decision argmax(hWᵀ + b),
    both scored in float32 (NCC from Z on the train split when Z is computed, else from d: no
    N × C × p work either way). Decisions that float32 rounding could change are recomputed
    directly in float64, so every decision equals the spec's formula.
Rows are processed in fixed, aligned blocks (:func:`block_rows`), on one or more worker
threads, by the fused per-block kernels of :mod:`ncli.kernels` (compiled C, or numpy);
block results are added in file order, so results are bit-identical whatever the read size
and the thread count. Memory is O(chunk_rows · p + C · p + C²), plus p² for the scatter,
independent of N. Numbers only, no metric formulas (:mod:`ncli.metrics`) and no CLI.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ncli.measure import kernels
from ncli.errors import InputError
from ncli.features.reader import Chunk, FeatureFile
from ncli.measure.metrics import BetweenBasis


BLOCK_ROWS = 2048  # most rows per computational block (blocks fix the float64 summation order)
BLOCK_BYTES = 16 << 20  # a block's widest float64 work array stays about this size


def block_rows(p: int, C: int) -> int:
    """Rows per block for p features and C classes: ``BLOCK_ROWS``, halved (down to 256)
    while a float64 (rows × max(p, 2C)) array exceeds ``BLOCK_BYTES``. It depends on the
    file's shape only, so results stay reproducible; it keeps work arrays cache-sized and
    memory flat for wide features and many classes."""
    width = max(p, 2 * C)
    rows = BLOCK_ROWS
    while rows > 256 and rows * width * 8 > BLOCK_BYTES:
        rows //= 2
    return rows


def blocks(ff: FeatureFile, split: str, chunk_rows: int | None = None, layer: str | None = None):
    """Yield the rows of a split in blocks of :func:`block_rows` rows, aligned at multiples.

    Reads are ``chunk_rows`` rounded up to a whole number of blocks, and every accumulation
    adds one block's partial sums at a time, in row order: the float64 results therefore
    depend on the file only — bit-identical whatever the read size (``--chunk-rows``).
    """
    p = ff.feature_dim if layer is None else ff.layer_info(split, layer)[1]
    per_block = block_rows(p, ff.num_classes)
    rows = int(chunk_rows or ff.default_chunk_rows(split, layer))
    rows = -(-rows // per_block) * per_block
    for ch in ff.iter_chunks(split, rows, layer=layer):
        for off in range(0, ch.labels.shape[0], per_block):
            sl = slice(off, off + per_block)
            yield Chunk(ch.start + off, ch.features[sl], ch.labels[sl])


def ordered_map(fn, items, workers: int = 1):
    """Yield ``fn(item)`` for each item, in order, computed by ``workers`` threads.

    Each block is processed whole by one thread (its arrays stay in that core's cache; numpy
    and BLAS release the GIL), and the caller adds the small per-block results in block
    order, so the float64 sums are bit-identical whatever the number of workers. At most
    2 × workers blocks are in flight.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ncli-block") as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()


def _nonfinite_error(ff: FeatureFile, split: str, start: int, H: np.ndarray, what: str = "features") -> InputError:
    bad = ~np.isfinite(H).all(axis=1)
    row = start + int(np.argmax(bad)) if bad.any() else start
    return InputError(f"{ff.path}: split {split!r}, row {row}: {what} contain NaN or Inf")


class _Segments:
    """A stable sort of a block's labels into contiguous runs, one per class present:
    ``order`` sorts the rows, run q starts at ``starts[q]`` and holds class ``classes[q]``."""

    def __init__(self, labels: np.ndarray):
        self.order = np.argsort(labels, kind="stable")
        ys = labels[self.order]
        self.starts = np.flatnonzero(np.r_[True, ys[1:] != ys[:-1]]) if ys.size else np.zeros(0, np.int64)
        self.classes = ys[self.starts]


class _Buffers(threading.local):
    """Reusable work arrays, one set per thread (avoids page-faulting fresh memory per block)."""

    def __init__(self):
        self._bufs: dict[tuple, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
        key = (name, np.dtype(dtype).str)
        buf = self._bufs.get(key)
        need = int(np.prod(shape))
        if buf is None or buf.size < need:
            buf = np.empty(need, dtype=dtype)
            self._bufs[key] = buf
        return buf[:need].reshape(shape)


def class_sums(
    ff: FeatureFile,
    split: str,
    *,
    chunk_rows: int | None = None,
    layer: str | None = None,
    workers: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Pass 1: (counts (C,) int64, sums (C, p) float64) of a split, blocks on ``workers`` threads."""
    C = ff.num_classes
    p = ff.feature_dim if layer is None else ff.layer_info(split, layer)[1]
    counts = np.zeros(C, dtype=np.int64)
    sums = np.zeros((C, p), dtype=np.float64)

    K = kernels.active

    def block_sums(ch: Chunk):
        seg = _Segments(ch.labels)
        part = K.segment_sums(ch.features, seg.order, seg.starts)  # float64, one row per class present
        if not np.isfinite(part).all():
            raise _nonfinite_error(ff, split, ch.start, ch.features)
        return seg.classes, part, np.bincount(ch.labels, minlength=C)

    for classes, part, n_c in ordered_map(block_sums, blocks(ff, split, chunk_rows, layer), workers):
        sums[classes] += part
        counts += n_c
    return counts, sums


TIE_RTOL = 1e-11  # float64 scores (torch path): rivals within this (relative) are re-decided directly


def _sq_distances(H: np.ndarray, means: np.ndarray) -> np.ndarray:
    """‖h − μ_c‖² for a few rows, directly (no expansion), in float64."""
    H = H.astype(np.float64)
    return np.stack([np.sum((means - h) ** 2, axis=1) for h in H]) if len(H) else np.zeros((0, len(means)))


def _settle(best: np.ndarray, near: np.ndarray, exact) -> None:
    """Make argmax decisions independent of rounding.

    ``best`` came from fast float32 scores whose rounding error is below the tolerance the
    kernel compared with (:meth:`ncli.kernels` ``decide``); rows ``near`` (a rival within it,
    or a score not finite) are recomputed by ``exact(rows)`` (the spec's formula evaluated
    directly in float64), so exact ties break to the smallest class index as the spec says.
    ``best`` is updated in place.
    """
    rows = np.flatnonzero(near)
    if rows.size:
        best[rows] = np.argmax(exact(rows), axis=1)


@dataclass
class SplitResult:
    """Decisions of one split, and (train split only) the within-class statistics."""

    num_samples: int = 0
    class_counts: np.ndarray | None = None  # (C,) samples per class in this split
    net_correct: int = 0
    ncc_correct: int = 0
    disagree: int = 0
    disagree_per_class: np.ndarray | None = None  # (C,)
    ss_within: np.ndarray | None = None  # (C,) Σ ‖h − μ_c‖²   (accumulated split only)
    proj_ss: np.ndarray | None = None  # (k,) Σ (u_jᵀ (h − μ_y))²
    has_classifier: bool = False

    def count(self, y: np.ndarray, y_ncc: np.ndarray, y_net: np.ndarray | None) -> None:
        """Add one block's decisions (labels, NCC decisions, network decisions or None)."""
        C = self.class_counts.shape[0]
        self.num_samples += y.shape[0]
        self.class_counts += np.bincount(y, minlength=C)
        self.ncc_correct += int(np.count_nonzero(y_ncc == y))
        if y_net is not None:
            self.net_correct += int(np.count_nonzero(y_net == y))
            dis = y_net != y_ncc
            self.disagree += int(np.count_nonzero(dis))
            self.disagree_per_class += np.bincount(y[dis], minlength=C)


NC1_METHOD = "auto"  # "project" or "scatter" forces one (tests, benchmarks)


def nc1_method(p: int, k: int, C: int) -> str:
    """How pass 2 gets Σ_W projected on span(M), per the cost per row in float64 multiply-adds
    (a float32 one counts half):
      "project": Z = D·U (p·k) and NCC scores from Z (k·C/2);
      "scatter": Σ_W = Σ DᵀD by a symmetric rank-k update (p²/2), projected once at the end,
                 and NCC scores straight from D (p·C/2).
    The scatter wins when k approaches p (C ≳ p, e.g. ImageNet with p = 512)."""
    if NC1_METHOD != "auto":
        return NC1_METHOD
    return "scatter" if p * p / 2 + p * C / 2 < p * k + k * C / 2 else "project"


def evaluate_split(
    ff: FeatureFile,
    split: str,
    *,
    means: np.ndarray,
    basis: BetweenBasis,
    W: np.ndarray | None,
    b: np.ndarray | None,
    accumulate: bool,
    chunk_rows: int | None = None,
    layer: str | None = None,
    workers: int = 1,
) -> SplitResult:
    """Pass 2 over one split (see module docstring), blocks on ``workers`` threads (same
    operations, same order of accumulation, same results).

    NC1 needs Σ_W projected on span(M) on the accumulated split only; see :func:`nc1_method`
    for the two ways. NCC decisions come from the U coordinates where those are computed
    anyway ("project"), and otherwise straight from the centred rows in float32: splits
    that are only evaluated never pay for the float64 projection."""
    C, p = means.shape
    U = basis.U  # (p, k)
    k = U.shape[1]
    coords = basis.coords  # (C, k): m_c = μ_c − μ_G in U coordinates
    sq_norm_m = np.einsum("ck,ck->c", coords, coords)  # ‖m_c‖²
    have_w = W is not None
    max_norm_m = float(np.sqrt(sq_norm_m.max()))
    method = nc1_method(p, k, C) if accumulate else "direct"
    u32 = 2.0**-24  # float32 unit roundoff
    if method == "project":
        # NCC scores 2⟨e, m_c⟩ − ‖m_c‖² (e = h − μ_G in U coordinates) in float32: error
        # ≤ (2k + 8) u ‖e‖ ‖m_c‖ + 3 u ‖m_c‖² (rounding of e, m, the GEMM and the
        # subtraction); ×4 margin (a difference of two scores, and 2× to spare).
        coords32 = np.ascontiguousarray(coords.T, dtype=np.float32)  # (k, C)
        ncc_table = (-sq_norm_m).astype(np.float32)  # added to every row
        ncc_rtol = 4.0 * (2 * k + 8) * u32
        ncc_atol = 4.0 * 3 * u32 * float(sq_norm_m.max())
    else:
        # NCC scores from d = h − μ_y: 2⟨e, m_c⟩ − ‖m_c‖² = 2⟨d, m_c⟩ + t[y, c] with
        # t[a, c] = 2⟨m_a, m_c⟩ − ‖m_c‖² (float64, then rounded once). In float32 the error
        # per score is ≤ (2p + 8) u ‖d‖ ‖m_c‖ (rounding of d, m and the p-term GEMM, doubled)
        # + 9 u max‖m‖² (rounding of t, |t| ≤ 3 max‖m‖², and of the addition, with slack);
        # ×4 margin as above.
        Mt32 = np.ascontiguousarray(U @ coords.T, dtype=np.float32)  # (p, C): columns m_c
        ncc_table = (2.0 * (coords @ coords.T) - sq_norm_m[None, :]).astype(np.float32)  # (C, C)
        ncc_rtol = 4.0 * (2 * p + 8) * u32
        ncc_atol = 4.0 * 3 * u32 * 3.0 * float(sq_norm_m.max())
    norm_means = np.linalg.norm(means, axis=1)
    if have_w:
        # Logits are formed in float32 (the network's own precision, twice the speed), then
        # every decision that float32 rounding could have changed is recomputed in float64:
        # |fl32(h·w) − h·w| ≤ (p + 2) u ‖h‖ ‖w‖ (u = 2⁻²⁴, incl. rounding W to float32).
        W32 = np.ascontiguousarray(W.T, dtype=np.float32)  # (p, C)
        max_norm_w = float(np.linalg.norm(W, axis=1).max())
        logit_rtol = 4.0 * (p + 2) * u32
        b32 = b.astype(np.float32)
        # + rounding of b and of the addition: ≤ u (|b| + |logit|); ×4 margin
        logit_atol = 4.0 * u32 * (2.0 * float(np.abs(b).max()))
    res = SplitResult(
        class_counts=np.zeros(C, dtype=np.int64),
        disagree_per_class=np.zeros(C, dtype=np.int64),
        has_classifier=have_w,
    )
    if accumulate:
        res.ss_within = np.zeros(C, dtype=np.float64)
        res.proj_ss = np.zeros(k, dtype=np.float64)
        scatter = np.zeros((p, p), dtype=np.float64) if method == "scatter" else None
    bufs = _Buffers()
    K = kernels.active

    def block_stats(ch: Chunk):
        """Everything for one block; returns small per-block results."""
        H, y = ch.features, ch.labels
        n = y.shape[0]
        # D = h − μ_y (float32 where only the NCC product uses it), rn = ‖h − μ_y‖² per row
        D = bufs.get("D", (n, p), np.float32 if method == "direct" else np.float64)
        rn = K.center_rows(H, y, means, D)
        if not np.isfinite(rn).all():
            raise _nonfinite_error(ff, split, ch.start, H)
        y_net = None
        if have_w:
            logits = H.astype(np.float32, copy=False) @ W32  # float32 (n, C), scratch
            tol = 2.0 * logit_rtol * (np.sqrt(rn) + norm_means[y]) * max_norm_w + logit_atol
            y_net, near = K.decide(logits, 1.0, b32, tol)  # argmax(logits + b), rivals within tol
            _settle(y_net, near, lambda rows: H[rows].astype(np.float64) @ W.T + b)
        ss = np.bincount(y, weights=rn, minlength=C) if accumulate else None
        part = None
        # NCC: argmin_c ‖h − μ_c‖² = argmax_c 2 ⟨h − μ_G, m_c⟩ − ‖m_c‖², in float32, rivals
        # within the rounding bound re-decided exactly
        if method == "project":
            Z = bufs.get("Z", (n, k))
            np.matmul(D, U, out=Z)  # float64 coordinates of h − μ_y in span(M)
            part = np.zeros(k)
            # E = Z + coords[y]: h − μ_G in U coordinates (float32 copy, ‖E‖²); part = Σ Z²
            E32, en = K.ncc_coords(Z, coords, y, part)
            score = E32 @ coords32
            tol = ncc_rtol * np.sqrt(en) * max_norm_m + ncc_atol
            y_ncc, near = K.decide(score, 2.0, ncc_table, tol)
        else:
            if method == "scatter":
                part = D.T @ D  # float64 (p, p), a symmetric rank-n update (syrk)
                D32 = bufs.get("D32", (n, p), np.float32)
                np.copyto(D32, D)
            else:
                D32 = D
            score = D32 @ Mt32
            tol = ncc_rtol * np.sqrt(rn) * max_norm_m + ncc_atol
            y_ncc, near = K.decide(score, 2.0, ncc_table, tol, y)
        _settle(y_ncc, near, lambda rows: -_sq_distances(H[rows], means))
        return y, y_ncc, y_net, ss, part

    for y, y_ncc, y_net, ss, part in ordered_map(block_stats, blocks(ff, split, chunk_rows, layer), workers):
        if accumulate:
            res.ss_within += ss
            if scatter is not None:
                scatter += part
            else:
                res.proj_ss += part
        res.count(y, y_ncc, y_net)
    if accumulate and scatter is not None:
        res.proj_ss = np.einsum("pj,pj->j", scatter @ U, U)  # u_jᵀ (Σ DᵀD) u_j
    return res
