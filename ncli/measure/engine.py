"""The numpy backend: the two passes' per-block arithmetic on the CPU, on worker threads.

Pass 1 (the split that defines the metrics): per-class counts and float64 sums → class means.
Pass 2 (every split): d = h − μ_y formed in float64 for every row, and
  - the defining split only: Σ‖d‖² per class (σ_c², Tr Σ_W) and Σ_W projected on span(M)
    (U: orthonormal basis of the span of the centred means, k = min(p, C) columns), either as
    Σ (dᵀU)² from one float64 GEMM Z = D·U per block, or, where cheaper (k near p), from the
    p × p scatter Σ DᵀD projected once at the end (:func:`cheaper_nc1_method`);
  - all splits: the NCC decision argmin ‖h − μ_c‖ and the network decision argmax(hWᵀ + b),
    both scored in float32 (NCC from Z on the defining split when Z is computed, else from
    e = h − μ_G: the N × C products, nothing C × C). Decisions that float32 rounding could
    change are recomputed directly in float64 among the classes within the rounding bound
    (:mod:`ncli.measure.decisions`), so every decision equals the spec's.
With a class selection (``--min-per-class``), rows of the classes left out are dropped from
every block first: they count in no split.
Pass 2 processes each block whole on one of the worker threads (pass 1, light, runs in the
calling thread beside the reader), with single-threaded BLAS and the fused per-block kernels
of :mod:`ncli.measure.kernels` (compiled C, or numpy); block results are added to the
accumulators (:mod:`ncli.measure.statistics`) in block order, so results are bit-identical
whatever the thread count (:mod:`ncli.measure.blocks`). Memory is
O(block · (p + C) + C · p), plus p² for the scatter, independent of N.
"""

from __future__ import annotations

import os
import threading
from typing import Iterable

import numpy as np

from ncli.features.reader import Chunk
from ncli.measure import decisions
from ncli.measure.blocks import NonFiniteFeatures, ordered_map, single_threaded_blas
from ncli.measure.kernels import default_kernels
from ncli.measure.pairs import PAIR_TILE, PairSweep
from ncli.measure.statistics import ClassStatistics, Model, SplitStatistics

NC1_METHODS = ("auto", "project", "scatter")
U32 = 2.0**-24  # float32 unit roundoff


def resolve_threads(threads: int | None) -> int:
    """Threads to compute with: as given, else OMP_NUM_THREADS / OPENBLAS_NUM_THREADS /
    MKL_NUM_THREADS when set, else the number of CPUs."""
    if threads is not None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        return int(threads)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return os.cpu_count() or 1


def cheaper_nc1_method(p: int, k: int, num_classes: int) -> str:
    """How pass 2 gets Σ_W projected on span(M), per the cost per row in float64 multiply-adds
    (a float32 one counts half):
      "project": Z = D·U (p·k) and NCC scores from Z (k·C/2);
      "scatter": Σ_W = Σ DᵀD by a symmetric rank-k update (p²/2), projected once at the end,
                 and NCC scores straight from D (p·C/2).
    The scatter wins when k approaches p (C ≳ p, e.g. ImageNet with p = 512)."""
    return "scatter" if p * p / 2 + p * num_classes / 2 < p * k + k * num_classes / 2 else "project"


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


