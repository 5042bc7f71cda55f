"""Image folders (torchvision ImageFolder layout) and torchvision datasets already on disk
(never downloaded); both need the [vision] extra.

Folders: one class list for every split, the train folder's (``classes``): a split missing a
class keeps every other label, and a split with a class the train folder lacks is refused.
Without --image-size, images of another size than the first are resized (shorter side, to
cover) and centre-cropped to it, with a note when a sample of the folder shows mixed sizes.
--channels 1 or 3 converts to gray or RGB."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from ncli.console import install_hint
from ncli.errors import EnvironmentProblem, InputError, UsageError
from ncli.extract.data.batch import BatchOut, row_range

VISION_HINT = install_hint("vision")


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


class FitSize:
    """Resize (to cover) and centre-crop a PIL image to ``size`` = (height, width), when it is
    not that size already (module level: DataLoader workers pickle it)."""

    def __init__(self, size: tuple[int, int]):
        self.size = tuple(size)

    def __call__(self, image):
        from torchvision.transforms import functional

        height, width = self.size
        if (image.height, image.width) == (height, width):
            return image
        scale = max(height / image.height, width / image.width)
        covered = functional.resize(image, [max(height, round(image.height * scale)), max(width, round(image.width * scale))])
        return functional.center_crop(covered, [height, width])


def folder_classes(root: Path) -> list[str]:
    """The class folders of an ImageFolder root, as torchvision orders them."""
    return sorted(entry.name for entry in os.scandir(root) if entry.is_dir())


SPLIT_FOLDERS = frozenset({"train", "test", "val", "valid", "validation", "eval", "dev"})


def split_folders(root: Path) -> dict[str, Path]:
    """{split: folder} when ``root`` is a dataset root of split folders (train/, test/, ...)
    that each hold class folders; {} for an ordinary image folder."""
    try:
        subs = sorted((entry for entry in os.scandir(root) if entry.is_dir()), key=lambda entry: entry.name)
    except OSError:
        return {}
    if not subs or not {e.name for e in subs} <= SPLIT_FOLDERS:
        return {}
    if not all(any(inner.is_dir() for inner in os.scandir(e.path)) for e in subs):
        return {}
    return {e.name: Path(e.path) for e in subs}


def _image_transform(image_size: int | None, normalize, channels: int | None = None):
    _, T = _vision()
    steps = []
    if channels is not None:
        steps.append(T.Grayscale(num_output_channels=channels))
    if image_size:
        steps += [T.Resize(image_size), T.CenterCrop(image_size)]
    steps.append(T.ToTensor())
    if normalize is not None:
        steps.append(T.Normalize(*normalize))
    return T.Compose(steps)


class TorchDatasetSource:
    """An image folder or a torchvision dataset (needs the [vision] extra)."""

    def __init__(self, split: str, text: str, image_size: int | None = None, normalize=None, *,
                 channels: int | None = None, classes: list[str] | None = None, folder: Path | None = None):
        """``classes``: the class list of the labels (the train folder's; default: this
        folder's own). ``folder``: the image folder when ``text`` names its dataset root."""
        self.split = split
        self.text = text
        self.notes: list[str] = []
        torchvision, _ = _vision()
        if channels not in (None, 1, 3):
            raise UsageError(f"--channels {channels}: expected 1 (gray) or 3 (RGB)")
        transform = _image_transform(image_size, normalize, channels)
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
            root = folder or Path(text)
            if not root.is_dir():
                raise InputError(f"--data {split}={text}: no such folder")
            try:
                self.ds = torchvision.datasets.ImageFolder(str(root), transform=transform)
            except Exception as exc:
                raise InputError(f"--data {split}={text}: not an image folder (FOLDER/<class>/<image>): {exc}") from None
            self.description = f"ImageFolder {root}"
            if classes is not None:
                self._relabel(classes)
            if not image_size:
                self._fit_sizes(transform)
        if image_size or normalize or channels:
            self.description += f" resize={image_size} normalize={normalize}" + (f" channels={channels}" if channels else "")
        self.class_names = list(getattr(self.ds, "classes", []) or []) or None
        self.num_samples = len(self.ds)
        if self.num_samples == 0:
            raise InputError(f"--data {split}={text}: no samples")

    def _relabel(self, classes: list[str]) -> None:
        """Labels by their index in ``classes`` (the train folder's), not in this folder's own list."""
        own = list(self.ds.classes)
        extra = [c for c in own if c not in classes]
        if extra:
            raise InputError(
                f"--data {self.split}={self.text}: class folders {', '.join(extra[:5])} are not among the train folder's "
                f"{len(classes)} classes; every split must use the train folder's classes"
            )
        index = {c: classes.index(c) for c in own}
        self.ds.samples = [(path, index[own[label]]) for path, label in self.ds.samples]
        self.ds.imgs = self.ds.samples
        self.ds.targets = [label for _, label in self.ds.samples]
        self.ds.classes, self.ds.class_to_idx = list(classes), {c: i for i, c in enumerate(classes)}
        missing = [c for c in classes if c not in own]
        if missing:
            self.description += f" (no images of {len(missing)} of the {len(classes)} classes)"

    def _fit_sizes(self, transform) -> None:
        """Images of another size than the first are fitted to it (resize to cover, centre crop)."""
        from PIL import Image

        samples = self.ds.samples
        if not samples:
            return
        picks = sorted({round(i * (len(samples) - 1) / 15) for i in range(16)})
        sizes = []
        for i in picks:
            try:
                with Image.open(samples[i][0]) as image:
                    sizes.append((image.height, image.width))
            except Exception as exc:
                raise InputError(f"--data {self.split}={self.text}: cannot read image {samples[i][0]} ({exc})") from None
        first = sizes[0]
        transform.transforms.insert(0, FitSize(first))
        self.description += f" fit={first[0]}x{first[1]}"
        if any(size != first for size in sizes):
            self.notes.append(
                f"--data {self.split}={self.text}: the images differ in size; each is resized and centre-cropped to "
                f"{first[0]}x{first[1]} (the first image's); give --image-size to choose"
            )

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

        start, stop = row_range(self.num_samples, start, stop)
        dataset = self.ds if (start, stop) == (0, self.num_samples) else tud.Subset(self.ds, range(start, stop))
        loader = tud.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory)
        for images, labels in loader:
            labels = np.asarray(labels).astype(np.int64)
            yield BatchOut(images, labels, np.arange(start, start + len(labels), dtype=np.int64))
            start += len(labels)
