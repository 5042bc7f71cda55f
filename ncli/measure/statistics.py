"""The streamed sufficient statistics, as accumulators, and the model built between the passes.

  ClassStatistics  pass 1 of a split: per-class counts and float64 sums
  Model            frozen: class means, μ_G, the between-class basis, the classifier (W, b),
                   and the tables the passes score decisions with
  SplitStatistics  pass 2 of a split against a model: decisions counted and, for the split
                   that defines the metrics, the within-class sums

The accumulators know nothing of files or backends: a backend (:mod:`ncli.measure.engine`,
:mod:`ncli.measure.engine_torch`) adds blocks' partial results to them in block order, and two
accumulators of the same kind merge by adding (e.g. statistics of shards of a split).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ncli.errors import InputError
from ncli.features.reader import Chunk
from ncli.measure import metrics

MIN_PER_CLASS_HINT = "--min-per-class K measures only the classes with at least K train samples"


class ClassStatistics:
    """Pass 1 of one split: ``counts`` (C,) int64 and ``sums`` (C, p) float64 per class."""

    def __init__(self, num_classes: int, dim: int):
        self.counts = np.zeros(num_classes, dtype=np.int64)
        self.sums = np.zeros((num_classes, dim), dtype=np.float64)

    def add(self, classes: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> None:
        """Add one block's sums of the rows of ``classes`` (one row each) and its counts (C,)."""
        self.sums[classes] += sums
        self.counts += counts

    def merge(self, other: ClassStatistics) -> None:
        self.sums += other.sums
        self.counts += other.counts


def kept_classes(counts: np.ndarray, min_per_class: int | None) -> np.ndarray | None:
    """The class selection of ``--min-per-class``: the indices of the classes with at least
    ``min_per_class`` train samples, in increasing order; None when every class is kept."""
    if min_per_class is None:
        return None
    if min_per_class < 1:
        raise ValueError("min_per_class must be at least 1")
    keep = np.flatnonzero(counts >= min_per_class)
    return None if keep.size == counts.shape[0] else keep


