"""Accumulated statistics on the measure side: statistics files as the engine's accumulators
(:mod:`ncli.features.stats_file` holds the arrays), an
:class:`~ncli.measure.accumulator.Accumulator` saved and loaded, and the model and split order
a record of accumulated statistics is built with — for ``Accumulator.measure`` and for
``ncli measure`` / ``ncli compare`` of a file (:func:`record_inputs`, where the options that
per-sample data would need are refused in one line each), with the passes' class selection
(``--min-per-class``: per-class arrays stored on the file's C classes, kept ones read back)
and an out-of-distribution split's sums (:func:`ood_split`). Imports neither the accumulator
nor the record module (they import this one)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ncli.errors import InputError, UsageError
from ncli.features.stats_file import COUNTERS, StatisticsFile, StoredSplit, StoredStatistics, write_statistics
from ncli.measure.statistics import ClassStatistics, Model, SplitStatistics, kept_classes


def save_accumulator(acc, path, *, force: bool = False) -> Path:
    """Write a (flushed, frozen) accumulator's statistics to ``path``."""
    splits = {}
    for name in sorted(set(acc.class_stats) | set(acc.results)):
        split = StoredSplit()
        if name in acc.class_stats:
            split.counts, split.sums = acc.class_stats[name].counts, acc.class_stats[name].sums
        if name in acc.results:
            result, on_file_classes = acc.results[name], _file_classes(acc)
            split.evaluated, split.decisions = True, acc.decisions[name]
            split.counters = {key: int(getattr(result, key)) for key in COUNTERS}
            split.evaluated_counts = on_file_classes(result.class_counts)
            split.disagree_per_class = on_file_classes(result.disagree_per_class)
            if result.within:
                split.ss_within = on_file_classes(result.ss_within)
                split.within = _within(acc, result)
        splits[name] = split
    stored = StoredStatistics(
        num_classes=acc.num_classes, feature_dim=acc.dim, train_split=acc.train_split, global_mean=acc.global_mean,
        within_form="scatter" if acc.method == "scatter" else "projected", splits=splits, weight=acc.W, bias=acc.b,
        class_names=acc.class_names, min_per_class=acc.min_per_class or 0,
        attrs={"epoch": acc.epoch, "step": acc.step, "feature_layer": acc.layer, **acc.attrs},
    )
    return write_statistics(path, stored, force=force)


def _file_classes(acc):
    """Per-class arrays of the measured classes laid out on the file's C classes (zeros for
    the classes a selection left out)."""
    classes = acc.model.classes

    def on_file_classes(per_class):
        if classes is None:
            return per_class
        out = np.zeros(acc.num_classes, dtype=per_class.dtype)
        out[classes] = per_class
        return out

    return on_file_classes


def _within(acc, result: SplitStatistics):
    if acc.method == "scatter":
        return result.scatter if result.scatter is not None else np.zeros((acc.dim, acc.dim))
    return result.proj_ss if result.proj_ss is not None else np.zeros(acc.model.basis.U.shape[1])


@dataclass
class Content:
    """A statistics file as the engine's accumulators."""

    stored: StoredStatistics
    class_stats: dict[str, ClassStatistics]  # pass 1, per split
    results: dict[str, SplitStatistics]  # pass 2, per split
    decisions: dict[str, str]  # per evaluated split: "classifier" | "logits" | "none"


def read_statistics(path, *, allow_external: bool = False) -> Content:
    stored = StatisticsFile(path, allow_external=allow_external).stored
    p = stored.feature_dim
    content = Content(stored, {}, {}, {})
    for name, split in stored.splits.items():
        if split.counts is not None:  # (C,) class sums, or (1,): a split fed without labels
            stats = ClassStatistics(split.counts.shape[0], p)
            stats.add(slice(None), split.sums, split.counts)
            content.class_stats[name] = stats
    # the passes' class selection (--min-per-class), from the train counts as at freeze
    classes = kept_classes(content.class_stats[stored.train_split].counts, stored.min_per_class or None)
    measured = stored.num_classes if classes is None else classes.size
    for name, split in stored.splits.items():
        if not split.evaluated:
            continue
        if split.decisions == "classifier" and stored.weight is None:
            raise InputError(f"{path}: split {name!r} was decided by a classifier, but the file stores none")
        within = name == stored.train_split
        per_class = [split.evaluated_counts, split.disagree_per_class] + ([split.ss_within] if within else [])
        if classes is not None:
            left_out = np.ones(stored.num_classes, dtype=bool)
            left_out[classes] = False
            if any(np.any(array[left_out] != 0) for array in per_class):
                raise InputError(f"{path}: /{name} counts samples of classes that --min-per-class "
                                 f"{stored.min_per_class} leaves out (damaged statistics file)")
            per_class = [array[classes] for array in per_class]
        result = SplitStatistics(measured, has_classifier=split.decisions != "none", within=within)
        for key in COUNTERS:
            setattr(result, key, split.counters[key])
        result.class_counts, result.disagree_per_class = per_class[0], per_class[1]
        if within:
            projected = stored.within_form == "projected"
            result.add_within(per_class[2], proj_ss=split.within if projected else None,
                              scatter=None if projected else split.within)
        content.results[name], content.decisions[name] = result, split.decisions
    return content


