"""Image folders (torchvision ImageFolder layout) and torchvision datasets already on disk
(never downloaded); both need the [vision] extra."""

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

        start, stop = row_range(self.num_samples, start, stop)
        dataset = self.ds if (start, stop) == (0, self.num_samples) else tud.Subset(self.ds, range(start, stop))
        loader = tud.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory)
        for images, labels in loader:
            labels = np.asarray(labels).astype(np.int64)
            yield BatchOut(images, labels, np.arange(start, start + len(labels), dtype=np.int64))
            start += len(labels)