@dataclass(frozen=True, eq=False)
class Model:
    """What pass 2 evaluates against: built from the class statistics of the split that
    defines the metrics, and the classifier (``W`` (C, p), ``b`` (C,); None without one).

    With a class selection (``classes``: the file's indices of the C' classes measured, in
    increasing order; None when all are) everything here is of the kept classes only, and the
    rows of the others are left out of every split (:meth:`select`)."""

    means: np.ndarray  # (C, p) μ_c
    mu_g: np.ndarray  # (p,) μ_G
    global_mean: str  # how μ_G was formed: "class" (mean of the means) or "sample"
    basis: metrics.BetweenBasis
    W: np.ndarray | None = None
    b: np.ndarray | None = None
    classes: np.ndarray | None = None  # (C',) file indices of the measured classes; None: all
    num_file_classes: int | None = None  # the file's C (None: num_classes)
    min_per_class: int | None = None  # the selection rule, when one was asked for

    @classmethod
    def fit(
        cls, stats: ClassStatistics, *, global_mean: str = "class", W=None, b=None, class_names=None,
        min_per_class: int | None = None,
    ) -> Model:
        """Class means, μ_G and the basis. Without ``min_per_class`` every class needs train
        samples (an InputError names the first without); with it, only the classes with at
        least ``min_per_class`` train samples are measured (at least 2 of them)."""
        counts, sums = stats.counts, stats.sums
        num_file_classes = counts.shape[0]
        classes = kept_classes(counts, min_per_class)
        if min_per_class is not None:
            kept = num_file_classes if classes is None else classes.size
            if kept < 2:
                raise InputError(
                    f"{kept} of {num_file_classes} classes have at least {min_per_class} train samples "
                    "(--min-per-class); Neural Collapse metrics need at least 2"
                )
            if classes is not None:
                counts, sums = counts[classes], sums[classes]
                if W is not None:
                    W = W[classes]
                    b = None if b is None else b[classes]
        means = metrics.class_means(counts, sums, class_names, hint=MIN_PER_CLASS_HINT)
        mu_g = metrics.global_mean(means, counts, sums, global_mean)
        basis = metrics.between_basis(means - mu_g)
        if W is not None and b is None:
            b = np.zeros(W.shape[0], dtype=np.float64)
        return cls(
            means=means, mu_g=mu_g, global_mean=global_mean, basis=basis, W=W, b=b, classes=classes,
            num_file_classes=num_file_classes, min_per_class=min_per_class,
        )

    def kept(self, per_class: np.ndarray) -> np.ndarray:
        """A per-class array of the file's C classes restricted to the measured ones."""
        return per_class if self.classes is None else per_class[self.classes]

    @cached_property
    def label_map(self) -> np.ndarray | None:
        """(C_file,) the measured index of each file class, −1 for a class left out."""
        if self.classes is None:
            return None
        out = np.full(self.num_file_classes, -1, dtype=np.int64)
        out[self.classes] = np.arange(self.classes.size)
        return out

    def select(self, block: Chunk) -> tuple[Chunk, np.ndarray | None]:
        """The rows of ``block`` of the measured classes, relabelled 0..C'−1, and their
        positions in the block (None: all rows)."""
        if self.classes is None:
            return block, None
        mapped = self.label_map[block.labels]
        keep = mapped >= 0
        if keep.all():
            return Chunk(block.start, block.features, mapped), None
        rows = np.flatnonzero(keep)
        return Chunk(block.start, block.features[rows], mapped[rows]), rows

    def select_decisions(self, logits, labels: np.ndarray, argmax) -> np.ndarray:
        """The network decisions of rows given with their ``logits`` (n, C_file): ``argmax``
        among the measured classes' columns (as measured indices), for the rows :meth:`select`
        keeps (``labels``: the rows' file labels), in row order."""
        if self.classes is None:
            return argmax(logits)
        return argmax(logits[:, self.classes])[self.label_map[labels] >= 0]

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    @property
    def has_classifier(self) -> bool:
        return self.W is not None

    # float64 quantities the rounding bounds of the decisions are made of

    @cached_property
    def sq_norm_centred(self) -> np.ndarray:
        """(C,) ‖μ_c − μ_G‖², from the basis coordinates."""
        coords = self.basis.coords
        return np.einsum("ck,ck->c", coords, coords)

    @cached_property
    def max_norm_centred(self) -> float:
        return float(np.sqrt(self.sq_norm_centred.max()))

    @cached_property
    def norm_means(self) -> np.ndarray:
        """(C,) ‖μ_c‖."""
        return np.linalg.norm(self.means, axis=1)

    @cached_property
    def max_norm_w(self) -> float:
        return float(np.linalg.norm(self.W, axis=1).max())

    @cached_property
    def max_abs_b(self) -> float:
        return float(np.abs(self.b).max())

    # float32 tables the numpy backend scores decisions with

    @cached_property
    def coords32(self) -> np.ndarray:
        """(k, C) basis coordinates of the centred means."""
        return np.ascontiguousarray(self.basis.coords.T, dtype=np.float32)

    @cached_property
    def ncc_offsets32(self) -> np.ndarray:
        """(C,) −‖μ_c − μ_G‖²: NCC score 2⟨e, m_c⟩ − ‖m_c‖² from coordinates e."""
        return (-self.sq_norm_centred).astype(np.float32)

    @cached_property
    def centred32(self) -> np.ndarray:
        """(p, C) columns μ_c − μ_G: NCC score 2⟨e, m_c⟩ − ‖m_c‖² from e = h − μ_G."""
        return np.ascontiguousarray(self.basis.U @ self.basis.coords.T, dtype=np.float32)

    @cached_property
    def mu_g_row(self) -> np.ndarray:
        """(1, p) μ_G as a one-row table (centring rows on it with the centring kernel)."""
        return np.ascontiguousarray(self.mu_g[None, :])

    @cached_property
    def norm_mu_g(self) -> float:
        return float(np.linalg.norm(self.mu_g))

    @cached_property
    def W32(self) -> np.ndarray:
        """(p, C) the classifier rows as columns."""
        return np.ascontiguousarray(self.W.T, dtype=np.float32)

    @cached_property
    def b32(self) -> np.ndarray:
        return self.b.astype(np.float32)


