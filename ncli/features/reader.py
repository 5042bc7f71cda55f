"""Reading format-1 feature files (``docs/format.md``): ``FeatureFile(path)`` opens and
validates the structure (format name/version, shapes, dtypes, split presence, classifier
shape) without reading the data; ``iter_chunks`` streams a split in whole-row chunks and
validates labels (integer, in [0, C)) chunk by chunk. Only h5py and numpy here.

A hostile or damaged file is an input error naming it, never a crash: only a regular file is
opened; links are checked before they are followed and every dataset before it is read
(:mod:`ncli.features.storage`: nothing from other files unless ``allow_external``, no
dataset claiming more than it stores); HDF5's own errors (a damaged B-tree, a truncated
file) are reported as such."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import h5py
import numpy as np

from ncli.errors import InputError
from ncli.features.direct_rows import DirectRows
from ncli.features.schema import FORMAT_NAME, FORMAT_VERSION, RESERVED_GROUPS, attr_int, attr_str, classifier_problem
from ncli.features.storage import LocalFile, check_regular_file

HDF5_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError)  # what h5py raises on damage


@dataclass(frozen=True)
class SplitInfo:
    name: str
    num_samples: int
    feature_dim: int
    dtype: np.dtype
    has_logits: bool
    has_index: bool
    layers: tuple[str, ...]  # in forward order when the file records each layer's depth
    layer_depths: Mapping[str, int] = field(default_factory=dict)  # the layers' ``depth`` attributes


@dataclass
class Chunk:
    start: int
    features: np.ndarray  # (n, p) as stored (float32 or float64)
    labels: np.ndarray  # (n,) int64, validated in [0, C)


class FeatureFile:
    """A validated, read-only view of a format-1 feature file. ``allow_external``: follow
    external links and read virtual or externally stored datasets (other files)."""

    def __init__(self, path: str | os.PathLike, *, allow_external: bool = False):
        self.path = str(path)
        check_regular_file(self.path)
        try:
            is_h5 = h5py.is_hdf5(self.path)
        except (OSError, RuntimeError) as exc:
            raise InputError(f"{self.path}: cannot read file ({exc})") from None
        if not is_h5:
            raise InputError(f"{self.path}: not an HDF5 file (expected an ncli feature file)")
        try:
            self._h5 = h5py.File(self.path, "r")
        except (OSError, RuntimeError) as exc:
            raise InputError(f"{self.path}: cannot open HDF5 file, truncated or damaged? ({exc})") from None
        self._local = LocalFile(self._h5, self.path, allow_external=allow_external)
        self._datasets: dict[str, h5py.Dataset] = {}  # validated handles, by path in the file
        try:
            self._validate()
        except InputError:
            self._h5.close()
            raise
        except HDF5_ERRORS as exc:
            self._h5.close()
            raise InputError(f"{self.path}: damaged HDF5 file ({type(exc).__name__}: {exc})") from None

    # -- context manager -------------------------------------------------------------
    def __enter__(self) -> "FeatureFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._h5.close()
        except Exception:  # pragma: no cover - closing a damaged file
            pass

    # -- validation ------------------------------------------------------------------
    def _fail(self, msg: str) -> InputError:
        return InputError(f"{self.path}: {msg}")

    def _validate(self) -> None:
        f = self._h5
        attrs = f.attrs
        fmt = attr_str(attrs.get("ncli_format"))
        if fmt is None:
            raise self._fail("not an ncli feature file (root attribute 'ncli_format' missing)")
        if fmt != FORMAT_NAME:
            raise self._fail(f"ncli_format is {fmt!r}, expected {FORMAT_NAME!r}")
        version = attr_int(attrs.get("ncli_format_version"))
        if version is None:
            raise self._fail("root attribute 'ncli_format_version' missing or not an integer")
        if version != FORMAT_VERSION:
            raise self._fail(
                f"format version {version} is not supported by this ncli (it reads version {FORMAT_VERSION})"
            )
        C = attr_int(attrs.get("num_classes"))
        if C is None:
            raise self._fail("root attribute 'num_classes' missing or not an integer")
        if C < 1:
            raise self._fail(f"num_classes is {C}; it must be at least 1")
        self.num_classes = C
        self.epoch = attr_int(attrs.get("epoch"))
        self.step = attr_int(attrs.get("step"))
        self.epoch_source = attr_str(attrs.get("epoch_source"))  # "file name" when ncli extract inferred it
        self.feature_layer = attr_str(attrs.get("feature_layer"))

        local = self._local
        splits: dict[str, SplitInfo] = {}
        for name in local.names(f):
            if name in RESERVED_GROUPS or name == "class_names":
                continue
            obj = local.child(f, name)
            if not isinstance(obj, h5py.Group):
                continue
            if not local.has(obj, "features") and not local.has(obj, "labels"):
                continue  # an unrelated group; readers ignore what they do not know
            splits[name] = self._validate_split(name, obj)
        if not splits:
            raise self._fail("no split with 'features' and 'labels' (e.g. /train/features, /train/labels)")
        self.splits = splits
        dims = {s.feature_dim for s in splits.values()}
        if len(dims) > 1:
            detail = ", ".join(f"{s.name}: {s.feature_dim}" for s in splits.values())
            raise self._fail(f"splits disagree on the feature dimension ({detail})")
        self.feature_dim = dims.pop()

        self.has_classifier = False
        if local.has(f, "classifier"):
            g = local.child(f, "classifier")
            if not isinstance(g, h5py.Group):
                raise self._fail("/classifier is not a group")
            if local.has(g, "bias") and not local.has(g, "weight"):
                raise self._fail("/classifier/bias present without /classifier/weight")
            if local.has(g, "weight"):
                w = local.dataset(g, "weight")
                if w is None or w.dtype.kind != "f":
                    raise self._fail("/classifier/weight must be a float dataset")
                if w.shape != (C, self.feature_dim):
                    raise self._fail(
                        f"/classifier/weight has shape {w.shape}, expected (num_classes, feature_dim) = "
                        f"({C}, {self.feature_dim})"
                    )
                self._datasets["classifier/weight"] = w
                if local.has(g, "bias"):
                    b = local.dataset(g, "bias")
                    if b is None or b.dtype.kind != "f":
                        raise self._fail("/classifier/bias must be a float dataset")
                    if b.shape != (C,):
                        raise self._fail(f"/classifier/bias has shape {b.shape}, expected ({C},)")
                    self._datasets["classifier/bias"] = b
                self.has_classifier = True
        if local.has(f, "class_names"):
            names = local.dataset(f, "class_names")
            text = names is not None and (h5py.check_string_dtype(names.dtype) is not None or names.dtype.kind in "SU")
            if not text or names.ndim != 1:
                raise self._fail("/class_names must be a 1-D dataset of strings")
            self._datasets["class_names"] = names

    def _validate_split(self, name: str, g: h5py.Group) -> SplitInfo:
        where = f"split {name!r}"
        local = self._local
        if not local.has(g, "features"):
            raise self._fail(f"{where}: /{name}/features missing")
        if not local.has(g, "labels"):
            raise self._fail(f"{where}: /{name}/labels missing")
        feats, labels = local.dataset(g, "features"), local.dataset(g, "labels")
        if feats is None or labels is None:
            raise self._fail(f"{where}: features and labels must be datasets")
        if feats.ndim != 2:
            raise self._fail(f"{where}: features must be 2-D (N, p), got shape {feats.shape}")
        if feats.dtype.kind != "f":
            raise self._fail(f"{where}: features must be floating point, got {feats.dtype}")
        if labels.ndim != 1:
            raise self._fail(f"{where}: labels must be 1-D (N,), got shape {labels.shape}")
        if labels.dtype.kind not in "iu":
            raise self._fail(f"{where}: labels must be integers, got {labels.dtype}")
        n, p = feats.shape
        if labels.shape[0] != n:
            raise self._fail(f"{where}: {n} feature rows but {labels.shape[0]} labels")
        if n == 0:
            raise self._fail(f"{where}: the split is empty (0 rows)")
        if p == 0:
            raise self._fail(f"{where}: features have 0 columns")
        has_logits = local.has(g, "logits")
        if has_logits:
            lg = local.dataset(g, "logits")
            if lg is None or lg.shape != (n, self.num_classes):
                raise self._fail(
                    f"{where}: logits have shape {getattr(lg, 'shape', None)}, expected ({n}, {self.num_classes})"
                )
        has_index = local.has(g, "index")
        if has_index:
            ix = local.dataset(g, "index")
            if ix is None or ix.shape != (n,) or ix.dtype.kind not in "iu":
                raise self._fail(f"{where}: index must be an integer dataset of shape ({n},)")
        layers: list[str] = []
        depths: dict[str, int] = {}
        group = local.child(g, "layers") if local.has(g, "layers") else None
        if isinstance(group, h5py.Group):
            for lname in local.names(group):
                ds = local.dataset(group, lname)
                if ds is None:
                    continue
                if ds.ndim != 2 or ds.shape[0] != n or ds.dtype.kind != "f":
                    raise self._fail(
                        f"{where}: layer {lname!r} must be a float (N, p_l) dataset with N = {n}, got "
                        f"{ds.dtype} {ds.shape}"
                    )
                self._datasets[f"{name}/layers/{lname}"] = ds
                layers.append(lname)
                try:
                    depth = attr_int(ds.attrs.get("depth"))
                except (OSError, TypeError, ValueError, KeyError):
                    depth = None
                if depth is not None:
                    depths[lname] = depth
        # forward order (the depth ncli extract records), then the rest in file order
        layers.sort(key=lambda lname: (lname not in depths, depths.get(lname, 0)))
        self._datasets[f"{name}/features"], self._datasets[f"{name}/labels"] = feats, labels
        return SplitInfo(name, n, p, feats.dtype, has_logits, has_index, tuple(layers), depths)

    def _shrunk(self) -> bool:
        """Whether the open file is now shorter than when it was opened."""
        if self._local.file_size is None:
            return False
        try:
            size = os.fstat(self._h5.id.get_vfd_handle()).st_size if self._h5.driver == "sec2" else os.path.getsize(self.path)
        except (OSError, ValueError, TypeError):
            return False
        return size < self._local.file_size

    # -- access ----------------------------------------------------------------------
    @property
    def attrs(self) -> dict:
        """Root attributes as plain values. Data only: nothing is unpickled or evaluated; an
        opaque attribute comes back as bytes, one h5py cannot read (or a reference, an empty
        attribute) is left out."""
        out = {}
        for k in list(self._h5.attrs):
            try:
                v = self._h5.attrs[k]
            except (OSError, TypeError, ValueError, KeyError):
                continue
            if isinstance(v, np.void):
                v = bytes(v.tobytes())
            elif isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            elif isinstance(v, np.generic):
                v = v.item()
            elif isinstance(v, np.ndarray):
                v = v.tolist()
            elif not isinstance(v, (str, int, float, bool)):
                continue  # h5py.Empty, references
            out[k] = v
        return out

    def split(self, name: str) -> SplitInfo:
        try:
            return self.splits[name]
        except KeyError:
            have = ", ".join(sorted(self.splits))
            raise self._fail(f"no split {name!r} (the file has: {have})") from None

    def layer_info(self, split: str, layer: str) -> tuple[int, int]:
        info = self.split(split)
        if layer not in info.layers:
            have = ", ".join(info.layers) or "none"
            raise self._fail(f"split {split!r} has no layer {layer!r} (layers: {have})")
        return self._datasets[f"{split}/layers/{layer}"].shape

    def classifier(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(W, b) as float64, b zeros when absent; None when the file has no classifier."""
        if not self.has_classifier:
            return None
        try:
            W = np.asarray(self._datasets["classifier/weight"][...], dtype=np.float64)
            bias = self._datasets.get("classifier/bias")
            b = np.asarray(bias[...], dtype=np.float64) if bias is not None else np.zeros(self.num_classes, dtype=np.float64)
        except HDF5_ERRORS as exc:
            raise self._fail(f"cannot read the classifier ({type(exc).__name__}: {exc})") from None
        for arr, what in ((W, "weight"), (b, "bias")):
            problem = classifier_problem(arr)
            if problem is not None:
                raise self._fail(f"/classifier/{what} {problem}")
        return W, b

    def class_names(self) -> list[str] | None:
        ds = self._datasets.get("class_names")
        if ds is None:
            return None
        try:
            raw = ds[...]
        except HDF5_ERRORS as exc:
            raise self._fail(f"cannot read /class_names ({type(exc).__name__}: {exc})") from None
        names = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in raw.tolist()]
        return names if len(names) == self.num_classes else None

    def default_chunk_rows(self, split: str, layer: str | None = None, target_bytes: int = 16 << 20) -> int:
        """Rows per read: about ``target_bytes`` as float64, rounded to whole HDF5 chunks."""
        ds = self._features_ds(split, layer)
        p = ds.shape[1]
        rows = max(1, target_bytes // (8 * p))
        if ds.chunks is not None and ds.chunks[1] == p:
            c = ds.chunks[0]
            rows = max(c, (rows // c) * c)
        return int(rows)

    def _features_ds(self, split: str, layer: str | None) -> h5py.Dataset:
        self.split(split)
        if layer is None:
            return self._datasets[f"{split}/features"]
        self.layer_info(split, layer)
        return self._datasets[f"{split}/layers/{layer}"]

    def iter_chunks(
        self, split: str, chunk_rows: int | None = None, layer: str | None = None
    ) -> Iterator[Chunk]:
        """Stream (features, labels) of a split in whole-row chunks.

        Labels are checked chunk by chunk (integer values in [0, C)); the error names the
        split and the first offending row. Features are returned as stored.
        """
        info = self.split(split)
        feats = self._features_ds(split, layer)
        labels = self._datasets[f"{split}/labels"]
        rows = int(chunk_rows or self.default_chunk_rows(split, layer))
        if rows < 1:
            raise ValueError("chunk_rows must be positive")
        C = self.num_classes
        n = info.num_samples

        direct = DirectRows.open(feats)
        read_rows = direct.read if direct is not None else (lambda a, b: feats[a:b])

        def read(start: int) -> tuple[int, np.ndarray, np.ndarray]:
            stop = min(n, start + rows)
            try:
                got = start, read_rows(start, stop), labels[start:stop]
            except HDF5_ERRORS as exc:  # a damaged chunk, a file truncated while it is read
                raise self._fail(f"split {split!r}: cannot read rows {start}..{stop - 1} ({type(exc).__name__}: {exc})") from None
            if self._shrunk():  # HDF5 returns zeros past the end of a file cut short after it was opened
                raise self._fail(f"split {split!r}: cannot read rows {start}..{stop - 1} (the file was truncated while it was read)")
            return got

        reads = _read_ahead(read, rows, n)
        try:
            for start, H, y in reads:
                y = y.astype(np.int64, copy=False)
                bad = (y < 0) | (y >= C)
                if bad.any():
                    i = int(np.argmax(bad))
                    raise self._fail(
                        f"split {split!r}, row {start + i}: label {int(y[i])} outside [0, {C}) "
                        f"(num_classes = {C})"
                    )
                yield Chunk(start, H, y)
        finally:
            reads.close()


def _read_ahead(read, rows: int, n: int):
    """``read(start)`` for start = 0, rows, 2·rows, ... < n, in order. Reads the next chunk in a
    background thread while the caller computes on this one (HDF5 reads and BLAS overlap;
    h5py serialises its own calls); a split of one chunk is read inline (no thread to start)."""
    if n <= rows:
        yield read(0)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ncli-read") as pool:
        pending = pool.submit(read, 0)
        while pending is not None:
            got = pending.result()
            nxt = got[0] + rows
            pending = pool.submit(read, nxt) if nxt < n else None
            yield got