class NumpyBackend:
    """The passes with numpy and the per-block kernels: pass 2's blocks on ``threads`` worker
    threads (default :func:`resolve_threads`), pass 1's in the calling thread, all with
    single-threaded BLAS (concurrent multi-threaded BLAS calls thrash). ``kernels``: the compiled kernels or their numpy
    implementation (default :data:`ncli.measure.kernels.default_kernels`); ``nc1_method``: "auto"
    (:func:`cheaper_nc1_method`), "project" or "scatter". ``pair_sweep`` sweeps pairs of
    classes on the same threads, in tiles of ``pair_tile`` classes."""

    def __init__(
        self, *, threads: int | None = None, kernels=None, nc1_method: str = "auto", pair_tile: int = PAIR_TILE
    ):
        if nc1_method not in NC1_METHODS:
            raise ValueError(f"nc1_method must be one of {NC1_METHODS}, not {nc1_method!r}")
        self.threads = resolve_threads(threads)
        self.kernels = kernels if kernels is not None else default_kernels
        self.nc1_method = nc1_method
        self.pair_sweep = PairSweep(tile=pair_tile, threads=self.threads, kernels=self.kernels)

    def class_sums(self, blocks: Iterable[Chunk], stats: ClassStatistics) -> None:
        """Pass 1: add every block's per-class counts and float64 sums to ``stats``."""
        num_classes = stats.counts.shape[0]
        segment_sums = self.kernels.segment_sums

        def block_sums(block: Chunk):
            segments = _Segments(block.labels)
            part = segment_sums(block.features, segments.order, segments.starts)  # one row per class present
            if not np.isfinite(part).all():
                raise NonFiniteFeatures(block.start, block.features)
            return segments.classes, part, np.bincount(block.labels, minlength=num_classes)

        # one thread: a block's sums cost about what reading it costs, so more workers only
        # contend with the reader for memory and the GIL (benchmarks/README.md, issue 16)
        with single_threaded_blas():
            for classes, part, counts in ordered_map(block_sums, blocks, 1):
                stats.add(classes, part, counts)

    def evaluate(self, blocks: Iterable[Chunk], model: Model, stats: SplitStatistics) -> None:
        """Pass 2: add every block's decisions (and, with ``stats.within``, its within-class
        sums) to ``stats``."""
        p, k = model.basis.U.shape
        if not stats.within:
            method = "direct"
        elif self.nc1_method == "auto":
            method = cheaper_nc1_method(p, k, model.num_classes)
        else:
            method = self.nc1_method
        with single_threaded_blas():  # also while the model's float32 tables are built (once per model)
            block_stats = _BlockEvaluator(model, method, self.kernels)
            for y, y_ncc, y_net, ss, part in ordered_map(block_stats, blocks, self.threads):
                if y is None:
                    continue  # no row of a measured class in this block
                if stats.within:
                    if method == "scatter":
                        stats.add_within(ss, scatter=part)
                    else:
                        stats.add_within(ss, proj_ss=part)
                stats.count(y, y_ncc, y_net)


