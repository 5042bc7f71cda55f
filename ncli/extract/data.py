"""Data sources for ``--data SPLIT=SOURCE``. Order is kept (no shuffling); every row's index
in its source is stored as ``/<split>/index``.

SOURCE forms:
  FILE.h5 / .hdf5 / .npz   inputs and integer labels: datasets ``x``, ``y``; else
                           ``x_<split>``, ``y_<split>``; or ``--x-key/--y-key`` (``{split}`` in a
                           key is replaced by the split name). HDF5 is read batch by batch; an
                           uncompressed .npz (``np.savez``) is memory-mapped; a compressed one
                           is read into memory. Float inputs are cast to the model's dtype,
                           integer inputs (token ids) are passed as int64.
  FOLDER                   torchvision ImageFolder layout (FOLDER/<class>/<image>)    [vision]
  torchvision:NAME:ROOT    a torchvision dataset already on disk (never downloaded)   [vision]

``--data FILE`` without ``SPLIT=`` takes every split the file holds (``x_<split>``/``y_<split>``
pairs), or ``train`` for a plain ``x``/``y`` pair.
"""

from __future__ import annotations

import os
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ncli.errors import EnvironmentProblem, InputError, UsageError
from ncli.features.schema import HDF5_SIGNATURE

VISION_HINT = "pip install 'ncli[vision]'"
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def parse_data_arg(item: str) -> tuple[str | None, str]:
    """'train=path' -> ('train', 'path'); 'path' -> (None, 'path')."""
    name, sep, rest = item.partition("=")
    if sep and _SPLIT_RE.match(name) and not Path(item).exists():
        if not rest:
            raise UsageError(f"--data {item!r}: nothing after '='; expected SPLIT=SOURCE")
        if name == "classifier" or name == "class_names":
            raise UsageError(f"--data {item!r}: {name!r} is reserved in the file format; choose another split name")
        return name, rest
    return None, item