@dataclass
class SplitStatistics:
    """Pass 2 of one split: decisions counted and, with ``within`` (the split that defines the
    metrics), Σ‖h − μ_y‖² per class and Σ_W on span(M): either projected per block
    (``proj_ss`` (k,)) or as the p × p scatter Σ d dᵀ projected at the end (``scatter``)."""

    num_classes: int
    has_classifier: bool
    within: bool = False
    num_samples: int = 0
    net_correct: int = 0
    ncc_correct: int = 0
    disagree: int = 0
    class_counts: np.ndarray = field(default=None)  # (C,) samples per class
    disagree_per_class: np.ndarray = field(default=None)  # (C,)
    ss_within: np.ndarray | None = None  # (C,) Σ ‖h − μ_c‖²
    proj_ss: np.ndarray | None = None  # (k,) Σ (u_jᵀ (h − μ_y))²
    scatter: np.ndarray | None = None  # (p, p) Σ (h − μ_y)(h − μ_y)ᵀ

    def __post_init__(self):
        if self.class_counts is None:
            self.class_counts = np.zeros(self.num_classes, dtype=np.int64)
        if self.disagree_per_class is None:
            self.disagree_per_class = np.zeros(self.num_classes, dtype=np.int64)
        if self.within and self.ss_within is None:
            self.ss_within = np.zeros(self.num_classes, dtype=np.float64)

    @classmethod
    def for_model(cls, model: Model, within: bool = False) -> SplitStatistics:
        return cls(num_classes=model.num_classes, has_classifier=model.has_classifier, within=within)

    def count(self, y: np.ndarray, y_ncc: np.ndarray, y_net: np.ndarray | None) -> None:
        """Add one block's decisions (labels, NCC decisions, network decisions or None)."""
        self.num_samples += y.shape[0]
        self.class_counts += np.bincount(y, minlength=self.num_classes)
        self.ncc_correct += int(np.count_nonzero(y_ncc == y))
        if y_net is not None:
            self.net_correct += int(np.count_nonzero(y_net == y))
            disagree = y_net != y_ncc
            self.disagree += int(np.count_nonzero(disagree))
            self.disagree_per_class += np.bincount(y[disagree], minlength=self.num_classes)

    def add_within(self, ss: np.ndarray, *, proj_ss: np.ndarray | None = None, scatter: np.ndarray | None = None) -> None:
        """Add one block's (or a whole pass's) within-class sums."""
        self.ss_within += ss
        if proj_ss is not None:
            if self.proj_ss is None:
                self.proj_ss = np.zeros_like(proj_ss)
            self.proj_ss += proj_ss
        if scatter is not None:
            if self.scatter is None:
                self.scatter = np.zeros_like(scatter)
            self.scatter += scatter

    def merge(self, other: SplitStatistics) -> None:
        if other.within != self.within:
            raise ValueError("cannot merge statistics with and without the within-class sums")
        if (self.proj_ss is not None and other.scatter is not None) or (self.scatter is not None and other.proj_ss is not None):
            raise ValueError("cannot merge a projected Σ_W with a p x p scatter; use one NC1 method for all shards")
        self.num_samples += other.num_samples
        self.net_correct += other.net_correct
        self.ncc_correct += other.ncc_correct
        self.disagree += other.disagree
        self.class_counts += other.class_counts
        self.disagree_per_class += other.disagree_per_class
        if other.within:
            self.add_within(other.ss_within, proj_ss=other.proj_ss, scatter=other.scatter)

    def projected_within(self, basis: metrics.BetweenBasis) -> np.ndarray:
        """(k,) Σ_i (u_jᵀ (h_i − μ_{y_i}))² along the basis vectors u_j."""
        U = basis.U
        if self.scatter is not None:
            return np.einsum("pj,pj->j", self.scatter @ U, U)  # u_jᵀ (Σ DᵀD) u_j
        return self.proj_ss if self.proj_ss is not None else np.zeros(U.shape[1])