class _BlockEvaluator:
    """Pass 2 of one block (called on worker threads), with ``method``:
      "project": NC1's Σ (dᵀU)² from Z = D·U, NCC scored from Z;
      "scatter": NC1's Σ DᵀD, NCC scored from e = h − μ_G;
      "direct":  no within-class sums (an evaluated split), NCC scored from e = h − μ_G.
    Rows of classes left out of the model are dropped first (:meth:`Model.select`).
    Returns (labels, NCC decisions, network decisions or None, Σ‖d‖² per class or None,
    Σ Z² (k,) / Σ DᵀD (p, p) / None), or Nones when no row is left."""

    def __init__(self, model: Model, method: str, kernels):
        self.model, self.method, self.kernels = model, method, kernels
        p, k = model.basis.U.shape
        max_sq = float(model.sq_norm_centred.max())
        # NCC scores 2⟨e, m_c⟩ − ‖m_c‖² (e = h − μ_G, in U coordinates for "project", else in
        # R^p) in float32: error ≤ (2q + 8) u ‖e‖ ‖m_c‖ + 3 u ‖m_c‖² with q = k or p (rounding
        # of e, m, the q-term GEMM and the subtraction); ×4 margin (a difference of two scores,
        # and 2× to spare).
        terms = k if method == "project" else p
        self.ncc_rtol = 4.0 * (2 * terms + 8) * U32
        self.ncc_atol = 4.0 * 3 * U32 * max_sq
        if model.has_classifier:
            # Logits are formed in float32 (the network's own precision, twice the speed), then
            # every decision that float32 rounding could have changed is recomputed in float64:
            # |fl32(h·w) − h·w| ≤ (p + 2) u ‖h‖ ‖w‖ (u = 2⁻²⁴, incl. rounding W to float32),
            # + rounding of b and of the addition: ≤ u (|b| + |logit|); ×4 margin.
            self.logit_rtol = 4.0 * (p + 2) * U32
            self.logit_atol = 4.0 * U32 * (2.0 * model.max_abs_b)
        # the model's derived arrays, built here once (not on first use in the worker threads)
        self.max_norm_centred = model.max_norm_centred
        self.norm_means = model.norm_means
        if method == "project":
            self.tables = (model.coords32, model.ncc_offsets32)
        else:
            self.tables = (model.centred32, model.ncc_offsets32)
            self.mu_g_row, self.norm_mu_g = model.mu_g_row, model.norm_mu_g
        self.classifier = (model.W32, model.b32, model.max_norm_w) if model.has_classifier else None
        model.label_map  # the class selection's table, before the worker threads use it
        self.buffers = _Buffers()

    def __call__(self, block: Chunk):
        model, method, kernels = self.model, self.method, self.kernels
        block, positions = model.select(block)
        H, y = block.features, block.labels
        n = y.shape[0]
        if n == 0:
            return None, None, None, None, None
        p, k = model.basis.U.shape
        if method == "direct":
            # only the NCC product needs the rows, centred on μ_G (float32), and ‖h − μ_G‖²
            E = self.buffers.get("E32", (n, p), np.float32)
            en = kernels.center_rows(H, np.zeros(n, dtype=np.int64), self.mu_g_row, E)
            if not np.isfinite(en).all():
                raise NonFiniteFeatures(block.start, H, positions)
            norm_h = np.sqrt(en) + self.norm_mu_g  # ≥ ‖h‖
        else:
            # D = h − μ_y in float64, rn = ‖h − μ_y‖² per row
            D = self.buffers.get("D", (n, p))
            rn = kernels.center_rows(H, y, model.means, D)
            if not np.isfinite(rn).all():
                raise NonFiniteFeatures(block.start, H, positions)
            norm_h = np.sqrt(rn) + self.norm_means[y]  # ≥ ‖h‖
        y_net = None
        if self.classifier is not None:
            W32, b32, max_norm_w = self.classifier
            logits = H.astype(np.float32, copy=False) @ W32  # float32 (n, C), scratch
            tol = 2.0 * self.logit_rtol * norm_h * max_norm_w + self.logit_atol
            y_net, near = kernels.decide(logits, 1.0, b32, tol)  # argmax(logits + b), rivals within tol
            decisions.settle(y_net, near, logits, tol, lambda row, classes: decisions.logits(H[row], model.W, model.b, classes))
            del logits
        ss = part = None
        if method != "direct":
            ss = np.bincount(y, weights=rn, minlength=model.num_classes)
        # NCC: argmin_c ‖h − μ_c‖² = argmax_c 2 ⟨h − μ_G, m_c⟩ − ‖m_c‖², in float32, rivals
        # within the rounding bound re-decided exactly
        table, offsets = self.tables
        if method == "project":
            Z = self.buffers.get("Z", (n, k))
            np.matmul(D, model.basis.U, out=Z)  # float64 coordinates of h − μ_y in span(M)
            part = np.zeros(k)
            # E = Z + coords[y]: h − μ_G in U coordinates (float32 copy, ‖E‖²); part = Σ Z²
            E, en = kernels.ncc_coords(Z, model.basis.coords, y, part)
        elif method == "scatter":
            part = D.T @ D  # float64 (p, p), a symmetric rank-n update (syrk)
            E = self.buffers.get("E32", (n, p), np.float32)
            en = kernels.center_rows(H, np.zeros(n, dtype=np.int64), self.mu_g_row, E)
        score = E @ table
        tol = self.ncc_rtol * np.sqrt(en) * self.max_norm_centred + self.ncc_atol
        y_ncc, near = kernels.decide(score, 2.0, offsets, tol)
        decisions.settle(y_ncc, near, score, tol, lambda row, classes: decisions.ncc_scores(H[row], model.means, classes))
        return y, y_ncc, y_net, ss, part
