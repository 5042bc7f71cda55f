"""Image arrays in .h5/.npz files (``x`` or ``pixel_values``): the steps image folders get.

uint8 arrays of 3 or 4 dims are images (the CIFAR-style files, often NHWC): scaled to [0, 1],
their channel layout detected (a last dim of 1, 3 or 4 and a second dim that is not: NHWC) or
given by --layout, an (N, H, W) array given one channel. Float arrays of 4 dims are images as
they are (NCHW, or NHWC with --layout nhwc). Then --channels (RGB -> gray with ITU-R 601
weights, gray -> RGB by repetition), --image-size (shorter side resized with antialiasing,
centre crop, as torchvision's Resize + CenterCrop) and --normalize. Other arrays are not images:
those options are refused for them rather than ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ncli.errors import UsageError

LAYOUTS = ("auto", "nchw", "nhwc")
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # what torchvision's rgb_to_grayscale uses


@dataclass(frozen=True)
class ImageOptions:
    """--image-size, --normalize (parsed: (mean, std) or None), --layout, --channels."""

    image_size: int | None = None
    normalize: tuple | None = None
    layout: str = "auto"
    channels: int | None = None

    @property
    def asked(self) -> list[str]:
        """The options given that only images take."""
        given = [("--image-size", self.image_size), ("--normalize", self.normalize), ("--channels", self.channels)]
        out = [name for name, value in given if value is not None]
        return out + (["--layout"] if self.layout != "auto" else [])

    def steps(self) -> str:
        parts = [f"{self.channels} channels" if self.channels else "", f"resize={self.image_size}" if self.image_size else "",
                 f"normalize={self.normalize}" if self.normalize else ""]
        return " ".join(p for p in parts if p)


def is_image_array(dtype: np.dtype, shape: tuple, options: ImageOptions) -> bool:
    if dtype == np.uint8:
        return len(shape) in (3, 4)
    return dtype.kind == "f" and len(shape) == 4


class PixelTransform:
    """Turns a batch of one image array into float NCHW model input (see the module docstring)."""

    def __init__(self, dtype: np.dtype, shape: tuple, options: ImageOptions, where: str):
        self.options = options
        self.scale = dtype == np.uint8
        self.add_channel = len(shape) == 3
        layout = options.layout
        if layout not in LAYOUTS:
            raise UsageError(f"--layout {layout}: expected one of {', '.join(LAYOUTS)}")
        if self.add_channel or layout == "nchw":
            self.channels_last = False
        elif layout == "nhwc":
            self.channels_last = True
        elif not self.scale:  # float images are taken as they are unless --layout nhwc
            self.channels_last = False
        else:
            last, second = shape[-1] in (1, 3, 4), shape[1] in (1, 3, 4)
            if last and second:
                raise UsageError(f"{where}: uint8 images of shape {tuple(shape)}: NCHW or NHWC? give --layout nchw or --layout nhwc")
            self.channels_last = last
        stored = "NHW" if self.add_channel else "NHWC" if self.channels_last else "NCHW"
        self.description = f"{'uint8' if self.scale else str(dtype)} {stored}" + (" /255" if self.scale else "")
        steps = options.steps()
        if steps:
            self.description += " " + steps

    def __call__(self, t):
        import torch
        from torch.nn import functional

        t = t.float() / 255.0 if self.scale else t
        if self.add_channel:
            t = t[:, None]
        elif self.channels_last:
            t = t.permute(0, 3, 1, 2)
        want, have = self.options.channels, t.shape[1]
        if want is not None and want != have:
            if want == 1 and have in (3, 4):
                weights = torch.tensor(GRAY_WEIGHTS, dtype=t.dtype, device=t.device)
                t = (t[:, :3] * weights[None, :, None, None]).sum(1, keepdim=True)
            elif want == 3 and have == 1:
                t = t.expand(-1, 3, -1, -1)
            else:
                raise UsageError(f"--channels {want}: the images have {have} channels (1 -> 3 and 3 -> 1 are possible)")
        size = self.options.image_size
        if size is not None:
            height, width = t.shape[-2:]
            if (height, width) != (size, size):
                short = min(height, width)
                new = (size, max(size, int(size * width / short))) if height <= width else (max(size, int(size * height / short)), size)
                if new != (height, width):
                    t = functional.interpolate(t.float(), size=new, mode="bilinear", antialias=True, align_corners=False).to(t.dtype)
                top, left = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
                t = t[..., top:top + size, left:left + size]
        if self.options.normalize is not None:
            mean, std = (torch.tensor(v, dtype=t.dtype, device=t.device) for v in self.options.normalize)
            if mean.numel() not in (1, t.shape[1]) or std.numel() not in (1, t.shape[1]):
                raise UsageError(f"--normalize: {mean.numel()} means for images of {t.shape[1]} channels")
            t = (t - mean[None, :, None, None]) / std[None, :, None, None]
        return t.contiguous()