def load_accumulator(cls, path, *, allow_external: bool = False):
    """The accumulator a statistics file holds, frozen, with its pass-2 statistics."""
    content = read_statistics(path, allow_external=allow_external)
    stored = content.stored
    attrs = dict(stored.attrs)
    epoch, step = (_int_or_none(attrs.pop(key, None)) for key in ("epoch", "step"))
    layer = attrs.pop("feature_layer", None)
    attrs.pop("created_by", None)  # written anew by save
    acc = cls(
        stored.num_classes, W=stored.weight, b=stored.bias, train_split=stored.train_split,
        global_mean=stored.global_mean, nc1_method="scatter" if stored.within_form == "scatter" else "project",
        min_per_class=stored.min_per_class or None,
        class_names=stored.class_names, name=str(path), epoch=epoch, step=step,
        layer=layer if isinstance(layer, str) else None, attrs=attrs,
    )
    acc.dim, acc.class_stats = stored.feature_dim, content.class_stats
    try:
        model = acc.freeze()
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    _check_projection(path, content, model)
    acc.results, acc.decisions = content.results, content.decisions
    return acc


def _check_projection(path, content: Content, model: Model) -> None:
    train = content.results[content.stored.train_split]
    k = model.basis.U.shape[1]
    if train.proj_ss is not None and train.proj_ss.shape != (k,):
        raise InputError(f"{path}: /{content.stored.train_split}/within holds {train.proj_ss.shape[0]} projected sums, expected {k}")


