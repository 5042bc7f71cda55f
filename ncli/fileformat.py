"""Format-1 ncli feature files (see shared spec ``format.md``): a validating reader and an
atomic, streaming writer. Only h5py and numpy here; no torch, no CLI.

Reader: ``FeatureFile(path)`` opens and validates structure (format name/version, shapes,
dtypes, split presence, classifier shape) without reading the data; ``iter_chunks`` streams a
split in whole-row chunks and validates labels (integer, in [0, C)) chunk by chunk.

Writer: ``FeatureWriter(path, num_classes=C)`` is a context manager that writes row-chunked,
resizable datasets into a temporary file next to ``path`` and moves it into place only when
the ``with`` block ends without an exception; an existing ``path`` is never replaced unless
``force=True``. On error or Ctrl-C the temporary file is removed; the leftover of a killed
writer (``.ncli-tmp-<pid>-<hex>-<name>``, its process gone) is removed by the next writer in
that folder (``cleanup_stale_temps``).
"""

from __future__ import annotations

import os
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import h5py
import numpy as np

from ncli.errors import InputError, RefusedError

FORMAT_NAME = "ncli.features"
FORMAT_VERSION = 1
TEMP_PREFIX = ".ncli-tmp-"  # + "<pid>-<hex>-<name>"; a killed writer's leftover is removed by the next writer
RESERVED_GROUPS = {"classifier"}
CHUNK_BYTES = 1 << 20  # about 1 MiB of whole rows per HDF5 chunk (format.md)


