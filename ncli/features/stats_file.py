"""Statistics files (``docs/format.md``, "Statistics files"): what ``ncli measure`` needs of a
run, accumulated, without the per-sample features: per split the class counts and float64
sums (pass 1; a split fed without labels, such as an out-of-distribution one, as one sum),
the decision counts (pass 2), and for the split that defines the metrics the within-class
sums. Their size depends on C and p, never on the number of samples. Read with the checks of
feature files (:class:`ncli.features.storage.LocalFile`).

Plain arrays only: :class:`StoredStatistics` is what is written and read back; turning it
into the engine's accumulators is :mod:`ncli.measure.accumulator`'s business. Written
atomically like feature files (:mod:`ncli.outputs`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ncli.errors import InputError
from ncli.features.reader import HDF5_ERRORS
from ncli.features.storage import check_regular_file
from ncli.features.schema import RESERVED_NAMES, attr_int, attr_str, classifier_problem
from ncli.features.storage import LocalFile
from ncli.outputs import check_output_path, cleanup_stale_temps, commit, temp_path_for

FORMAT_NAME = "ncli.stats"
FORMAT_VERSION = 1
WITHIN_FORMS = ("projected", "scatter")
DECISIONS = ("classifier", "logits", "none")  # where a split's network decisions came from
COUNTERS = ("num_samples", "net_correct", "ncc_correct", "disagree")


@dataclass
class StoredSplit:
    """One split. Pass 1 (``counts``, ``sums``): the split that defines the metrics, and any
    other split whose class sums were collected (e.g. an out-of-distribution split). Pass 2
    (``evaluated``): decision counters and per-class arrays; the defining split also has the
    within-class sums."""

    counts: np.ndarray | None = None  # (C,) int64 samples per class, pass 1
    sums: np.ndarray | None = None  # (C, p) float64 per-class feature sums, pass 1
    evaluated: bool = False
    decisions: str = "none"  # DECISIONS: how the network decisions were taken
    counters: dict = field(default_factory=dict)  # COUNTERS -> int
    evaluated_counts: np.ndarray | None = None  # (C,) int64 samples per class, pass 2
    disagree_per_class: np.ndarray | None = None  # (C,) int64
    ss_within: np.ndarray | None = None  # (C,) float64 Σ‖h − μ_c‖², the defining split
    within: np.ndarray | None = None  # (k,) projected Σ_W sums, or (p, p) the scatter


@dataclass
class StoredStatistics:
    num_classes: int
    feature_dim: int
    train_split: str
    global_mean: str  # the μ_G a projected Σ_W was collected along ("class" | "sample")
    within_form: str  # WITHIN_FORMS
    splits: dict[str, StoredSplit]
    weight: np.ndarray | None = None  # (C, p) classifier
    bias: np.ndarray | None = None  # (C,)
    class_names: list[str] | None = None
    min_per_class: int = 0  # the class selection of the passes: 0 = every class
    attrs: dict = field(default_factory=dict)  # epoch, step, feature_layer, provenance


def is_statistics_file(path) -> bool:
    """Whether ``path`` is an HDF5 file whose root says it is an ncli statistics file (any
    failure: False, and the feature-file reader reports what is wrong)."""
    try:
        if not Path(path).is_file() or not h5py.is_hdf5(str(path)):
            return False
        with h5py.File(str(path), "r") as f:
            return attr_str(f.attrs.get("ncli_format")) == FORMAT_NAME
    except HDF5_ERRORS:  # damaged root metadata (a bad checksum is a KeyError)
        return False


COMPACT_BYTES = 32 << 10  # arrays up to this size live in their dataset's header (no data block)


def _set_attr(attrs, key: str, value) -> None:
    """Text as fixed-length UTF-8 (variable-length strings would cost a 4 KiB heap)."""
    if isinstance(value, (dict, list, tuple)):
        value = json.dumps(value, sort_keys=True)
    elif isinstance(value, bool):
        value = np.bool_(value)
    elif isinstance(value, int):
        value = np.int64(value)
    elif not isinstance(value, (str, float, np.generic, np.ndarray)):
        value = str(value)
    if isinstance(value, str):
        raw = value.encode("utf-8")
        attrs.create(key, data=np.array(raw, dtype=f"S{max(1, len(raw))}"), dtype=h5py.string_dtype("utf-8", max(1, len(raw))))
    else:
        attrs[key] = value


def _dataset(group: h5py.Group, name: str, array: np.ndarray) -> None:
    """A dataset, stored compact (in its header) when small: a file of a few small arrays
    stays a few KiB instead of a 2 KiB block per array."""
    array = np.ascontiguousarray(array)
    if array.nbytes > COMPACT_BYTES or array.size == 0:
        group.create_dataset(name, data=array)
        return
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.COMPACT)
    space = h5py.h5s.create_simple(array.shape)
    dataset = h5py.h5d.create(group.id, name.encode(), h5py.h5t.py_create(array.dtype, logical=True), space, dcpl=dcpl)
    dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, array)


def _classifier_dtype(array: np.ndarray) -> np.ndarray:
    """float32 where that loses nothing (weights of a float32 model), else float64."""
    as32 = array.astype(np.float32)
    return as32 if np.array_equal(as32.astype(np.float64), array) else array


def _create_small(path: Path):
    """A new HDF5 file laid out for a few small objects: the latest format (compact headers)
    and up to 512 root attributes kept in the header (past 8, HDF5 would move them to a
    dense store of a few KiB)."""
    fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
    fcpl.set_attr_phase_change(512, 0)
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    return h5py.h5f.create(str(path).encode(), h5py.h5f.ACC_EXCL, fcpl=fcpl, fapl=fapl)


def write_statistics(path: str | os.PathLike, stored: StoredStatistics, *, force: bool = False) -> Path:
    """Write ``stored`` to ``path`` atomically (temporary file + rename; ``force`` replaces)."""
    out = check_output_path(path, force)
    tmp = temp_path_for(out)
    cleanup_stale_temps(tmp.parent)
    try:
        with h5py.File(_create_small(tmp)) as f:
            from ncli import __version__

            root = {
                "ncli_format": FORMAT_NAME,
                "ncli_format_version": FORMAT_VERSION,
                "num_classes": stored.num_classes,
                "feature_dim": stored.feature_dim,
                "train_split": stored.train_split,
                "global_mean": stored.global_mean,
                "within_form": stored.within_form,
                "min_per_class": stored.min_per_class,
                "created_by": f"ncli {__version__}",
                **stored.attrs,
            }
            for key, value in root.items():
                if value is not None:
                    _set_attr(f.attrs, key, value)
            if stored.weight is not None:
                group = f.create_group("classifier")
                _dataset(group, "weight", _classifier_dtype(np.asarray(stored.weight, np.float64)))
                if stored.bias is not None:
                    _dataset(group, "bias", _classifier_dtype(np.asarray(stored.bias, np.float64)))
            if stored.class_names is not None:
                raw = [str(n).encode("utf-8") for n in stored.class_names]
                width = max(1, max(len(r) for r in raw))
                _dataset(f, "class_names", np.array(raw, dtype=h5py.string_dtype("utf-8", width)))
            for name, split in stored.splits.items():
                _write_split(f.create_group(name), split)
        commit(tmp, out, force=force)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _write_split(group: h5py.Group, split: StoredSplit) -> None:
    arrays = {
        "counts": (split.counts, np.int64),
        "sums": (split.sums, np.float64),
        "evaluated_counts": (split.evaluated_counts, np.int64),
        "disagree_per_class": (split.disagree_per_class, np.int64),
        "ss_within": (split.ss_within, np.float64),
        "within": (split.within, np.float64),
    }
    for key, (array, dtype) in arrays.items():
        if array is not None:
            _dataset(group, key, np.asarray(array, dtype=dtype))
    if split.evaluated:
        _set_attr(group.attrs, "decisions", split.decisions)
        for key in COUNTERS:
            group.attrs[key] = np.int64(split.counters[key])


class StatisticsFile:
    """Read and validate a statistics file; :attr:`stored` holds its content. Hostile or
    damaged files are refused in one line (an InputError), as feature files are: only a
    regular file is opened, and every link and dataset is checked before it is followed or
    read (:class:`ncli.features.storage.LocalFile`: nothing from other files unless
    ``allow_external``, soft-link loops, datasets claiming more than they store)."""

    def __init__(self, path: str | os.PathLike, *, allow_external: bool = False):
        self.path = str(path)
        check_regular_file(self.path, "a statistics file")
        try:
            f = h5py.File(self.path, "r")
        except (OSError, RuntimeError) as exc:
            raise InputError(f"{self.path}: cannot open HDF5 file, truncated or damaged? ({exc})") from None
        try:
            with f:
                self._local = LocalFile(f, self.path, allow_external=allow_external)
                self.stored = self._read(f)
        except InputError:
            raise
        except (*HDF5_ERRORS, IndexError, OverflowError) as exc:
            raise InputError(f"{self.path}: damaged statistics file ({type(exc).__name__}: {exc})") from None

    def _fail(self, message: str) -> InputError:
        return InputError(f"{self.path}: {message}")

    def _read(self, f: h5py.File) -> StoredStatistics:
        attrs, local = f.attrs, self._local
        if attr_str(attrs.get("ncli_format")) != FORMAT_NAME:
            raise self._fail(f"not an ncli statistics file (root attribute ncli_format is not {FORMAT_NAME!r})")
        version = attr_int(attrs.get("ncli_format_version"))
        if version != FORMAT_VERSION:
            raise self._fail(f"statistics format version {version} is not supported by this ncli (it reads {FORMAT_VERSION})")
        C, p = attr_int(attrs.get("num_classes")), attr_int(attrs.get("feature_dim"))
        if C is None or C < 1 or p is None or p < 1:
            raise self._fail("root attributes num_classes and feature_dim must be positive integers")
        train = attr_str(attrs.get("train_split"))
        global_mean = attr_str(attrs.get("global_mean"))
        form = attr_str(attrs.get("within_form"))
        if global_mean not in ("class", "sample") or form not in WITHIN_FORMS:
            raise self._fail(f"global_mean {global_mean!r} / within_form {form!r}: not a value this ncli knows")
        min_per_class = attr_int(attrs.get("min_per_class"))
        if min_per_class is None or min_per_class < 0:
            raise self._fail("root attribute min_per_class must be a count (0: every class measured)")
        splits = {}
        for name in local.names(f):
            if name in RESERVED_NAMES:
                continue
            group = local.child(f, name)
            if isinstance(group, h5py.Group):
                splits[name] = self._read_split(name, group, C, p, form, within=(name == train))
        if train not in splits or splits[train].counts is None or not splits[train].evaluated:
            raise self._fail(f"split {train!r}, which defines the metrics, lacks its class sums or its decisions")
        if splits[train].counts.shape != (C,):
            raise self._fail(f"/{train}/counts has shape {splits[train].counts.shape}, expected ({C},): the split that "
                             "defines the metrics has labels")
        weight = bias = None
        if local.has(f, "classifier"):
            group = local.child(f, "classifier")
            if not isinstance(group, h5py.Group):
                raise self._fail("/classifier is not a group")
            weight = self._array(group, "weight", (C, p), float)
            if local.has(group, "bias"):
                bias = self._array(group, "bias", (C,), float)
            for array, what in ((weight, "weight"), (bias, "bias")):
                problem = None if array is None else classifier_problem(array)
                if problem is not None:
                    raise self._fail(f"/classifier/{what} {problem}")
        names = None
        if local.has(f, "class_names"):
            ds = local.dataset(f, "class_names")
            if ds is None or ds.ndim != 1 or not (h5py.check_string_dtype(ds.dtype) is not None or ds.dtype.kind in "SU"):
                raise self._fail("/class_names must be a 1-D dataset of strings")
            if ds.shape == (C,):
                names = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in ds[...].tolist()]
        known = {"ncli_format", "ncli_format_version", "num_classes", "feature_dim", "train_split", "global_mean",
                 "within_form", "min_per_class"}
        extra = {k: _plain(v) for k, v in attrs.items() if k not in known}
        return StoredStatistics(
            num_classes=C, feature_dim=p, train_split=train, global_mean=global_mean, within_form=form, splits=splits,
            weight=weight, bias=bias, class_names=names, min_per_class=min_per_class, attrs=extra,
        )

    def _dataset(self, group: h5py.Group, key: str) -> h5py.Dataset:
        if not self._local.has(group, key):
            raise self._fail(f"{group.name.rstrip('/')}/{key} missing")
        ds = self._local.dataset(group, key)
        if ds is None:
            raise self._fail(f"{group.name.rstrip('/')}/{key} is not a dataset")
        return ds

    def _array(self, group: h5py.Group, key: str, shape: tuple, kind) -> np.ndarray:
        ds = self._dataset(group, key)
        if ds.shape != shape:
            raise self._fail(f"{ds.name} has shape {ds.shape}, expected {shape}")
        if kind is int:
            if ds.dtype.kind not in "iu":
                raise self._fail(f"{ds.name} must hold integers, not {ds.dtype}")
            array = ds[...]
            if array.size and array.min() < 0:
                raise self._fail(f"{ds.name} holds a negative count")
            if array.size and int(array.max()) > np.iinfo(np.int64).max:
                raise self._fail(f"{ds.name} holds a count beyond int64")
            return array.astype(np.int64)
        if ds.dtype.kind != "f":
            raise self._fail(f"{ds.name} must hold floats, not {ds.dtype}")
        array = ds[...].astype(np.float64)
        if not np.isfinite(array).all():
            raise self._fail(f"{ds.name} contains NaN or Inf")
        return array

    def _read_split(self, name: str, group: h5py.Group, C: int, p: int, form: str, within: bool) -> StoredSplit:
        split, local = StoredSplit(), self._local
        if local.has(group, "counts") or local.has(group, "sums"):
            rows = self._dataset(group, "counts").shape
            rows = 1 if rows == (1,) else C  # (1,): a split fed without labels, one sum
            split.counts = self._array(group, "counts", (rows,), int)
            split.sums = self._array(group, "sums", (rows, p), float)
        decisions = attr_str(group.attrs.get("decisions"))
        if decisions is None:
            return split
        if decisions not in DECISIONS:
            raise self._fail(f"/{name}: decisions {decisions!r} is not one of {', '.join(DECISIONS)}")
        split.evaluated, split.decisions = True, decisions
        for key in COUNTERS:
            value = attr_int(group.attrs.get(key))
            if value is None or value < 0:
                raise self._fail(f"/{name}: attribute {key!r} missing or not a count")
            split.counters[key] = value
        split.evaluated_counts = self._array(group, "evaluated_counts", (C,), int)
        split.disagree_per_class = self._array(group, "disagree_per_class", (C,), int)
        n = split.counters["num_samples"]
        if int(split.evaluated_counts.sum()) != n or any(split.counters[k] > n for k in COUNTERS):
            raise self._fail(f"/{name}: decision counts do not add up to num_samples {n}")
        if int(split.disagree_per_class.sum()) != split.counters["disagree"]:
            raise self._fail(f"/{name}: disagree_per_class does not add up to disagree")
        if within:
            split.ss_within = self._array(group, "ss_within", (C,), float)
            shape = (p, p) if form == "scatter" else self._dataset(group, "within").shape
            if form == "projected" and (len(shape) != 1 or shape[0] > min(C, p)):
                raise self._fail(f"/{name}/within has shape {shape}, expected (k,) with k <= min(C, p)")
            split.within = self._array(group, "within", shape, float)
        return split


def _plain(value):
    """An attribute as a Python value (text decoded, numpy scalars unwrapped)."""
    if isinstance(value, (bytes, str)):
        return attr_str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value
