"""Measure one feature file: the file driver of the engine, and the measure record.

:func:`measure_file` feeds a file's blocks to a backend's two passes, which fill the
accumulators of :mod:`ncli.measure.statistics`; :func:`build_record` turns those into the JSON
object of ``docs/metrics.md`` (schema ``ncli.measure/1``), with the metrics the registry
declares. :func:`validate_record` checks such an object read back (``ncli compare``).
No torch (unless a TorchBackend is given), no CLI here.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np

from ncli.errors import InputError, UsageError
from ncli.features.reader import FeatureFile
from ncli.features.stats_file import is_statistics_file
from ncli.measure import metrics, registry
from ncli.measure.blocks import NonFiniteFeatures, file_blocks, unlabelled
from ncli.measure.engine import NumpyBackend, single_threaded_blas
from ncli.measure.pairs import PairSweep
from ncli.measure.statistics import ClassStatistics, Model, SplitStatistics

SCHEMA = "ncli.measure/1"
MAX_COSINE_CLASSES = 64  # class_cosines (C × C) only up to this many measured classes


def list_layers(path: str | os.PathLike, split: str = "train", *, allow_external: bool = False) -> list[str]:
    """Names of the intermediate layers stored for ``split`` (for ``--layer all``), in forward
    order when the file records each layer's depth."""
    if is_statistics_file(path):
        from ncli.measure.stored import list_statistics_layers

        return list_statistics_layers(path)
    with FeatureFile(path, allow_external=allow_external) as ff:
        layers = list(defining_split(ff, path, split).layers)
    if not layers:
        raise InputError(f"{path}: split {split!r} stores no layers (/{split}/layers/...)")
    return layers


def defining_split(ff: FeatureFile, path, split: str):
    """The split whose class statistics define the metrics; when the file lacks it, an error
    that names the splits it has and the option that picks one (a file of test data only,
    ``ncli extract --data test=...``, has no 'train')."""
    if split not in ff.splits:
        have = ", ".join(repr(name) for name in ff.splits)
        raise InputError(
            f"{path}: no split {split!r} to take the class statistics from (the file has: {have}); "
            f"pick one with --split, e.g. --split {next(iter(ff.splits))}"
        )
    return ff.split(split)


@contextmanager
def _in_split(path, split: str):
    """Errors of a backend's pass name the file and the split."""
    try:
        yield
    except NonFiniteFeatures as exc:
        raise InputError(f"{path}: split {split!r}, {exc}") from None