def _attr_str(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _attr_str(value.item())
    return str(value)


def _attr_int(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, np.ndarray) and value.shape == () and np.issubdtype(value.dtype, np.integer):
        return int(value.item())
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    return None


def rows_per_chunk(p: int, itemsize: int, target_bytes: int = CHUNK_BYTES) -> int:
    return max(1, int(target_bytes // max(1, p * itemsize)))


@dataclass(frozen=True)
class SplitInfo:
    name: str
    num_samples: int
    feature_dim: int
    dtype: np.dtype
    has_logits: bool
    has_index: bool
    layers: tuple[str, ...]


@dataclass
class Chunk:
    start: int
    features: np.ndarray  # (n, p) as stored (float32 or float64)
    labels: np.ndarray  # (n,) int64, validated in [0, C)


class DirectRows:
    """Whole-row reads of an uncompressed 2-D dataset straight from the file with
    ``os.preadv`` into a new array. h5py's slicing copies through HDF5's type conversion and
    holds h5py's lock; this reads the same bytes in one system call per run of adjacent
    chunks, with the GIL released, so a reader thread overlaps the computing threads fully.

    :meth:`open` returns None (the caller uses h5py) unless the layout allows it: a file on
    the default ``sec2`` driver without user block, a native-endian numeric dataset stored
    contiguously or chunked by whole rows, no filters, no external storage, every chunk
    written. It also reads the first and the last row both ways and returns None if they
    differ, so an HDF5 layout this class does not know can only cost speed, never change
    a number.
    """

    def __init__(self, fd: int, shape: tuple[int, int], dtype: np.dtype, rows_per_chunk: int, offsets: np.ndarray):
        self.fd = fd
        self.shape = shape
        self.dtype = dtype
        self.rows_per_chunk = rows_per_chunk  # of the offsets table (n rows if contiguous)
        self.offsets = offsets  # file offset of each chunk (one entry if contiguous)

    @classmethod
    def open(cls, ds: h5py.Dataset) -> "DirectRows | None":
        if not hasattr(os, "preadv") or ds.ndim != 2 or ds.shape[0] == 0 or ds.shape[1] == 0:
            return None
        if ds.dtype.kind not in "fiu" or not ds.dtype.isnative:
            return None
        try:
            f = ds.file
            if f.driver != "sec2" or f.userblock_size != 0:
                return None
            dcpl = ds.id.get_create_plist()
            if dcpl.get_nfilters() != 0 or dcpl.get_external_count() != 0:
                return None
            n, p = (int(s) for s in ds.shape)
            row_bytes = p * ds.dtype.itemsize
            layout = dcpl.get_layout()
            if layout == h5py.h5d.CONTIGUOUS:
                off = ds.id.get_offset()
                if off is None:
                    return None
                rows, offsets = n, np.array([off], dtype=np.int64)
            elif layout == h5py.h5d.CHUNKED and ds.chunks is not None and ds.chunks[1] == p:
                rows = int(ds.chunks[0])
                count = -(-n // rows)
                offsets = np.full(count, -1, dtype=np.int64)

                def record(info) -> None:
                    i = int(info.chunk_offset[0]) // rows
                    if info.byte_offset is not None and info.size == rows * row_bytes and 0 <= i < count:
                        offsets[i] = info.byte_offset

                if hasattr(ds.id, "chunk_iter"):
                    ds.id.chunk_iter(record)
                else:  # pragma: no cover - older HDF5
                    for i in range(ds.id.get_num_chunks()):
                        record(ds.id.get_chunk_info(i))
                if (offsets < 0).any():
                    return None
            else:
                return None
            reader = cls(f.id.get_vfd_handle(), (n, p), ds.dtype, rows, offsets)
            for sl in (slice(0, 1), slice(n - 1, n)):
                if reader.read(sl.start, sl.stop).tobytes() != ds[sl].tobytes():
                    return None
            return reader
        except (OSError, ValueError, TypeError, AttributeError, KeyError):
            return None

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a new C-contiguous array."""
        n, p = self.shape
        start, stop = max(0, start), min(n, stop)
        out = np.empty((max(0, stop - start), p), dtype=self.dtype)
        if out.size == 0:
            return out
        buf = memoryview(out).cast("B")
        row_bytes = p * self.dtype.itemsize
        c = self.rows_per_chunk
        r = start
        while r < stop:
            i = r // c
            off = int(self.offsets[i]) + (r - i * c) * row_bytes
            hi = min(stop, (i + 1) * c)
            while hi < stop and self.offsets[i + 1] == self.offsets[i] + c * row_bytes:  # adjacent chunks
                i += 1
                hi = min(stop, (i + 1) * c)
            want = (hi - r) * row_bytes
            got = os.preadv(self.fd, [buf[(r - start) * row_bytes : (hi - start) * row_bytes]], off)
            if got != want:
                raise OSError(f"short read ({got} of {want} bytes at offset {off})")
            r = hi
        return out


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
        fmt = _attr_str(attrs.get("ncli_format"))
        if fmt is None:
            raise self._fail("not an ncli feature file (root attribute 'ncli_format' missing)")
        if fmt != FORMAT_NAME:
            raise self._fail(f"ncli_format is {fmt!r}, expected {FORMAT_NAME!r}")
        version = _attr_int(attrs.get("ncli_format_version"))
        if version is None:
            raise self._fail("root attribute 'ncli_format_version' missing or not an integer")
        if version != FORMAT_VERSION:
            raise self._fail(
                f"format version {version} is not supported by this ncli (it reads version {FORMAT_VERSION})"
            )
        C = _attr_int(attrs.get("num_classes"))
        if C is None:
            raise self._fail("root attribute 'num_classes' missing or not an integer")
        if C < 1:
            raise self._fail(f"num_classes is {C}; it must be at least 1")
        self.num_classes = C
        self.epoch = _attr_int(attrs.get("epoch"))
        self.step = _attr_int(attrs.get("step"))
        self.feature_layer = _attr_str(attrs.get("feature_layer"))

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
        return SplitInfo(name, n, p, feats.dtype, has_logits, has_index, tuple(layers))

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


# ---------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------


def temp_path_for(path: Path) -> Path:
    return path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{path.name}")


_TEMP_RE = re.compile(r"^" + re.escape(TEMP_PREFIX) + r"(\d+)-[0-9a-f]{8}-.+$")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a pid we could have written: keep the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def _locked(path: Path) -> bool:
    """Whether another process holds an HDF5 writer's lock (flock) on ``path``."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return False
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return True  # cannot tell: keep it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def cleanup_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the leftovers of killed writers in ``folder``: ``.ncli-tmp-<pid>-<hex>-<name>``
    files whose process is gone (and that no process holds open for writing). Anything else,
    and any error, is left alone. Returns the removed paths."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        m = _TEMP_RE.match(e.name)
        if m is None:
            continue
        try:
            if not e.is_file(follow_symlinks=False):
                continue
            pid = int(m.group(1))
            if pid == os.getpid() or _pid_alive(pid) or _locked(Path(e.path)):
                continue
            os.unlink(e.path)
            removed.append(Path(e.path))
        except (OSError, ValueError):
            continue
    return removed


def check_output_path(path: str | os.PathLike, force: bool) -> Path:
    """Fail early (before any work) when ``path`` cannot be written as asked."""
    out = Path(path)
    if out.exists() and out.is_dir():
        raise InputError(f"{out}: is a directory; give a file name for the output")
    if out.exists() and not force:
        raise RefusedError(f"{out}: already exists; pass --force to replace it")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.exists():
        raise InputError(f"{out}: output folder {parent} does not exist")
    if not parent.is_dir():
        raise InputError(f"{out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{out}: output folder {parent} is not writable")
    return out


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
    ):
        if compression not in (None, "lzf", "gzip"):
            raise ValueError(f"compression must be None, 'lzf' or 'gzip', not {compression!r}")
        self.path = check_output_path(path, force)
        self.force = force
        self.num_classes = int(num_classes)
        self.compression = compression
        self.features_dtype = np.dtype(features_dtype) if features_dtype is not None else None
        self.tmp = temp_path_for(self.path)
        self._h5: h5py.File | None = None
        self._attrs = dict(attrs or {})
        self._rows: dict[str, int] = {}

    def __enter__(self) -> "FeatureWriter":
        cleanup_stale_temps(self.tmp.parent)  # leftovers of killed runs (their pid is gone)
        try:
            self._h5 = h5py.File(self.tmp, "w")
            a = self._h5.attrs
            a["ncli_format"] = FORMAT_NAME
            a["ncli_format_version"] = np.int64(FORMAT_VERSION)
            a["num_classes"] = np.int64(self.num_classes)
            from ncli import __version__

            a["created_by"] = f"ncli {__version__}"
            self.set_attrs(**self._attrs)
        except BaseException:  # __exit__ is not called when __enter__ fails
            self.abort()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()

    # -- content -------------------------------------------------------------------------
    def set_attrs(self, **attrs) -> None:
        assert self._h5 is not None, "use FeatureWriter as a context manager"
        for k, v in attrs.items():
            if v is None:
                continue
            if isinstance(v, bool):
                v = np.bool_(v)
            elif isinstance(v, int):
                v = np.int64(v)
            elif isinstance(v, (dict, list, tuple)):
                import json

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
        g = self._h5.require_group("classifier")
        g.create_dataset("weight", data=W)
        if bias is not None:
            b = np.asarray(bias)
            if b.shape != (self.num_classes,):
                raise ValueError(f"classifier bias must be ({self.num_classes},), got {b.shape}")
            g.create_dataset("bias", data=b if b.dtype.kind == "f" else b.astype(np.float32))

    def set_class_names(self, names) -> None:
        assert self._h5 is not None
        names = [str(n) for n in names]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        self._h5.create_dataset("class_names", data=names, dtype=h5py.string_dtype("utf-8"))

    def _append_ds(self, group: h5py.Group, name: str, data: np.ndarray, start: int) -> None:
        if name not in group:
            if start != 0:
                raise ValueError(f"{group.name}/{name}: first append must start the split")
            row_shape = data.shape[1:]
            row_items = int(np.prod(row_shape)) if row_shape else 1
            # ~1 MiB of whole rows, but no larger than needed when the first append is small
            # (a tiny split then stays tiny on disk; streaming appends keep >= 256-row chunks)
            rows = min(rows_per_chunk(row_items, data.dtype.itemsize), max(256, data.shape[0]))
            group.create_dataset(
                name,
                shape=(0,) + row_shape,
                maxshape=(None,) + row_shape,
                dtype=data.dtype,
                chunks=(rows,) + row_shape,
                compression=self.compression,
            )
        ds = group[name]
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
        if split in RESERVED_GROUPS or not split or "/" in split:
            raise ValueError(f"invalid split name {split!r}")
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
        start = self._rows.get(split, 0)
        g = self._h5.require_group(split)
        self._append_ds(g, "features", H, start)
        self._append_ds(g, "labels", y, start)
        if logits is not None:
            lg = np.asarray(logits, dtype=np.float32)
            if lg.shape != (H.shape[0], self.num_classes):
                raise ValueError(f"logits must be ({H.shape[0]}, {self.num_classes}), got {lg.shape}")
            self._append_ds(g, "logits", lg, start)
        if index is not None:
            self._append_ds(g, "index", np.asarray(index, dtype=np.int64), start)
        for lname, arr in (layers or {}).items():
            a = np.asarray(arr)
            a = a.reshape(a.shape[0], -1)
            if a.dtype.kind != "f":
                a = a.astype(np.float32)
            self._append_ds(g.require_group("layers"), lname, a, start)
        self._rows[split] = start + H.shape[0]

    # -- completion ------------------------------------------------------------------------
    def finalize(self) -> Path:
        """Close the temporary file and move it to the final path."""
        if self._h5 is None:
            return self.path
        try:
            if not self._rows:
                raise ValueError("no split was written")
            self._h5.flush()
            self._h5.close()
            self._h5 = None
            if self.force:
                os.replace(self.tmp, self.path)
            else:
                try:
                    os.link(self.tmp, self.path)  # atomic: fails if the path appeared meanwhile
                except FileExistsError:
                    raise RefusedError(f"{self.path}: appeared while writing; pass --force to replace it") from None
                except OSError:
                    if self.path.exists():
                        raise RefusedError(f"{self.path}: already exists; pass --force to replace it") from None
                    os.replace(self.tmp, self.path)
                self.tmp.unlink(missing_ok=True)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Drop everything written so far; the final path is left untouched."""
        if self._h5 is not None:
            try:
                self._h5.close()
            except Exception:
                pass
            self._h5 = None
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
