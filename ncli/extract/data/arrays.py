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

from ncli.errors import InputError, UsageError
from ncli.extract.archives import zip_problem
from ncli.extract.data.batch import BatchOut, row_range
from ncli.extract.data.keys import case_hint
from ncli.extract.data.pixels import PixelTransform, is_image_array
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


# Arrays named after a model's forward arguments (transformers' names): a file holding any of
# them (as NAME, or NAME_<split> per split) feeds the model all of them by name.
MODEL_INPUT_NAMES = (
    "input_ids", "attention_mask", "token_type_ids", "position_ids", "pixel_values", "pixel_mask",
    "input_values", "input_features", "inputs_embeds", "decoder_input_ids", "decoder_attention_mask",
)
LABEL_NAMES = ("y", "labels")


def split_keys(names, split: str, stems) -> dict[str, str]:
    """stem -> dataset for ``split``: ``<stem>_<split>`` if the file has it, else ``<stem>``."""
    out = {}
    for stem in stems:
        for key in (f"{stem}_{split}", stem):
            if key in names:
                out[stem] = key
                break
    return out


def splits_in(names) -> list[str]:
    """The splits a file holds: x_<split>/y_<split> pairs, <input name>_<split> arrays, or
    ``train`` for a plain x/y pair or plain named inputs."""
    names = list(names)
    if ("x" in names and "y" in names) or any(n in names for n in MODEL_INPUT_NAMES):
        return ["train"]
    found = [n[2:] for n in names if n.startswith("x_") and f"y_{n[2:]}" in names]
    for stem in MODEL_INPUT_NAMES:
        found += [n[len(stem) + 1:] for n in names if n.startswith(stem + "_") and n[len(stem) + 1:] not in found]
    return list(dict.fromkeys(found))  # an empty or odd name is refused by the caller, by name


