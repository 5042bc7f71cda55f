"""Data sources for ``--data SPLIT=SOURCE``. Order is kept (no shuffling); every row's index
in its source is stored as ``/<split>/index``.

SOURCE forms:
  FILE.h5 / .hdf5 / .npz   inputs and integer labels: datasets ``x``, ``y``; else
                           ``x_<split>``, ``y_<split>``; or ``--x-key/--y-key`` (``{split}`` in a
                           key is replaced by the split name; with a bare FILE such a pattern
                           takes every split the file holds). Or inputs named after the model's
                           forward arguments (``input_ids``, ``attention_mask``, ``pixel_values``,
                           ..., as NAME or NAME_<split>), all passed by name, labels ``y`` or
                           ``labels`` (none for a causal LM). HDF5 is read batch by batch; an
                           uncompressed .npz (``np.savez``) is memory-mapped; a compressed one
                           is read into memory. Float inputs are cast to the model's dtype,
                           integer inputs (token ids) are passed as int64; uint8 images are
                           scaled to [0, 1] (``pixels``).
  FOLDER                   torchvision ImageFolder layout (FOLDER/<class>/<image>), or a
                           dataset root of split folders (ROOT/train/<class>/...)  [vision]
  torchvision:NAME:ROOT    a torchvision dataset already on disk (never downloaded)   [vision]

``--data FILE`` (or ``--data ROOT``) without ``SPLIT=`` takes every split it holds
(``x_<split>``/``y_<split>`` pairs, ``input_ids_<split>``, ..., split folders), or ``train``
for a plain ``x``/``y`` pair.

  batch    BatchOut (model inputs: a tensor or named tensors; labels; row indices)
  arrays   ArraySource
  pixels   image arrays: uint8 scaling, channel layout, --channels, --image-size, --normalize
  images   TorchDatasetSource (image folders, torchvision datasets)
  tokens   NextTokenSource: a causal LM's rows (one per predicted token) and their labels

A source has ``split``, ``text``, ``description``, ``num_samples``, ``class_names``,
``label_range()``, ``head(k)`` (the inputs of the first k rows) and ``batches(...)``; a new
input kind is a new source yielding its inputs (e.g. a mapping of named tensors).
"""

from __future__ import annotations

import re
from pathlib import Path

from ncli.errors import InputError, UsageError
from ncli.extract.data.arrays import ArraySource, file_kind, h5_names, npz_names, splits_in
from ncli.features.schema import split_name_problem
from ncli.extract.data.batch import BatchOut
from ncli.extract.data.keys import case_pattern_hint, fill, is_pattern, pattern_splits
from ncli.extract.data.images import TorchDatasetSource, folder_classes, parse_normalize, split_folders
from ncli.extract.data.pixels import ImageOptions

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


