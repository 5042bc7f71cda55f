"""Reading format-1 feature files (``docs/format.md``): ``FeatureFile(path)`` opens and
validates the structure (format name/version, shapes, dtypes, split presence, classifier
shape) without reading the data; ``iter_chunks`` streams a split in whole-row chunks and
validates labels (integer, in [0, C)) chunk by chunk. Only h5py and numpy here."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import h5py
import numpy as np

from ncli.errors import InputError
from ncli.features.direct_rows import DirectRows
from ncli.features.schema import FORMAT_NAME, FORMAT_VERSION, RESERVED_GROUPS, attr_int, attr_str


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
    """A validated, read-only view of a format-1 feature file."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        p = Path(path)
        if not p.exists():
            raise InputError(f"{self.path}: no such file")
        if p.is_dir():
            raise InputError(f"{self.path}: is a directory, not a feature file")
        try:
            is_h5 = h5py.is_hdf5(self.path)
        except OSError as exc:
            raise InputError(f"{self.path}: cannot read file ({exc})") from None
        if not is_h5:
            raise InputError(f"{self.path}: not an HDF5 file (expected an ncli feature file)")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise InputError(f"{self.path}: cannot open HDF5 file, truncated or damaged? ({exc})") from None
        try:
            self._validate()
        except InputError:
            self._h5.close()
            raise
        except (OSError, KeyError, ValueError, TypeError) as exc:
            self._h5.close()
            raise InputError(f"{self.path}: damaged HDF5 file ({exc})") from None

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
        self.feature_layer = attr_str(attrs.get("feature_layer"))

        splits: dict[str, SplitInfo] = {}
        for name, obj in f.items():
            if name in RESERVED_GROUPS or not isinstance(obj, h5py.Group):
                continue
            if "features" not in obj and "labels" not in obj:
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
        if "classifier" in f:
            g = f["classifier"]
            if not isinstance(g, h5py.Group):
                raise self._fail("/classifier is not a group")
            if "bias" in g and "weight" not in g:
                raise self._fail("/classifier/bias present without /classifier/weight")
            if "weight" in g:
                w = g["weight"]
                if not isinstance(w, h5py.Dataset) or w.dtype.kind != "f":
                    raise self._fail("/classifier/weight must be a float dataset")
                if w.shape != (C, self.feature_dim):
                    raise self._fail(
                        f"/classifier/weight has shape {w.shape}, expected (num_classes, feature_dim) = "
                        f"({C}, {self.feature_dim})"
                    )
                if "bias" in g:
                    b = g["bias"]
                    if not isinstance(b, h5py.Dataset) or b.dtype.kind != "f":
                        raise self._fail("/classifier/bias must be a float dataset")
                    if b.shape != (C,):
                        raise self._fail(f"/classifier/bias has shape {b.shape}, expected ({C},)")
                self.has_classifier = True

    def _validate_split(self, name: str, g: h5py.Group) -> SplitInfo:
        where = f"split {name!r}"
        if "features" not in g:
            raise self._fail(f"{where}: /{name}/features missing")
        if "labels" not in g:
            raise self._fail(f"{where}: /{name}/labels missing")
        feats, labels = g["features"], g["labels"]
        if not isinstance(feats, h5py.Dataset) or not isinstance(labels, h5py.Dataset):
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
        has_logits = "logits" in g
        if has_logits:
            lg = g["logits"]
            if not isinstance(lg, h5py.Dataset) or lg.shape != (n, self.num_classes):
                raise self._fail(
                    f"{where}: logits have shape {getattr(lg, 'shape', None)}, expected ({n}, {self.num_classes})"
                )
        has_index = "index" in g
        if has_index:
            ix = g["index"]
            if not isinstance(ix, h5py.Dataset) or ix.shape != (n,) or ix.dtype.kind not in "iu":
                raise self._fail(f"{where}: index must be an integer dataset of shape ({n},)")
        layers: list[str] = []
        depths: dict[str, int] = {}
        if "layers" in g and isinstance(g["layers"], h5py.Group):
            for lname, ds in g["layers"].items():
                if not isinstance(ds, h5py.Dataset):
                    continue
                if ds.ndim != 2 or ds.shape[0] != n or ds.dtype.kind != "f":
                    raise self._fail(
                        f"{where}: layer {lname!r} must be a float (N, p_l) dataset with N = {n}, got "
                        f"{ds.dtype} {ds.shape}"
                    )
                layers.append(lname)
                try:
                    depth = attr_int(ds.attrs.get("depth"))
                except (OSError, TypeError, ValueError, KeyError):
                    depth = None
                if depth is not None:
                    depths[lname] = depth
        # forward order (the depth ncli extract records), then the rest in file order
        layers.sort(key=lambda lname: (lname not in depths, depths.get(lname, 0)))
        return SplitInfo(name, n, p, feats.dtype, has_logits, has_index, tuple(layers), depths)

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
        ds = self._h5[split]["layers"][layer]
        return ds.shape

    def classifier(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(W, b) as float64, b zeros when absent; None when the file has no classifier."""
        if not self.has_classifier:
            return None
        g = self._h5["classifier"]
        W = np.asarray(g["weight"][...], dtype=np.float64)
        b = (
            np.asarray(g["bias"][...], dtype=np.float64)
            if "bias" in g
            else np.zeros(self.num_classes, dtype=np.float64)
        )
        for arr, what in ((W, "weight"), (b, "bias")):
            if not np.isfinite(arr).all():
                raise self._fail(f"/classifier/{what} contains NaN or Inf")
        return W, b

    def class_names(self) -> list[str] | None:
        if "class_names" not in self._h5:
            return None
        raw = self._h5["class_names"][...]
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
            return self._h5[split]["features"]
        self.layer_info(split, layer)
        return self._h5[split]["layers"][layer]

    def iter_chunks(
        self, split: str, chunk_rows: int | None = None, layer: str | None = None
    ) -> Iterator[Chunk]:
        """Stream (features, labels) of a split in whole-row chunks.

        Labels are checked chunk by chunk (integer values in [0, C)); the error names the
        split and the first offending row. Features are returned as stored.
        """
        info = self.split(split)
        feats = self._features_ds(split, layer)
        labels = self._h5[split]["labels"]
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
                return start, read_rows(start, stop), labels[start:stop]
            except (OSError, ValueError) as exc:
                raise self._fail(f"split {split!r}: cannot read rows {start}..{stop - 1} ({exc})") from None

        # Read the next chunk in a background thread while the caller computes on this one
        # (HDF5 reads and BLAS overlap; h5py serialises its own calls).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ncli-read") as pool:
            pending = pool.submit(read, 0)
            while pending is not None:
                start, H, y = pending.result()
                nxt = start + rows
                pending = pool.submit(read, nxt) if nxt < n else None
                y = y.astype(np.int64, copy=False)
                bad = (y < 0) | (y >= C)
                if bad.any():
                    i = int(np.argmax(bad))
                    raise self._fail(
                        f"split {split!r}, row {start + i}: label {int(y[i])} outside [0, {C}) "
                        f"(num_classes = {C})"
                    )
                yield Chunk(start, H, y)