class ArraySource:
    """Inputs and labels from an HDF5 or .npz file; batches are read as they are needed. The
    inputs are ``x`` (one tensor) or arrays named after the model's forward arguments
    (``input_ids``, ``attention_mask``, ...: named tensors); the labels ``y`` or ``labels``,
    which a causal language model does without (its labels are the next tokens)."""

    def __init__(
        self, split: str, path: str, x_key: str | None = None, y_key: str | None = None, images=None, *,
        allow_external: bool = False,
    ):
        from ncli.extract.data.pixels import ImageOptions

        self.split = split
        self.path = Path(path)
        self.text = path
        self.class_names = None
        self.allow_external = allow_external
        images = images or ImageOptions()
        where = f"--data {split}={path}"
        try:
            mode = os.stat(self.path).st_mode
        except FileNotFoundError:
            raise InputError(f"{where}: no such file") from None
        except OSError as exc:
            raise InputError(f"{where}: cannot read ({exc.strerror or exc})") from None
        if not stat.S_ISREG(mode):
            raise InputError(f"{where}: not a regular file (a device, FIFO or socket)")
        kind = file_kind(self.path)
        if kind == "?":
            raise InputError(f"{where}: not an array file (expected HDF5 .h5/.hdf5 or numpy .npz)")
        if kind == "npz":
            problem = zip_problem(self.path)
            if problem is not None:
                raise InputError(f"{where}: not an .npz ncli reads: {problem}")
        self.file_kind = kind
        try:
            names = h5_names(self.path) if kind == "h5" else npz_names(self.path)
        except Exception as exc:
            raise InputError(f"{where}: cannot read ({type(exc).__name__}: {exc})") from None
        named = {} if x_key else split_keys(names, split, MODEL_INPUT_NAMES)
        has_x = bool(x_key) or "x" in names or f"x_{split}" in names
        if named and has_x:
            raise UsageError(
                f"{where}: the file holds both x and inputs named for the model ({', '.join(named.values())}); "
                "feed x alone with --x-key x, or name every input after the model's arguments (input_ids, attention_mask, ...)"
            )
        if named:
            labels = y_key.replace("{split}", split) if y_key else next(iter(split_keys(names, split, LABEL_NAMES).values()), None)
            xk, yk = None, labels
        elif x_key or y_key:
            xk = (x_key or "x").replace("{split}", split)
            yk = (y_key or "y").replace("{split}", split)
        elif "x" in names and "y" in names:
            xk, yk = "x", "y"
        else:
            xk, yk = f"x_{split}", f"y_{split}"
        for k, opt in ((xk, "--x-key"), (yk, "--y-key")):
            if k is not None and k not in names:
                raise InputError(
                    f"{where}: no dataset {k!r}{case_hint(k, names)} (the file has: {', '.join(names[:20]) or 'nothing'}); "
                    f"expected x/y or x_{split}/y_{split}, or name them with {opt}"
                )
        self.x_key, self.y_key = xk, yk
        self.input_keys = {xk: xk} if xk is not None else named  # model argument (or x) -> dataset
        self._pid = None
        self._arrays = None
        self._file = None
        try:
            inputs, y = self.arrays()
        except InputError:
            self.close()
            raise
        except Exception as exc:  # a damaged member (e.g. its header promises more rows than stored)
            raise InputError(f"{where}: cannot read ({type(exc).__name__}: {exc})") from None
        if y is not None and y.ndim != 1:
            raise InputError(f"{where}: labels {yk!r} must be 1-D, got shape {tuple(y.shape)}")
        if y is not None and y.dtype.kind not in "iu":
            raise InputError(f"{where}: labels {yk!r} must be integers, got {y.dtype}")
        first_name, first = next(iter(inputs.items()))
        count = y.shape[0] if y is not None else (first.shape[0] if first.ndim else 0)
        for name, x in inputs.items():
            if x.ndim < 1 or x.shape[0] != count:
                other = f"{count} labels in {yk!r}" if y is not None else f"{count} rows in {self.input_keys[first_name]!r}"
                raise InputError(f"{where}: {x.shape[0] if x.ndim else 0} inputs in {self.input_keys[name]!r} but {other}")
            if x.dtype.kind not in "fiub":
                raise InputError(f"{where}: inputs {self.input_keys[name]!r} have dtype {x.dtype}; expected numbers")
        if count == 0:
            raise InputError(f"{where}: no samples")
        self.num_samples = int(count)
        # image arrays: x, or pixel_values among named inputs
        self.pixels = None
        image_key = xk if xk is not None else ("pixel_values" if "pixel_values" in inputs else None)
        image = inputs.get(image_key) if image_key is not None else None
        if image is not None and is_image_array(image.dtype, image.shape, images):
            self.pixels = PixelTransform(image.dtype, tuple(image.shape), images, where)
        elif images.asked:
            shape = f"{tuple(image.shape)} {image.dtype}" if image is not None else "no image array"
            raise UsageError(
                f"{where}: {', '.join(images.asked)} apply to images (uint8 (N, H, W[, C]) or float (N, C, H, W) arrays); "
                f"the inputs are {shape}"
            )
        self.image_key = image_key if self.pixels is not None else None
        keys = [f"{k} ({self.pixels.description})" if k == self.image_key else k for k in self.input_keys.values()]
        self.description = f"{path} [{', '.join(keys)}, {yk or 'no labels'}]"

    def arrays(self):
        """({argument: array-like}, labels or None), opened once per process (safe with
        DataLoader workers)."""
        pid = os.getpid()
        if self._arrays is None or self._pid != pid:
            keys = list(self.input_keys.values()) + ([self.y_key] if self.y_key is not None else [])
            if self.file_kind == "h5":
                import h5py

                f = h5py.File(self.path, "r")
                self._file = f
                local = LocalFile(f, str(self.path), allow_external=self.allow_external, label=f"--data {self.split}={self.text}")
                found = {k: self._dataset(local, k) for k in keys}
            else:
                found = {}
                for k in keys:
                    a = _npz_memmap(self.path, k)
                    if a is None:
                        with np.load(self.path, allow_pickle=False) as z:
                            a = z[k]
                    found[k] = a
            inputs = {name: found[key] for name, key in self.input_keys.items()}
            self._arrays = (inputs, found[self.y_key] if self.y_key is not None else None)
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

    def _range(self, values, what: str) -> tuple[int, int]:
        lo, hi = None, None
        step = 1 << 22
        for first in range(0, self.num_samples, step):
            try:
                part = np.asarray(values[first : first + step])
            except (OSError, ValueError) as exc:
                raise InputError(f"--data {self.split}={self.text}: cannot read the {what} ({exc})") from None
            a, b = int(part.min()), int(part.max())
            lo = a if lo is None else min(lo, a)
            hi = b if hi is None else max(hi, b)
        return lo, hi

    def label_range(self) -> tuple[int, int] | None:
        _, y = self.arrays()
        return None if y is None else self._range(y, "labels")

    def token_range(self) -> tuple[int, int] | None:
        """The range of the token ids (input_ids, or an integer x), for next-token labels."""
        inputs, _ = self.arrays()
        ids = inputs.get("input_ids", inputs.get(self.x_key) if self.x_key else None)
        return None if ids is None or ids.dtype.kind not in "iu" else self._range(ids, "token ids")

    def _tensor(self, name: str, array, start: int, stop: int):
        import torch

        values = np.ascontiguousarray(array[start:stop])
        if not values.flags.writeable:  # a memory-mapped .npz member
            values = values.copy()
        if name == self.image_key:
            return self.pixels(torch.from_numpy(values))
        if values.dtype.kind == "b":
            values = values.astype(np.float32)
        return torch.from_numpy(values) if values.dtype.kind == "f" else torch.from_numpy(values.astype(np.int64, copy=False))

    def _batch(self, start: int, stop: int) -> BatchOut:
        inputs, y = self.arrays()
        try:
            tensors = {name: self._tensor(name, array, start, stop) for name, array in inputs.items()}
            # no labels (a causal LM's data): never written as they are, data.tokens makes the labels
            yb = np.asarray(y[start:stop]).astype(np.int64, copy=False) if y is not None else np.full(stop - start, -1, np.int64)
        except (OSError, ValueError) as exc:  # a damaged HDF5 chunk
            raise InputError(f"--data {self.split}={self.text}: cannot read rows {start}..{stop - 1} ({exc})") from None
        batch = tensors[self.x_key] if self.x_key is not None else tensors
        return BatchOut(batch, yb, np.arange(start, stop, dtype=np.int64))

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
