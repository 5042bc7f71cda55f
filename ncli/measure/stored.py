"""Statistics files on the measure side: an :class:`~ncli.measure.accumulator.Accumulator`
saved and loaded (its accumulators as the arrays of :mod:`ncli.features.stats_file`), and
``ncli measure`` / ``ncli compare`` of such a file: the loaded accumulator's record, with the
options that per-sample data would need refused in one line each."""

from __future__ import annotations

import os
from pathlib import Path

from ncli.errors import InputError, UsageError
from ncli.features.stats_file import COUNTERS, StatisticsFile, StoredSplit, StoredStatistics, write_statistics
from ncli.measure.statistics import ClassStatistics, SplitStatistics


def save_accumulator(acc, path, *, force: bool = False) -> Path:
    """Write a (flushed, frozen) accumulator's statistics to ``path``."""
    splits = {}
    for name in sorted(set(acc.class_stats) | set(acc.results)):
        split = StoredSplit()
        if name in acc.class_stats:
            split.counts, split.sums = acc.class_stats[name].counts, acc.class_stats[name].sums
        if name in acc.results:
            result = acc.results[name]
            split.evaluated, split.decisions = True, acc.decisions[name]
            split.counters = {key: int(getattr(result, key)) for key in COUNTERS}
            split.evaluated_counts, split.disagree_per_class = result.class_counts, result.disagree_per_class
            if result.within:
                split.ss_within = result.ss_within
                split.within = _within(acc, result)
        splits[name] = split
    stored = StoredStatistics(
        num_classes=acc.num_classes, feature_dim=acc.dim, train_split=acc.train_split, global_mean=acc.global_mean,
        within_form="scatter" if acc.method == "scatter" else "projected", splits=splits, weight=acc.W, bias=acc.b,
        class_names=acc.class_names, attrs={"epoch": acc.epoch, "step": acc.step, "feature_layer": acc.layer, **acc.attrs},
    )
    return write_statistics(path, stored, force=force)


def _within(acc, result: SplitStatistics):
    import numpy as np

    if acc.method == "scatter":
        return result.scatter if result.scatter is not None else np.zeros((acc.dim, acc.dim))
    return result.proj_ss if result.proj_ss is not None else np.zeros(acc.model.basis.U.shape[1])


def load_accumulator(cls, path):
    """The accumulator a statistics file holds, frozen, with its pass-2 statistics."""
    stored = StatisticsFile(path).stored
    if stored.min_per_class:
        raise InputError(
            f"{path}: collected with --min-per-class {stored.min_per_class} (a class selection), which this ncli "
            "cannot measure; measure it with the ncli that wrote it"
        )
    attrs = dict(stored.attrs)
    epoch, step = (_int_or_none(attrs.pop(key, None)) for key in ("epoch", "step"))
    layer = attrs.pop("feature_layer", None)
    attrs.pop("created_by", None)  # written anew by save
    acc = cls(
        stored.num_classes, W=stored.weight, b=stored.bias, train_split=stored.train_split,
        global_mean=stored.global_mean, nc1_method="scatter" if stored.within_form == "scatter" else "project",
        class_names=stored.class_names, name=str(path), epoch=epoch, step=step,
        layer=layer if isinstance(layer, str) else None, attrs=attrs,
    )
    acc.dim = stored.feature_dim
    for name, split in stored.splits.items():
        if split.counts is not None:
            stats = ClassStatistics(stored.num_classes, stored.feature_dim)
            stats.add(slice(None), split.sums, split.counts)
            acc.class_stats[name] = stats
    try:
        model = acc.freeze()
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    k = model.basis.U.shape[1]
    for name, split in stored.splits.items():
        if not split.evaluated:
            continue
        if split.decisions == "classifier" and stored.weight is None:
            raise InputError(f"{path}: split {name!r} was decided by a classifier, but the file stores none")
        within = name == stored.train_split
        result = SplitStatistics(stored.num_classes, has_classifier=split.decisions != "none", within=within)
        for key in COUNTERS:
            setattr(result, key, split.counters[key])
        result.class_counts, result.disagree_per_class = split.evaluated_counts, split.disagree_per_class
        if within:
            if stored.within_form == "projected" and split.within.shape != (k,):
                raise InputError(f"{path}: /{name}/within holds {split.within.shape[0]} projected sums, expected {k}")
            result.add_within(
                split.ss_within,
                proj_ss=split.within if stored.within_form == "projected" else None,
                scatter=split.within if stored.within_form == "scatter" else None,
            )
        acc.results[name], acc.decisions[name] = result, split.decisions
    return acc


def _int_or_none(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def measure_statistics_file(
    path: str | os.PathLike, *, split: str, global_mean: str, per_class: bool, layer: str | None, chunk_rows: int | None
) -> dict:
    """The measure record of a statistics file; what needs per-sample data is refused."""
    from ncli.measure.accumulator import Accumulator

    if layer is not None:
        raise UsageError(
            f"{path}: --layer {layer}: a statistics file holds the statistics of one layer's features, no stored "
            "layers (measure layers from a feature file written with `ncli extract --layer`)"
        )
    if chunk_rows is not None:
        raise UsageError(f"{path}: --chunk-rows does not apply to a statistics file (its sums are already accumulated)")
    acc = Accumulator.load(path)
    if split != acc.train_split:
        raise UsageError(
            f"{path}: a statistics file collected with split {acc.train_split!r} defining the metrics; --split {split} "
            f"would need that split's per-sample features again (measure with --split {acc.train_split})"
        )
    return acc.measure(per_class=per_class, global_mean=global_mean)


def list_statistics_layers(path) -> list[str]:
    raise UsageError(f"{path}: a statistics file stores no layers (--layer needs a feature file written with `ncli extract --layer`)")
