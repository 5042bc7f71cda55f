"""A checkpoint made ready to run: loaded in its form, its weights put into the --arch model
when one is given, and the extractor set up (no forward pass yet). Used by the extraction and
by ``ncli inspect``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ncli.errors import UsageError
from ncli.extract.options import ExtractOptions


@dataclass
class Prepared:
    checkpoint: Any  # forms.Checkpoint
    extractor: Any  # extractors.base.Extractor
    load_info: dict = field(default_factory=dict)  # stripped prefixes and dropped keys (with --arch)
    model: Any = None  # the --arch model, if any


def prepare(checkpoint, options: ExtractOptions) -> Prepared:
    """Load the checkpoint (and the --arch model) and set up the extractor."""
    from ncli.extract.arch import build_model
    from ncli.extract.extractors.base import POOLS
    from ncli.extract.extractors.eager import EagerExtractor
    from ncli.extract.forms import load_checkpoint
    from ncli.extract.forms.align import load_into

    ckpt = load_checkpoint(checkpoint, trust=options.trust, ema=options.ema)
    model, info = None, {}
    if options.arch:
        model = build_model(options.arch, options.arch_args)
        info = load_into(model, ckpt.form.weights(ckpt), path=str(checkpoint), arch=options.arch)
        model.eval()
    if options.pool not in POOLS:
        raise UsageError(f"--pool {options.pool}: expected one of {', '.join(POOLS)}")
    if model is None:
        extractor = ckpt.form.make_extractor(ckpt, options)
    else:
        extractor = EagerExtractor(model, options.classifier, options.layers, options.pool, options.amp)
    return Prepared(ckpt, extractor, info, model)
