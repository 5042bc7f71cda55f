"""Measure one feature file: stream the statistics, compute the metrics, build the record.

The record is the JSON object of ``shared/spec/metrics.md`` (schema ``ncli.measure/1``).
No torch, no CLI here.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from functools import partial

import numpy as np
from threadpoolctl import threadpool_limits

from ncli.errors import InputError
from ncli.features.reader import FeatureFile
from ncli.measure import metrics, registry
from ncli.measure.engine import class_sums, evaluate_split

SCHEMA = "ncli.measure/1"


def list_layers(path: str | os.PathLike, split: str = "train") -> list[str]:
    """Names of the intermediate layers stored for ``split`` (for ``--layer all``)."""
    with FeatureFile(path) as ff:
        layers = list(ff.split(split).layers)
    if not layers:
        raise InputError(f"{path}: split {split!r} stores no layers (/{split}/layers/...)")
    return layers


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


def measure_file(
    path: str | os.PathLike,
    *,
    split: str = "train",
    global_mean: str = "class",
    per_class: bool = False,
    layer: str | None = None,
    chunk_rows: int | None = None,
    threads: int | None = None,
    device: str = "cpu",
) -> dict:
    """All collapse metrics of one file, as a JSON-ready dict (see module docstring).

    ``split`` names the split whose class statistics define the metrics; every split in the
    file is evaluated against them. ``layer`` measures ``/<split>/layers/<layer>`` instead
    of the penultimate features (classifier metrics are then not available).

    ``device`` other than "cpu" (e.g. "cuda", "cuda:1") runs the per-block arithmetic with
    torch on that device (:mod:`ncli.stream_torch`); "torch:cpu" runs that path on the CPU
    (for tests). The default numpy path never imports torch.
    """
    dev = None
    if device != "cpu":
        from ncli.measure import engine_torch as stream_torch

        dev = stream_torch.resolve_device(device.removeprefix("torch:"))
    # Blocks are spread over worker threads, each with single-threaded BLAS (concurrent
    # multi-threaded BLAS calls thrash); results do not depend on the number of workers.
    workers = resolve_threads(threads)
    if global_mean not in ("class", "sample"):
        raise ValueError(f"global_mean must be 'class' or 'sample', not {global_mean!r}")
    with FeatureFile(path) as ff:
        info = ff.split(split)
        C = ff.num_classes
        if C < 2:
            raise InputError(f"{path}: num_classes is {C}; Neural Collapse metrics need at least 2 classes")
        if layer is not None:
            p = ff.layer_info(split, layer)[1]
            clf = None
            for other in ff.splits:
                if layer not in ff.splits[other].layers:
                    raise InputError(f"{path}: split {other!r} has no layer {layer!r}")
        else:
            p = info.feature_dim
            clf = ff.classifier()
        W, b = clf if clf is not None else (None, None)
        names = ff.class_names()

        if dev is None:  # numpy on `workers` threads, each with single-threaded BLAS
            first_pass = partial(class_sums, workers=workers)
            second_pass = partial(evaluate_split, workers=workers)
            limits = partial(threadpool_limits, limits=1, user_api="blas")
        else:
            first_pass = partial(stream_torch.class_sums, device=dev)
            second_pass = partial(stream_torch.evaluate_split, device=dev)
            limits = nullcontext
        with limits():
            counts, sums = first_pass(ff, split, chunk_rows=chunk_rows, layer=layer)
        try:
            means = metrics.class_means(counts, sums, names)
        except InputError as exc:
            raise InputError(f"{path}: split {split!r}: {exc}") from None
        mu_g = metrics.global_mean(means, counts, sums, global_mean)
        basis = metrics.between_basis(means - mu_g)

        order = [split] + [s for s in ff.splits if s != split]
        with limits():
            results = {
                s: second_pass(
                    ff, s, means=means, basis=basis, W=W, b=b, accumulate=(s == split), chunk_rows=chunk_rows, layer=layer
                )
                for s in order
            }
        train = results[split]
        statistics = metrics.Statistics(
            counts=np.asarray(counts, dtype=np.float64), means=means, mu_g=mu_g, basis=basis,
            ss_within=train.ss_within, proj_ss=train.proj_ss, W=W, b=b,
        )
        splits = {s: registry.split_numbers(r) for s, r in results.items()}
        headline = "test" if "test" in splits else split
        metric_values = registry.metric_values(statistics, splits[headline])

        record = {
            "schema": SCHEMA,
            "file": str(path),
            "epoch": ff.epoch,
            "step": ff.step,
            "layer": layer if layer is not None else ff.feature_layer,
            "num_classes": C,
            "feature_dim": p,
            "splits": splits,
            "metrics": metric_values,
            "global_mean": global_mean,
            "train_split": split,
            "has_classifier": W is not None,
        }
        if per_class:
            rows = metrics.per_class_table(counts=counts, means=means, mu_g=mu_g, ss_within=train.ss_within, W=W)
            for c, row in enumerate(rows):
                row["name"] = names[c] if names else None
                for number in registry.SPLIT_NUMBERS:
                    if number.per_class is not None:
                        row[number.key] = {
                            s: number.per_class(r, c) if r.has_classifier or not number.needs_classifier else None
                            for s, r in results.items()
                        }
            record["per_class"] = rows
    return record


def _is_int_or_none(v) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool))


def _is_number_or_none(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


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
            raise InputError(f"{where}: measure record: {key!r} must be an integer or null, not {obj.get(key)!r}")
    for key in ("layer", "train_split", "global_mean"):
        if not (obj.get(key) is None or isinstance(obj.get(key), str)):
            raise InputError(f"{where}: measure record: {key!r} must be a string or null, not {obj.get(key)!r}")
    metrics = obj.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise InputError(f"{where}: measure record without a 'metrics' object")
    for k, v in metrics.items():
        if not _is_number_or_none(v):
            raise InputError(f"{where}: measure record: metric {k!r} is {v!r}, not a number or null")
    splits = obj.get("splits")
    if not isinstance(splits, dict) or not splits:
        raise InputError(f"{where}: measure record without a 'splits' object")
    for s, d in splits.items():
        if not isinstance(d, dict):
            raise InputError(f"{where}: measure record: split {s!r} is not an object")
        for k in registry.SPLIT_KEYS:
            if not _is_number_or_none(d.get(k)):
                raise InputError(f"{where}: measure record: split {s!r} {k!r} is {d.get(k)!r}, not a number or null")
    return obj