def _file_kind(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(HDF5_SIGNATURE):
        return "h5"
    if head[:4] == b"PK\x03\x04":
        return "npz"
    return "?"


def _npz_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        return [n[:-4] for n in z.namelist() if n.endswith(".npy")]


def _h5_names(path: Path) -> list[str]:
    import h5py

    names: list[str] = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names


def _npz_memmap(path: Path, name: str):
    """Memory-map an uncompressed member of an .npz; None when it cannot be mapped."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name + ".npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            return None
        nlen, elen = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + nlen + elen)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
        offset = f.tell()
    if dtype.hasobject:
        return None
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


@dataclass
class BatchOut:
    x: "object"  # torch.Tensor
    y: np.ndarray
    index: np.ndarray


class ArraySource:
    kind = "array"

    def __init__(self, split: str, path: str, x_key: str | None = None, y_key: str | None = None):
        self.split = split
        self.path = Path(path)
        self.text = path
        self.class_names = None
        if not self.path.exists():
            raise InputError(f"--data {split}={path}: no such file")
        kind = _file_kind(self.path)
        if kind == "?":
            raise InputError(f"--data {split}={path}: not an array file (expected HDF5 .h5/.hdf5 or numpy .npz)")
        self.file_kind = kind
        try:
            names = _h5_names(self.path) if kind == "h5" else _npz_names(self.path)
        except Exception as exc:
            raise InputError(f"--data {split}={path}: cannot read ({type(exc).__name__}: {exc})") from None
        if x_key or y_key:
            xk = (x_key or "x").replace("{split}", split)
            yk = (y_key or "y").replace("{split}", split)
        elif "x" in names and "y" in names:
            xk, yk = "x", "y"
        else:
            xk, yk = f"x_{split}", f"y_{split}"
        for k, opt in ((xk, "--x-key"), (yk, "--y-key")):
            if k not in names:
                raise InputError(
                    f"--data {split}={path}: no dataset {k!r} (the file has: {', '.join(names[:20]) or 'nothing'}); "
                    f"expected x/y or x_{split}/y_{split}, or name them with {opt}"
                )
        self.x_key, self.y_key = xk, yk
        self._pid = None
        self._arrays = None
        self._file = None
        try:
            x, y = self.arrays()
        except Exception as exc:  # a damaged member (e.g. its header promises more rows than stored)
            raise InputError(f"--data {split}={path}: cannot read ({type(exc).__name__}: {exc})") from None
        if y.ndim != 1:
            raise InputError(f"--data {split}={path}: labels {yk!r} must be 1-D, got shape {tuple(y.shape)}")
        if y.dtype.kind not in "iu":
            raise InputError(f"--data {split}={path}: labels {yk!r} must be integers, got {y.dtype}")
        if x.ndim < 1 or x.shape[0] != y.shape[0]:
            raise InputError(
                f"--data {split}={path}: {x.shape[0] if x.ndim else 0} inputs in {xk!r} but {y.shape[0]} labels in {yk!r}"
            )
        if y.shape[0] == 0:
            raise InputError(f"--data {split}={path}: no samples")
        if x.dtype.kind not in "fiub":
            raise InputError(f"--data {split}={path}: inputs {xk!r} have dtype {x.dtype}; expected numbers")
        self.num_samples = int(y.shape[0])
        self.x_shape = tuple(x.shape[1:])
        self.x_dtype = x.dtype
        self.description = f"{path} [{xk}, {yk}]"

    def arrays(self):
        """(x, y) array-likes, opened once per process (safe with DataLoader workers)."""
        pid = os.getpid()
        if self._arrays is None or self._pid != pid:
            if self.file_kind == "h5":
                import h5py

                f = h5py.File(self.path, "r")
                self._file = f
                self._arrays = (f[self.x_key], f[self.y_key])
            else:
                arrs = []
                for k in (self.x_key, self.y_key):
                    a = _npz_memmap(self.path, k)
                    if a is None:
                        with np.load(self.path, allow_pickle=False) as z:
                            a = z[k]
                    arrs.append(a)
                self._arrays = tuple(arrs)
            self._pid = pid
        return self._arrays

    def close(self) -> None:
        f = getattr(self, "_file", None)
        if f is not None:
            try:
                f.close()
            except Exception:
                pass
        self._file = None
        self._arrays = None
        self._pid = None

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_arrays"] = None
        d["_pid"] = None
        d["_file"] = None
        return d

    def label_range(self) -> tuple[int, int]:
        _, y = self.arrays()
        lo, hi = None, None
        step = 1 << 22
        for s in range(0, self.num_samples, step):
            try:
                part = np.asarray(y[s : s + step])
            except (OSError, ValueError) as exc:
                raise InputError(f"--data {self.split}={self.text}: cannot read the labels ({exc})") from None
            a, b = int(part.min()), int(part.max())
            lo = a if lo is None else min(lo, a)
            hi = b if hi is None else max(hi, b)
        return lo, hi

    def _batch(self, start: int, stop: int) -> BatchOut:
        import torch

        x, y = self.arrays()
        try:
            xb = np.ascontiguousarray(x[start:stop])
            yb = np.asarray(y[start:stop]).astype(np.int64, copy=False)
        except (OSError, ValueError) as exc:  # a damaged HDF5 chunk
            raise InputError(f"--data {self.split}={self.text}: cannot read rows {start}..{stop - 1} ({exc})") from None
        if not xb.flags.writeable:  # a memory-mapped .npz member
            xb = xb.copy()
        if xb.dtype.kind == "b":
            xb = xb.astype(np.float32)
        t = torch.from_numpy(xb) if xb.dtype.kind == "f" else torch.from_numpy(xb.astype(np.int64, copy=False))
        return BatchOut(t, yb, np.arange(start, stop, dtype=np.int64))

    def head(self, k: int):
        return self._batch(0, min(k, self.num_samples)).x

    def batches(
        self, batch_size: int, num_workers: int = 0, pin_memory: bool = False, start: int = 0, stop: int | None = None
    ) -> Iterator[BatchOut]:
        """Batches of rows ``start..stop-1`` (default: all), ``batch_size`` rows each but the last."""
        start, n = _row_range(self.num_samples, start, stop)
        if num_workers <= 0:
            for s in range(start, n, batch_size):
                yield self._batch(s, min(n, s + batch_size))
            return
        import torch.utils.data as tud

        self.close()  # workers open their own handles (HDF5 handles must not cross a fork)
        loader = tud.DataLoader(
            _BatchDataset(self, batch_size, start, n), batch_size=None, shuffle=False, num_workers=num_workers,
            pin_memory=pin_memory,
        )
        for x, y, idx in loader:
            yield BatchOut(x, np.asarray(y), np.asarray(idx))


def _row_range(num_samples: int, start: int, stop: int | None) -> tuple[int, int]:
    stop = num_samples if stop is None else min(int(stop), num_samples)
    start = max(0, int(start))
    return start, max(start, stop)


class _BatchDataset:
    """Map-style dataset of whole batches of rows start..stop-1 (module level, so spawn-started
    workers can pickle it)."""

    def __init__(self, src: ArraySource, batch_size: int, start: int = 0, stop: int | None = None):
        self.src, self.batch_size = src, batch_size
        self.start, self.stop = _row_range(src.num_samples, start, stop)

    def __len__(self) -> int:
        return (self.stop - self.start + self.batch_size - 1) // self.batch_size

    def __getitem__(self, i: int):
        bs = self.batch_size
        a = self.start + i * bs
        b = self.src._batch(a, min(self.stop, a + bs))
        return b.x, b.y, b.index


def _vision():
    try:
        import torchvision
        from torchvision import transforms
    except ImportError:
        raise EnvironmentProblem(f"image folders and torchvision datasets need torchvision: {VISION_HINT}") from None
    return torchvision, transforms


NORMALIZE = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
}


def parse_normalize(text: str | None):
    if text is None or text == "none":
        return None
    if text in NORMALIZE:
        return NORMALIZE[text]
    try:
        mean, std = text.split(":")
        return tuple(float(v) for v in mean.split(",")), tuple(float(v) for v in std.split(","))
    except ValueError:
        raise UsageError(
            f"--normalize {text!r}: expected none, {', '.join(NORMALIZE)}, or MEAN,...:STD,... (e.g. 0.5,0.5,0.5:0.25,0.25,0.25)"
        ) from None


def _image_transform(image_size: int | None, normalize):
    _, T = _vision()
    steps = []
    if image_size:
        steps += [T.Resize(image_size), T.CenterCrop(image_size)]
    steps.append(T.ToTensor())
    if normalize is not None:
        steps.append(T.Normalize(*normalize))
    return T.Compose(steps)


class TorchDatasetSource:
    """An image folder or a torchvision dataset (needs the [vision] extra)."""

    kind = "dataset"

    def __init__(self, split: str, text: str, image_size: int | None = None, normalize=None):
        self.split = split
        self.text = text
        torchvision, _ = _vision()
        transform = _image_transform(image_size, normalize)
        if text.startswith("torchvision:"):
            parts = text.split(":", 2)
            if len(parts) != 3 or not parts[1] or not parts[2]:
                raise UsageError(f"--data {split}={text}: expected torchvision:NAME:ROOT, e.g. torchvision:CIFAR10:~/data")
            name, root = parts[1], os.path.expanduser(parts[2])
            cls = getattr(torchvision.datasets, name, None)
            if cls is None or not isinstance(cls, type):
                raise InputError(f"--data {split}={text}: torchvision has no dataset {name!r}")
            import inspect

            params = inspect.signature(cls.__init__).parameters
            kw = {"transform": transform}
            if "download" in params:
                kw["download"] = False
            if "train" in params:
                kw["train"] = split == "train"
            elif "split" in params:
                kw["split"] = split
            try:
                self.ds = cls(root, **kw)
            except Exception as exc:
                raise InputError(
                    f"--data {split}={text}: cannot open {name} under {root} ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}); ncli never downloads: fetch it first"
                ) from None
            self.description = f"torchvision.datasets.{name}({root!r}, {', '.join(f'{k}={v!r}' for k, v in kw.items() if k != 'transform')})"
        else:
            root = Path(text)
            if not root.is_dir():
                raise InputError(f"--data {split}={text}: no such folder")
            try:
                self.ds = torchvision.datasets.ImageFolder(str(root), transform=transform)
            except Exception as exc:
                raise InputError(f"--data {split}={text}: not an image folder (FOLDER/<class>/<image>): {exc}") from None
            self.description = f"ImageFolder {text}"
        if image_size or normalize:
            self.description += f" resize={image_size} normalize={normalize}"
        self.class_names = list(getattr(self.ds, "classes", []) or []) or None
        self.num_samples = len(self.ds)
        if self.num_samples == 0:
            raise InputError(f"--data {split}={text}: no samples")

    def label_range(self) -> tuple[int, int] | None:
        for attr in ("targets", "labels"):
            t = getattr(self.ds, attr, None)
            if t is not None:
                arr = np.asarray(t)
                if arr.ndim == 1 and arr.size and arr.dtype.kind in "iu":
                    return int(arr.min()), int(arr.max())
        if self.class_names:
            return 0, len(self.class_names) - 1
        return None

    def head(self, k: int):
        import torch

        xs = [self.ds[i][0] for i in range(min(k, self.num_samples))]
        return torch.stack(xs)

    def batches(
        self, batch_size: int, num_workers: int = 0, pin_memory: bool = False, start: int = 0, stop: int | None = None
    ) -> Iterator[BatchOut]:
        import torch.utils.data as tud

        start, stop = _row_range(self.num_samples, start, stop)
        ds = self.ds if (start, stop) == (0, self.num_samples) else tud.Subset(self.ds, range(start, stop))
        loader = tud.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory)
        for x, y in loader:
            y = np.asarray(y).astype(np.int64)
            yield BatchOut(x, y, np.arange(start, start + len(y), dtype=np.int64))
            start += len(y)


def open_sources(items, *, x_key=None, y_key=None, image_size=None, normalize=None) -> list:
    """Parse and open every --data item (cheap: nothing is read beyond shapes)."""
    if not items:
        raise UsageError("give at least one --data SPLIT=SOURCE (e.g. --data train=data.npz --data test=data.npz)")
    norm = parse_normalize(normalize)
    sources = []
    seen: set[str] = set()
    for item in items:
        split, text = parse_data_arg(item)
        if text.startswith("torchvision:") or (Path(text).is_dir()):
            srcs = [TorchDatasetSource(split or "train", text, image_size, norm)]
        else:
            p = Path(text)
            if split is None and p.exists() and not (x_key or y_key) and _file_kind(p) != "?":
                try:
                    names = _h5_names(p) if _file_kind(p) == "h5" else _npz_names(p)
                except Exception as exc:  # truncated or damaged
                    raise InputError(f"--data {text}: cannot read ({type(exc).__name__}: {exc})") from None
                if "x" in names and "y" in names:
                    splits = ["train"]
                else:
                    splits = [n[2:] for n in names if n.startswith("x_") and f"y_{n[2:]}" in names]
                if not splits:
                    raise InputError(
                        f"--data {text}: no x/y or x_<split>/y_<split> datasets (the file has: {', '.join(names[:20])})"
                    )
                srcs = [ArraySource(s, text) for s in splits]
            else:
                srcs = [ArraySource(split or "train", text, x_key, y_key)]
        for s in srcs:
            if s.split in seen:
                raise UsageError(f"--data: split {s.split!r} given twice")
            seen.add(s.split)
            sources.append(s)
    return sources
