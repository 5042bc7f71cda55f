"""Every option of ``ncli extract`` in one object. The command line builds it once; the API,
the setup, the loop and the torchrun path read it. (No torch here: the CLI imports it.)"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ncli.errors import UsageError

INT64 = 1 << 63  # epoch and step are stored as int64 attributes


@dataclass(frozen=True)
class ExtractOptions:
    # the model
    arch: str | None = None  # --arch SPEC for weights-only checkpoints (or to override a model's code)
    arch_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the --arch factory
    ema: bool = False
    trust: bool = False  # --trust-checkpoint: unpickling a whole model may run code
    classifier: str | None = None  # module name, overriding discovery
    layers: tuple[str, ...] = ()  # --layer: also store these modules' outputs
    pool: str = "none"  # none | avg | max (channels first or tokens) | mean | cls | last (tokens), for --layer outputs
    # provenance
    epoch: int | None = None
    step: int | None = None
    # the data
    x_key: str | None = None
    y_key: str | None = None
    image_size: int | None = None
    normalize: str | None = None
    layout: str = "auto"  # image arrays: auto | nchw | nhwc
    channels: int | None = None  # images: convert to 1 (gray) or 3 (RGB) channels
    allow_external: bool = False  # --allow-external: HDF5 data may name other files
    # the run
    batch_size: int = 256
    num_workers: int = 0
    device: str = "auto"
    amp: bool = False
    # the output
    force: bool = False
    compression: str | None = None  # None, "lzf" or "gzip" ("none" and "" mean None)
    progress: bool = True  # progress bar, device note and summary on stderr
    flush_rows: int = 8192  # rows gathered per HDF5 append
    # --stats-only: a statistics file (two passes, no features stored) instead of a feature file
    stats_only: bool = False
    stats_split: str | None = None  # --split: the split that defines the metrics (default "train")
    global_mean: str | None = None  # --global-mean: "class" (default) or "sample"
    min_per_class: int | None = None  # --min-per-class K: the classes with K+ rows of --split are measured
    ood: str | None = None  # --ood SPLIT: an out-of-distribution split, pass 1 only (its sum, for NC5)

    def __post_init__(self) -> None:
        for name in ("epoch", "step"):
            value = getattr(self, name)
            if value is not None and not -INT64 <= value < INT64:
                shown = str(value) if value.bit_length() < 140 else f"{str(value)[:20]}..."
                raise UsageError(f"--{name} {shown}: beyond the int64 range a feature file stores")
        if self.compression in ("none", ""):
            object.__setattr__(self, "compression", None)
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "arch_args", dict(self.arch_args or {}))