def measure_file(
    path: str | os.PathLike,
    *,
    split: str = "train",
    global_mean: str = "class",
    per_class: bool = False,
    layer: str | None = None,
    chunk_rows: int | None = None,
    backend=None,
    min_per_class: int | None = None,
    ood: str | None = None,
    allow_external: bool = False,
    class_cosines: bool = False,
) -> dict:
    """All collapse metrics of one file, as a JSON-ready dict (see module docstring). A
    statistics file (``ncli extract --stats-only``, ``Accumulator.save``) gives the record of
    its accumulated statistics (``layer`` and ``chunk_rows`` do not apply to it).

    ``split`` names the split whose class statistics define the metrics; every other split
    in the file is evaluated against them, except ``ood``: an out-of-distribution split whose
    features' mean gives NC5 (its labels are ignored; it counts in no accuracy). ``layer``
    measures ``/<split>/layers/<layer>`` instead of the penultimate features (classifier
    metrics are then not available). ``min_per_class``: measure only the classes with at
    least that many samples in ``split`` (the others' rows count in no split).

    ``backend`` does the per-block arithmetic: a :class:`ncli.measure.engine.NumpyBackend`
    (the default, on all CPUs; bit-reproducible) or a
    :class:`ncli.measure.engine_torch.TorchBackend` (a torch device).
    ``allow_external``: read datasets stored in other files (``--allow-external``).
    ``class_cosines``: with ``per_class``, the pairwise cosines of the classes (see
    :func:`build_record`), for ``ncli compare --plot-per-class``.
    """
    if global_mean not in ("class", "sample"):
        raise ValueError(f"global_mean must be 'class' or 'sample', not {global_mean!r}")
    if is_statistics_file(path):  # accumulated already: no passes, the same record
        from ncli.measure.stored import record_inputs

        with single_threaded_blas():  # as Accumulator.measure: the same bits
            inputs = record_inputs(path, split=split, global_mean=global_mean, layer=layer, chunk_rows=chunk_rows,
                                   min_per_class=min_per_class, ood=ood, allow_external=allow_external)
            return build_record(**inputs, per_class=per_class, class_cosines=class_cosines)
    backend = backend if backend is not None else NumpyBackend()
    with FeatureFile(path, allow_external=allow_external) as ff:
        info = defining_split(ff, path, split)
        num_classes = ff.num_classes
        if num_classes < 2:
            raise InputError(f"{path}: num_classes is {num_classes}; Neural Collapse metrics need at least 2 classes")
        if min_per_class is None and num_classes > info.num_samples:  # before C × p statistics are allocated
            raise InputError(
                f"{path}: num_classes is {num_classes} but split {split!r} has {info.num_samples} rows; every class "
                "needs a train sample (measure only the classes that have some with --min-per-class 1)"
            )
        if ood is not None:
            ff.split(ood)
            if ood == split:
                raise UsageError(f"--ood {ood}: the out-of-distribution split cannot be the split that defines the metrics")
        if layer is not None:
            dim = ff.layer_info(split, layer)[1]
            classifier = None
            for other in ff.splits:
                if layer not in ff.splits[other].layers:
                    raise InputError(f"{path}: split {other!r} has no layer {layer!r}")
        else:
            dim = info.feature_dim
            classifier = ff.classifier()
        W, b = classifier if classifier is not None else (None, None)
        names = ff.class_names()

        class_stats = ClassStatistics(num_classes, dim)
        with _in_split(path, split):
            backend.class_sums(file_blocks(ff, split, chunk_rows, layer), class_stats)
        try:
            model = Model.fit(
                class_stats, global_mean=global_mean, W=W, b=b, class_names=names, min_per_class=min_per_class
            )
        except InputError as exc:
            raise InputError(f"{path}: split {split!r}: {exc}") from None

        results = {}
        for name in [split] + [s for s in ff.splits if s not in (split, ood)]:
            results[name] = SplitStatistics.for_model(model, within=(name == split))
            with _in_split(path, name):
                backend.evaluate(file_blocks(ff, name, chunk_rows, layer), model, results[name])
        ood_stats = None
        if ood is not None:
            ood_stats = ClassStatistics(1, dim)
            with _in_split(path, ood):
                backend.class_sums(unlabelled(file_blocks(ff, ood, chunk_rows, layer)), ood_stats)
            if ood_stats.counts[0] == 0:
                raise InputError(f"{path}: --ood split {ood!r} has no samples")
        source = {"file": str(path), "epoch": ff.epoch}
        if ff.epoch is not None and ff.epoch_source is not None:  # the epoch was read from a name, not stored
            source["epoch_source"] = ff.epoch_source
        source.update(step=ff.step, layer=layer if layer is not None else ff.feature_layer)
        if layer is not None and layer in info.layer_depths:  # its place in the forward pass
            source["layer_depth"] = info.layer_depths[layer]
    return build_record(
        source, model, class_stats, results, train_split=split, per_class=per_class, class_names=names,
        ood_split=ood, ood_stats=ood_stats, pair_sweep=getattr(backend, "pair_sweep", None),
        class_cosines=class_cosines,
    )


def build_record(
    source: dict,
    model: Model,
    class_stats: ClassStatistics,
    results: dict[str, SplitStatistics],
    *,
    train_split: str,
    per_class: bool = False,
    class_names: list[str] | None = None,
    ood_split: str | None = None,
    ood_stats: ClassStatistics | None = None,
    pair_sweep: PairSweep | None = None,
    class_cosines: bool = False,
) -> dict:
    """The ``ncli.measure/1`` record: ``source`` (file, epoch, step, layer: where the features
    came from), then the metrics of the model and the statistics of every evaluated split
    (``results[train_split]`` holds the within-class sums). ``class_stats`` are the defining
    split's, of all the file's classes (the model says which were measured). ``ood_stats``:
    the one-class sums of the out-of-distribution split ``ood_split``, for NC5. ``pair_sweep``
    sweeps pairs of classes (default: :class:`ncli.measure.pairs.PairSweep` on one thread).
    ``class_cosines`` (with ``per_class``, up to ``MAX_COSINE_CLASSES`` measured classes): adds
    ``"class_cosines"``, the C × C matrices of :func:`ncli.measure.metrics.class_cosines` with
    the classes' file indices; not part of ``ncli measure``'s output."""
    train = results[train_split]
    counts = model.kept(class_stats.counts)
    statistics = metrics.Statistics(
        counts=np.asarray(counts, dtype=np.float64),
        means=model.means,
        mu_g=model.mu_g,
        basis=model.basis,
        ss_within=train.ss_within,
        proj_ss=train.projected_within(model.basis),
        W=model.W,
        b=model.b,
        ood_mean=None if ood_stats is None else ood_stats.sums[0] / float(ood_stats.counts[0]),
        pair_sweep=pair_sweep if pair_sweep is not None else PairSweep(),
        classes=model.classes,
        class_names=class_names,
    )
    splits = {name: registry.split_numbers(stats) for name, stats in results.items()}
    headline = registry.headline_split(splits, train_split)
    record = {
        "schema": SCHEMA,
        **source,
        "num_classes": model.num_file_classes or model.num_classes,
        "classes_measured": model.num_classes,
        "min_per_class": model.min_per_class,
        "feature_dim": model.means.shape[1],
        "splits": splits,
        "metrics": registry.metric_values(statistics, splits[headline]),
        "global_mean": model.global_mean,
        "train_split": train_split,
        "ood": None if ood_split is None else {"split": ood_split, "num_samples": int(ood_stats.counts[0])},
        "has_classifier": model.has_classifier,
    }
    notes = statistics.notes()
    if notes:
        record["notes"] = notes
    if per_class:
        rows = metrics.per_class_table(
            counts=counts, means=model.means, mu_g=model.mu_g, ss_within=train.ss_within, W=model.W,
            classes=model.classes,
        )
        for c, row in enumerate(rows):
            row["name"] = class_names[row["class"]] if class_names else None
            for number in registry.SPLIT_NUMBERS:
                if number.per_class is not None:
                    row[number.key] = {
                        name: number.per_class(stats, c) if stats.has_classifier or not number.needs_classifier else None
                        for name, stats in results.items()
                    }
        record["per_class"] = rows
        if class_cosines and model.num_classes <= MAX_COSINE_CLASSES:
            means, classifiers = metrics.class_cosines(model.means - model.mu_g, model.W)
            record["class_cosines"] = {
                "classes": [row["class"] for row in rows],
                "means": means.tolist(),
                "classifier_means": None if classifiers is None else classifiers.tolist(),
            }
    return record


