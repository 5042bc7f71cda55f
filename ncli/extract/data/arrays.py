"""Array files: ``FILE.h5``/``.hdf5``/``.npz`` with inputs and integer labels.

Datasets ``x``, ``y``; else ``x_<split>``, ``y_<split>``; or ``--x-key/--y-key`` (``{split}`` in
a key is replaced by the split name). HDF5 is read batch by batch; an uncompressed .npz
(``np.savez``) is memory-mapped; a compressed one is read into memory. Float inputs are cast to
the model's dtype, integer inputs (token ids) are passed as int64.

Only regular files are opened. HDF5 datasets are reached with their links checked and their
storage in the file itself (``ncli.features.storage``; other files only with --allow-external);
an .npz's zip sizes are checked before anything is decompressed (``ncli.extract.archives``).
"""

from __future__ import annotations

import os
import stat
import struct
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

from ncli.errors import InputError
from ncli.extract.archives import zip_problem
from ncli.extract.data.batch import BatchOut, row_range
from ncli.features.schema import HDF5_SIGNATURE
from ncli.features.storage import LocalFile


def file_kind(path: Path) -> str:
    """'h5', 'npz' or '?', from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(HDF5_SIGNATURE):
        return "h5"
    if head[:4] == b"PK\x03\x04":
        return "npz"
    return "?"


def npz_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        return [n[:-4] for n in z.namelist() if n.endswith(".npy")]


def h5_names(path: Path) -> list[str]:
    """Paths of the datasets and of the soft and external links (not followed) in an HDF5 file."""
    import h5py

    names: list[str] = []

    def visit(name: str, link) -> None:
        if not isinstance(link, h5py.HardLink) or isinstance(f.get(name), h5py.Dataset):
            names.append(name)

    with h5py.File(path, "r") as f:
        f.visititems_links(visit)  # groups are entered by hard links only
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


class ArraySource:
    """Inputs and labels from an HDF5 or .npz file; batches are read as they are needed."""

    def __init__(self, split: str, path: str, x_key: str | None = None, y_key: str | None = None, *, allow_external: bool = False):
        self.split = split
        self.path = Path(path)
        self.text = path
        self.class_names = None
        self.allow_external = allow_external
        try:
            mode = os.stat(self.path).st_mode
        except FileNotFoundError:
            raise InputError(f"--data {split}={path}: no such file") from None
        except OSError as exc:
            raise InputError(f"--data {split}={path}: cannot read ({exc.strerror or exc})") from None
        if not stat.S_ISREG(mode):
            raise InputError(f"--data {split}={path}: not a regular file (a device, FIFO or socket)")
        kind = file_kind(self.path)
        if kind == "?":
            raise InputError(f"--data {split}={path}: not an array file (expected HDF5 .h5/.hdf5 or numpy .npz)")
        if kind == "npz":
            problem = zip_problem(self.path)
            if problem is not None:
                raise InputError(f"--data {split}={path}: not an .npz ncli reads: {problem}")
        self.file_kind = kind
        try:
            names = h5_names(self.path) if kind == "h5" else npz_names(self.path)
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
        except InputError:
            self.close()
            raise
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
        self.description = f"{path} [{xk}, {yk}]"

    def arrays(self):
        """(x, y) array-likes, opened once per process (safe with DataLoader workers)."""
        pid = os.getpid()
        if self._arrays is None or self._pid != pid:
            if self.file_kind == "h5":
                import h5py

                f = h5py.File(self.path, "r")
                self._file = f
                local = LocalFile(f, str(self.path), allow_external=self.allow_external, label=f"--data {self.split}={self.text}")
                self._arrays = tuple(self._dataset(local, key) for key in (self.x_key, self.y_key))
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

    @staticmethod
    def _dataset(local: LocalFile, key: str):
        """The dataset at ``key``, its links and storage checked (nothing from other files)."""
        import h5py

        ds = local.at(key)
        if not isinstance(ds, h5py.Dataset):
            raise local.fail(f"{key!r} is not a dataset")
        local.check_storage(ds)
        return ds

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
        for first in range(0, self.num_samples, step):
            try:
                part = np.asarray(y[first : first + step])
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
        return self._batch(0, min(k, self.num_samples)).inputs

    def batches(
        self, batch_size: int, num_workers: int = 0, pin_memory: bool = False, start: int = 0, stop: int | None = None
    ) -> Iterator[BatchOut]:
        """Batches of rows ``start..stop-1`` (default: all), ``batch_size`` rows each but the last."""
        start, stop = row_range(self.num_samples, start, stop)
        if num_workers <= 0:
            for first in range(start, stop, batch_size):
                yield self._batch(first, min(stop, first + batch_size))
            return
        import torch.utils.data as tud

        self.close()  # workers open their own handles (HDF5 handles must not cross a fork)
        loader = tud.DataLoader(
            _BatchDataset(self, batch_size, start, stop), batch_size=None, shuffle=False, num_workers=num_workers,
            pin_memory=pin_memory,
        )
        for inputs, labels, index in loader:
            yield BatchOut(inputs, np.asarray(labels), np.asarray(index))


class _BatchDataset:
    """Map-style dataset of whole batches of rows start..stop-1 (module level, so spawn-started
    workers can pickle it)."""

    def __init__(self, source: ArraySource, batch_size: int, start: int = 0, stop: int | None = None):
        self.source, self.batch_size = source, batch_size
        self.start, self.stop = row_range(source.num_samples, start, stop)

    def __len__(self) -> int:
        return (self.stop - self.start + self.batch_size - 1) // self.batch_size

    def __getitem__(self, i: int):
        first = self.start + i * self.batch_size
        batch = self.source._batch(first, min(self.stop, first + self.batch_size))
        return batch.inputs, batch.labels, batch.index
