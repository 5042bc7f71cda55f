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

  batch    BatchOut (model inputs: a tensor or named tensors; labels; row indices)
  arrays   ArraySource
  images   TorchDatasetSource (image folders, torchvision datasets)

A source has ``split``, ``text``, ``description``, ``num_samples``, ``class_names``,
``label_range()``, ``head(k)`` (the inputs of the first k rows) and ``batches(...)``; a new
input kind is a new source yielding its inputs (e.g. a mapping of named tensors).
"""

from __future__ import annotations

import re
from pathlib import Path

from ncli.errors import InputError, UsageError
from ncli.features.schema import split_name_problem
from ncli.extract.data.arrays import ArraySource, file_kind, h5_names, npz_names
from ncli.extract.data.batch import BatchOut
from ncli.extract.data.images import TorchDatasetSource, parse_normalize

__all__ = ["ArraySource", "BatchOut", "TorchDatasetSource", "open_sources", "parse_data_arg"]

_SPLIT_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def parse_data_arg(item: str) -> tuple[str | None, str]:
    """'train=path' -> ('train', 'path'); 'path' -> (None, 'path')."""
    name, sep, rest = item.partition("=")
    if sep and _SPLIT_RE.match(name) and not Path(item).exists():
        if not rest:
            raise UsageError(f"--data {item!r}: nothing after '='; expected SPLIT=SOURCE")
        problem = split_name_problem(name)
        if problem is not None:
            raise UsageError(f"--data {item!r}: a feature file cannot hold a split named {name!r} ({problem}); choose another name")
        return name, rest
    return None, item


def open_sources(items, *, x_key=None, y_key=None, image_size=None, normalize=None, allow_external=False) -> list:
    """Parse and open every --data item (cheap: nothing is read beyond shapes). Split names the
    format cannot hold are refused here, before the model runs. ``allow_external``: HDF5 data may
    read other files (external links, virtual datasets, external storage)."""
    if not items:
        raise UsageError("give at least one --data SPLIT=SOURCE (e.g. --data train=data.npz --data test=data.npz)")
    norm = parse_normalize(normalize)
    sources = []
    seen: set[str] = set()
    for item in items:
        split, text = parse_data_arg(item)
        if text.startswith("torchvision:") or (Path(text).is_dir()):
            opened = [TorchDatasetSource(split or "train", text, image_size, norm)]
        else:
            path = Path(text)
            if split is None and path.is_file() and not (x_key or y_key) and file_kind(path) != "?":
                try:
                    names = h5_names(path) if file_kind(path) == "h5" else npz_names(path)
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
                for name in splits:
                    problem = split_name_problem(name)
                    if problem is not None:
                        raise InputError(
                            f"--data {text}: holds x_{name}/y_{name}, but a feature file cannot hold a split named {name!r} "
                            f"({problem}); name it: --data NAME={text} --x-key x_{name} --y-key y_{name}"
                        )
                opened = [ArraySource(name, text, allow_external=allow_external) for name in splits]
            else:
                opened = [ArraySource(split or "train", text, x_key, y_key, allow_external=allow_external)]
        for source in opened:
            if source.split in seen:
                raise UsageError(f"--data: split {source.split!r} given twice")
            seen.add(source.split)
            sources.append(source)
    return sources
