"""``ncli.Accumulator``: the collapse metrics of data seen batch by batch, without storing it.

    acc = ncli.Accumulator(num_classes=C, W=model.fc.weight, b=model.fc.bias)
    for x, y in train_loader:                       # pass 1: class counts and sums
        acc.update(features(x), y)
    for split, loader in (("train", train_loader), ("test", test_loader)):
        for x, y in loader:                         # pass 2: decisions, within-class sums
            acc.evaluate(features(x), y, split=split)
    record = acc.measure()                          # the dict `ncli measure --json` prints
    acc.save("epoch_012.stats.h5")                  # `ncli measure` / `ncli compare` read it

The same accumulators (:mod:`ncli.measure.statistics`) and backends as ``ncli measure``, fed
one batch at a time: numpy arrays and CPU tensors go to the numpy backend's kernels, CUDA
tensors stay on their GPU (:class:`ncli.measure.engine_torch.DeviceClassSums` /
``DeviceEvaluation``): only statistics and decisions move. Sums are float64 whatever the
input dtype, and within-class sums are centred by the class means in the second pass, so the
result equals the dense definition to rounding whatever the batch order, batch sizes or the
division of the data between accumulators (:meth:`Accumulator.merge`,
:meth:`Accumulator.all_reduce`).

The two passes: ``update`` adds class sums (pass 1); the first ``evaluate`` freezes the
model (class means, μ_G, the between-class basis, the classifier) and every later
``evaluate`` is scored against it (pass 2). The classifier (W, b) is part of the model: give
it to the constructor or :meth:`Accumulator.set_classifier` before pass 2, or give each
batch's ``logits`` to ``evaluate`` (the network's own decisions; W may then come with
``measure``). Without either, the network's accuracy and the NCC disagreement are null.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np

from ncli.errors import InputError, UsageError
from ncli.features.schema import classifier_problem
from ncli.measure.blocks import NonFiniteFeatures, array_blocks
from ncli.measure.engine import NC1_METHODS, NumpyBackend, cheaper_nc1_method, single_threaded_blas
from ncli.measure.record import build_record
from ncli.measure.statistics import ClassStatistics, Model, SplitStatistics
from ncli.measure.device_passes import DevicePasses
from ncli.measure.stored import (
    load_accumulator, ood_split, ordered_results, record_model, save_accumulator,
)
from ncli.measure.user_batches import Checker, as_array, device_of, host_decisions, to_host

ENGINES = ("auto", "numpy", "torch")


class _Decided:
    """Stands for a split's statistics while a backend evaluates one batch whose network
    decisions are given (``y_net``, from the logits): the backend's count() calls arrive in
    row order, each taking the next rows of ``y_net``."""

    def __init__(self, stats: SplitStatistics, y_net: np.ndarray | None):
        self.stats, self.y_net, self.cursor = stats, y_net, 0
        self.within = stats.within

    def add_within(self, *args, **kwargs) -> None:
        self.stats.add_within(*args, **kwargs)

    def count(self, y, y_ncc, _y_net) -> None:
        rows = slice(self.cursor, self.cursor + len(y))
        self.cursor += len(y)
        self.stats.count(y, y_ncc, None if self.y_net is None else self.y_net[rows])


class Accumulator:
    """Neural Collapse statistics of ``num_classes`` classes, fed batch by batch (see the
    module docstring). Keywords:

    ``W``, ``b``: the classifier (C, p) and (C,) (numpy or torch, any device), for the network's
      decisions in pass 2 and the classifier metrics; ``set_classifier`` sets it later.
    ``train_split``: the split whose class statistics define the metrics (default "train").
    ``global_mean``: μ_G, "class" (mean of the class means) or "sample" (``--global-mean``).
    ``nc1_method``: how pass 2 keeps Σ_W: "auto" (the cheaper), "project" (on the span of the
      centred means: k numbers) or "scatter" (the p × p matrix: NC1 for either μ_G later).
    ``min_per_class``: measure only the classes with at least that many samples in pass 1 of
      the train split (``--min-per-class``): the model is fitted on them at freeze, and pass 2
      leaves the other classes' rows out of every split (decisions among the kept classes).
    ``engine``: "auto" (CUDA tensors on their GPU, everything else with the numpy kernels),
      "numpy" (everything copied to the host), "torch" (tensors where they are, CPU ones too).
    ``threads``: compute threads of the numpy backend (default 1: the caller's loop runs in
      parallel with it).
    ``name``, ``epoch``, ``step``, ``layer``: the record's ``file``, ``epoch``, ``step`` and
      ``layer``; ``attrs``: provenance attributes written by ``save``.

    Errors are :class:`ncli.errors.NcliError`: a bad batch is a
    :class:`ncli.measure.user_batches.BatchError` naming it ("update(): batch 17 of split
    'train': row 3: label 12 outside [0, 10)"), a call out of order a UsageError. A bad batch
    of numpy/CPU data is refused whole (nothing of it is added). On a GPU the checks of pass 1
    are collected on the device and read every 64 batches and before any result, so that a
    training step never waits for them; a bad batch found that way makes the accumulator
    refuse further use.
    """

    def __init__(
        self, num_classes: int, *, W=None, b=None, train_split: str = "train", global_mean: str = "class",
        nc1_method: str = "auto", min_per_class: int | None = None, engine: str = "auto", threads: int = 1,
        class_names=None,
        name: str = "<accumulator>", epoch: int | None = None, step: int | None = None, layer: str | None = None,
        attrs: dict | None = None,
    ):
        if int(num_classes) < 2:
            raise UsageError(f"num_classes is {num_classes}; Neural Collapse metrics need at least 2 classes")
        if global_mean not in ("class", "sample"):
            raise UsageError(f"global_mean must be 'class' or 'sample', not {global_mean!r}")
        if nc1_method not in NC1_METHODS or engine not in ENGINES:
            raise UsageError(f"nc1_method must be one of {NC1_METHODS} and engine one of {ENGINES}")
        if min_per_class is not None and (isinstance(min_per_class, bool) or int(min_per_class) < 1):
            raise UsageError(f"min_per_class must be a positive integer or None, not {min_per_class!r}")
        self.num_classes = int(num_classes)
        self.dim: int | None = None  # p, from the first batch (or the classifier)
        self.train_split, self.global_mean, self.nc1_method = train_split, global_mean, nc1_method
        self.min_per_class = None if min_per_class is None else int(min_per_class)
        self.engine, self.threads = engine, int(threads)
        self.class_names = list(class_names) if class_names is not None else None
        self.name, self.epoch, self.step, self.layer = name, epoch, step, layer
        self.attrs = dict(attrs or {})
        self.W: np.ndarray | None = None
        self.b: np.ndarray | None = None
        self.class_stats: dict[str, ClassStatistics] = {}  # pass 1, per split
        self.results: dict[str, SplitStatistics] = {}  # pass 2, per split
        self.decisions: dict[str, str] = {}  # per evaluated split: "classifier" | "logits" | "none"
        self.model: Model | None = None  # frozen by the first evaluate()
        self.method: str | None = None  # "project" | "scatter", resolved when frozen
        self.reduced: set[int] = set()  # passes already summed over processes (all_reduce)
        self._batches: dict[tuple[str, str], int] = {}
        self._reset_runtime()
        if W is not None:
            self.set_classifier(W, b)

    def _reset_runtime(self) -> None:
        """The backends and what sits on devices (not copied, not saved)."""
        self._numpy: NumpyBackend | None = None
        self._devices = DevicePasses(self.num_classes)
        self._logits_model: Model | None = None

    # -- the classifier -----------------------------------------------------------------------

    def set_classifier(self, W, b=None) -> None:
        """The classifier the network decisions of pass 2 are taken with (float64 copies)."""
        if self.model is not None:
            raise UsageError("set_classifier(): the classifier is part of the model frozen by the first evaluate(); set it before")
        self.W, self.b = self._classifier(W, b)

    def _classifier(self, W, b) -> tuple[np.ndarray, np.ndarray]:
        W64 = np.array(to_host(W, "f"), dtype=np.float64)
        if W64.ndim != 2 or W64.shape[0] != self.num_classes or (self.dim is not None and W64.shape[1] != self.dim):
            raise UsageError(f"classifier weight must be ({self.num_classes}, p = {self.dim or 'p'}), not {W64.shape}")
        b64 = np.zeros(self.num_classes) if b is None else np.array(to_host(b, "f"), dtype=np.float64)
        if b64.shape != (self.num_classes,):
            raise UsageError(f"classifier bias must be ({self.num_classes},), not {b64.shape}")
        for array, what in ((W64, "weight"), (b64, "bias")):
            problem = classifier_problem(array)
            if problem is not None:
                raise UsageError(f"the classifier's {what} {problem}")
        self.dim = W64.shape[1]
        return W64, b64

    # -- pass 1 ---------------------------------------------------------------------------------

    def update(self, features, labels=None, split: str = "train") -> None:
        """Pass 1: add a batch's per-class counts and float64 sums to ``split``'s statistics.
        ``labels=None``: rows of an out-of-distribution split (``measure(ood=split)``), summed
        as one class."""
        self._usable()
        if self.model is not None:
            raise UsageError(f"update(): pass 1 has ended (the first evaluate() froze the class means); "
                             f"split {split!r} cannot get more class sums. Use a new Accumulator for new data")
        if 1 in self.reduced:
            raise UsageError("update() after all_reduce(): the class sums are already summed over all processes")
        check = self._checker("update", split)
        features = as_array(features)
        n = check.features_shape(features)
        rows = self.num_classes if labels is not None else 1  # an unlabelled split: one sum
        if labels is None:
            if split == self.train_split:
                raise check.fail("labels are needed: this split defines the metrics (only an out-of-distribution "
                                 "split is fed without labels)")
            labels = np.zeros(n, dtype=np.int64)
        labels = as_array(labels)
        check.labels_shape(labels, n)
        known = self.class_stats.get(split)
        if known is not None and known.counts.shape[0] != rows:
            said = ("with labels", "without labels") if rows == 1 else ("without labels", "with labels")
            raise check.fail(f"fed {said[1]}, but earlier batches of this split were fed {said[0]}")
        if self.dim is None:
            self.dim = int(features.shape[1])
        if known is None:
            self.class_stats[split] = ClassStatistics(rows, self.dim)
        stats = self.class_stats[split]
        if self._on_device(features):
            self._devices.update(features, labels, split, self.dim, check, rows)
            return
        H = to_host(features, "f")
        y = check.host_labels(to_host(labels, "i"))
        check.host_finite(H, "features")
        self._numpy_backend().class_sums(array_blocks(H, y, rows), stats)

    # -- between the passes -------------------------------------------------------------------

    def freeze(self) -> Model:
        """End pass 1: fit the model (class means, μ_G, basis, classifier) from the train
        split's class statistics, on the classes ``min_per_class`` keeps. The first evaluate()
        calls it; calling it again is a no-op."""
        self._usable()
        if self.model is not None:
            return self.model
        self._flush()
        self._devices.end_pass1()
        stats = self.class_stats.get(self.train_split)
        if stats is None:
            raise UsageError(f"evaluate() before update(): no class sums of split {self.train_split!r}, "
                             "which defines the metrics (pass 1 comes first)")
        try:
            with single_threaded_blas():  # small products; the same bits as `ncli measure` of the saved file
                model = Model.fit(stats, global_mean=self.global_mean, W=self.W, b=self.b, class_names=self.class_names,
                                  min_per_class=self.min_per_class)
        except InputError as exc:
            raise InputError(f"split {self.train_split!r}: {exc}") from None
        p, k = model.basis.U.shape
        method = self.nc1_method if self.nc1_method != "auto" else cheaper_nc1_method(p, k, self.num_classes)
        self.model, self.method = model, method
        self._numpy = None  # remade with the method
        return model

    # -- pass 2 ---------------------------------------------------------------------------------

    def evaluate(self, features, labels, split: str = "train", logits=None) -> None:
        """Pass 2: count a batch's NCC and network decisions against the frozen model (and,
        for the train split, add its within-class sums). ``logits`` (n, C): the network's
        decisions are their argmax; else they come from the classifier W, b."""
        self._usable()
        if 2 in self.reduced:
            raise UsageError("evaluate() after all_reduce(): the decisions are already summed over all processes")
        model = self.freeze()
        check = self._checker("evaluate", split)
        features, labels = as_array(features), as_array(labels)
        logits = None if logits is None else as_array(logits)
        n = check.features_shape(features)
        check.labels_shape(labels, n)
        if logits is not None:
            check.logits_shape(logits, n)
        mode = "logits" if logits is not None else ("classifier" if model.has_classifier else "none")
        known = self.decisions.setdefault(split, mode)
        if known != mode:
            said = {"logits": "given logits", "classifier": "decided by the classifier (W, b)", "none": "without network decisions"}
            raise check.fail(f"{said[mode]}, but earlier batches of this split were {said[known]}; "
                             "give logits for every batch of a split or for none")
        if split not in self.results:
            self.results[split] = SplitStatistics(model.num_classes, has_classifier=mode != "none",
                                                  within=split == self.train_split)
        stats = self.results[split]
        view = model if mode != "logits" else self._without_classifier()
        if self._on_device(features):
            self._devices.evaluate(features, labels, logits, stats, view, split == self.train_split, self.method, check,
                                   _Decided)
            return
        H = to_host(features, "f")
        y = check.host_labels(to_host(labels, "i"))
        check.host_finite(H, "features")
        y_net = None
        if logits is not None:
            z = to_host(logits, "f")
            check.host_finite(z, "logits")
            y_net = model.select_decisions(z, y, host_decisions)
        target = _Decided(stats, y_net) if logits is not None else stats
        try:
            self._numpy_backend().evaluate(array_blocks(H, y, self.num_classes), view, target)
        except NonFiniteFeatures as exc:  # |h| so large that ‖h − μ‖² overflows
            raise check.fail("features overflow float64 in ‖h − μ_c‖²", exc.row) from None

    # -- results --------------------------------------------------------------------------------

    def measure(self, W=None, b=None, *, per_class: bool = False, global_mean: str | None = None,
                ood: str | None = None) -> dict:
        """The ``ncli measure --json`` record (schema ncli.measure/1) of what was accumulated.

        ``W``, ``b``: the classifier, when it was not given before pass 2 (the network's
        decisions then came from logits); it is kept (``save`` stores it). Given again, it
        must be the one pass 2 used. ``global_mean``: another μ_G than the accumulator's,
        possible when Σ_W was kept as the p × p scatter (``nc1_method="scatter"``). ``ood``:
        a split fed to ``update`` (without labels, or with: they are ignored) whose mean
        gives NC5; it is left out of the record's splits, as ``ncli measure --ood`` does."""
        model = self._ready("measure")
        if W is not None:
            W64, b64 = self._classifier(W, b)
            if self.W is not None and not (np.array_equal(W64, self.W) and np.array_equal(b64, self.b)):
                raise UsageError("measure(W=..., b=...): not the classifier pass 2 took its decisions with")
            blind = [s for s, mode in self.decisions.items() if mode == "none"]
            if blind:
                raise UsageError(
                    f"measure(W=...): split {blind[0]!r} was evaluated without logits and without a classifier, so its "
                    "network decisions were not counted; give W, b before pass 2 (Accumulator(W=..., b=...) or "
                    "set_classifier()) or logits= to evaluate()"
                )
            self.W, self.b = W64, b64
        source = {"file": self.name, "epoch": self.epoch, "step": self.step, "layer": self.layer}
        results, ood_stats = ood_split(self.class_stats, self.results, ood, self.train_split, "measure(ood=...)")
        with single_threaded_blas():  # as `ncli measure` of a statistics file: the same bits
            model = record_model(model, self.class_stats[self.train_split], collected=self.global_mean,
                                 method=self.method, global_mean=global_mean or self.global_mean, W=self.W, b=self.b,
                                 class_names=self.class_names, name=self.name, min_per_class=self.min_per_class)
            return build_record(source, model, self.class_stats[self.train_split],
                                ordered_results(results, self.train_split), train_split=self.train_split,
                                per_class=per_class, class_names=self.class_names, ood_split=ood, ood_stats=ood_stats)

    def save(self, path, *, force: bool = False) -> Path:
        """Write the statistics file (``docs/format.md``) atomically; ``force`` replaces."""
        self._ready("save")
        return save_accumulator(self, path, force=force)

    @classmethod
    def load(cls, path, *, allow_external: bool = False) -> Accumulator:
        """An accumulator holding a statistics file's content (pass 2 done: it can be
        measured, and merged with others frozen from the same class sums).
        ``allow_external``: read what the file keeps in other files (``--allow-external``)."""
        return load_accumulator(cls, path, allow_external=allow_external)

    # -- combining ------------------------------------------------------------------------------

    def merge(self, other: Accumulator) -> Accumulator:
        """Add ``other``'s statistics to this one's (exact: sums of sums). Before pass 2 the
        class sums are added; after it, both must have frozen the same model (the same class
        sums: merge or all_reduce pass 1 first, then ``copy()`` for each worker) and the
        decisions and within-class sums are added."""
        from ncli.measure.reduce import merge_into

        merge_into(self, other)
        return self

    def all_reduce(self, group=None) -> Accumulator:
        """Sum this pass's statistics over the processes of ``torch.distributed`` (``group``:
        default the world), in rank order on every rank: every rank ends with the same bits,
        whatever the timing. Call it after pass 1 (before any evaluate) and after pass 2."""
        from ncli.measure.reduce import all_reduce

        all_reduce(self, group)
        return self

    def copy(self) -> Accumulator:
        """An independent copy (e.g. one per worker after pass 1 was merged)."""
        self._flush()
        runtime = {"_numpy", "_devices", "_logits_model"}
        clone = Accumulator.__new__(Accumulator)
        clone.__dict__.update(copy.deepcopy({k: v for k, v in self.__dict__.items() if k not in runtime}))
        clone._reset_runtime()
        return clone

    # -- internals ------------------------------------------------------------------------------

    def _checker(self, method: str, split: str) -> Checker:
        number = self._batches.get((method, split), 0)
        self._batches[(method, split)] = number + 1
        return Checker(method, split, number, self.num_classes, self.dim)

    def _on_device(self, features) -> bool:
        device = device_of(features)
        if device is None or self.engine == "numpy":
            return False
        return self.engine == "torch" or not device.startswith("cpu")

    def _numpy_backend(self) -> NumpyBackend:
        if self._numpy is None:
            self._numpy = NumpyBackend(threads=self.threads, nc1_method=self.method or "auto")
        return self._numpy

    def _without_classifier(self) -> Model:
        """The frozen model without W, b (batches whose decisions come with their logits)."""
        if self._logits_model is None:
            self._logits_model = dataclasses.replace(self.model, W=None, b=None)
        return self._logits_model

    def _usable(self) -> None:
        """A device batch found bad after its sums were added: nothing more can be trusted."""
        if self._devices.failed is not None:
            raise self._devices.failed

    def _flush(self) -> None:
        """Device-side sums into the host statistics, after their checks."""
        self._usable()
        self._devices.flush(self.class_stats, self.results)

    def _ready(self, method: str) -> Model:
        self._usable()
        if self.model is None or self.train_split not in self.results:
            raise UsageError(f"{method}() needs pass 2 of split {self.train_split!r} (its within-class sums): call "
                             "evaluate() on it after the update() calls")
        self._flush()
        return self.model