def open_sources(
    items, *, x_key=None, y_key=None, image_size=None, normalize=None, layout="auto", channels=None, allow_external=False
) -> list:
    """Parse and open every --data item (cheap: nothing is read beyond shapes). Split names the
    format cannot hold are refused here, before the model runs. ``allow_external``: HDF5 data may
    read other files (external links, virtual datasets, external storage)."""
    if not items:
        raise UsageError("give at least one --data SPLIT=SOURCE (e.g. --data train=data.npz --data test=data.npz)")
    norm = parse_normalize(normalize)
    images = ImageOptions(image_size=image_size, normalize=norm, layout=layout, channels=channels)
    parsed = [parse_data_arg(item) for item in items]
    folders = _image_folders(parsed)  # checks the split folders asked for, before anything opens
    # one class list for every image folder: the train folder's (else the first folder's)
    reference = folders.get("train", next(iter(folders.values()), None))
    classes = folder_classes(reference) if reference is not None else None
    sources = []
    seen: set[str] = set()
    for split, text in parsed:
        if text.startswith("torchvision:"):
            opened = [TorchDatasetSource(split or "train", text, image_size, norm, channels=channels)]
        elif Path(text).is_dir():
            inside = split_folders(Path(text))
            opened = [
                TorchDatasetSource(name, text, image_size, norm, channels=channels, classes=classes, folder=inside.get(name))
                for name, _ in _folder_items(split, text)
            ]
        else:
            path = Path(text)
            patterned = is_pattern(x_key) or is_pattern(y_key)  # 'X_{split}': every split the file holds
            if split is None and path.is_file() and (patterned or not (x_key or y_key)) and file_kind(path) != "?":
                try:
                    names = h5_names(path) if file_kind(path) == "h5" else npz_names(path)
                except Exception as exc:  # truncated or damaged
                    raise InputError(f"--data {text}: cannot read ({type(exc).__name__}: {exc})") from None
                splits = pattern_splits(names, x_key, y_key) if patterned else splits_in(names)
                if not splits:
                    raise InputError(_no_splits(text, names, x_key, y_key) if patterned else (
                        f"--data {text}: no x/y or x_<split>/y_<split> datasets, nor inputs named for the model "
                        f"(input_ids, ...) (the file has: {', '.join(names[:20])}); "
                        + (case_pattern_hint(names) or "name them with --x-key/--y-key (e.g. --x-key 'X_{split}' --y-key 'y_{split}')")
                    ))
                for name in splits:
                    problem = split_name_problem(name)
                    if problem is not None:
                        xs, ys = (fill(x_key or "x", name), fill(y_key or "y", name)) if patterned else (f"x_{name}", f"y_{name}")
                        raise InputError(
                            f"--data {text}: holds {xs}/{ys}, but a feature file cannot hold a split named {name!r} "
                            f"({problem}); name it: --data NAME={text} --x-key {xs} --y-key {ys}"
                        )
                opened = [ArraySource(name, text, x_key, y_key, images=images, allow_external=allow_external) for name in splits]
            else:
                opened = [ArraySource(split or "train", text, x_key, y_key, images=images, allow_external=allow_external)]
        for source in opened:
            if source.split in seen:
                raise UsageError(f"--data: split {source.split!r} given twice")
            seen.add(source.split)
            sources.append(source)
    return sources


def _no_splits(text: str, names, x_key: str | None, y_key: str | None) -> str:
    """The error for a --data FILE in which the --x-key/--y-key patterns find no split."""
    shown = ", ".join(names[:20]) or "nothing"
    lowered = [name.lower() for name in names]
    found = pattern_splits(lowered, (x_key or "x").lower(), (y_key or "y").lower())
    hint = ""
    if found:
        wanted = {fill((key or default).lower(), found[0]) for key, default in ((x_key, "x"), (y_key, "y"))}
        hint = f"; did you mean {', '.join(repr(n) for n in names if n.lower() in wanted)}? (names are case-sensitive)"
    return f"--data {text}: no split has both --x-key {x_key or 'x'!r} and --y-key {y_key or 'y'!r} (the file has: {shown}){hint}"


def _folder_items(split: str | None, text: str) -> list[tuple[str, str]]:
    """(split, --data text) of the image folders one --data item names: a dataset root of split
    folders gives each of them (or the one SPLIT= names), an image folder itself."""
    root = Path(text)
    splits = split_folders(root)
    if not splits:
        return [(split or "train", text)]
    if split is None:
        return [(name, text) for name in splits]
    if split not in splits:
        raise InputError(
            f"--data {split}={text}: holds the split folders {', '.join(splits)} (each a folder of class folders), "
            f"none named {split!r}; give --data {next(iter(splits))}={text} or the image folder itself"
        )
    return [(split, text)]


def _image_folders(parsed) -> dict[str, Path]:
    """{split: image folder} for every folder among the --data items."""
    out: dict[str, Path] = {}
    for split, text in parsed:
        if text.startswith("torchvision:") or not Path(text).is_dir():
            continue
        inside = split_folders(Path(text))
        for name, _ in _folder_items(split, text):
            out.setdefault(name, inside.get(name, Path(text)))
    return out
