"""Writing format-1 feature files (``docs/format.md``) atomically and in a streaming fashion.

``FeatureWriter(path, num_classes=C)`` is a context manager that writes row-chunked,
resizable datasets into a temporary file next to ``path`` and moves it into place only when
the ``with`` block ends without an exception (:mod:`ncli.outputs`); an existing ``path`` is
never replaced unless ``force=True``. On error or Ctrl-C the temporary file is removed.

A full disk: HDF5 caches writes, so a write can fail long after the call that made it (when a
dataset handle closes, at flush, at exit). The writer keeps every dataset handle open until it
closes the file itself, turns the first failure into one error naming the output
(:func:`ncli.outputs.write_failure`), and drops the temporary file without writing anything
more (:meth:`FeatureWriter.abort`), so nothing is left for HDF5 to flush later.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping

import h5py
import numpy as np

from ncli.features.schema import FORMAT_NAME, FORMAT_VERSION, rows_per_chunk, split_name_problem
from ncli.outputs import check_output_path, cleanup_stale_temps, commit, temp_path_for, write_failure


class FeatureWriter:
    """Write a format-1 file atomically and in a streaming fashion.

    >>> with FeatureWriter("out.h5", num_classes=10, attrs={"epoch": 3}) as w:
    ...     w.set_classifier(W, b)
    ...     for H, y, logits in batches:
    ...         w.append("train", features=H, labels=y, logits=logits)

    Datasets are created on first append with a resizable first axis, chunked in whole rows
    (about 1 MiB). ``compression`` ("lzf" or "gzip") is optional.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        num_classes: int,
        force: bool = False,
        attrs: Mapping | None = None,
        compression: str | None = None,
        features_dtype=None,
        layer_attrs: Mapping[str, Mapping] | None = None,
    ):
        """``layer_attrs``: attributes of each /<split>/layers/<name> dataset (e.g. its depth)."""
        if compression not in (None, "lzf", "gzip"):
            raise ValueError(f"compression must be None, 'lzf' or 'gzip', not {compression!r}")
        self.path = check_output_path(path, force)
        self.force = force
        self.num_classes = int(num_classes)
        self.compression = compression
        self.features_dtype = np.dtype(features_dtype) if features_dtype is not None else None
        self.tmp = temp_path_for(self.path)
        self._h5: h5py.File | None = None
        self._datasets: dict[str, h5py.Dataset] = {}  # open until the file closes (see module docstring)
        self._attrs = dict(attrs or {})
        self._layer_attrs = {name: dict(values) for name, values in (layer_attrs or {}).items()}
        self._rows: dict[str, int] = {}

    def __enter__(self) -> "FeatureWriter":
        cleanup_stale_temps(self.tmp.parent)  # leftovers of killed runs (their pid is gone)
        try:
            from ncli import __version__

            with self._writing():
                self._h5 = h5py.File(self.tmp, "w")
                a = self._h5.attrs
                a["ncli_format"] = FORMAT_NAME
                a["ncli_format_version"] = np.int64(FORMAT_VERSION)
                a["num_classes"] = np.int64(self.num_classes)
                a["created_by"] = f"ncli {__version__}"
                self._set_attrs(self._attrs)
        except BaseException:  # __exit__ is not called when __enter__ fails
            self.abort()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()

    @contextmanager
    def _writing(self):
        """A write that fails for lack of space (or access) becomes one error naming the output;
        the temporary file is dropped at once."""
        try:
            yield
        except (OSError, RuntimeError) as exc:
            problem = write_failure(self.path, exc)
            if problem is None:
                raise
            self.abort()
            raise problem from None

    # -- content -------------------------------------------------------------------------
    def set_attrs(self, **attrs) -> None:
        assert self._h5 is not None, "use FeatureWriter as a context manager"
        with self._writing():
            self._set_attrs(attrs)

    def _set_attrs(self, attrs: Mapping) -> None:
        for k, v in attrs.items():
            if v is None:
                continue
            if isinstance(v, bool):
                v = np.bool_(v)
            elif isinstance(v, int):
                v = np.int64(v)
            elif isinstance(v, (dict, list, tuple)):
                v = json.dumps(v, sort_keys=True)
            elif not isinstance(v, (str, float, np.generic, np.ndarray)):
                v = str(v)
            self._h5.attrs[k] = v

    def set_classifier(self, weight: np.ndarray, bias: np.ndarray | None = None) -> None:
        assert self._h5 is not None
        W = np.asarray(weight)
        if W.ndim != 2 or W.shape[0] != self.num_classes:
            raise ValueError(f"classifier weight must be ({self.num_classes}, p), got {W.shape}")
        if W.dtype.kind != "f":
            W = W.astype(np.float32)
        b = None if bias is None else np.asarray(bias)
        if b is not None and b.shape != (self.num_classes,):
            raise ValueError(f"classifier bias must be ({self.num_classes},), got {b.shape}")
        with self._writing():
            g = self._h5.require_group("classifier")
            g.create_dataset("weight", data=W)
            if b is not None:
                g.create_dataset("bias", data=b if b.dtype.kind == "f" else b.astype(np.float32))

    def set_class_names(self, names) -> None:
        assert self._h5 is not None
        names = [str(n) for n in names]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        with self._writing():
            self._h5.create_dataset("class_names", data=names, dtype=h5py.string_dtype("utf-8"))

    def _append_ds(self, group: h5py.Group, name: str, data: np.ndarray, start: int) -> None:
        key = f"{group.name}/{name}"
        if key not in self._datasets:
            if start != 0:
                raise ValueError(f"{group.name}/{name}: first append must start the split")
            row_shape = data.shape[1:]
            row_items = int(np.prod(row_shape)) if row_shape else 1
            # ~1 MiB of whole rows, but no larger than needed when the first append is small
            # (a tiny split then stays tiny on disk; streaming appends keep >= 256-row chunks)
            rows = min(rows_per_chunk(row_items, data.dtype.itemsize), max(256, data.shape[0]))
            self._datasets[key] = group.create_dataset(
                name,
                shape=(0,) + row_shape,
                maxshape=(None,) + row_shape,
                dtype=data.dtype,
                chunks=(rows,) + row_shape,
                compression=self.compression,
            )
        ds = self._datasets[key]
        if ds.shape[0] != start:
            raise ValueError(f"{ds.name}: appended out of step ({ds.shape[0]} rows, expected {start})")
        ds.resize(start + data.shape[0], axis=0)
        ds[start:] = data

    def append(
        self,
        split: str,
        *,
        features: np.ndarray,
        labels: np.ndarray,
        logits: np.ndarray | None = None,
        index: np.ndarray | None = None,
        layers: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Append rows to a split (creating it on first call)."""
        assert self._h5 is not None
        problem = split_name_problem(split)
        if problem is not None:
            raise ValueError(f"invalid split name {split!r}: {problem}")
        H = np.asarray(features)
        if H.ndim != 2:
            raise ValueError(f"features must be 2-D, got shape {H.shape}")
        if self.features_dtype is not None:
            H = H.astype(self.features_dtype, copy=False)
        elif H.dtype.kind != "f":
            H = H.astype(np.float32)
        y = np.asarray(labels)
        if y.shape != (H.shape[0],) or y.dtype.kind not in "iu":
            raise ValueError(f"labels must be integers of shape ({H.shape[0]},), got {y.dtype} {y.shape}")
        y = y.astype(np.int64, copy=False)
        lg = None if logits is None else np.asarray(logits, dtype=np.float32)
        if lg is not None and lg.shape != (H.shape[0], self.num_classes):
            raise ValueError(f"logits must be ({H.shape[0]}, {self.num_classes}), got {lg.shape}")
        start = self._rows.get(split, 0)
        with self._writing():
            g = self._h5.require_group(split)
            self._append_ds(g, "features", H, start)
            self._append_ds(g, "labels", y, start)
            if lg is not None:
                self._append_ds(g, "logits", lg, start)
            if index is not None:
                self._append_ds(g, "index", np.asarray(index, dtype=np.int64), start)
            for lname, arr in (layers or {}).items():
                a = np.asarray(arr)
                a = a.reshape(a.shape[0], -1)
                if a.dtype.kind != "f":
                    a = a.astype(np.float32)
                layer_group = g.require_group("layers")
                self._append_ds(layer_group, lname, a, start)
                if start == 0:
                    for key, value in self._layer_attrs.get(lname, {}).items():
                        layer_group[lname].attrs[key] = np.int64(value) if isinstance(value, int) else str(value)
        self._rows[split] = start + H.shape[0]

    # -- completion ------------------------------------------------------------------------
    def finalize(self) -> Path:
        """Close the temporary file and move it to the final path."""
        if self._h5 is None:
            return self.path
        try:
            if not self._rows:
                raise ValueError("no split was written")
            with self._writing():
                self._h5.flush()
                self._h5.close()
                self._h5 = None
                self._datasets.clear()
                commit(self.tmp, self.path, force=self.force)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Drop everything written so far; the final path is left untouched. Nothing more is
        written to the disk: HDF5's pending writes go to /dev/null (the file is dropped), so
        closing cannot fail, even on a full disk, and HDF5 has nothing left to flush at exit."""
        h5, self._h5 = self._h5, None
        if h5 is not None:
            try:
                if os.name == "posix" and h5.driver == "sec2":
                    null = os.open(os.devnull, os.O_RDWR)
                    try:
                        os.dup2(null, h5.id.get_vfd_handle())
                    finally:
                        os.close(null)
                h5.close()  # closes the dataset handles too (self._datasets become invalid)
            except Exception:
                pass
        self._datasets.clear()
        try:
            self.tmp.unlink(missing_ok=True)
        except OSError:
            pass


def write_features(
    path: str | os.PathLike,
    splits: Mapping[str, Mapping[str, np.ndarray]],
    *,
    num_classes: int,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    attrs: Mapping | None = None,
    class_names=None,
    force: bool = False,
    compression: str | None = None,
) -> Path:
    """Write in-memory arrays as a format-1 file (used by tests, fixtures and users' scripts).

    ``splits`` maps a split name to a dict with ``features`` and ``labels`` and optionally
    ``logits``, ``index`` and ``layers`` (a dict of name -> array).
    """
    with FeatureWriter(path, num_classes=num_classes, force=force, attrs=attrs, compression=compression) as w:
        if weight is not None:
            w.set_classifier(weight, bias)
        if class_names is not None:
            w.set_class_names(class_names)
        for name, d in splits.items():
            w.append(
                name,
                features=d["features"],
                labels=d["labels"],
                logits=d.get("logits"),
                index=d.get("index"),
                layers=d.get("layers"),
            )
    return w.path
