"""Everything before the first batch: the output check, the data sources, the model on its
device, classifier discovery on a few rows, and the file's provenance attributes. Shared by the
single-process run and each torchrun rank."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ncli.console import note
from ncli.errors import InputError, UsageError
from ncli.extract.data import open_sources
from ncli.extract.devices import autocast, resolve_device
from ncli.extract.inputs import to_device
from ncli.extract.model import Prepared, prepare
from ncli.extract.options import ExtractOptions
from ncli.features.epochs import FROM_FILE_NAME, epoch_from_name
from ncli.outputs import check_output_path, same_file

DISCOVERY_ROWS = 8  # rows of the first split run once to find the classifier


@dataclass
class Job:
    out: Path
    checkpoint: Any  # the path given
    options: ExtractOptions
    sources: list
    device: Any  # torch.device
    prepared: Prepared
    autocast: Any  # context manager for the forward passes
    batch_size: int  # --batch-size, or the batch an exported program was made for
    num_classes: int
    feature_dim: int
    weight: np.ndarray
    bias: np.ndarray | None
    class_names: list | None
    attrs: dict
    owns_sources: bool = True  # False when the caller opened the data for several checkpoints

    @property
    def extractor(self):
        return self.prepared.extractor

    @property
    def store_logits(self) -> bool:
        return getattr(self.prepared.extractor, "stores_logits", True)

    def close(self) -> None:
        try:
            self.prepared.extractor.close()
        finally:
            if self.owns_sources:
                close_sources(self.sources)


def close_sources(sources) -> None:
    for source in sources:
        close = getattr(source, "close", None)
        if close is not None:
            close()


def open_data(data, options: ExtractOptions) -> list:
    """The --data items (``SPLIT=SOURCE`` or ``SOURCE``, or a dict split -> source) opened as sources."""
    if isinstance(data, dict):
        data = [f"{k}={v}" for k, v in data.items()]
    return open_sources(
        list(data), x_key=options.x_key, y_key=options.y_key, image_size=options.image_size, normalize=options.normalize,
        layout=options.layout, channels=options.channels, allow_external=options.allow_external,
    )


def setup(checkpoint, output, data, options: ExtractOptions, *, verbose: bool = True, sources: list | None = None,
          data_notes: bool = True) -> Job:
    """Checks, sources, model and classifier discovery: everything before the loop. Checks the
    output path first (before any work). ``verbose``: print notes (rank 0 only under torchrun).
    ``sources``: data already opened by :func:`open_data` (shared by several checkpoints; the
    caller closes them), else ``data`` is opened here. ``data_notes``: also print the data's notes."""
    out = check_output_path(output, options.force)  # before any work
    if same_file(out, checkpoint):
        raise UsageError(f"{out}: the output would replace the checkpoint itself")
    if options.batch_size < 1:
        raise UsageError(f"--batch-size {options.batch_size}: must be at least 1")
    if options.num_workers < 0:
        raise UsageError(f"--num-workers {options.num_workers}: must be 0 or more")
    owns_sources = sources is None
    if owns_sources:
        sources = open_data(data, options)
    extractor = None
    try:
        for source in sources:
            if getattr(source, "path", None) is not None and same_file(out, source.path):
                raise UsageError(f"{out}: the output would replace the data file {source.path}")
        device = resolve_device(options.device)

        import torch

        prepared = prepare(checkpoint, options)
        ckpt, extractor = prepared.checkpoint, prepared.extractor
        if verbose and ckpt.details.get("ema_weights") and not options.ema:
            note(f"{checkpoint} also holds EMA weights ({ckpt.details['ema_weights']}); extracting the raw ones, "
                 f"from {ckpt.container_key or 'the top level'}; --ema for the averaged ones")
        extractor.to(device)
        autocast_context, amp_dtype = autocast(device, options.amp)
        batch_size = options.batch_size
        if extractor.fixed_batch is not None and extractor.fixed_batch != batch_size:
            if verbose:
                note(f"{checkpoint} was exported for batches of exactly {extractor.fixed_batch}; using --batch-size {extractor.fixed_batch}")
            batch_size = extractor.fixed_batch
        with torch.inference_mode(), autocast_context:
            first = sources[0].head(min(DISCOVERY_ROWS, batch_size))
            extractor.discover(to_device(first, device, extractor.dtype))
        num_classes = extractor.num_classes
        if num_classes < 1:
            raise InputError(f"{checkpoint}: the classifier has no outputs")
        sources = rows_for(extractor, sources)
        if verbose and data_notes:
            for source in sources:
                for text in getattr(source, "notes", ()):
                    note(text)
        labelled = [s for s in sources if not (options.stats_only and s.split == options.ood)]
        for source in labelled:  # an out-of-distribution split's labels are ignored (--stats-only --ood)
            names = getattr(source, "class_names", None)
            if names and len(names) != num_classes:
                raise InputError(
                    f"--data {source.split}={source.text}: {len(names)} classes, but the model's classifier "
                    f"{extractor.classifier!r} has {num_classes} outputs"
                )
            labels = source.label_range()
            if labels is not None and (labels[0] < 0 or labels[1] >= num_classes):
                bad = labels[1] if labels[1] >= num_classes else labels[0]
                raise InputError(
                    f"--data {source.split}={source.text}: label {bad} is outside the model's {num_classes} classes "
                    f"(classifier {extractor.classifier!r} has {num_classes} outputs; labels must be in [0, {num_classes}))"
                )
        attrs = _provenance(checkpoint, options, prepared, sources, device, amp_dtype, batch_size, verbose)
        names = [s.class_names for s in labelled if getattr(s, "class_names", None)]
        class_names = names[0] if names and all(n == names[0] for n in names) and len(names[0]) == num_classes else None
        W = extractor.weight.detach()
        b = None if extractor.bias is None else extractor.bias.detach()
        return Job(
            out=out, checkpoint=checkpoint, options=options, sources=sources, device=device, prepared=prepared,
            autocast=autocast_context, batch_size=batch_size, num_classes=num_classes, feature_dim=extractor.feature_dim,
            weight=W.cpu().numpy(), bias=None if b is None else b.cpu().numpy(), class_names=class_names, attrs=attrs,
            owns_sources=owns_sources,
        )
    except BaseException:
        if extractor is not None:
            extractor.close()
        if owns_sources:
            close_sources(sources)
        raise


