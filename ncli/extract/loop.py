"""The extraction loop: a job's sources -> model -> FeatureWriter (temp file + rename, abort on
error or Ctrl-C). Memory does not grow with the dataset: batches are written as they come (in
groups of about ``flush_rows`` rows, to keep HDF5 appends few)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ncli.console import note
from ncli.errors import InputError
from ncli.extract.inputs import batch_len, pin_memory, to_device
from ncli.extract.interrupt import InterruptGuard
from ncli.extract.job import Job
from ncli.extract.sink import AsyncDeviceToHost, Sink, host_arrays
from ncli.features.writer import FeatureWriter


@dataclass
class Written:
    """What one extraction pass wrote (the summary, and the distributed run's aggregation)."""

    path: Path
    rows: int
    elapsed: float
    max_err: float
    max_logit: float
    nonfinite: int


def progress_bar(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return Text("      ? samples/s" if speed is None else f"{speed:9,.0f} samples/s", style="progress.data.speed")

    console = Console(stderr=True)
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not enabled, transient=False,
    )


def share_label(world_size: int) -> str:
    """What rank 0's progress bar counts under torchrun: its own share of each split's rows."""
    return f" (rank 0 of {world_size}, its share)" if world_size > 1 else ""


def check_labels(source, batch, num_classes: int) -> None:
    """A label outside the model's classes is an error naming the source and the row."""
    labels = batch.labels
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        i = int(np.argmax((labels < 0) | (labels >= num_classes)))
        raise InputError(
            f"--data {source.split}={source.text}: row {int(batch.index[i])}: label {int(labels[i])} "
            f"outside the model's {num_classes} classes"
        )


def write_rows(
    job: Job, path: Path, rows: dict[str, tuple[int, int]] | None = None, *, force: bool, progress: bool,
    extra_attrs: dict | None = None, progress_label: str = "",
) -> Written:
    """Run the model over each source's rows ``rows[split] = (start, stop)`` (default: all) and
    write them to ``path`` with a FeatureWriter (temp file + rename; abort on error or Ctrl-C).
    A split whose range is empty is written with zero rows when nothing else is (a torchrun
    rank with no work still leaves a complete shard)."""
    import torch
    from rich.markup import escape

    extractor, device, num_classes, batch_size = job.extractor, job.device, job.num_classes, job.batch_size
    options = job.options
    W64 = job.weight.astype(np.float64)
    b64 = None if job.bias is None else job.bias.astype(np.float64)
    ranges = {s.split: (rows or {}).get(s.split, (0, s.num_samples)) for s in job.sources}
    attrs = dict(job.attrs, **(extra_attrs or {}))
    # Everything imported lazily (rich's progress bar) is imported before the output file is
    # opened: a Ctrl-C that lands inside CPython's eval of a string (namedtuple creation during
    # an import) makes the interpreter re-raise SIGINT at exit even when the interrupt is
    # handled, so a run interrupted while writing could end by signal instead of exit 130.
    bar_context = progress_bar(progress)
    interrupt = InterruptGuard()  # from before the temporary file exists until it is committed
    with interrupt, FeatureWriter(
        path, num_classes=num_classes, force=force, attrs=attrs, compression=options.compression, layer_attrs=extractor.layer_attrs,
    ) as writer:
        writer.set_classifier(job.weight, job.bias)
        if job.class_names is not None:
            writer.set_class_names(job.class_names)
        cuda = device.type == "cuda"
        device_to_host = AsyncDeviceToHost(device) if cuda else None
        t0 = time.perf_counter()
        total = 0
        # inline checks/writes when torch already keeps every CPU busy (no core to spare)
        spare_core = device.type != "cpu" or torch.get_num_threads() < (os.cpu_count() or 1)
        sink = Sink(writer, W64, b64, max(options.flush_rows, batch_size), threaded=spare_core, store_logits=job.store_logits)
        sink.start()
        try:
            with bar_context as bar, torch.inference_mode(), job.autocast:
                for source in job.sources:
                    start, stop = ranges[source.split]
                    if stop <= start:
                        continue
                    task = bar.add_task(escape(source.split) + progress_label, total=stop - start)  # a name, not markup
                    for batch in source.batches(batch_size, options.num_workers, cuda, start=start, stop=stop):
                        labels = batch.labels
                        check_labels(source, batch, num_classes)
                        inputs = pin_memory(batch.inputs) if cuda else batch.inputs  # async host-to-device copy
                        h, z, layers = extractor(to_device(inputs, device, extractor.dtype))
                        if device_to_host is not None:
                            sink.put(source.split, pending=device_to_host.start(h, z, layers), labels=labels, index=batch.index)
                        else:
                            sink.put(source.split, labels=labels, index=batch.index, **host_arrays(h, z, layers))
                        bar.advance(task, batch_len(batch.inputs))  # source rows (a causal LM's sequences)
                        total += len(labels)
                        interrupt.check()
                sink.finish()
        except BaseException:
            sink.cancel()  # stop writing before the writer removes the temporary file
            raise
        if total == 0:  # only a torchrun rank whose share is empty
            feature_dtype = np.float64 if str(extractor.dtype) == "torch.float64" else np.float32
            writer.append(
                job.sources[0].split, features=np.zeros((0, job.feature_dim), feature_dtype), labels=np.zeros(0, np.int64),
                logits=np.zeros((0, num_classes), np.float32) if job.store_logits else None, index=np.zeros(0, np.int64),
            )
        elapsed = time.perf_counter() - t0
        writer.set_attrs(
            max_reconstruction_error=float(sink.max_err),
            max_abs_logit=float(sink.max_logit),
            nonfinite_feature_rows=int(sink.nonfinite),
        )
        interrupt.check()  # the last moment before the file is committed
    return Written(Path(path), total, elapsed, float(sink.max_err), float(sink.max_logit), int(sink.nonfinite))


def summary(job: Job, rows: int, elapsed: float, extra: str = "") -> None:
    note(
        f"wrote {job.out}: {rows} samples, p = {job.feature_dim}, C = {job.num_classes}, classifier {job.extractor.classifier!r}, "
        f"{rows / max(elapsed, 1e-9):,.0f} samples/s{extra}"
    )