def _int_or_none(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def record_model(frozen: Model | None, class_stats: ClassStatistics, *, collected: str, method: str, global_mean: str,
                 W, b, class_names, name: str, min_per_class: int | None) -> Model:
    """The model a record is built with: the frozen one, or one fitted again for another μ_G
    (the decisions and Σ‖h − μ_c‖² do not depend on it; a projected Σ_W does, so only the p × p
    scatter allows it) or for a classifier given after pass 2. ``min_per_class``: the
    selection the record reports (it selects the classes the passes kept)."""
    if global_mean != collected and method != "scatter":
        raise UsageError(
            f"{name}: Σ_W was kept projected along the basis of --global-mean {collected}; measuring with "
            f"--global-mean {global_mean} needs the p × p scatter (collect again with --global-mean {global_mean}, or keep "
            "the scatter: Accumulator(nc1_method='scatter'))"
        )
    if frozen is not None and global_mean == collected and (W is None or frozen.W is not None):
        return frozen
    return Model.fit(class_stats, global_mean=global_mean, W=W, b=b, class_names=class_names, min_per_class=min_per_class)


def ordered_results(results: dict[str, SplitStatistics], train_split: str) -> dict[str, SplitStatistics]:
    """The train split first, then the others by name (as measure_file orders a file's splits)."""
    names = [train_split] + sorted(s for s in results if s != train_split)
    return {name: results[name] for name in names if name in results}


def ood_split(class_stats: dict[str, ClassStatistics], results: dict[str, SplitStatistics], ood: str | None,
              train_split: str, where: str) -> tuple[dict[str, SplitStatistics], ClassStatistics | None]:
    """The evaluated splits without the out-of-distribution split ``ood``, and its one-class
    sums (all its rows, labels ignored) for NC5; (results, None) without one."""
    if ood is None:
        return results, None
    if ood == train_split:
        raise UsageError(f"--ood {ood}: the out-of-distribution split cannot be the split that defines the metrics")
    if ood not in class_stats:
        known = sorted(name for name in class_stats if name != train_split)
        raise UsageError(f"{where}: --ood {ood}: no class sums of split {ood!r} were collected "
                         f"(pass 1 of it: update(..., split={ood!r}) / extract --stats-only --ood {ood}); "
                         f"splits with sums: {', '.join(known) or 'none but the train split'}")
    stats = class_stats[ood]
    total = ClassStatistics(1, stats.sums.shape[1])
    total.add(slice(None), stats.sums.sum(axis=0, keepdims=True), np.array([stats.counts.sum()]))
    if total.counts[0] == 0:
        raise InputError(f"{where}: --ood split {ood!r} has no samples")
    return {name: result for name, result in results.items() if name != ood}, total


def _check_selection(path, stored, class_stats: ClassStatistics, asked: int | None) -> None:
    """``--min-per-class`` at measure time must select the classes the passes kept."""
    collected = stored.min_per_class or None
    if asked == collected:
        return
    kept, wanted = kept_classes(class_stats.counts, collected), kept_classes(class_stats.counts, asked)
    if (kept is None and wanted is None) or (kept is not None and wanted is not None and np.array_equal(kept, wanted)):
        return  # the same classes: the passes would have been the same
    C = stored.num_classes

    def said(value, classes):
        measured = C if classes is None else classes.size
        flag = f"--min-per-class {value}" if value else "no --min-per-class"
        return f"{flag} ({measured} of {C} classes)"

    raise UsageError(
        f"{path}: a statistics file collected with {said(collected, kept)}; its decisions were taken among those "
        f"classes, so {said(asked, wanted)} needs the features again (measure with "
        f"{'--min-per-class ' + str(collected) if collected else 'no --min-per-class'}, or collect again)"
    )


def record_inputs(
    path: str | os.PathLike, *, split: str, global_mean: str, layer: str | None, chunk_rows: int | None,
    min_per_class: int | None = None, ood: str | None = None, allow_external: bool = False,
) -> dict:
    """What :func:`ncli.measure.record.build_record` needs for a statistics file (all but
    ``per_class``); what needs per-sample data is refused. ``min_per_class`` must select the
    classes the passes kept; ``ood`` names a split whose class sums the file holds."""
    if layer is not None:
        raise UsageError(
            f"{path}: --layer {layer}: a statistics file holds the statistics of one layer's features, no stored "
            "layers (measure layers from a feature file written with `ncli extract --layer`)"
        )
    if chunk_rows is not None:
        raise UsageError(f"{path}: --chunk-rows does not apply to a statistics file (its sums are already accumulated)")
    content = read_statistics(path, allow_external=allow_external)
    stored = content.stored
    train = stored.train_split
    if split != train:
        raise UsageError(
            f"{path}: a statistics file collected with split {train!r} defining the metrics; --split {split} "
            f"would need that split's per-sample features again (measure with --split {train})"
        )
    _check_selection(path, stored, content.class_stats[train], min_per_class)
    results, ood_stats = ood_split(content.class_stats, content.results, ood, train, str(path))
    try:
        model = record_model(None, content.class_stats[train], collected=stored.global_mean,
                             method="scatter" if stored.within_form == "scatter" else "project", global_mean=global_mean,
                             W=stored.weight, b=stored.bias, class_names=stored.class_names, name=str(path),
                             min_per_class=min_per_class)
    except InputError as exc:
        raise InputError(f"{path}: split {train!r}: {exc}") from None
    if global_mean == stored.global_mean:
        _check_projection(path, content, model)
    layer_name = stored.attrs.get("feature_layer")
    source = {"file": str(path), "epoch": _int_or_none(stored.attrs.get("epoch"))}
    epoch_source = stored.attrs.get("epoch_source")
    if source["epoch"] is not None and isinstance(epoch_source, str):  # the epoch was read from a name, not stored
        source["epoch_source"] = epoch_source
    source.update(step=_int_or_none(stored.attrs.get("step")), layer=layer_name if isinstance(layer_name, str) else None)
    return dict(source=source, model=model, class_stats=content.class_stats[train],
                results=ordered_results(results, train), train_split=train, class_names=stored.class_names,
                ood_split=ood, ood_stats=ood_stats)


def list_statistics_layers(path) -> list[str]:
    raise UsageError(f"{path}: a statistics file stores no layers (--layer needs a feature file written with `ncli extract --layer`)")