def rows_for(extractor, sources) -> list:
    """The sources as the extractor makes rows: a causal LM's one row per predicted token
    (labels: the next tokens); other models need labels in the data."""
    if getattr(extractor, "token_rows", False):
        from ncli.extract.data.tokens import NextTokenSource

        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            raise UsageError("token-level rows of a causal language model are not extracted under torchrun yet; run one process")
        return [NextTokenSource(source) for source in sources]
    for source in sources:
        if getattr(source, "y_key", "") is None:
            raise InputError(
                f"--data {source.split}={source.text}: no labels (y or labels, or y_{source.split}); only a causal "
                "language model makes its own (the next tokens)"
            )
    return sources


def _provenance(checkpoint, options: ExtractOptions, prepared: Prepared, sources, device, amp_dtype, batch_size, verbose) -> dict:
    """The feature file's root attributes: where the features come from and how they were made."""
    import torch

    ckpt, extractor = prepared.checkpoint, prepared.extractor
    epoch, step = options.epoch, options.step
    if verbose and epoch is not None and ckpt.epoch is not None and epoch != ckpt.epoch:
        note(f"--epoch {epoch} overrides the checkpoint's epoch {ckpt.epoch}")
    if verbose and step is not None and ckpt.step is not None and step != ckpt.step:
        note(f"--step {step} overrides the checkpoint's step {ckpt.step}")
    layers = options.layers
    epoch = epoch if epoch is not None else ckpt.epoch
    epoch_source = None
    if epoch is None:  # neither --epoch nor stored: a number in the checkpoint's name (ckpt_20.pth)
        epoch = epoch_from_name(checkpoint)
        epoch_source = FROM_FILE_NAME if epoch is not None else None
    attrs = {
        "epoch": epoch,
        "epoch_source": epoch_source,
        "step": step if step is not None else ckpt.step,
        "feature_layer": extractor.classifier,
        "source_checkpoint": str(checkpoint),
        "source_checkpoint_sha256": ckpt.sha256,
        "checkpoint_form": ckpt.form.name,
        "checkpoint_key": ckpt.container_key,
        "arch": options.arch,
        "arch_args": json.dumps(options.arch_args, sort_keys=True, default=str) if options.arch_args else None,
        "ema": bool(options.ema),
        "stripped_prefixes": "".join(prepared.load_info.get("stripped_prefixes", [])) or None,
        "dropped_keys": len(prepared.load_info.get("dropped_keys", [])) or None,
        "classifier_found_by": extractor.found_by,
        "extractor": extractor.kind,
        "torch_version": str(torch.__version__),
        "numpy_version": str(np.__version__),
        "python_version": platform.python_version(),
        "device": str(device),
        "dtype": str(extractor.dtype).replace("torch.", ""),
        "amp": amp_dtype or "off",
        "batch_size": int(batch_size),
        "data_sources": json.dumps({s.split: s.description for s in sources}, sort_keys=True),
        "layers": json.dumps(list(layers)) if layers else None,
        "layer_pool": options.pool if layers else None,
        "world_size": 1,
    }
    attrs.update({k: v for k, v in ckpt.details.items() if isinstance(v, (str, int, float))})
    attrs.update(extractor.extra_attrs())
    return {k: (str(v) if isinstance(v, str) else v) for k, v in attrs.items()}


def say_inferred_epoch(job: Job, several: bool) -> None:
    """The note for an epoch read from the checkpoint's name (once per run)."""
    likewise = "; likewise for the other checkpoints that store none" if several else ""
    note(
        f"{job.checkpoint}: no epoch stored; epoch {job.attrs['epoch']} taken from the file name (recorded as "
        f"epoch_source = '{FROM_FILE_NAME}'; --epoch N sets it){likewise}"
    )