INT64 = 1 << 63  # integers in a record fit int64 (a 400-digit one would overflow every float)


def _is_int_or_none(v) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool) and -INT64 <= v < INT64)


def _is_number_or_none(v) -> bool:
    return isinstance(v, float) or _is_int_or_none(v)


def _shown(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def validate_record(obj, where: str) -> dict:
    """Check that ``obj`` is a measure record (schema ncli.measure/1); ``where`` names it."""
    if not isinstance(obj, dict):
        raise InputError(f"{where}: not an ncli measure record (a JSON {type(obj).__name__}, expected an object)")
    schema = obj.get("schema")
    if schema != SCHEMA:
        got = "no 'schema' key" if schema is None else f"schema {schema!r}"
        raise InputError(f"{where}: not an ncli measure record ({got}; expected {SCHEMA!r})")
    if not isinstance(obj.get("file"), str):
        raise InputError(f"{where}: measure record without a 'file' string")
    for key in ("epoch", "step"):
        if not _is_int_or_none(obj.get(key)):
            raise InputError(f"{where}: measure record: {key!r} must be an integer (int64) or null, not {_shown(obj.get(key))}")
    if not _is_int_or_none(obj.get("layer_depth")):
        raise InputError(f"{where}: measure record: 'layer_depth' must be an integer (int64) or null, not {_shown(obj.get('layer_depth'))}")
    for key in ("layer", "train_split", "global_mean", "epoch_source"):
        if not (obj.get(key) is None or isinstance(obj.get(key), str)):
            raise InputError(f"{where}: measure record: {key!r} must be a string or null, not {_shown(obj.get(key))}")
    for key in ("classes_measured", "min_per_class"):
        if not _is_int_or_none(obj.get(key)):
            raise InputError(f"{where}: measure record: {key!r} must be an integer (int64) or null, not {_shown(obj.get(key))}")
    ood = obj.get("ood")
    if not (ood is None or (isinstance(ood, dict) and isinstance(ood.get("split"), str))):
        raise InputError(f"{where}: measure record: 'ood' must be null or an object with a 'split' string, not {_shown(ood)}")
    notes = obj.get("notes", [])
    if not (isinstance(notes, list) and all(isinstance(text, str) for text in notes)):
        raise InputError(f"{where}: measure record: 'notes' must be a list of strings, not {_shown(notes)}")
    values = obj.get("metrics")
    if not isinstance(values, dict) or not values:
        raise InputError(f"{where}: measure record without a 'metrics' object")
    for k, v in values.items():
        if not _is_number_or_none(v):
            raise InputError(f"{where}: measure record: metric {_shown(k)} is {_shown(v)}, not a number (int64 or float) or null")
    splits = obj.get("splits")
    if not isinstance(splits, dict) or not splits:
        raise InputError(f"{where}: measure record without a 'splits' object")
    for s, d in splits.items():
        if not isinstance(d, dict):
            raise InputError(f"{where}: measure record: split {_shown(s)} is not an object")
        for k in registry.SPLIT_KEYS:
            if not _is_number_or_none(d.get(k)):
                raise InputError(f"{where}: measure record: split {_shown(s)} {k!r} is {_shown(d.get(k))}, not a number (int64 or float) or null")
    return obj
